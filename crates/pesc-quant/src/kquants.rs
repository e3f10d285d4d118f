//! K-quants: 256-element super-blocks with per-sub-block scales.
//!
//! Layouts (little-endian; `d` and `dmin` are f16):
//!
//! | Type | Bytes | Layout | Value |
//! |---|---|---|---|
//! | Q2_K | 84 | `scales[16], qs[64], d, dmin` | `d*(sc&15)*q - dmin*(sc>>4)`, 16 sub-blocks of 16 |
//! | Q3_K | 110 | `hmask[32], qs[64], scales[12], d` | `d*(sc-32)*(q-4)`, 6-bit scales, 16 sub-blocks of 16 |
//! | Q4_K | 144 | `d, dmin, scales[12], qs[128]` | `d*sc*q - dmin*m`, 6-bit `sc`/`m`, 8 sub-blocks of 32 |
//! | Q5_K | 176 | `d, dmin, scales[12], qh[32], qs[128]` | as Q4_K with a fifth bit from `qh` |
//! | Q6_K | 210 | `ql[128], qh[64], scales[16] (i8), d` | `d*sc*(q-32)`, 16 sub-blocks of 16 |
//!
//! Quantization (Q4_K, Q5_K, Q6_K) follows ggml's `quantize_row_*_ref`,
//! which `llama-quantize` uses when no importance matrix is given:
//!
//! - Q4_K / Q5_K: each 32-element sub-block gets a scale and a (non-positive)
//!   minimum from a weighted least-squares search over candidate scales
//!   (`make_qkx2_quants`; weights `sqrt(mean(x²)) + |x|`). The eight scales
//!   and mins are then quantized to 6 bits against the super-block's f16
//!   `d = max_scale/63` and `dmin = max_min/63`, and the elements are
//!   re-quantized against the rounded scales.
//! - Q6_K: each 16-element sub-block gets a signed scale from an RMSE search
//!   (`make_qx_quants` with weights `x²`); scales are quantized to i8 against
//!   `d = max_scale/-128` and the elements re-quantized. A super-block whose
//!   scales are all below 1e-15 is written as zeros.
//!
//! Every rounding is ggml's `nearest_int` (the `+ 1.5·2²³` trick, ties to
//! even), reproduced with the same bit manipulation so that even out-of-range
//! values wrap as they do in C; all sums run in f32 in ggml's order.

use crate::float::{f16_bits_to_f32, f32_to_f16_bits, read_f16, write_f16};
use crate::legacy::low_u8;

const QK_K: usize = 256;
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest, ties to even, for |v| < 2²²;
/// outside that range the result wraps exactly as ggml's does.
#[inline]
fn nearest_int(v: f32) -> i32 {
    let t = v + 12_582_912.0;
    let mantissa = t.to_bits() & 0x007f_ffff;
    // `mantissa` < 2^23, so it fits in i32.
    i32::try_from(mantissa).unwrap_or(0) - 0x0040_0000
}

/// Scale and min of sub-block `j` from the packed 12-byte table.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Packs eight 6-bit scales and mins into 12 bytes (inverse of [`scale_min_k4`]).
#[inline]
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], out: &mut [u8]) {
    for j in 0..8 {
        if j < 4 {
            out[j] = ls[j];
            out[j + 4] = lm[j];
        } else {
            out[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            out[j - 4] |= (ls[j] >> 4) << 6;
            out[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// Weighted least-squares fit of `x ≈ scale*L + min` with `L` in `0..=nmax`
/// and `min <= 0` (ggml's `make_qkx2_quants`, squared error). Returns
/// `(scale, -min)` and leaves the levels in `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let level = |iscale: f32, min: f32, v: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = level(iscale, min, x[i]);
        l[i] = low_u8(q);
        let diff = scale * f32::from(l[i]) + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = level(iscale, min, x[i]);
            laux[i] = low_u8(q);
            let w = weights[i];
            let lf = q as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Shared Q4_K / Q5_K quantization of one super-block: fills `d`, `dmin`,
/// the 12 scale bytes (`head[4..16]`) and the levels `l` (0..=nmax).
fn quantize_k_scales_mins(x: &[f32], nmax: i32, rmin: f32, nstep: i32, head: &mut [u8], l: &mut [u8; QK_K]) {
    let mut weights = [0f32; 32];
    let mut laux = [0u8; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(xs, &weights, nmax, &mut l[32 * j..32 * j + 32], &mut laux, rmin, 0.1, nstep);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = low_u8(nearest_int(inv_scale * scales[j])).min(63);
        lm[j] = low_u8(nearest_int(inv_min * mins[j])).min(63);
    }
    let d_bits = f32_to_f16_bits(max_scale / 63.0);
    let dmin_bits = f32_to_f16_bits(max_min / 63.0);
    head[0..2].copy_from_slice(&d_bits.to_le_bytes());
    head[2..4].copy_from_slice(&dmin_bits.to_le_bytes());
    pack_scale_min_k4(&ls, &lm, &mut head[4..16]);

    let d_all = f16_bits_to_f32(d_bits);
    let dmin_all = f16_bits_to_f32(dmin_bits);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &head[4..16]);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            // ggml keeps the levels from the search for such a sub-block
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for i in 32 * j..32 * j + 32 {
            l[i] = low_u8(nearest_int((x[i] + dm) / d).clamp(0, nmax));
        }
    }
}

pub(crate) fn quantize_q4_k(src: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(144)) {
        quantize_k_scales_mins(x, 15, -1.0, 20, &mut y[..16], &mut l);
        let qs = &mut y[16..];
        for c in 0..4 {
            for i in 0..32 {
                qs[32 * c + i] = l[64 * c + i] | (l[64 * c + i + 32] << 4);
            }
        }
    }
}

pub(crate) fn quantize_q5_k(src: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(176)) {
        quantize_k_scales_mins(x, 31, -0.5, 15, &mut y[..16], &mut l);
        let (qh, ql) = y[16..].split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for i in 0..32 {
                let mut l1 = l[64 * c + i];
                if l1 > 15 {
                    l1 -= 16;
                    qh[i] |= m1;
                }
                let mut l2 = l[64 * c + i + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[i] |= m2;
                }
                ql[32 * c + i] = l1 | (l2 << 4);
            }
        }
    }
}

/// RMSE-weighted (weights `x²`) symmetric fit of `x ≈ scale*(L-nmax)` with
/// `L` in `0..2*nmax` (ggml's `make_qx_quants`, `rmse_type` 1, no
/// importance weights). Returns the scale and leaves the levels in `l`.
fn make_qx_quants_rmse1(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -nmax_f / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let q = level(iscale, x[i]);
        l[i] = low_u8(q + nmax);
        let w = x[i] * x[i];
        let lf = q as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9i32 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let lf = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                l[i] = low_u8(nmax + level(iscale, x[i]));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

pub(crate) fn quantize_q6_k(src: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(210)) {
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..16 {
            let scale = make_qx_quants_rmse1(&x[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            y.fill(0);
            continue;
        }
        let (ql, rest) = y.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        let (sc, d_out) = rest.split_at_mut(16);

        let iscale = -128.0 / max_scale;
        write_f16(d_out, 1.0 / iscale);
        let d_all = read_f16(d_out);
        for (s, &scale) in sc.iter_mut().zip(&scales) {
            *s = low_u8(nearest_int(iscale * scale).min(127));
        }
        for ((&s, xs), ls) in sc.iter().zip(x.chunks_exact(16)).zip(l.chunks_exact_mut(16)) {
            let d = d_all * f32::from(i8::from_le_bytes([s]));
            if d == 0.0 {
                // ggml keeps the levels from the search for such a sub-block
                continue;
            }
            for (o, &v) in ls.iter_mut().zip(xs) {
                *o = low_u8(nearest_int(v / d).clamp(-32, 31) + 32);
            }
        }
        for h in 0..2 {
            let (lh, qlh, qhh) = (&l[128 * h..], &mut ql[64 * h..], &mut qh[32 * h..]);
            for i in 0..32 {
                let (a, b, c, e) = (lh[i], lh[i + 32], lh[i + 64], lh[i + 96]);
                qlh[i] = (a & 0x0F) | ((c & 0x0F) << 4);
                qlh[i + 32] = (b & 0x0F) | ((e & 0x0F) << 4);
                qhh[i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
            }
        }
    }
}

pub(crate) fn dequantize_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(84).zip(dst.chunks_exact_mut(QK_K)) {
        let (scales, rest) = b.split_at(16);
        let (qs, rest) = rest.split_at(64);
        let d = read_f16(&rest[0..2]);
        let dmin = read_f16(&rest[2..4]);
        let mut out = 0;
        let mut is = 0;
        for half in 0..2 {
            let q = &qs[32 * half..32 * half + 32];
            for shift in [0u32, 2, 4, 6] {
                for part in 0..2 {
                    let sc = scales[is];
                    is += 1;
                    let dl = d * f32::from(sc & 0x0F);
                    let ml = dmin * f32::from(sc >> 4);
                    for &qb in &q[16 * part..16 * part + 16] {
                        y[out] = dl * f32::from((qb >> shift) & 3) - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}

/// The sixteen signed 6-bit Q3_K scales (`- 32` already applied).
fn q3_k_scales(packed: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { packed[j] & 0x0F } else { packed[j - 8] >> 4 };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = i32::from(low | (high << 4)) - 32;
    }
    out
}

pub(crate) fn dequantize_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(110).zip(dst.chunks_exact_mut(QK_K)) {
        let (hmask, rest) = b.split_at(32);
        let (qs, rest) = rest.split_at(64);
        let scales = q3_k_scales(&rest[0..12]);
        let d_all = read_f16(&rest[12..14]);
        let mut out = 0;
        let mut is = 0;
        let mut m = 1u8;
        for half in 0..2 {
            let q = &qs[32 * half..32 * half + 32];
            for shift in [0u32, 2, 4, 6] {
                for part in 0..2 {
                    let dl = d_all * scales[is] as f32;
                    is += 1;
                    for i in 16 * part..16 * part + 16 {
                        let v = i32::from((q[i] >> shift) & 3) - if hmask[i] & m != 0 { 0 } else { 4 };
                        y[out] = dl * v as f32;
                        out += 1;
                    }
                }
                m = m.wrapping_shl(1);
            }
        }
    }
}

pub(crate) fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(&b[0..2]);
        let dmin = read_f16(&b[2..4]);
        let scales = &b[4..16];
        let qs = &b[16..];
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let q = &qs[32 * c..32 * c + 32];
            let yc = &mut y[64 * c..64 * c + 64];
            for i in 0..32 {
                yc[i] = d1 * f32::from(q[i] & 0x0F) - m1;
                yc[i + 32] = d2 * f32::from(q[i] >> 4) - m2;
            }
        }
    }
}

pub(crate) fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(&b[0..2]);
        let dmin = read_f16(&b[2..4]);
        let scales = &b[4..16];
        let qh = &b[16..48];
        let ql = &b[48..];
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let q = &ql[32 * c..32 * c + 32];
            let yc = &mut y[64 * c..64 * c + 64];
            for i in 0..32 {
                let h1 = if qh[i] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[i] & u2 != 0 { 16 } else { 0 };
                yc[i] = d1 * f32::from((q[i] & 0x0F) + h1) - m1;
                yc[i + 32] = d2 * f32::from((q[i] >> 4) + h2) - m2;
            }
        }
    }
}

pub(crate) fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(QK_K)) {
        let (ql, rest) = b.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let (sc, rest) = rest.split_at(16);
        let d = read_f16(rest);
        for h in 0..2 {
            let (ql, qh, sc) = (&ql[64 * h..], &qh[32 * h..], &sc[8 * h..]);
            let yh = &mut y[128 * h..128 * h + 128];
            let s = |k: usize| f32::from(i8::from_le_bytes([sc[k]]));
            for i in 0..32 {
                let is = i / 16;
                let q1 = i16::from((ql[i] & 0x0F) | ((qh[i] & 3) << 4)) - 32;
                let q2 = i16::from((ql[i + 32] & 0x0F) | (((qh[i] >> 2) & 3) << 4)) - 32;
                let q3 = i16::from((ql[i] >> 4) | (((qh[i] >> 4) & 3) << 4)) - 32;
                let q4 = i16::from((ql[i + 32] >> 4) | (((qh[i] >> 6) & 3) << 4)) - 32;
                yh[i] = d * s(is) * f32::from(q1);
                yh[i + 32] = d * s(is + 2) * f32::from(q2);
                yh[i + 64] = d * s(is + 4) * f32::from(q3);
                yh[i + 96] = d * s(is + 6) * f32::from(q4);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        for (v, r) in [(0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.49, 3), (-7.51, -8), (-0.0, 0)] {
            assert_eq!(nearest_int(v), r, "{v}");
        }
        for (v, r) in [(-4_194_303.0f32, -4_194_303), (-1234.567, -1235), (0.1, 0), (98765.5, 98766), (98766.5, 98766)] {
            assert_eq!(nearest_int(v), r, "{v}");
        }
    }

    #[test]
    fn scale_min_packing_round_trips() {
        let ls = [0, 1, 17, 63, 32, 15, 48, 5];
        let lm = [63, 0, 33, 2, 16, 47, 1, 62];
        let mut packed = [0u8; 12];
        pack_scale_min_k4(&ls, &lm, &mut packed);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &packed), (ls[j], lm[j]));
        }
    }
}
