//! A GGUF file read as a model: the Hugging Face config its metadata implies
//! and, for every Hugging Face tensor name, where its values lie in the file.
//!
//! The layouts of [`crate::names`] are understood: llama.cpp's `llama`
//! (dense or Mixtral) and `qwen2`, and this project's `pesc`. Every tensor's shape is
//! checked against the config before anything is read; q and k rows are
//! returned in Hugging Face order (llama.cpp's rotary permutation undone).

use crate::hparams::Hparams;
use crate::names::{block_of, tensor_map};
use crate::rotary::{permute_rows, splits_into_pairs, Direction};
use crate::vocab::GgufVocab;
use crate::LlamaCppError;
use pesc_gguf::{GgmlType, GgufFile, TensorInfo};
use pesc_hf::ModelConfig;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// GGUF architectures this tool reads.
pub const GGUF_ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "pesc"];

/// Where a Hugging Face tensor lies in the file.
#[derive(Debug, Clone)]
struct Source {
    /// The GGUF tensor.
    tensor: String,
    /// For stacked experts: which one.
    expert: Option<u64>,
    /// For q and k: the head count of the rotary permutation to undo.
    permute_heads: Option<u64>,
    /// The Hugging Face shape.
    shape: Vec<u64>,
}

/// A tensor's stored bytes in Hugging Face row order.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// The ggml type.
    pub ty: GgmlType,
    /// Hugging Face shape (rows first).
    pub shape: Vec<u64>,
    /// The encoded rows, `shape[0]` of them.
    pub bytes: Vec<u8>,
}

/// A GGUF file whose metadata and tensors agree.
pub struct GgufModel {
    /// The file.
    pub file: GgufFile,
    /// `general.architecture`.
    pub arch: String,
    /// The config the metadata implies, validated.
    pub config: ModelConfig,
    /// That config as `config.json` would hold it.
    pub config_json: Map<String, Value>,
    /// The vocabulary, unless the file has none.
    pub vocab: Option<GgufVocab>,
    sources: BTreeMap<String, Source>,
}

impl GgufModel {
    /// Opens `path` and checks the architecture, metadata, tokenizer and
    /// every tensor's name and shape against the config the metadata implies.
    pub fn open(path: &Path) -> Result<Self, LlamaCppError> {
        let file = GgufFile::open(path)?;
        let arch = file.get_str("general.architecture")?.to_owned();
        if !GGUF_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(LlamaCppError::UnsupportedArchitecture { path: path.into(), arch });
        }
        let embed = file.tensor("token_embd.weight").ok_or_else(|| LlamaCppError::MissingTensor {
            path: path.into(),
            arch: arch.clone(),
            tensor: "token_embd.weight".into(),
        })?;
        let embed_rows = embed.ne.get(1).copied().unwrap_or(0);
        let tokens = if file.metadata().contains("tokenizer.ggml.tokens") {
            let list = file.metadata().get_str_array("tokenizer.ggml.tokens").map_err(|e| file.metadata_error(e))?;
            Some(list.len() as u64)
        } else {
            None
        };
        let hp = Hparams::read(&file, &arch, tokens, embed_rows)?;
        let vocab = GgufVocab::read(&file, hp.context)?;
        let ids = [vocab.as_ref().and_then(|v| v.bos), vocab.as_ref().and_then(|v| v.eos), vocab.as_ref().and_then(|v| v.pad)];
        let config_json = hp.config_json(file.tensor("output.weight").is_none(), ids);
        let bytes = serde_json::to_vec(&config_json).unwrap_or_default();
        let config = ModelConfig::parse(&path.with_file_name("config.json"), &bytes)
            .map_err(|e| LlamaCppError::Metadata { path: path.into(), source: Box::new(e) })?;
        let expected: BTreeMap<String, Vec<u64>> = config.expected_tensors()?.into_iter().collect();
        let mapped: BTreeMap<String, crate::names::Mapped> = tensor_map(&config).into_iter().map(|m| (m.gguf.clone(), m)).collect();
        let unexpected =
            |t: &TensorInfo, reason: String| LlamaCppError::UnexpectedTensor { path: path.into(), tensor: t.name.clone(), reason };
        let mut sources = BTreeMap::new();
        for t in file.tensors() {
            let Some(m) = mapped.get(&t.name) else {
                return Err(match block_of(&t.name) {
                    Some(l) if l >= hp.layers => {
                        unexpected(t, format!("does not belong to a model with {} layers (`{arch}.block_count`)", hp.layers))
                    }
                    _ => unexpected(t, format!("is not part of a {} `{arch}` model", hp.kind())),
                });
            };
            let mut shape = t.shape();
            if m.stacked {
                if t.ne.len() != 3 || t.ne[2] != hp.experts {
                    return Err(LlamaCppError::TensorShape {
                        path: path.into(),
                        tensor: t.name.clone(),
                        shape: pesc_tensor::shape_str(&shape),
                        expected: format!("stacks `{arch}.expert_count` = {} experts", hp.experts),
                    });
                }
                shape.remove(0);
            }
            for (j, name) in (0u64..).zip(&m.hf) {
                let want = expected.get(name).ok_or_else(|| unexpected(t, format!("is not part of a {} `{arch}` model", hp.kind())))?;
                if *want != shape {
                    return Err(LlamaCppError::TensorShape {
                        path: path.into(),
                        tensor: t.name.clone(),
                        shape: pesc_tensor::shape_str(&shape),
                        expected: format!("the `{arch}.*` metadata ({}) implies {}", config.sizes(), pesc_tensor::shape_str(want)),
                    });
                }
                if let Some(h) = m.permute_heads.filter(|&h| !splits_into_pairs(shape[0], h)) {
                    return Err(LlamaCppError::RotaryRows { path: path.into(), tensor: t.name.clone(), rows: shape[0], heads: h });
                }
                let expert = m.stacked.then_some(j);
                sources
                    .insert(name.clone(), Source { tensor: t.name.clone(), expert, permute_heads: m.permute_heads, shape: shape.clone() });
            }
        }
        if let Some(missing) = expected.keys().find(|n| !sources.contains_key(*n)) {
            let gguf = mapped.values().find(|m| m.hf.contains(missing)).map_or_else(|| missing.clone(), |m| m.gguf.clone());
            return Err(LlamaCppError::MissingTensor { path: path.into(), arch, tensor: gguf });
        }
        Ok(GgufModel { file, arch, config, config_json, vocab, sources })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Every Hugging Face tensor with its shape, in name order.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &[u64])> {
        self.sources.iter().map(|(n, s)| (n.as_str(), s.shape.as_slice()))
    }

    /// The GGUF tensor holding `name` and its type.
    #[must_use]
    pub fn stored(&self, name: &str) -> Option<&TensorInfo> {
        self.sources.get(name).and_then(|s| self.file.tensor(&s.tensor))
    }

    /// `tokenizer.json` and `tokenizer_config.json` rebuilt from the metadata.
    pub fn tokenizer_files(&self) -> Result<Option<(Value, Value)>, LlamaCppError> {
        self.vocab.as_ref().map(|v| v.to_hf(self.path())).transpose()
    }

    fn source(&self, name: &str) -> Result<(&Source, &TensorInfo), LlamaCppError> {
        let not_in_file = || LlamaCppError::NotInFile { path: self.path().into(), tensor: name.into() };
        let s = self.sources.get(name).ok_or_else(not_in_file)?;
        let t = self.file.tensor(&s.tensor).ok_or_else(not_in_file)?;
        Ok((s, t))
    }

    /// The stored bytes of `name` (one expert's slice of a stacked tensor),
    /// rows in Hugging Face order.
    pub fn read_raw(&self, name: &str) -> Result<RawTensor, LlamaCppError> {
        let (s, t) = self.source(name)?;
        let rows = s.shape[0];
        // Rows are whole blocks: the reader checked ne[0] against the type's block size.
        let row_bytes = t.ty.row_bytes(t.ne[0]).unwrap_or(0);
        let len = rows * s.shape[1..].iter().product::<u64>() / t.ne[0] * row_bytes;
        let bytes = match s.expert {
            Some(j) => self.file.read_part(t, j * len, len),
            None => self.file.read(t),
        }?;
        let bytes = match s.permute_heads {
            Some(heads) => {
                permute_rows(&bytes, usize::try_from(row_bytes).unwrap_or(0), usize::try_from(heads).unwrap_or(1), Direction::ToHf)
            }
            None => bytes,
        };
        Ok(RawTensor { ty: t.ty, shape: s.shape.clone(), bytes })
    }

    /// Rows `rows` of `name` (one not permuted nor stacked: embeddings, the
    /// LM head) as stored.
    pub fn read_rows_raw(&self, name: &str, rows: std::ops::Range<u64>) -> Result<RawTensor, LlamaCppError> {
        let (s, t) = self.source(name)?;
        if s.permute_heads.is_some() || s.expert.is_some() || rows.end > s.shape[0] || rows.start > rows.end {
            return Err(LlamaCppError::NotInFile { path: self.path().into(), tensor: format!("{name}[{}..{}]", rows.start, rows.end) });
        }
        let row_bytes = t.ty.row_bytes(t.ne[0]).unwrap_or(0) * s.shape[1..].iter().product::<u64>() / t.ne[0];
        let bytes = self.file.read_part(t, rows.start * row_bytes, (rows.end - rows.start) * row_bytes)?;
        let mut shape = s.shape.clone();
        shape[0] = rows.end - rows.start;
        Ok(RawTensor { ty: t.ty, shape, bytes })
    }

    /// Rows `rows` of `name` dequantized exactly to f32.
    pub fn read_rows_f32(&self, name: &str, rows: std::ops::Range<u64>) -> Result<Vec<f32>, LlamaCppError> {
        let raw = self.read_rows_raw(name, rows)?;
        let n = usize::try_from(raw.shape.iter().product::<u64>()).unwrap_or(0);
        pesc_quant::dequantize(raw.ty, &raw.bytes, n).map_err(|source| LlamaCppError::Decode {
            path: self.path().into(),
            tensor: name.into(),
            source,
        })
    }

    /// The values of `name`, dequantized exactly to f32, in Hugging Face
    /// layout.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, LlamaCppError> {
        let raw = self.read_raw(name)?;
        let n = usize::try_from(raw.shape.iter().product::<u64>()).unwrap_or(0);
        pesc_quant::dequantize(raw.ty, &raw.bytes, n).map_err(|source| LlamaCppError::Decode {
            path: self.path().into(),
            tensor: name.into(),
            source,
        })
    }

    /// `llama`, `PESC llama`, `Mixtral`, with the file's block types: for messages.
    #[must_use]
    pub fn kind(&self) -> String {
        let kind = match self.config.moe {
            pesc_hf::Moe::Dense => "llama",
            pesc_hf::Moe::Pesc(_) => "PESC llama",
            pesc_hf::Moe::Mixtral { .. } => "Mixtral",
        };
        let mut types: Vec<&str> = self.file.tensors().iter().filter(|t| t.ne.len() >= 2).map(|t| t.ty.name()).collect();
        types.sort_unstable();
        types.dedup();
        format!("{kind} (GGUF {})", types.join("/"))
    }
}

/// Whether `path` names a GGUF file (an existing file ending in `.gguf`).
#[must_use]
pub fn is_gguf_path(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
