//! The runner: inference on `pesc-model`'s [`Transformer`] (CPU, or CUDA
//! with the `cuda` feature) in f32 or bf16, one sequence at a time with a KV
//! [`Cache`]. [`Runner::forward`] returns f32 logits and, for MoE models, the
//! experts each token was routed to; [`Sampler`] and [`generate`] make text.
//! Block-quantized GGUF matrices are multiplied as stored, with ggml's
//! kernels as candle implements them; NF4 weights are dequantized once.

mod sample;

pub use pesc_model::{ModelError, Result, Weights};
pub use sample::{generate, Sampler};

use candle_core::{DType, Device, Tensor};
use pesc_model::{LayerCache, LoadOptions, Nf4Policy, Transformer};

/// The dtype the runner computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDType {
    /// 32-bit float (norms and softmax are always computed in f32).
    F32,
    /// bfloat16 weights and activations.
    BF16,
}

impl ComputeDType {
    fn candle(self) -> DType {
        match self {
            ComputeDType::F32 => DType::F32,
            ComputeDType::BF16 => DType::BF16,
        }
    }
}

/// Keys and values of the positions seen so far, per layer.
#[derive(Default)]
pub struct Cache {
    kv: Vec<LayerCache>,
    len: usize,
}

impl Cache {
    /// Positions cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What one forward pass returns.
pub struct Forward {
    /// Logits, `[T, vocab]`, f32.
    pub logits: Tensor,
    /// For MoE models: per layer, per token, the experts it was routed to.
    pub routes: Vec<Vec<Vec<usize>>>,
}

/// A model loaded for inference.
pub struct Runner {
    model: Transformer,
}

impl Runner {
    /// Loads every weight of `weights` onto `device`: converted to `dtype`,
    /// except GGUF block-quantized matrices, which stay quantized; NF4 weights
    /// are dequantized once.
    pub fn load(weights: &Weights, dtype: ComputeDType, device: &Device) -> Result<Self> {
        let opts = LoadOptions { dtype: dtype.candle(), keep_blocks: true, nf4: Nf4Policy::Dequantize };
        Ok(Runner { model: Transformer::load(weights, opts, device)? })
    }

    /// Vocabulary size.
    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    /// Runs `tokens` at the positions after those in `cache`, extending it.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Forward> {
        if tokens.is_empty() {
            return Err(ModelError::NoTokens);
        }
        self.model.check_tokens(tokens)?;
        let t = tokens.len();
        if cache.kv.len() != self.model.num_layers() {
            cache.kv = vec![None; self.model.num_layers()];
        }
        let pass = self.model.pass(1, t, cache.len)?;
        let mut x = self.model.embed(&Tensor::from_vec(tokens.to_vec(), t, self.model.device())?)?;
        let mut routes = Vec::new();
        for (li, kv) in cache.kv.iter_mut().enumerate() {
            let (next, routing) = self.model.layer(li, &x, &pass, Some(kv), None)?;
            if let Some(r) = routing {
                routes.push(r.chosen);
            }
            x = next;
        }
        cache.len += t;
        let logits = self.model.logits(&x)?.to_dtype(DType::F32)?;
        Ok(Forward { logits, routes })
    }
}
