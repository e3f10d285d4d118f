//! The runner: inference on `pesc-model`'s [`Transformer`] (CPU, or CUDA
//! with the `cuda` feature) in f32 or bf16. [`Runner::forward`] runs one
//! sequence with a KV [`Cache`] and returns f32 logits and, for MoE models,
//! the experts each token was routed to; [`Runner::forward_batch`] runs many
//! sequences, reading each layer once for all; [`Sampler`] and [`generate`]
//! make text. Block-quantized GGUF matrices are multiplied as stored, with
//! ggml's kernels as candle implements them; NF4 weights are dequantized.
//!
//! A runner is resident ([`Runner::load`]: every weight in memory, for
//! generation) or streamed ([`Runner::stream`]: each layer read when used and
//! released after, so a model of any size runs in about one layer's memory;
//! what `verify` and `logits` use). Both compute the same bits.

pub mod memory;
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

/// Vocabulary rows of the LM head a runner multiplies at a time, resident or streamed.
pub const HEAD_CHUNK_ROWS: usize = 8192;

/// A model ready for inference.
pub struct Runner {
    model: Transformer,
}

fn options(dtype: ComputeDType) -> LoadOptions {
    LoadOptions { dtype: dtype.candle(), keep_blocks: true, nf4: Nf4Policy::Dequantize, head_chunk_rows: Some(HEAD_CHUNK_ROWS) }
}

impl Runner {
    /// Loads every weight of `weights` onto `device`: converted to `dtype`,
    /// except GGUF block-quantized matrices, which stay quantized; NF4 weights
    /// are dequantized once.
    pub fn load(weights: &Weights, dtype: ComputeDType, device: &Device) -> Result<Self> {
        Ok(Runner { model: Transformer::load(weights, options(dtype), device)? })
    }

    /// Opens `weights` to run layer by layer. Refused before any compute when
    /// a layer (with the LM head's largest chunk) needs more than `budget`
    /// bytes (default: the memory available now).
    pub fn stream(weights: &Weights, dtype: ComputeDType, device: &Device, budget: Option<u64>) -> Result<Self> {
        let model = Transformer::open(weights, options(dtype), device)?;
        if let Some(available) = budget.or_else(memory::available) {
            let head = model.head_chunk_bytes();
            for l in 0..model.num_layers() as u64 {
                let needed = model.layer_bytes(l).saturating_add(head);
                if needed > available {
                    return Err(ModelError::LayerTooLarge { layer: l, needed, available });
                }
            }
        }
        Ok(Runner { model })
    }

    /// Resident when every weight fits in `budget` (default: the memory
    /// available now, less a quarter kept free), else streamed: generation
    /// then reads every layer for each token, slowly, but completes.
    pub fn fit(weights: &Weights, dtype: ComputeDType, device: &Device, budget: Option<u64>) -> Result<Self> {
        let streamed = Self::stream(weights, dtype, device, budget)?;
        let room = budget.or_else(|| memory::available().map(|a| a / 4 * 3));
        if room.is_none_or(|r| streamed.model.resident_bytes() <= r) {
            return Self::load(weights, dtype, device);
        }
        Ok(streamed)
    }

    /// Whether every weight is in memory.
    #[must_use]
    pub fn is_resident(&self) -> bool {
        self.model.is_resident()
    }

    /// Bytes every weight takes once in memory.
    #[must_use]
    pub fn resident_bytes(&self) -> u64 {
        self.model.resident_bytes()
    }

    /// Vocabulary size.
    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    /// Experts per layer; 0 for a dense model.
    #[must_use]
    pub fn num_experts(&self) -> usize {
        usize::try_from(self.model.config().moe.num_experts()).unwrap_or(usize::MAX)
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
        let mut x = self.model.embed(tokens)?;
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

    /// Runs each sequence from an empty cache, as one padded batch: the
    /// sequences are right-padded to the longest, so every matrix product
    /// covers all their tokens at once and a streamed model reads each layer
    /// and each chunk of its LM head once. The causal mask keeps padding out of
    /// every real token's view; its logits and routes are dropped.
    pub fn forward_batch(&self, sequences: &[Vec<u32>]) -> Result<Vec<Forward>> {
        let t = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if sequences.is_empty() || sequences.iter().any(Vec::is_empty) {
            return Err(ModelError::NoTokens);
        }
        let mut ids = vec![0u32; sequences.len() * t];
        for (i, s) in sequences.iter().enumerate() {
            self.model.check_tokens(s)?;
            ids[i * t..i * t + s.len()].copy_from_slice(s);
        }
        let pass = self.model.pass(sequences.len(), t, 0)?;
        let mut x = self.model.embed(&ids)?;
        let mut routes: Vec<Vec<Vec<Vec<usize>>>> = vec![Vec::new(); sequences.len()];
        for li in 0..self.model.num_layers() {
            let (next, routing) = self.model.layer(li, &x, &pass, None, None)?;
            if let Some(routing) = routing {
                for (i, (s, r)) in sequences.iter().zip(routes.iter_mut()).enumerate() {
                    r.push(routing.chosen[i * t..i * t + s.len()].to_vec());
                }
            }
            x = next;
        }
        let logits = self.model.logits(&x)?.to_dtype(DType::F32)?;
        sequences
            .iter()
            .zip(routes)
            .enumerate()
            .map(|(i, (s, routes))| Ok(Forward { logits: logits.narrow(0, i * t, s.len())?.contiguous()?, routes }))
            .collect()
    }
}
