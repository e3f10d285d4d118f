//! GGUF v3: a hardened reader and a streaming, deterministic writer.
//!
//! - [`GgufFile::open`] validates a whole file before returning: header,
//!   metadata, tensor infos, data layout. Tensor bytes are then read on demand
//!   with positioned reads ([`GgufFile::read`], [`GgufFile::read_into`],
//!   [`GgufFile::copy_to`]); the file is never memory-mapped.
//! - [`Metadata`] keeps the key-value pairs in file order, with typed
//!   accessors ([`Metadata::get_u32`], [`Metadata::get_str`],
//!   [`Metadata::get_f32_array`] ...) whose errors name the key, the type asked
//!   for and the type found. [`Value`] covers the 13 value types; arrays are
//!   one typed vector each ([`Array`]), strings arrays one buffer plus offsets
//!   ([`StringArray`]).
//! - [`GgufWriter`] writes a v3 file to any `std::io::Write` in one pass; see
//!   its docs for the layout and the alignment decision. [`write_gguf`] is
//!   the all-in-memory shorthand.
//!
//! Tensor types, block sizes and byte sizes come from [`pesc_quant::GgmlType`].
//!
//! ```
//! use pesc_gguf::{GgmlType, GgufFile, GgufWriter, Metadata, TensorSpec};
//!
//! let mut md = Metadata::new();
//! md.push("general.architecture", "llama")?;
//! md.push("tokenizer.ggml.scores", vec![0.0f32, -1.0])?;
//! let specs = [TensorSpec::from_shape("output_norm.weight", GgmlType::F32, &[4])];
//!
//! let out = tempfile::NamedTempFile::new()?;
//! let mut w = GgufWriter::new(std::io::BufWriter::new(out.as_file()), &md, &specs)?;
//! w.write_tensor("output_norm.weight", &[0u8; 16])?;
//! w.finish()?;
//!
//! let g = GgufFile::open(out.path())?;
//! assert_eq!(g.get_f32_array("tokenizer.ggml.scores")?, &[0.0, -1.0]);
//! let t = g.tensor("output_norm.weight").unwrap();
//! assert_eq!(g.read(t)?, vec![0u8; 16]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Rules the reader enforces
//!
//! Each mirrors a check in ggml's `gguf.cpp` (the reader llama.cpp uses) unless
//! marked *stricter*; the ids in parentheses are the rows of the hostile-input
//! matrix (`style-and-safety.md` C4).
//!
//! - **Header (G1).** Magic `GGUF`. Version 3, or 2 (same layout; ggml still
//!   reads it). Version 1 is refused as ggml does ("no longer supported"); a
//!   version whose low 16 bits are zero is reported as a byte-swapped
//!   (big-endian) file, ggml's heuristic; any other version is refused.
//! - **Counts (G2).** The tensor and metadata counts are checked against the
//!   bytes left in the file divided by the smallest entry
//!   ([`MIN_KV_SIZE`] = 13, [`MIN_TENSOR_INFO_SIZE`] = 32 bytes) before
//!   anything is allocated, and the tensor count again after the metadata.
//!   ggml bounds them by `SIZE_MAX` over the in-memory entry size; the bytes
//!   left are the tighter bound. No vector is reserved from a count.
//! - **Strings (G3).** Every length is checked against the caps (1 GiB for
//!   values, ggml's `GGUF_MAX_STRING_LENGTH`; 65535 for keys, the spec's
//!   limit; 63 for tensor names) and against the bytes left *before* the
//!   buffer is allocated, so `u64::MAX`, `u64::MAX - 1` (where ggml's `n + 1`
//!   once wrapped) or `2^40` cost nothing. Strings must be UTF-8 (*stricter*:
//!   ggml treats strings as bytes; every Llama-family tokenizer is UTF-8).
//! - **Arrays (G4).** The element type must be one of the 12 non-array types:
//!   arrays of arrays are refused (ggml's writer refuses to produce them), and
//!   unknown element types too. The count is capped at 2^30
//!   (`GGUF_MAX_ARRAY_ELEMENTS`) and `count × smallest element size` must fit
//!   in the bytes left before any allocation; elements are read in 64 KiB
//!   chunks. BOOL values and elements must be 0 or 1 (*stricter*).
//! - **Value types.** An id above 12 is refused, naming the key.
//! - **Keys (G10).** Non-empty, UTF-8, at most 65535 bytes, unique.
//! - **Tensor names (G10).** Non-empty, at most 63 bytes (ggml's
//!   `GGML_MAX_NAME` of 64 includes the NUL), UTF-8, unique. The length is
//!   checked before the name is read.
//! - **Shapes (G5).** `n_dims` in 1..=4 (`GGML_MAX_DIMS`), checked before the
//!   dimensions are read. Every `ne[j]` at most `i64::MAX` (ggml stores
//!   `int64_t` and refuses negatives) and **at least 1**: *stricter* than ggml,
//!   which accepts zero-element tensors. No converter output has one, and a
//!   zero dimension was the divide-by-zero class (llama.cpp #24263). The
//!   element count must fit in an `i64` (llama.cpp #27203), computed with
//!   checked multiplication and no division.
//! - **Types (G6, G7).** The `ggml_type` id must be one
//!   [`pesc_quant::GgmlType`] knows; the error says what ggml calls an
//!   unsupported id. `ne[0]` must be a multiple of the block size. The byte
//!   size (`ne[0] / block × type_size × ne[1] × …`, every step checked) must
//!   fit in an `i64` (the CVE-2026-33298 class computed `nelements ×
//!   type_size` first and overflowed).
//! - **Alignment (G8).** `general.alignment`, if present, must be a `UINT32`
//!   and a non-zero power of two, as ggml requires, and at most 1 MiB
//!   ([`MAX_ALIGNMENT`], *stricter*: ggml has no upper bound, the 32-bit
//!   overflow of llama.cpp #24997). Default 32.
//! - **Offsets (G9).** Each tensor's offset (relative to the data section,
//!   which starts at the end of the tensor infos rounded up to the alignment)
//!   must equal the running size of the tensors before it, each padded to the
//!   alignment, in info order: ggml's "tensor has offset X, expected Y". So
//!   gaps, overlaps and out-of-order data are all refused. The running size is
//!   checked for overflow (the `GGML_PAD` wrap, llama.cpp #24759).
//! - **Data in the file (G9, G12).** Every tensor's last byte must lie inside
//!   the file; otherwise the first one that does not is named as truncated.
//!   Bytes after the last tensor (its padding, or anything else) are allowed,
//!   as in ggml. Reads go through [`GgufFile::read`], which only accepts the
//!   file's own [`TensorInfo`]s and fails (never returns zeros or stale
//!   memory) if the file shrank: the output of a conversion can only hold
//!   bytes read from the input (the CVE-2026-7482 class).
//! - **Types when consumed (G11).** The typed accessors refuse a value of
//!   another type, e.g. `tokenizer.ggml.scores` stored as `array of UINT8`
//!   when `array of FLOAT32` is asked for (llama.cpp #26690).
//!
//! Memory: every allocation is bounded by a length that was first checked
//! against the bytes left in the file, so parsing a file needs memory linear
//! in its size (a small constant factor for the metadata index), whatever
//! its header claims.
//!
//! The writer validates its inputs against the same rules, so the reader
//! accepts everything the writer produces.

mod error;
mod metadata;
mod reader;
mod tensor;
mod value;
mod writer;

pub use error::{GgufError, MetadataError, Result, TensorError};
pub use metadata::{Metadata, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_KEY_LEN};
pub use pesc_quant::GgmlType;
pub use reader::{GgufFile, HEADER_SIZE, MAGIC, MAX_ARRAY_LEN, MAX_STRING_LEN, MIN_KV_SIZE, MIN_TENSOR_INFO_SIZE, VERSION};
pub use tensor::{TensorInfo, TensorSpec, GGML_MAX_NAME, MAX_DIMS};
pub use value::{Array, StringArray, Value, ValueType};
pub use writer::{write_gguf, GgufWriter};
