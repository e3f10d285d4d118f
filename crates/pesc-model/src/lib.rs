//! Dense Llama-family, PESC and Mixtral models on candle (CPU by default,
//! CUDA with the `cuda` feature), defined once for inference and training.
//!
//! - [`Weights`]: a model folder or a GGUF file, opened for computing;
//! - [`Transformer`]: the layer stack (attention with GQA, biases, RoPE
//!   variants and sliding window; RMSNorm; dense, PESC and Mixtral FFNs),
//!   parameterised by how each [`Linear`] is applied: frozen, block-quantized
//!   as stored, NF4 dequantized at use, trainable, LoRA-wrapped;
//!   each one's place ([`Site`]) lets the trainer turn it trainable or add LoRA.
//!
//! The runner (`pesc-runner`) runs the [`Transformer`] with a KV cache, the
//! trainer (`pesc-train`) with gradients; neither defines a layer.
//! The PESC layer is computed in the residual form of `docs/format.md`
//! (`y = f + s * sum_k w_k * A_k(f)`), so zero adapters reproduce the dense
//! model bit for bit.

mod linear;
pub mod ops;
pub mod rope;
mod transformer;
mod weights;

pub use linear::{Blocks, Linear, Lora, Nf4Weight, Weight, DEQUANTIZED_ROWS};
pub use transformer::{
    AdapterInput, Layer, LayerCache, LayerRef, LoadOptions, Nf4Policy, Pass, Projection, Role, Routing, Site, Transformer,
};
pub use weights::{Source, StoredNf4, Weights};

/// Errors of loading and computing a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// From a model folder, its config or its tokenizer.
    #[error(transparent)]
    Hf(Box<pesc_hf::HfError>),
    /// From a GGUF file.
    #[error(transparent)]
    LlamaCpp(Box<pesc_llamacpp::LlamaCppError>),
    /// From reading files.
    #[error(transparent)]
    Io(Box<pesc_io::Error>),
    /// From candle.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A RoPE scaling the runner does not implement.
    #[error("`{path}`: rope_type `{rope_type}` is not supported by the runner")]
    UnsupportedRope {
        /// The config file.
        path: std::path::PathBuf,
        /// Its `rope_type`.
        rope_type: String,
    },
    /// A GGUF file without a vocabulary asked for text.
    #[error("`{path}`: has no vocabulary (`tokenizer.ggml.model` none); pass token ids instead")]
    NoVocabulary {
        /// The file.
        path: std::path::PathBuf,
    },
    /// A pass with no tokens.
    #[error("no tokens to run")]
    NoTokens,
    /// A token id the model's vocabulary lacks.
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfVocabulary {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A GGUF weight in a block type candle cannot multiply.
    #[error("tensor `{tensor}`: the runner cannot multiply {ty} weights")]
    UnsupportedBlockType {
        /// The tensor.
        tensor: String,
        /// Its type.
        ty: pesc_quant::GgmlType,
    },
    /// A weight that must be a matrix is not.
    #[error("tensor `{tensor}` has shape {shape:?}, not a matrix")]
    NotAMatrix {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A weight could not be quantized to NF4.
    #[error("tensor `{tensor}`: {source}")]
    Nf4 {
        /// The tensor.
        tensor: String,
        /// Why.
        source: pesc_quant::QuantError,
    },
    /// A layer that does not fit the memory the runner may use.
    #[error("layer {layer} needs {needed} bytes in memory (with the LM head's largest chunk), but only {available} bytes are available; free memory, raise --max-memory, or compute in bf16")]
    LayerTooLarge {
        /// The layer.
        layer: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// A block-quantized weight asked to train (it has no gradient).
    #[error("a block-quantized weight cannot be trained")]
    QuantizedTrainable,
}

impl From<pesc_hf::HfError> for ModelError {
    fn from(e: pesc_hf::HfError) -> Self {
        ModelError::Hf(Box::new(e))
    }
}

impl From<pesc_llamacpp::LlamaCppError> for ModelError {
    fn from(e: pesc_llamacpp::LlamaCppError) -> Self {
        ModelError::LlamaCpp(Box::new(e))
    }
}

impl From<pesc_io::Error> for ModelError {
    fn from(e: pesc_io::Error) -> Self {
        ModelError::Io(Box::new(e))
    }
}

/// A `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
