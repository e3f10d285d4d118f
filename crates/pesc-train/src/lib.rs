//! The trainer: instruction tuning of a PESC model's adapters and routers,
//! with LoRA on the frozen base linears, on candle autograd.
//!
//! - [`TrainModel`]: `pesc-model`'s [`pesc_model::Transformer`] with its
//!   base frozen, LoRA on the targeted projections and the routers and
//!   adapters trainable ([`candle_core::Var`]s); padded batches, adapter
//!   dropout, the balancing loss and gradient checkpointing;
//! - [`Dataset`]: JSONL records (reference, Alpaca, chat, pre-tokenized)
//!   turned into token ids with the loss on response tokens only;
//! - [`AdamW`] and the learning-rate schedule;
//! - [`Trainer`]: batches, gradient accumulation, clipping, checkpoints and
//!   the run folder (`docs/training.md`);
//! - [`RouteStats`]: where a model routes each data source's tokens.

mod data;
mod model;
mod optim;
mod routes;
mod run;

pub use data::{Dataset, Example, Template, Tokenizing, IGNORE};
pub use model::{lora_name, trainable, Output, Step, TrainModel, TrainOptions};
pub use optim::{clip_grad_norm, lr_at, AdamW};
pub use pesc_model::Projection;
pub use routes::RouteStats;
pub use run::{evaluate, Metrics, RunOptions, Trainer, CHECKPOINT_DIR, LORA_CONFIG, LORA_WEIGHTS, METRICS, MOE_WEIGHTS};

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// From the runner (model folder, tokenizer).
    #[error(transparent)]
    Model(Box<pesc_model::ModelError>),
    /// From candle.
    #[error("tensor computation failed: {0}")]
    Candle(Box<candle_core::Error>),
    /// A data file line that cannot be used.
    #[error("`{path}` line {line}: {message}")]
    Data {
        /// The data file.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Invalid options or model.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a run folder.
    #[error("`{path}`: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The loss or the gradient norm became NaN or infinite; a checkpoint was saved.
    #[error("the {what} is {value} at step {step}; stopped (checkpoint of step {saved} saved in `{dir}`)")]
    NonFinite {
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The step whose loss was not finite.
        step: usize,
        /// The value.
        value: f64,
        /// The step the checkpoint holds.
        saved: usize,
        /// The checkpoint folder.
        dir: std::path::PathBuf,
    },
}

impl From<pesc_model::ModelError> for TrainError {
    fn from(e: pesc_model::ModelError) -> Self {
        TrainError::Model(Box::new(e))
    }
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Candle(Box::new(e))
    }
}

/// A `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
