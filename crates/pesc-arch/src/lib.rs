//! Model families and their tensors.
//!
//! [`ModelConfig`] is a validated `config.json` of the Llama family (`llama`,
//! `mistral`, `qwen2`), optionally turned into a mixture of experts: PESC
//! (adapters on a shared FFN) or Mixtral (full FFN copies). Both config
//! generations are read: transformers 5's `rope_parameters` and `dtype`, and
//! the older top-level `rope_theta`, `rope_scaling` and `torch_dtype`.
//! [`ModelConfig::expected_tensors`] lists every tensor the config implies,
//! and [`Model::open`] checks a folder's weights against it; [`GgufModel`]
//! reads a GGUF file as the same kind of model. NF4 folders (transformers'
//! bitsandbytes 4-bit layout) are read too: [`Model::nf4`] describes a
//! quantized weight and [`Model::read_f32`] dequantizes it.

mod config;
mod gguf;
mod gguf_tokenizer;
mod model;
mod names;
mod nf4;
mod summary;

pub use config::{Family, ModelConfig, Moe, PescParams, RopeScaling};
pub use gguf::{is_gguf_path, unpermute_rows, GgufModel, RawTensor, GGUF_ARCHITECTURES};
pub use gguf_tokenizer::{hf_tokenizer, GgufVocab};
pub use model::{ArchError, Model};
pub use names::{dense_mlp, mixtral_expert, mixtral_gate, pesc_router, ExpertNaming};
pub use nf4::{dequantize_as, Nf4Config, Nf4Info, QUANT_STATE};
pub use summary::{QuantSummary, Summary};

/// Largest layer count accepted from a config.
pub const MAX_LAYERS: u64 = 10_000;
/// Largest expert count accepted from a config.
pub const MAX_EXPERTS: u64 = 4_096;
