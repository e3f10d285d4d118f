//! Hugging Face checkpoint folders, read and written safely.
//!
//! - [`SafetensorsFile`]: one validated safetensors file, read with positioned
//!   reads (stricter than the `safetensors` crate: see `docs/format.md`).
//! - [`Checkpoint`]: the weights of a model folder, one file or shards
//!   cross-checked against `model.safetensors.index.json`.
//! - [`OutputDir`] and [`write_weights`]: a streaming sharded writer into a
//!   staging folder that is fsynced and renamed onto its target, with
//!   `SHA256SUMS` and `pesc-manifest.json`.
//! - [`parse_strict`]: JSON without duplicate keys, for every file read.

mod checkpoint;
mod error;
mod json;
mod output;
pub mod safetensors;
mod writer;

pub use checkpoint::{confined, read_capped, refuse_pickle_name, Checkpoint, INDEX_FILE, SINGLE_FILE};
pub use error::{Error, Result};
pub use json::parse_strict;
pub use output::{
    check_sha256sums, hash_file, interrupt, interrupted, remove_stale_staging, sort_keys, verify_manifest, write_file_atomic, FileDigest,
    ManifestCheck, OutputDir, OutputFile, RunRecord, MANIFEST, SHA256SUMS,
};
pub use safetensors::{SafetensorsFile, TensorInfo};
pub use writer::{parse_size, write_weights, TensorSpec, DEFAULT_SHARD_SIZE};
