//! Dense Llama-family, PESC and Mixtral models on candle (CPU by default,
//! CUDA with the `cuda` feature), defined once for inference and training.
//!
//! - [`Weights`]: a model folder or a GGUF file, opened for computing;
//! - [`Transformer`]: the layer stack (attention with GQA, biases, RoPE
//!   variants and sliding window; RMSNorm; dense, PESC and Mixtral FFNs),
//!   parameterised by how each [`Linear`] is applied: frozen, block-quantized
//!   as stored, NF4 dequantized at use, trainable, LoRA-wrapped;
//! - [`Runner`]: inference on it, one sequence at a time with a KV [`Cache`];
//!   [`Runner::forward`] returns f32 logits and, for MoE models, the experts
//!   each token was routed to; [`Sampler`] and [`generate`] for text;
//! - [`TextModel`]: `tokenizer.json` and the chat template.
//!
//! The trainer (`pesc-train`) runs the same [`Transformer`] with gradients.
//! The PESC layer is computed in the residual form of `docs/format.md`
//! (`y = f + s * sum_k w_k * A_k(f)`), so zero adapters reproduce the dense
//! model bit for bit.

mod linear;
pub mod ops;
pub mod rope;
mod runner;
mod sample;
mod text;
mod transformer;
mod weights;

pub use linear::{Linear, Lora, Nf4Weight, Weight};
pub use runner::{Cache, ComputeDType, Forward, Runner};
pub use sample::{generate, Sampler};
pub use text::{ChatMessage, TextModel};
pub use transformer::{AdapterInput, LayerCache, LoadOptions, Nf4Policy, Pass, Projection, Role, Routing, Site, Transformer};
pub use weights::{StoredNf4, Weights};

/// Errors of the runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// From the model folder.
    #[error(transparent)]
    Arch(Box<pesc_arch::ArchError>),
    /// From reading files.
    #[error(transparent)]
    Io(Box<pesc_io::Error>),
    /// From candle.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A model feature the runner does not implement.
    #[error("`{path}`: {what} is not supported by the runner")]
    Unsupported {
        /// The config file.
        path: std::path::PathBuf,
        /// What.
        what: String,
    },
    /// Bad input to the runner (token ids, prompts).
    #[error("{0}")]
    Input(String),
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
    /// A block-quantized weight asked to train (it has no gradient).
    #[error("a block-quantized weight cannot be trained")]
    QuantizedTrainable,
    /// The tokenizer or chat template could not be loaded or used.
    #[error("`{path}`: {message}")]
    Text {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl From<pesc_arch::ArchError> for ModelError {
    fn from(e: pesc_arch::ArchError) -> Self {
        ModelError::Arch(Box::new(e))
    }
}

impl From<pesc_io::Error> for ModelError {
    fn from(e: pesc_io::Error) -> Self {
        ModelError::Io(Box::new(e))
    }
}

/// A `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
