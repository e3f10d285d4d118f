//! Plain float encodings: F32, F16 and BF16, little-endian, one element per
//! "block".
//!
//! F16 rounds to nearest, ties to even (ggml's `ggml_compute_fp32_to_fp16`);
//! a NaN becomes the quiet NaN `0x7E00` with the input's sign, as ggml writes
//! it. BF16 is ggml's `ggml_compute_fp32_to_bf16`: round to nearest even on
//! the top 16 bits, NaN kept (its top half) and forced quiet. Decoding is
//! exact widening.

use half::f16;

/// ggml's f32 -> f16 bits.
#[inline]
pub(crate) fn f32_to_f16_bits(x: f32) -> u16 {
    if x.is_nan() {
        if x.is_sign_negative() {
            0xFE00
        } else {
            0x7E00
        }
    } else {
        f16::from_f32(x).to_bits()
    }
}

/// f16 bits -> f32 (exact).
#[inline]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// Reads the little-endian f16 at `b[0..2]` as f32.
#[inline]
pub(crate) fn read_f16(b: &[u8]) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

/// Writes `x` as a little-endian f16 to `b[0..2]`.
#[inline]
pub(crate) fn write_f16(b: &mut [u8], x: f32) {
    b[..2].copy_from_slice(&f32_to_f16_bits(x).to_le_bytes());
}

/// ggml's f32 -> bf16 bits.
#[inline]
pub(crate) fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    let wide = if (u & 0x7fff_ffff) > 0x7f80_0000 {
        // NaN: keep sign and the top of the payload, set the quiet bit.
        (u >> 16) | 64
    } else {
        // Round to nearest, ties to even. Cannot overflow: the largest
        // non-NaN pattern is 0xff80_0000.
        (u + 0x7fff + ((u >> 16) & 1)) >> 16
    };
    low_u16(wide)
}

/// The low 16 bits (the callers have already shifted the value down).
#[inline]
#[allow(clippy::cast_possible_truncation)] // intended: keep the low half
fn low_u16(v: u32) -> u16 {
    v as u16
}

pub(crate) fn encode_f32(src: &[f32], dst: &mut [u8]) {
    for (x, o) in src.iter().zip(dst.chunks_exact_mut(4)) {
        o.copy_from_slice(&x.to_le_bytes());
    }
}

pub(crate) fn encode_f16(src: &[f32], dst: &mut [u8]) {
    for (&x, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
        o.copy_from_slice(&f32_to_f16_bits(x).to_le_bytes());
    }
}

pub(crate) fn encode_bf16(src: &[f32], dst: &mut [u8]) {
    for (&x, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
        o.copy_from_slice(&f32_to_bf16_bits(x).to_le_bytes());
    }
}

pub(crate) fn decode_f32(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

pub(crate) fn decode_f16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = read_f16(b);
    }
}

pub(crate) fn decode_bf16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounding_and_nan() {
        assert_eq!(f32_to_f16_bits(1.0), 0x3C00);
        assert_eq!(f32_to_f16_bits(65504.0), 0x7BFF);
        assert_eq!(f32_to_f16_bits(65520.0), 0x7C00, "ties to even rounds up to inf");
        assert_eq!(f32_to_f16_bits(1.0 + 2f32.powi(-11)), 0x3C00, "tie to even, down");
        assert_eq!(f32_to_f16_bits(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02, "tie to even, up");
        assert_eq!(f32_to_f16_bits(f32::NAN), 0x7E00);
        assert_eq!(f32_to_f16_bits(-f32::NAN), 0xFE00);
        assert_eq!(f32_to_f16_bits(f32::from_bits(0x7F80_0001)), 0x7E00, "signalling NaN quietened");
    }

    #[test]
    fn bf16_rounding_and_nan() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3F80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80, "tie to even, down");
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82, "tie to even, up");
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7F80_0001)), 0x7FC0);
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7F80, "rounds to inf");
        assert_eq!(f32_to_bf16_bits(f32::NEG_INFINITY), 0xFF80);
    }
}
