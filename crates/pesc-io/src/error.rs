//! The error type of this crate: one variant per broken rule, each naming the
//! file and, where there is one, the tensor and field.

use std::io;
use std::path::PathBuf;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can be wrong with a checkpoint file or folder, or with
/// writing one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === I/O ===
    /// An operating-system error on a path.
    #[error("`{path}`: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file ended before a tensor's bytes could be read.
    #[error("`{path}`: unexpected end of file reading tensor `{tensor}` (the file changed or was truncated after it was validated)")]
    UnexpectedEof {
        /// The file.
        path: PathBuf,
        /// The tensor being read.
        tensor: String,
    },
    /// A read past the end of a tensor's data (a caller's row range).
    #[error("`{path}`: tensor `{tensor}`: bytes {start}..+{len} lie outside its {nbytes} bytes")]
    Range {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// First byte asked for.
        start: u64,
        /// Bytes asked for.
        len: u64,
        /// The tensor's size.
        nbytes: u64,
    },
    /// The run was interrupted (Ctrl-C or SIGTERM).
    #[error("interrupted")]
    Interrupted,

    // === Not a safetensors file ===
    /// The file is a Git LFS pointer, not the weights.
    #[error("`{path}` is a Git LFS pointer (oid {oid}, {size} bytes), not the file itself; fetch it with `git lfs pull` or download the real file")]
    LfsPointer {
        /// The pointer file.
        path: PathBuf,
        /// The `oid` line's value.
        oid: String,
        /// The `size` line's value.
        size: String,
    },
    /// The file is a pickle (or a zip holding one): never opened.
    #[error("`{path}` is a PyTorch pickle ({kind}), which can run arbitrary code when loaded; refusing to open it")]
    Pickle {
        /// The file.
        path: PathBuf,
        /// What it looks like (`zip archive`, `pickle protocol 2` ...).
        kind: String,
    },

    // === safetensors framing ===
    /// Fewer than the 8 bytes of the header length.
    #[error("`{path}`: file is {len} bytes, too small for a safetensors header (8-byte length prefix)")]
    HeaderTooSmall {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The declared header length exceeds this tool's cap.
    #[error("`{path}`: header length {len} exceeds the limit of {cap} bytes")]
    HeaderTooLarge {
        /// The file.
        path: PathBuf,
        /// The declared length.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// The declared header length runs past the end of the file.
    #[error("`{path}`: header length {len} runs past the end of the file ({file_len} bytes)")]
    HeaderBeyondFile {
        /// The file.
        path: PathBuf,
        /// The declared length.
        len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// The header is not valid UTF-8.
    #[error("`{path}`: header is not valid UTF-8 (byte {offset} of the header)")]
    HeaderNotUtf8 {
        /// The file.
        path: PathBuf,
        /// Offset of the first invalid byte within the header.
        offset: usize,
    },
    /// A JSON file or header failed to parse (syntax or duplicate key).
    #[error("`{path}`: invalid JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's message, with line and column.
        message: String,
    },
    /// A JSON document has the wrong structure.
    #[error("`{path}`: {what}")]
    Structure {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        what: String,
    },
    /// A field of a tensor entry is missing or malformed.
    #[error("`{path}`: tensor `{tensor}`: field `{field}` {problem}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The field (`dtype`, `shape`, `data_offsets`, or an unknown one).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A tensor name is empty, too long or holds a NUL byte.
    #[error("`{path}`: invalid tensor name {name:?}: {problem}")]
    TensorName {
        /// The file.
        path: PathBuf,
        /// The name (possibly truncated for display).
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A tensor's element or byte count overflows.
    #[error("`{path}`: tensor `{tensor}`: shape {shape} of {dtype} overflows a 64-bit byte count")]
    Overflow {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shape as written.
        shape: String,
        /// The dtype.
        dtype: pesc_tensor::DType,
    },
    /// `data_offsets` does not span exactly dtype × shape bytes.
    #[error("`{path}`: tensor `{tensor}`: data_offsets span {actual} bytes but {dtype} {shape} needs {expected}")]
    TensorSize {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype.
        dtype: pesc_tensor::DType,
        /// The shape.
        shape: String,
        /// Bytes the dtype and shape need.
        expected: u64,
        /// Bytes the offsets span.
        actual: u64,
    },
    /// Tensor data regions overlap, leave a gap, or are not contiguous.
    #[error("`{path}`: tensor `{tensor}`: data starts at offset {start}, expected {expected} ({problem})")]
    Offset {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its declared start.
        start: u64,
        /// Where the previous tensor ended.
        expected: u64,
        /// `overlaps the previous tensor` or `leaves a gap after the previous tensor`.
        problem: &'static str,
    },
    /// The data section is shorter than the header declares.
    #[error("`{path}`: file is truncated: tensor `{tensor}` runs past its end (the header declares {expected} bytes in all, the file has {actual})")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The first tensor that does not fit.
        tensor: String,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// Bytes follow the last tensor (a polyglot or corrupted file).
    #[error("`{path}`: {extra} trailing bytes after the last tensor (the header declares {expected} bytes in all, the file has {actual})")]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes in the file.
        actual: u64,
        /// The difference.
        extra: u64,
    },
    /// A cap on counts (tensors, dimensions, metadata) was exceeded.
    #[error("`{path}`: {what} is {value}, above the limit of {cap}")]
    Limit {
        /// The file.
        path: PathBuf,
        /// What was counted.
        what: String,
        /// The value found.
        value: u64,
        /// The cap.
        cap: u64,
    },

    // === folders and shard indexes ===
    /// A folder holds no loadable weights.
    #[error("`{path}`: {problem}")]
    NoWeights {
        /// The folder.
        path: PathBuf,
        /// What was found instead, with a hint.
        problem: String,
    },
    /// A shard file name in an index is not a plain file name inside the folder.
    #[error("`{path}`: shard name {shard:?} of tensor `{tensor}` is not allowed: {problem}")]
    ShardName {
        /// The index file.
        path: PathBuf,
        /// The tensor whose entry names it.
        tensor: String,
        /// The name.
        shard: String,
        /// Why it is refused.
        problem: &'static str,
    },
    /// A file of the checkpoint is a symlink leading outside the folder.
    #[error("`{path}` is a symlink to `{target}`, outside the model folder; copy the files in (`cp -L`) to use them")]
    SymlinkEscapes {
        /// The link.
        path: PathBuf,
        /// Where it resolves.
        target: PathBuf,
    },
    /// The index and its shards disagree.
    #[error("`{path}`: {problem}")]
    IndexMismatch {
        /// The index file.
        path: PathBuf,
        /// Which tensor and shard, and how.
        problem: String,
    },

    // === writing ===
    /// The output path exists already.
    #[error("`{path}` already exists; choose another output path or pass --force to replace it")]
    OutputExists {
        /// The output path.
        path: PathBuf,
    },
    /// The output path is unusable (inside an input, no parent, ...).
    #[error("`{path}`: {problem}")]
    OutputPath {
        /// The output path.
        path: PathBuf,
        /// Why it cannot be used.
        problem: String,
    },
    /// The thread hashing an output (or the inputs) stopped before the end: the
    /// manifest cannot be written.
    #[error("`{path}`: the SHA-256 of the output could not be computed (the hashing thread stopped)")]
    HashingStopped {
        /// The file or folder being hashed.
        path: PathBuf,
    },
    /// Values cannot be stored as a non-float type.
    #[error("values cannot be stored as {dtype}, which is not a float type")]
    NotAFloatType {
        /// The dtype.
        dtype: pesc_tensor::DType,
    },
    /// A producer wrote a different number of bytes than the tensor needs.
    #[error("internal error: tensor `{tensor}` was given {actual} bytes but needs {expected}")]
    ProducedSize {
        /// The tensor.
        tensor: String,
        /// Bytes needed.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Attaches a path to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
