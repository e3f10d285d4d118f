//! AdamW as PyTorch computes it, global-norm clipping, and the constant
//! learning rate after a linear warmup (transformers' `constant_with_warmup`).

use crate::Result;
use candle_core::{Tensor, Var};

/// AdamW with decoupled weight decay; one pair of moments per parameter.
pub struct AdamW {
    /// Learning rate of the next step (set by the schedule).
    pub lr: f64,
    /// `beta1`, `beta2`.
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Steps taken.
    pub t: u64,
    /// First and second moments, in parameter order.
    pub moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(params: &[&Var], lr: f64, weight_decay: f64) -> Result<Self> {
        let moments = params.iter().map(|p| Ok((p.zeros_like()?, p.zeros_like()?))).collect::<Result<_>>()?;
        Ok(AdamW { lr, betas: (0.9, 0.999), eps: 1e-8, weight_decay, t: 0, moments })
    }

    /// One update of `params` with `grads` (same order):
    /// `p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    pub fn step(&mut self, params: &[&Var], grads: &[Tensor]) -> Result<()> {
        self.t += 1;
        let (b1, b2) = self.betas;
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let t = self.t as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for ((p, g), (m, v)) in params.iter().zip(grads).zip(self.moments.iter_mut()) {
            *m = ((&*m * b1)? + (g * (1.0 - b1))?)?;
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((v.sqrt()? / c2.sqrt())? + self.eps)?;
            let mut w = p.as_tensor().clone();
            if self.weight_decay != 0.0 {
                w = (w * (1.0 - self.lr * self.weight_decay))?;
            }
            p.set(&(w - (m.div(&denom)? * (self.lr / c1))?)?)?;
        }
        Ok(())
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`
/// (PyTorch's `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1);
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0;
    for g in grads.iter() {
        sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

/// The learning rate of 0-based `step`: `lr * step / warmup` during the
/// `warmup` steps, then `lr` (so the first step of a warmup has rate 0, as in transformers).
#[must_use]
pub fn lr_at(lr: f64, step: usize, warmup: usize) -> f64 {
    if step < warmup {
        #[allow(clippy::cast_precision_loss)]
        let r = step as f64 / warmup as f64;
        lr * r
    } else {
        lr
    }
}
