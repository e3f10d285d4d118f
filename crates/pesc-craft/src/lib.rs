//! Checkpoint transformations. Each reads a validated [`pesc_arch::Model`],
//! streams its output tensor by tensor into a staged [`pesc_io::OutputDir`]
//! and leaves publishing (manifest, rename) to [`Publish`].
//!
//! - [`reshard`]: the same model, re-sharded and optionally re-typed.
//! - [`craft`]: dense -> PESC (shared FFN, zero-initialised adapters, router).
//! - [`upcycle`]: dense -> Mixtral (full FFN copies, router).
//! - [`Import`]: a llama.cpp GGUF file -> Hugging Face folder.
//! - [`quantize_nf4`]: linear layers to NF4, in transformers' bitsandbytes layout.
//! - [`Merge`]: a PEFT LoRA adapter merged into its base (`merge-lora`).

mod card;
mod craft;
mod export;
mod folder;
mod gguf_vocab;
mod import;
mod merge;
mod nf4;
mod peft;
mod reshard;
mod upcycle;

pub use card::{craft_card, craft_counts, merge_card, thousands, upcycle_card, upcycle_counts};
pub use craft::{craft, pesc_config, validate, CraftParams, DEFAULT_SCALING};
pub use export::{
    check_exportable, export_gguf, export_metadata, permute_rows, plan_tensors, shape_fallback, size_label, ExportOptions, ExportSummary,
    GgufType, PlannedTensor, QUANTIZATION_VERSION,
};
pub use folder::{input_digests, Publish, StoreDType, AUX_FILES};
pub use gguf_vocab::{gguf_vocab, VocabKind};
pub use import::Import;
pub use merge::{lora_delta, Merge, MergeRequest, Onto, ReportRow, MOE_TENSORS, REPORT_FILE};
pub use nf4::{nf4_config, nf4_targets, quantize_nf4, validate_nf4};
pub use peft::{LoraConfig, ModuleSelector, PeftAdapter, Scaling, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
pub use reshard::reshard;
pub use upcycle::{mixtral_config, upcycle, validate_upcycle, UpcycleParams};

/// Errors of a transformation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CraftError {
    /// From reading or writing files.
    #[error(transparent)]
    Io(#[from] pesc_io::Error),
    /// From the model's config or tensors.
    #[error(transparent)]
    Arch(#[from] pesc_arch::ArchError),
    /// From reading a GGUF file.
    #[error(transparent)]
    Gguf(#[from] pesc_gguf::GgufError),
    /// A request that cannot be carried out on this input.
    #[error("{0}")]
    Invalid(String),
}
