//! What can be wrong when reading a GGUF file as a model or writing one.

use std::path::PathBuf;

/// Errors of the llama.cpp conventions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlamaCppError {
    // === files ===
    /// The GGUF container is malformed.
    #[error(transparent)]
    File(Box<pesc_gguf::GgufError>),
    /// From the Hugging Face side (a model folder, its config).
    #[error(transparent)]
    Hf(Box<pesc_hf::HfError>),
    /// Reading or writing files.
    #[error(transparent)]
    Io(Box<pesc_io::Error>),

    // === reading a GGUF file as a model ===
    /// `general.architecture` names an architecture this tool does not read.
    #[error("`{path}`: GGUF architecture `{arch}` is not supported (supported: llama, pesc)")]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// `general.architecture`.
        arch: String,
    },
    /// A metadata key is missing, mistyped or out of range.
    #[error("`{path}`: key `{key}` {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The metadata describes a model that fails `config.json`'s checks.
    #[error("`{path}`: the metadata describes an invalid model: {source}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The check that failed.
        source: Box<pesc_hf::HfError>,
    },
    /// A `tokenizer.ggml.*` value that cannot be turned into a tokenizer.
    #[error("`{path}`: {key} {problem}")]
    Vocabulary {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A tensor the metadata does not account for.
    #[error("`{path}`: tensor `{tensor}` {reason}")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Why it does not belong (`is not part of a Mixtral `llama` model` ...).
        reason: String,
    },
    /// A tensor the metadata implies is absent.
    #[error("`{path}`: the `{arch}.*` metadata implies tensor `{tensor}`, which the file lacks")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The architecture.
        arch: String,
        /// The tensor.
        tensor: String,
    },
    /// A tensor's shape contradicts the metadata.
    #[error("`{path}`: tensor `{tensor}` has shape {shape} but {expected}")]
    TensorShape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its shape (Hugging Face order).
        shape: String,
        /// What the metadata implies.
        expected: String,
    },
    /// A q or k tensor whose rows do not split into heads of rotary pairs.
    #[error("`{path}`: tensor `{tensor}`: {rows} rows do not split into {heads} heads of rotary pairs")]
    RotaryRows {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its rows.
        rows: u64,
        /// The head count.
        heads: u64,
    },
    /// A tensor this model does not hold was asked for.
    #[error("`{path}`: tensor `{tensor}` is not in the file")]
    NotInFile {
        /// The file.
        path: PathBuf,
        /// The tensor (Hugging Face name).
        tensor: String,
    },
    /// A tensor's bytes could not be decoded.
    #[error("`{path}`: tensor `{tensor}`: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Why.
        source: pesc_quant::QuantError,
    },

    // === writing a GGUF file ===
    /// The model uses a feature the GGUF export does not write.
    #[error("`{path}`: {reason}")]
    NotExportable {
        /// The model folder.
        path: PathBuf,
        /// What, and what to do.
        reason: String,
    },
    /// The metadata being written is inconsistent (a key given twice ...).
    #[error("metadata of the export: {0}")]
    MetadataEntry(pesc_gguf::MetadataError),
    /// A config value does not fit the GGUF field it is written to.
    #[error("`{path}`: `{key}` = {value} does not fit the GGUF UINT32 field")]
    U32Field {
        /// The model folder.
        path: PathBuf,
        /// The config key.
        key: &'static str,
        /// The value.
        value: u64,
    },
    /// A tokenizer file that cannot be written as `tokenizer.ggml.*`.
    #[error("`{path}`: {problem}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A tensor could not be encoded.
    #[error("tensor `{tensor}`: {source}")]
    Encode {
        /// The tensor.
        tensor: String,
        /// Why.
        source: pesc_quant::QuantError,
    },
}

impl From<pesc_gguf::GgufError> for LlamaCppError {
    fn from(e: pesc_gguf::GgufError) -> Self {
        LlamaCppError::File(Box::new(e))
    }
}

impl From<pesc_hf::HfError> for LlamaCppError {
    fn from(e: pesc_hf::HfError) -> Self {
        LlamaCppError::Hf(Box::new(e))
    }
}

impl From<pesc_io::Error> for LlamaCppError {
    fn from(e: pesc_io::Error) -> Self {
        LlamaCppError::Io(Box::new(e))
    }
}
