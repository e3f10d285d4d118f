//! Checkpoint transformations, and nothing else: each reads a validated
//! [`pesc_hf::Model`] and streams its output tensor by tensor into a staged
//! [`pesc_io::OutputDir`]; `pesc_hf::output::publish_folder` publishes it.
//! The formats they read and write are `pesc-hf`'s.
//!
//! - [`reshard`]: the same model, re-sharded and optionally re-typed.
//! - [`craft`]: dense -> PESC (shared FFN, zero-initialised adapters, router).
//! - [`upcycle`]: dense -> Mixtral (full FFN copies, router).
//! - [`quantize_nf4`]: linear layers to NF4, in transformers' bitsandbytes layout.
//! - [`Merge`]: a PEFT LoRA adapter merged into its base (`merge-lora`).
//! - [`card`]: the model cards of these outputs.

pub mod card;
mod craft;
mod merge;
mod nf4;
mod reshard;
mod upcycle;

pub use craft::{craft, pesc_config, validate, CraftParams, DEFAULT_SCALING};
pub use merge::{lora_delta, Merge, MergeRequest, Onto, ReportRow, MOE_TENSORS, REPORT_FILE};
pub use nf4::{nf4_targets, quantize_nf4, validate_nf4};
pub use reshard::reshard;
pub use upcycle::{mixtral_config, upcycle, validate_upcycle, UpcycleParams};

use std::path::PathBuf;

/// Errors of a transformation: one variant per rule a request or input breaks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CraftError {
    /// From reading or writing files.
    #[error(transparent)]
    Io(#[from] pesc_io::Error),
    /// From the model's config, tensors or the adapter's files.
    #[error(transparent)]
    Hf(#[from] pesc_hf::HfError),
    /// A command-line value out of range.
    #[error("{flag} {problem}")]
    Flag {
        /// The flag (`--experts` ...).
        flag: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// Craft and upcycle take a dense model.
    #[error("`{path}` is already a {kind} model; craft and upcycle take a dense model")]
    NotDense {
        /// The model folder.
        path: PathBuf,
        /// Its kind (`PESC llama`, `Mixtral`).
        kind: String,
    },
    /// Mixtral has no attention or MLP biases.
    #[error("`{path}` has attention or MLP biases ({family}), which the Mixtral architecture lacks; use `craft` for this model")]
    Biases {
        /// The model folder.
        path: PathBuf,
        /// Its family.
        family: &'static str,
    },
    /// An NF4 folder given to `quantize --to nf4`.
    #[error("`{path}` is already an NF4 folder")]
    AlreadyNf4 {
        /// The model folder.
        path: PathBuf,
    },
    /// `--onto original` asked of an NF4 base.
    #[error("`{path}` is an NF4 folder: its original 16-bit weights are gone, so --onto original is impossible; merge onto the dequantized weights (the default) or use the 16-bit base")]
    OriginalOfNf4 {
        /// The base folder.
        path: PathBuf,
    },
    /// The adapter was trained on a 4-bit base other than NF4.
    #[error("{evidence} says the adapter was trained on a `{quant_type}` 4-bit base; merge-lora reproduces only NF4; pass --onto original to merge into the 16-bit weights")]
    FourBitBase {
        /// Where that is recorded (file and field).
        evidence: String,
        /// The 4-bit type.
        quant_type: String,
    },
    /// `target_modules` selects nothing in the base.
    #[error("`{path}`: `target_modules` selects no module of `{base}` (its linear layers are named like `{example}`)")]
    NoTargets {
        /// The adapter config.
        path: PathBuf,
        /// The base folder.
        base: PathBuf,
        /// A module name of the base.
        example: String,
    },
    /// A LoRA module of the adapter that cannot be merged.
    #[error("`{path}`: module `{module}`: {problem}")]
    Module {
        /// The adapter weights.
        path: PathBuf,
        /// The module.
        module: String,
        /// What is wrong.
        problem: String,
    },
    /// A file that holds none of what it should.
    #[error("`{path}` holds no {what}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// `tensors`, `LoRA weights`.
        what: &'static str,
    },
    /// An input tensor holds NaN or an infinity.
    #[error("`{path}`: tensor `{tensor}` holds NaN or Inf")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A merged weight overflowed.
    #[error("tensor `{tensor}`: the merged weight holds NaN or Inf (the LoRA delta overflows)")]
    MergeOverflow {
        /// The weight.
        tensor: String,
    },
    /// A tensor that must hold floats does not.
    #[error("tensor `{tensor}` has dtype {dtype}, not a float type")]
    NotFloat {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: pesc_tensor::DType,
    },
    /// A tensor could not be quantized to NF4.
    #[error("tensor `{tensor}`: {source}")]
    Quantize {
        /// The tensor.
        tensor: String,
        /// Why.
        source: pesc_quant::QuantError,
    },
}
