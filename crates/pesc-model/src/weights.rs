//! What the runner runs: a model folder (safetensors) or a GGUF file.

use crate::{ModelError, Result};
use pesc_hf::{Model, ModelConfig, TextModel};
use pesc_llamacpp::{GgufModel, RawTensor};
use pesc_quant::GgmlType;
use std::path::Path;

/// An NF4 folder's quantized weight as stored; `pesc_hf::dequantize_as(&codes, dtype)` gives
/// what [`Weights::read_f32`] reads.
pub struct StoredNf4 {
    /// The codes and block scales.
    pub codes: pesc_quant::nf4::Nf4Tensor,
    /// The weight's original dtype.
    pub dtype: pesc_tensor::DType,
    /// The original shape.
    pub shape: Vec<usize>,
}

/// A stored shape as `usize`s (an impossible size saturates, and later checks refuse it).
fn usize_shape(s: &[u64]) -> Vec<usize> {
    s.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect()
}

/// A model opened for running.
pub enum Weights {
    /// A Hugging Face folder.
    Folder(Box<Model>),
    /// A GGUF file; its block-quantized weights are multiplied as stored.
    Gguf(Box<GgufModel>),
}

impl Weights {
    /// Opens `path`: a `.gguf` file, else a model folder.
    pub fn open(path: &Path) -> Result<Self> {
        if pesc_llamacpp::is_gguf_path(path) {
            Ok(Weights::Gguf(Box::new(GgufModel::open(path)?)))
        } else {
            Ok(Weights::Folder(Box::new(Model::open(path)?)))
        }
    }

    /// The model's config (for a GGUF file, the one its metadata implies).
    #[must_use]
    pub fn config(&self) -> &ModelConfig {
        match self {
            Weights::Folder(m) => &m.config,
            Weights::Gguf(g) => &g.config,
        }
    }

    /// `llama`, `PESC llama`, `Mixtral`; GGUF files add their file type.
    #[must_use]
    pub fn kind(&self) -> String {
        match self {
            Weights::Folder(m) => m.kind(),
            Weights::Gguf(g) => g.kind(),
        }
    }

    /// The tokenizer and chat template: the folder's files, or those the
    /// GGUF metadata holds.
    pub fn text(&self) -> Result<TextModel> {
        match self {
            Weights::Folder(m) => Ok(TextModel::load(&m.dir)?),
            Weights::Gguf(g) => {
                let files = g.tokenizer_files()?;
                let Some((tokenizer, config)) = files else {
                    return Err(ModelError::NoVocabulary { path: g.path().into() });
                };
                let eos = g.config_json.get("eos_token_id").cloned().unwrap_or_default();
                Ok(TextModel::from_json(g.path(), &tokenizer, &config, Some(&serde_json::json!({ "eos_token_id": eos })))?)
            }
        }
    }

    /// Whether the model has a tokenizer.
    #[must_use]
    pub fn has_tokenizer(&self) -> bool {
        match self {
            Weights::Folder(m) => m.dir.join("tokenizer.json").is_file(),
            Weights::Gguf(g) => g.vocab.is_some(),
        }
    }

    /// Whether the model holds `name` (canonical naming).
    #[must_use]
    pub fn has(&self, name: &str) -> bool {
        match self {
            Weights::Folder(m) => m.weights.get(&m.stored_name(name)).is_some(),
            Weights::Gguf(g) => g.tensors().any(|(n, _)| n == name),
        }
    }

    /// The stored NF4 weight `name` of an NF4 folder; `None` for any other tensor.
    pub fn read_nf4(&self, name: &str) -> Result<Option<StoredNf4>> {
        let Weights::Folder(m) = self else { return Ok(None) };
        let stored = m.stored_name(name);
        let Some(info) = m.nf4(&stored) else { return Ok(None) };
        Ok(Some(StoredNf4 { codes: m.read_nf4(&stored)?, dtype: info.dtype, shape: usize_shape(&info.shape) }))
    }

    /// The values of `name` as f32 and its shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        match self {
            Weights::Folder(m) => {
                let stored = m.stored_name(name);
                let shape = m.shape_of(&stored).ok_or_else(|| pesc_hf::HfError::MissingTensor {
                    path: m.dir.clone(),
                    tensor: stored.clone(),
                    shape: "(any)".into(),
                })?;
                // Float tensors converted, NF4 weights dequantized.
                Ok((m.read_f32(&stored)?, usize_shape(&shape)))
            }
            Weights::Gguf(g) => {
                let shape = g.tensors().find(|(n, _)| *n == name).map(|(_, s)| usize_shape(s)).unwrap_or_default();
                Ok((g.read_f32(name)?, shape))
            }
        }
    }

    /// For a GGUF weight stored in a block type: its bytes, to multiply
    /// without dequantizing. `None` for float types and folders.
    pub fn quantized(&self, name: &str) -> Result<Option<RawTensor>> {
        match self {
            Weights::Gguf(g) => match g.stored(name) {
                Some(t) if !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) => Ok(Some(g.read_raw(name)?)),
                _ => Ok(None),
            },
            Weights::Folder(_) => Ok(None),
        }
    }
}
