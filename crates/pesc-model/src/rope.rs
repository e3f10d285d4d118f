//! Rotary position embeddings as transformers computes them (`rotate_half`
//! layout), with linear and Llama 3 frequency scaling.

use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use pesc_hf::{ModelConfig, RopeScaling};

/// Inverse frequencies of the `head_dim / 2` rotation pairs.
pub fn inv_freq(cfg: &ModelConfig) -> Result<Vec<f32>> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let (dim, base) = (cfg.head_dim as usize, cfg.rope_theta as f32);
    #[allow(clippy::cast_precision_loss)]
    let mut freqs: Vec<f32> = (0..dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / dim as f32)).collect();
    match &cfg.rope_scaling {
        RopeScaling::None => {}
        #[allow(clippy::cast_possible_truncation)]
        RopeScaling::Linear { factor } => freqs.iter_mut().for_each(|f| *f /= *factor as f32),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let (low_wavelen, high_wavelen) =
                (original_max_position_embeddings / low_freq_factor, original_max_position_embeddings / high_freq_factor);
            for f in &mut freqs {
                let wavelen = 2.0 * std::f64::consts::PI / f64::from(*f);
                #[allow(clippy::cast_possible_truncation)]
                let scaled = if wavelen > low_wavelen {
                    f64::from(*f) / factor
                } else if wavelen < high_wavelen {
                    f64::from(*f)
                } else {
                    let smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * f64::from(*f) / factor + smooth * f64::from(*f)
                };
                #[allow(clippy::cast_possible_truncation)]
                {
                    *f = scaled as f32;
                }
            }
        }
        RopeScaling::Other { rope_type } => {
            return Err(ModelError::UnsupportedRope { path: cfg.path.clone(), rope_type: rope_type.clone() })
        }
    }
    Ok(freqs)
}

/// `cos` and `sin` tables, `[T, head_dim]` each, for positions `start .. start + len`.
pub fn tables(inv_freq: &[f32], start: usize, len: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(len * half * 2);
    let mut sin = Vec::with_capacity(len * half * 2);
    for p in start..start + len {
        #[allow(clippy::cast_precision_loss)]
        let row: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
        for _ in 0..2 {
            cos.extend(row.iter().map(|a| a.cos()));
            sin.extend(row.iter().map(|a| a.sin()));
        }
    }
    let cos = Tensor::from_vec(cos, (len, half * 2), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (len, half * 2), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Rotates `x` (`[heads, T, head_dim]`) by the tables: `x cos + rotate_half(x) sin`.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(2)?;
    let x1 = x.narrow(2, 0, d / 2)?;
    let x2 = x.narrow(2, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 2)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}
