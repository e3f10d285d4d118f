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
pub use run::{evaluate, Metrics, RunDir, RunOptions, Trainer, CHECKPOINT_DIR, LORA_CONFIG, LORA_WEIGHTS, METRICS, MOE_WEIGHTS};

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// From the model (folder, GGUF file, tokenizer, computation).
    #[error(transparent)]
    Model(Box<pesc_model::ModelError>),
    /// From reading or writing files.
    #[error(transparent)]
    Files(Box<pesc_io::Error>),
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
    /// A command-line value out of range.
    #[error("{flag} {problem}")]
    Flag {
        /// The flag (`--lora-alpha` ...).
        flag: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// A dense model without LoRA: nothing to train.
    #[error("`{path}` is a dense model: only LoRA can be trained on it, and --lora-r is 0")]
    NothingToTrain {
        /// The config file.
        path: std::path::PathBuf,
    },
    /// A Mixtral model.
    #[error("`{path}` is a Mixtral model; train takes a PESC model (or a dense one for a LoRA-only baseline)")]
    Mixtral {
        /// The config file.
        path: std::path::PathBuf,
    },
    /// The model is not a mixture of experts (`route-stats`).
    #[error("the model routes no tokens (not a mixture of experts)")]
    NotMoe,
    /// The compute dtype is neither f32 nor f64.
    #[error("the trainer computes in f32 (or f64), not {dtype:?}")]
    ComputeDType {
        /// The dtype asked for.
        dtype: candle_core::DType,
    },
    /// A batch without examples.
    #[error("an empty batch")]
    EmptyBatch,
    /// A batch whose examples have no response tokens to learn.
    #[error("the batch has no response tokens")]
    NoResponseTokens,
    /// No training examples.
    #[error("no training examples")]
    NoExamples,
    /// A new run's folder exists already.
    #[error("`{path}` exists; choose a new run folder (or pass it to --resume to continue it)")]
    RunExists {
        /// The folder.
        path: std::path::PathBuf,
    },
    /// A checkpoint that cannot be resumed.
    #[error("`{path}`: {problem}")]
    Checkpoint {
        /// The checkpoint's file or folder.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
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

impl From<pesc_io::Error> for TrainError {
    fn from(e: pesc_io::Error) -> Self {
        TrainError::Files(Box::new(e))
    }
}

impl From<pesc_hf::HfError> for TrainError {
    fn from(e: pesc_hf::HfError) -> Self {
        TrainError::Model(Box::new(e.into()))
    }
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Candle(Box::new(e))
    }
}

/// A `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
