//! The 32-element block types: Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1.
//!
//! Layouts (little-endian, `d` and `m` are f16):
//!
//! | Type | Bytes | Layout | Value |
//! |---|---|---|---|
//! | Q8_0 | 34 | `d, qs[32] (i8)` | `qs[j]*d` |
//! | Q4_0 | 18 | `d, qs[16]` | `(q-8)*d` |
//! | Q4_1 | 20 | `d, m, qs[16]` | `q*d + m` |
//! | Q5_0 | 22 | `d, qh (u32), qs[16]` | `(q-16)*d` |
//! | Q5_1 | 24 | `d, m, qh (u32), qs[16]` | `q*d + m` |
//!
//! In the 4- and 5-bit types byte `j` of `qs` holds element `j` in its low
//! nibble and element `j+16` in its high nibble; for the 5-bit types bit `i`
//! of `qh` is the fifth bit of element `i`.
//!
//! Scale choice (ggml's reference quantizers):
//!
//! - Q8_0: `d = max|x|/127`, `q = round(x/d)` (half away from zero).
//! - Q4_0 / Q5_0: `d = m/-8` (`m/-16`), where `m` is the signed value of
//!   largest magnitude (the first on ties); `q = trunc(x/d + 8.5)` (`+16.5`)
//!   capped at 15 (31).
//! - Q4_1 / Q5_1: `d = (max-min)/15` (`/31`), `m = min`,
//!   `q = trunc((x-min)/d + 0.5)`, capped at 15 for Q4_1 only.
//!
//! "`/d`" is a multiplication by `1/d` computed once in f32 (0 when `d` is
//! 0), before `d` is rounded to f16, exactly as ggml does; float-to-integer
//! conversions copy what ggml's C compiles to on x86-64.

use crate::float::{read_f16, write_f16};

/// C's float-to-integer conversion as x86-64 performs it (`cvttss2si`):
/// truncation toward zero, and `i32::MIN` for NaN or a value out of range.
#[inline]
pub(crate) fn c_trunc_i32(v: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        // In range, so the saturating cast is a plain truncation.
        #[allow(clippy::cast_possible_truncation)]
        let i = v as i32;
        i
    } else {
        i32::MIN
    }
}

/// The low byte of an int, as C's conversion to `int8_t` keeps it.
#[inline]
#[allow(clippy::cast_possible_truncation)] // intended: C keeps the low byte
pub(crate) fn low_i8(v: i32) -> i8 {
    v as i8
}

/// The low byte of an int, as C's conversion to `uint8_t` keeps it.
#[inline]
#[allow(clippy::cast_possible_truncation)] // intended: C keeps the low byte
pub(crate) fn low_u8(v: i32) -> u8 {
    v as u8
}

/// `1/d`, or 0 when `d` is 0.
#[inline]
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// The signed value of largest magnitude; the first one wins ties.
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

pub(crate) fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let mut amax = 0.0f32;
        for &v in x {
            let a = v.abs();
            amax = if amax > a { amax } else { a };
        }
        let d = amax / 127.0;
        let id = inverse(d);
        write_f16(y, d);
        for (&v, q) in x.iter().zip(&mut y[2..]) {
            *q = low_u8(c_trunc_i32((v * id).round()));
        }
    }
}

pub(crate) fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = read_f16(b);
        for (&q, o) in b[2..].iter().zip(y.iter_mut()) {
            *o = f32::from(i8::from_le_bytes([q])) * d;
        }
    }
}

pub(crate) fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
        let d = signed_absmax(x) / -8.0;
        let id = inverse(d);
        write_f16(y, d);
        let q = |v: f32| low_u8(i32::from(low_i8(c_trunc_i32(v * id + 8.5)).min(15)));
        for j in 0..16 {
            y[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
    }
}

pub(crate) fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let d = read_f16(b);
        for j in 0..16 {
            let q = b[2 + j];
            y[j] = f32::from(i16::from(q & 0x0F) - 8) * d;
            y[j + 16] = f32::from(i16::from(q >> 4) - 8) * d;
        }
    }
}

pub(crate) fn quantize_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(20)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        write_f16(&mut y[0..2], d);
        write_f16(&mut y[2..4], min);
        let q = |v: f32| low_u8(i32::from(low_i8(c_trunc_i32((v - min) * id + 0.5)).min(15)));
        for j in 0..16 {
            y[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
        }
    }
}

pub(crate) fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(32)) {
        let d = read_f16(&b[0..2]);
        let m = read_f16(&b[2..4]);
        for j in 0..16 {
            let q = b[4 + j];
            y[j] = f32::from(q & 0x0F) * d + m;
            y[j + 16] = f32::from(q >> 4) * d + m;
        }
    }
}

/// Packs 32 five-bit values into `qh` (fifth bits) and `qs` (nibbles).
#[inline]
fn pack_5bit(q: &[u8; 32], qh_out: &mut [u8], qs: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..16 {
        let (a, b) = (q[j], q[j + 16]);
        qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
        qh |= u32::from((a & 0x10) >> 4) << j;
        qh |= u32::from((b & 0x10) >> 4) << (j + 16);
    }
    qh_out[..4].copy_from_slice(&qh.to_le_bytes());
}

/// Unpacks element `j` (0..32) of a 5-bit block.
#[inline]
fn unpack_5bit(qh: u32, qs: &[u8], j: usize) -> u8 {
    let nibble = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
    nibble | (u8::from((qh >> j) & 1 == 1) << 4)
}

pub(crate) fn quantize_q5_0(src: &[f32], dst: &mut [u8]) {
    let mut q = [0u8; 32];
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(22)) {
        let d = signed_absmax(x) / -16.0;
        let id = inverse(d);
        write_f16(y, d);
        for (o, &v) in q.iter_mut().zip(x) {
            *o = low_u8(i32::from(low_i8(c_trunc_i32(v * id + 16.5)).min(31)));
        }
        let (qh, qs) = y[2..].split_at_mut(4);
        pack_5bit(&q, qh, qs);
    }
}

pub(crate) fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(32)) {
        let d = read_f16(b);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for (j, o) in y.iter_mut().enumerate() {
            *o = f32::from(i16::from(unpack_5bit(qh, &b[6..], j)) - 16) * d;
        }
    }
}

pub(crate) fn quantize_q5_1(src: &[f32], dst: &mut [u8]) {
    let mut q = [0u8; 32];
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(24)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        write_f16(&mut y[0..2], d);
        write_f16(&mut y[2..4], min);
        for (o, &v) in q.iter_mut().zip(x) {
            // ggml does not cap Q5_1 at 31; (max-min)/d cannot round past it.
            *o = low_u8(c_trunc_i32((v - min) * id + 0.5));
        }
        let (qh, qs) = y[4..].split_at_mut(4);
        pack_5bit(&q, qh, qs);
    }
}

pub(crate) fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(32)) {
        let d = read_f16(&b[0..2]);
        let m = read_f16(&b[2..4]);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for (j, o) in y.iter_mut().enumerate() {
            *o = f32::from(unpack_5bit(qh, &b[8..], j)) * d + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_conversions_match_x86() {
        assert_eq!(c_trunc_i32(2.9), 2);
        assert_eq!(c_trunc_i32(-2.9), -2);
        assert_eq!(c_trunc_i32(f32::NAN), i32::MIN);
        assert_eq!(c_trunc_i32(f32::INFINITY), i32::MIN);
        assert_eq!(c_trunc_i32(-2_147_483_648.0), i32::MIN);
        assert_eq!(c_trunc_i32(2_147_483_648.0), i32::MIN);
        assert_eq!(low_i8(i32::MIN), 0);
        assert_eq!(low_i8(200), -56);
        assert_eq!(low_u8(-1), 255);
    }

    #[test]
    fn q4_0_nibble_order() {
        // element j -> low nibble of byte j, element j+16 -> high nibble.
        let mut x = [0f32; 32];
        x[0] = -8.0; // sets d = 1 and q = 0
        x[16] = 7.0; // q = 15
        x[1] = 1.0; // q = 9
        let mut y = [0u8; 18];
        quantize_q4_0(&x, &mut y);
        assert_eq!(u16::from_le_bytes([y[0], y[1]]), 0x3C00);
        assert_eq!(y[2], 0xF0);
        assert_eq!(y[3], 0x89);
        let mut back = [0f32; 32];
        dequantize_q4_0(&y, &mut back);
        assert_eq!(back, x);
    }
}
