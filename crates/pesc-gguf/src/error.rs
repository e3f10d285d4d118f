//! The error types of this crate: one variant per broken rule, each naming the
//! file and, where there is one, the key or tensor and the offending value.
//!
//! [`GgufError`] is what [`GgufFile::open`](crate::GgufFile::open),
//! [`GgufFile::read`](crate::GgufFile::read) and [`GgufWriter`](crate::GgufWriter)
//! return. The rules about one metadata entry or one tensor are the
//! path-free [`MetadataError`] and [`TensorError`], shared by the reader
//! (wrapped with the file's path) and the writer (wrapped without one).

use pesc_quant::GgmlType;
use std::io;
use std::path::PathBuf;

/// A `Result` with this crate's [`GgufError`].
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// Everything that can be wrong with a GGUF file, or with writing one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    // === reading: I/O ===
    /// An operating-system error on the file.
    #[error("`{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file ended before a tensor's bytes could be read, although they were
    /// inside the file when it was opened.
    #[error("`{path}`: unexpected end of file reading tensor `{tensor}` (the file changed or was truncated after it was validated)")]
    UnexpectedEof {
        /// The file.
        path: PathBuf,
        /// The tensor being read.
        tensor: String,
    },

    // === reading: framing ===
    /// Fewer bytes than the fixed 24-byte header.
    #[error("`{path}`: file is {len} bytes, too small for a GGUF header (24 bytes: magic, version, tensor count, metadata count)")]
    TooSmall {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("`{path}`: not a GGUF file: the first four bytes are {found}, expected \"GGUF\" (47 47 55 46)")]
    Magic {
        /// The file.
        path: PathBuf,
        /// The bytes found, escaped for display.
        found: String,
    },
    /// A version this reader does not accept.
    #[error("`{path}`: GGUF version {version}: {problem}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version field as read (little-endian).
        version: u32,
        /// Why it is refused.
        problem: &'static str,
    },
    /// A tensor or metadata count that the rest of the file cannot hold.
    #[error("`{path}`: {what} is {value}, but the {remaining} bytes left in the file hold at most {max} entries of at least {min_entry} bytes each")]
    Count {
        /// The file.
        path: PathBuf,
        /// `tensor count` or `metadata entry count`.
        what: &'static str,
        /// The declared count.
        value: u64,
        /// Bytes left in the file when the count was checked.
        remaining: u64,
        /// The smallest size one entry can have on disk.
        min_entry: u64,
        /// `remaining / min_entry`.
        max: u64,
    },
    /// The file ends inside a field.
    #[error("`{path}`: file is truncated: it ends inside {what} (at byte {offset}, {needed} bytes needed, {remaining} left)")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The field being read (`value of key `general.name``, ...).
        what: String,
        /// Where the field starts.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file.
        remaining: u64,
    },
    /// A string or array length above this reader's cap (ggml's 1 GiB caps).
    #[error("`{path}`: {what} has length {len}, above the limit of {cap}")]
    LengthCap {
        /// The file.
        path: PathBuf,
        /// The string or array (`name of tensor info 3`, `array `tokenizer.ggml.tokens``, ...).
        what: String,
        /// The declared length.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// A string or array length that runs past the end of the file.
    #[error(
        "`{path}`: {what} has length {len} ({bytes} bytes at least), but only {remaining} bytes are left in the file at byte {offset}"
    )]
    LengthBeyondFile {
        /// The file.
        path: PathBuf,
        /// The string or array.
        what: String,
        /// The declared length (bytes for a string, elements for an array).
        len: u64,
        /// The smallest number of bytes that length needs, saturated at `u64::MAX`.
        bytes: u64,
        /// Bytes left in the file.
        remaining: u64,
        /// Where the data would start.
        offset: u64,
    },
    /// A string that is not valid UTF-8.
    #[error("`{path}`: {what} is not valid UTF-8 (first invalid byte at {offset} within the string)")]
    Utf8 {
        /// The file.
        path: PathBuf,
        /// The string (`key of metadata entry 2`, `name of tensor info 0`, `value of key ...`).
        what: String,
        /// Offset of the first invalid byte within the string.
        offset: usize,
    },
    /// A value-type id that is not one of GGUF's 13, or is not allowed where it is.
    #[error("`{path}`: key `{key}`: {problem}")]
    ValueType {
        /// The file.
        path: PathBuf,
        /// The key whose value it is.
        key: String,
        /// What is wrong (`value type 13 is not a GGUF value type`, `arrays of arrays are not supported`).
        problem: String,
    },
    /// A metadata rule was broken (duplicate key, wrong type, bad alignment ...).
    #[error("`{path}`: {source}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The rule.
        source: MetadataError,
    },
    /// A tensor-info rule was broken (name, rank, shape, type, offset).
    #[error("`{path}`: tensor `{tensor}`: {source}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name (possibly cut for display), or `#i` when the name itself is unusable.
        tensor: String,
        /// The rule.
        source: TensorError,
    },
    /// A tensor's data runs past the end of the file.
    #[error("`{path}`: file is truncated: tensor `{tensor}` occupies bytes {start}..{end} but the file has {file_len}")]
    TensorBeyondFile {
        /// The file.
        path: PathBuf,
        /// The first tensor that does not fit.
        tensor: String,
        /// Absolute offset of its first byte.
        start: u64,
        /// Absolute offset one past its last byte (saturated at `u64::MAX`).
        end: u64,
        /// The file's length.
        file_len: u64,
    },
    /// [`GgufFile::read`](crate::GgufFile::read) was given a tensor that is not
    /// one of this file's.
    #[error("`{path}`: tensor `{tensor}` is not described by this file's header")]
    ForeignTensor {
        /// The file.
        path: PathBuf,
        /// The tensor asked for.
        tensor: String,
    },

    // === writing ===
    /// The output failed.
    #[error("writing GGUF: {0}")]
    Write(#[source] io::Error),
    /// The metadata handed to the writer breaks a rule.
    #[error("GGUF metadata: {0}")]
    WriterMetadata(#[source] MetadataError),
    /// A tensor handed to the writer breaks a rule.
    #[error("GGUF tensor `{tensor}`: {source}")]
    WriterTensor {
        /// The tensor.
        tensor: String,
        /// The rule.
        source: TensorError,
    },
    /// Tensor data arrived out of the declared order.
    #[error("internal error: GGUF writer expected {expected} next, got tensor `{got}`")]
    WrongTensor {
        /// What was expected (`tensor `x``, `no more tensors`, `the rest of tensor `x``).
        expected: String,
        /// The tensor offered.
        got: String,
    },
    /// A tensor was given a different number of bytes than its type and shape need.
    #[error("internal error: GGUF tensor `{tensor}` was given {actual} bytes but needs {expected}")]
    TensorBytes {
        /// The tensor.
        tensor: String,
        /// Bytes needed.
        expected: u64,
        /// Bytes given (so far).
        actual: u64,
    },
    /// [`GgufWriter::finish`](crate::GgufWriter::finish) was called before every tensor was written.
    #[error("internal error: GGUF writer finished after {written} of {total} tensors; `{next}` and later were never written")]
    Unfinished {
        /// Tensors written.
        written: usize,
        /// Tensors declared.
        total: usize,
        /// The first missing tensor.
        next: String,
    },
    /// A previous write failed, so the output is incomplete.
    #[error("internal error: GGUF writer used after an earlier error")]
    Poisoned,
}

/// A rule about metadata keys and values, independent of any file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// A required key is absent.
    #[error("key `{key}` is missing")]
    Missing {
        /// The key.
        key: String,
    },
    /// A key holds a value of another type than the one asked for.
    #[error("key `{key}` is {found}, expected {expected}")]
    Type {
        /// The key.
        key: String,
        /// The type asked for (`UINT32`, `array of FLOAT32`, ...).
        expected: String,
        /// The type found.
        found: String,
    },
    /// The same key appears twice (ggml: "duplicate key").
    #[error("key `{key}` appears more than once")]
    Duplicate {
        /// The key.
        key: String,
    },
    /// A key of zero bytes (ggml rejects it; an assert compiled out under NDEBUG once let it through).
    #[error("metadata entry {index} has an empty key")]
    EmptyKey {
        /// Position of the entry in the file or list.
        index: usize,
    },
    /// A key longer than the spec's 65535 bytes.
    #[error("metadata entry {index} has a key of {len} bytes, above the limit of {cap}")]
    KeyTooLong {
        /// Position of the entry.
        index: usize,
        /// The key's length.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// `general.alignment` is unusable.
    #[error("`general.alignment` is {value}: {problem}")]
    Alignment {
        /// The value (or its type) as found.
        value: String,
        /// Why it is refused.
        problem: &'static str,
    },
    /// A string or array above the reader's caps, refused by the writer.
    #[error("key `{key}`: {what} of length {len} is above the limit of {cap}")]
    ValueTooLong {
        /// The key.
        key: String,
        /// `string`, `array` or `array element`.
        what: String,
        /// The length.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// A boolean stored as a byte other than 0 or 1.
    #[error("key `{key}`: boolean byte {byte} is neither 0 nor 1")]
    Bool {
        /// The key.
        key: String,
        /// The byte found.
        byte: u8,
    },
}

/// A rule about one tensor's name, shape, type or placement, independent of any file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// A name of zero bytes.
    #[error("the name is empty")]
    EmptyName,
    /// A name of 64 bytes or more (ggml's `GGML_MAX_NAME` is 64 including the NUL).
    #[error("the name is {len} bytes; ggml allows at most {max}")]
    NameTooLong {
        /// The name's length in bytes.
        len: u64,
        /// The most allowed.
        max: u64,
    },
    /// The same name appears twice.
    #[error("the name appears more than once")]
    Duplicate,
    /// `n_dims` outside 1..=4.
    #[error("n_dims is {n_dims}; ggml allows 1 to 4")]
    Rank {
        /// The declared number of dimensions.
        n_dims: u64,
    },
    /// A dimension of 0 (zero-element tensors are refused, see the crate docs).
    #[error("ne[{dim}] is 0 (shape {shape}); zero-element tensors are not allowed")]
    ZeroDim {
        /// Which dimension.
        dim: usize,
        /// The shape, ggml order.
        shape: String,
    },
    /// A dimension that is negative as ggml's `int64_t`.
    #[error("ne[{dim}] is {value}, above {max} (ggml stores dimensions as int64)")]
    DimTooLarge {
        /// Which dimension.
        dim: usize,
        /// Its value.
        value: u64,
        /// `i64::MAX`.
        max: u64,
    },
    /// The element count does not fit in an `int64`.
    #[error("shape {shape} has more than {max} elements (ggml counts elements in int64)")]
    ElementOverflow {
        /// The shape, ggml order.
        shape: String,
        /// `i64::MAX`.
        max: u64,
    },
    /// A `ggml_type` id this tool does not know.
    #[error("type id {id} is {note}")]
    UnknownType {
        /// The id.
        id: u32,
        /// What ggml calls it, or that it is not a ggml type.
        note: String,
    },
    /// `ne[0]` is not a whole number of blocks.
    #[error("row length ne[0] = {ne0} is not a multiple of the {ty} block size {block}")]
    BlockSize {
        /// The tensor type.
        ty: GgmlType,
        /// The row length.
        ne0: u64,
        /// The type's block size.
        block: u64,
    },
    /// The byte size does not fit in an `int64`.
    #[error("{ty} tensor of shape {shape} needs more than {max} bytes")]
    ByteOverflow {
        /// The tensor type.
        ty: GgmlType,
        /// The shape, ggml order.
        shape: String,
        /// `i64::MAX`.
        max: u64,
    },
    /// The data offset is not where ggml requires it: exactly after the
    /// previous tensor's data, padded to the alignment.
    #[error("data offset is {offset}, expected {expected}: {problem}")]
    Offset {
        /// The declared offset, relative to the data section.
        offset: u64,
        /// The running padded size of the tensors before it.
        expected: u64,
        /// `overlaps the previous tensor or is out of order` or `leaves a gap after the previous tensor`.
        problem: &'static str,
    },
    /// The running data size overflows (the `GGML_PAD` wrap class).
    #[error("the data section size overflows when this tensor's {nbytes} bytes are added at offset {offset}")]
    DataOverflow {
        /// Where this tensor starts, relative to the data section.
        offset: u64,
        /// Its byte size.
        nbytes: u64,
    },
}
