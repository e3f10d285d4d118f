//! Hugging Face checkpoint folders, read and written safely.
//!
//! - [`SafetensorsFile`]: one validated safetensors file, read with positioned
//!   reads (stricter than the `safetensors` crate: see `docs/format.md`).
//! - [`Checkpoint`]: the weights of a model folder, one file or shards
//!   cross-checked against `model.safetensors.index.json`.
//! - [`write_weights`] and [`write_safetensors`]: the streaming (sharded)
//!   safetensors writer.
//! - Durable outputs, the one way anything is written: [`StagedFile`],
//!   [`OutputDir`] (with `SHA256SUMS` and `pesc-manifest.json`) and
//!   [`publish`], staged beside the target, fsynced and renamed into place.
//! - [`parse_strict`]: JSON without duplicate keys, for every file read.

mod checkpoint;
mod error;
mod json;
mod manifest;
mod publish;
pub mod safetensors;
mod writer;

pub use checkpoint::{confined, read_capped, refuse_pickle_name, Checkpoint, INDEX_FILE, SINGLE_FILE};
pub use error::{Error, Result};
pub use json::parse_strict;
pub use manifest::{check_sha256sums, sort_keys, verify_manifest, ManifestCheck, RunRecord, MANIFEST, SHA256SUMS};
pub use publish::{
    check_interrupt, hash_file, interrupt, interrupted, publish, remove_stale_staging, set_aside_path, write_file_atomic, FileDigest,
    Input, OutputDir, OutputFile, Publication, Sink, StagedFile, TOOL_VERSION,
};
pub use safetensors::{SafetensorsFile, TensorInfo};
pub use writer::{parse_size, write_safetensors, write_values, write_weights, TensorSpec, DEFAULT_SHARD_SIZE};
