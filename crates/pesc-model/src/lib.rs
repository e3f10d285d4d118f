//! The runner: computes dense Llama-family, PESC and Mixtral models on
//! candle (CPU by default, CUDA with the `cuda` feature), in f32 or bf16.
//!
//! - [`Weights`]: a model folder or a GGUF file (block-quantized matrices
//!   are multiplied as stored, with ggml's kernels as candle implements them);
//! - [`Runner`]: weights loaded from [`Weights`];
//!   [`Runner::forward`] returns f32 logits and, for MoE models, the experts
//!   each token was routed to.
//! - [`Cache`]: the KV cache for incremental decoding.
//! - [`Sampler`]: greedy or seeded temperature / top-p sampling.
//! - [`TextModel`]: `tokenizer.json` and the chat template.
//!
//! The PESC layer is computed in the residual form of `docs/format.md`
//! (`y = f + s * sum_k w_k * A_k(f)`), so zero adapters reproduce the dense
//! model bit for bit.

pub mod ops;
pub mod rope;
mod sample;
mod text;
mod transformer;
mod weights;

pub use sample::{generate, Sampler};
pub use text::{ChatMessage, TextModel};
pub use transformer::{Cache, ComputeDType, Forward, Runner};
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
