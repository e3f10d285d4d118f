//! What the runner runs: a model folder (safetensors) or a GGUF file.

use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use pesc_hf::{Model, ModelConfig, TextModel};
use pesc_llamacpp::{GgufModel, RawTensor};
use pesc_quant::GgmlType;
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;

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

/// Where a model's weights are stored.
pub enum Source {
    /// A Hugging Face folder (NF4 folders included).
    Folder(Box<Model>),
    /// A GGUF file; its block-quantized weights can be multiplied as stored.
    Gguf(Box<GgufModel>),
}

/// A model opened for computing: its config validated and every tensor's
/// name and shape checked; values are read on demand. Cheap to clone (the
/// open files are shared), so a model can read its layers as it needs them.
#[derive(Clone)]
pub struct Weights(Arc<Source>);

impl Weights {
    /// Opens `path`: a `.gguf` file, else a model folder.
    pub fn open(path: &Path) -> Result<Self> {
        let source = if pesc_llamacpp::is_gguf_path(path) {
            Source::Gguf(Box::new(GgufModel::open(path)?))
        } else {
            Source::Folder(Box::new(Model::open(path)?))
        };
        Ok(Weights(Arc::new(source)))
    }

    /// Where the weights are stored.
    #[must_use]
    pub fn source(&self) -> &Source {
        &self.0
    }

    /// The model's config (for a GGUF file, the one its metadata implies).
    #[must_use]
    pub fn config(&self) -> &ModelConfig {
        match self.source() {
            Source::Folder(m) => &m.config,
            Source::Gguf(g) => &g.config,
        }
    }

    /// `llama`, `PESC llama`, `Mixtral`; GGUF files add their file type.
    #[must_use]
    pub fn kind(&self) -> String {
        match self.source() {
            Source::Folder(m) => m.kind(),
            Source::Gguf(g) => g.kind(),
        }
    }

    /// The tokenizer and chat template: the folder's files, or those the
    /// GGUF metadata holds.
    pub fn text(&self) -> Result<TextModel> {
        match self.source() {
            Source::Folder(m) => Ok(TextModel::load(&m.dir)?),
            Source::Gguf(g) => {
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
        match self.source() {
            Source::Folder(m) => m.dir.join("tokenizer.json").is_file() || m.dir.join("tokenizer.model").is_file(),
            Source::Gguf(g) => g.vocab.is_some(),
        }
    }

    /// Whether the model holds `name` (canonical naming).
    #[must_use]
    pub fn has(&self, name: &str) -> bool {
        match self.source() {
            Source::Folder(m) => m.weights.get(&m.stored_name(name)).is_some(),
            Source::Gguf(g) => g.tensors().any(|(n, _)| n == name),
        }
    }

    /// The stored NF4 weight `name` of an NF4 folder; `None` for any other tensor.
    pub fn read_nf4(&self, name: &str) -> Result<Option<StoredNf4>> {
        let Source::Folder(m) = self.source() else { return Ok(None) };
        let stored = m.stored_name(name);
        let Some(info) = m.nf4(&stored) else { return Ok(None) };
        Ok(Some(StoredNf4 { codes: m.read_nf4(&stored)?, dtype: info.dtype, shape: usize_shape(&info.shape) }))
    }

    /// The values of `name` as f32 and its shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        match self.source() {
            Source::Folder(m) => {
                let stored = m.stored_name(name);
                let shape = m.shape_of(&stored).ok_or_else(|| pesc_hf::HfError::MissingTensor {
                    path: m.dir.clone(),
                    tensor: stored.clone(),
                    shape: "(any)".into(),
                })?;
                // Float tensors converted, NF4 weights dequantized.
                Ok((m.read_f32(&stored)?, usize_shape(&shape)))
            }
            Source::Gguf(g) => {
                let shape = g.tensors().find(|(n, _)| *n == name).map(|(_, s)| usize_shape(s)).unwrap_or_default();
                Ok((g.read_f32(name)?, shape))
            }
        }
    }

    /// `name` as a tensor of `dtype` on `device`, the same values as
    /// [`Weights::read_f32`] converted to `dtype`. A folder's float tensor is
    /// read straight into the tensor's memory when it is stored as `dtype`,
    /// and converted on all cores when it is 16-bit and `dtype` is f32.
    pub fn read_tensor(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        if let Source::Folder(m) = self.source() {
            let stored = m.stored_name(name);
            if let (Some(info), None) = (m.weights.get(&stored), m.nf4(&stored)) {
                let shape = usize_shape(&info.shape);
                let n: usize = shape.iter().product();
                let read = |buf: &mut [u8]| m.weights.read_into(&stored, buf).map_err(ModelError::from);
                match (info.dtype, dtype) {
                    (pesc_tensor::DType::F32, DType::F32) => {
                        let mut v = vec![0f32; n];
                        read(bytemuck::cast_slice_mut(&mut v))?;
                        return Ok(Tensor::from_vec(v, shape, device)?);
                    }
                    (pesc_tensor::DType::BF16, DType::BF16) => {
                        let mut v = vec![half::bf16::ZERO; n];
                        read(bytemuck::cast_slice_mut(&mut v))?;
                        return Ok(Tensor::from_vec(v, shape, device)?);
                    }
                    (pesc_tensor::DType::F16, DType::F16) => {
                        let mut v = vec![half::f16::ZERO; n];
                        read(bytemuck::cast_slice_mut(&mut v))?;
                        return Ok(Tensor::from_vec(v, shape, device)?);
                    }
                    (from @ (pesc_tensor::DType::BF16 | pesc_tensor::DType::F16), DType::F32) => {
                        let mut raw = vec![0u8; n * 2];
                        read(&mut raw)?;
                        let mut v = vec![0f32; n];
                        // Chunks of whole elements; the values do not depend on the split.
                        v.par_chunks_mut(1 << 16).zip(raw.par_chunks(2 << 16)).for_each(|(out, bytes)| {
                            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                                let bits = u16::from_le_bytes([b[0], b[1]]);
                                *o = if from == pesc_tensor::DType::BF16 {
                                    half::bf16::from_bits(bits).to_f32()
                                } else {
                                    half::f16::from_bits(bits).to_f32()
                                };
                            }
                        });
                        return Ok(Tensor::from_vec(v, shape, device)?);
                    }
                    _ => {}
                }
            }
        }
        let (values, shape) = self.read_f32(name)?;
        Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
    }

    /// For a GGUF weight stored in a block type: its bytes, to multiply
    /// without dequantizing. `None` for float types and folders.
    pub fn quantized(&self, name: &str) -> Result<Option<RawTensor>> {
        match self.source() {
            Source::Gguf(g) => match g.stored(name) {
                Some(t) if !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) => Ok(Some(g.read_raw(name)?)),
                _ => Ok(None),
            },
            Source::Folder(_) => Ok(None),
        }
    }

    /// The shape of `name` (canonical naming), if the model holds it.
    #[must_use]
    pub fn shape_of(&self, name: &str) -> Option<Vec<u64>> {
        match self.source() {
            Source::Folder(m) => m.shape_of(&m.stored_name(name)),
            Source::Gguf(g) => g.tensors().find(|(n, _)| *n == name).map(|(_, s)| s.to_vec()),
        }
    }

    /// Bytes `name` takes in memory: as stored when it is a GGUF block type
    /// (multiplied as stored), else its elements in `dtype_size`-byte values.
    #[must_use]
    pub fn resident_bytes(&self, name: &str, dtype_size: u64) -> u64 {
        let numel = self.shape_of(name).and_then(|s| pesc_tensor::numel(&s)).unwrap_or(0);
        match self.source() {
            Source::Gguf(g) => match g.stored(name) {
                Some(t) if !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) => t.ty.nbytes(&[numel]).unwrap_or(u64::MAX),
                _ => numel.saturating_mul(dtype_size),
            },
            Source::Folder(_) => numel.saturating_mul(dtype_size),
        }
    }

    /// Bytes of `name` dequantized to f32 for a prefill when it is a GGUF block type; else 0.
    #[must_use]
    pub fn dequantized_bytes(&self, name: &str) -> u64 {
        match self.source() {
            Source::Gguf(g) if g.stored(name).is_some_and(|t| !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)) => {
                self.shape_of(name).and_then(|s| pesc_tensor::numel(&s)).unwrap_or(0).saturating_mul(4)
            }
            _ => 0,
        }
    }

    /// Rows `rows` (along the first dimension) of `name` as f32 values.
    pub fn read_rows_f32(&self, name: &str, rows: std::ops::Range<u64>) -> Result<Vec<f32>> {
        match self.source() {
            Source::Folder(m) => Ok(m.read_rows_f32(&m.stored_name(name), rows)?),
            Source::Gguf(g) => Ok(g.read_rows_f32(name, rows)?),
        }
    }

    /// Rows `rows` of a GGUF weight stored in a block type, as stored; `None`
    /// for float types and folders.
    pub fn quantized_rows(&self, name: &str, rows: std::ops::Range<u64>) -> Result<Option<RawTensor>> {
        match self.source() {
            Source::Gguf(g) => match g.stored(name) {
                Some(t) if !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) => Ok(Some(g.read_rows_raw(name, rows)?)),
                _ => Ok(None),
            },
            Source::Folder(_) => Ok(None),
        }
    }
}
