//! The layer arithmetic the runner and the trainer share.

use crate::Result;
use candle_core::{DType, Device, Tensor, D};

/// RMSNorm `x / sqrt(mean(x^2) + eps) * w`, the normalisation computed in
/// f32 (f64 stays f64), scaled by `w` in `x`'s dtype (as transformers).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let wide = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let xf = x.to_dtype(wide)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(w)?)
}

/// Softmax over the last dimension, max-subtracted (the max without gradient).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Additive causal mask `[T, start + T]` (f32): 0 where query `start + i` may
/// see key `j` (not after it, and within `window` when set), -inf elsewhere.
pub fn causal_mask(start: usize, t: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let s = start + t;
    let mut m = vec![0f32; t * s];
    for i in 0..t {
        let q = start + i;
        for j in 0..s {
            if j > q || window.is_some_and(|w| q - j.min(q) >= w) {
                m[i * s + j] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Tensor::from_vec(m, (t, s), device)?)
}
