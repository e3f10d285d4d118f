//! Hugging Face's conventions, in one place, for both directions (reading
//! what transformers, PEFT and bitsandbytes write, and writing it):
//!
//! - [`ModelConfig`]: a validated `config.json` of the Llama family (`llama`,
//!   `mistral`, `qwen2`), optionally a mixture of experts: PESC (adapters on
//!   a shared FFN, Camelidae's keys) or Mixtral (full FFN copies). Both
//!   config generations are read: transformers 5's `rope_parameters` and
//!   `dtype`, and the older top-level `rope_theta`, `rope_scaling` and
//!   `torch_dtype`. [`ModelConfig::expected_tensors`] lists every tensor the
//!   config implies ([`names`] spells them).
//! - [`Model`]: a model folder whose weights are checked against its config
//!   ([`Model::open`]), NF4 folders included ([`nf4`]: bitsandbytes' 4-bit
//!   layout, read and written).
//! - [`output`]: what an output folder shares: `config.json`, the stored
//!   dtype's name, the tokenizer files copied along, publishing.
//! - [`remote_code`]: the transformers modeling code (and `auto_map`) every
//!   PESC folder carries.
//! - [`peft`]: PEFT LoRA adapters. [`TextModel`]: `tokenizer.json` and chat
//!   templates. [`spm`]: SentencePiece vocabularies (`tokenizer.model`, and
//!   the `tokenizer.json` transformers uses for them). [`Card`]: the Hub model
//!   card. [`Summary`]: what `inspect` reports.

pub mod card;
mod config;
mod error;
mod folder;
pub mod names;
pub mod nf4;
pub mod output;
pub mod peft;
pub mod remote_code;
pub mod spm;
mod summary;
mod text;

pub use card::{thousands, Card};
pub use config::{Family, ModelConfig, Moe, PescParams, RopeScaling};
pub use error::HfError;
pub use folder::Model;
pub use names::ExpertNaming;
pub use nf4::{dequantize_as, Nf4Config, Nf4Info, QUANT_STATE};
pub use output::StoreDType;
pub use summary::{QuantSummary, Summary};
pub use text::{ChatMessage, TextModel};

/// Largest layer count accepted from a config.
pub const MAX_LAYERS: u64 = 10_000;
/// Largest expert count accepted from a config.
pub const MAX_EXPERTS: u64 = 4_096;
