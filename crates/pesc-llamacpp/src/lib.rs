//! llama.cpp's conventions, in one place, for both directions: what its
//! converter (`convert_hf_to_gguf.py`) and `llama-quantize` write, and what
//! its loader reads.
//!
//! - [`names`]: GGUF tensor names and the Hugging Face tensors they hold;
//! - [`hparams`]: the `{arch}.*` metadata keys, written and read;
//! - [`rotary`]: the q/k row permutation, both ways;
//! - [`vocab`]: `tokenizer.ggml.*` from a folder's tokenizer and back;
//! - [`recipe`]: `llama-quantize`'s per-tensor types and file types;
//! - [`GgufModel`]: a GGUF file read as a model (`import-gguf`, the runner);
//! - [`export_gguf`] (`quantize --to q8_0 ...`) and [`Import`] (`import-gguf`).

mod error;
mod export;
pub mod hparams;
mod import;
mod model;
pub mod names;
pub mod recipe;
pub mod rotary;
pub mod vocab;

pub use error::LlamaCppError;
pub use export::{check_exportable, export_gguf, export_metadata, ExportSummary};
pub use import::Import;
pub use model::{is_gguf_path, GgufModel, RawTensor, GGUF_ARCHITECTURES};
pub use recipe::{ExportOptions, GgufType, PlannedTensor};
pub use vocab::{GgufVocab, VocabKind};
