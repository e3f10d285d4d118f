//! A model folder: validated config plus weights checked against it.

use crate::config::{ModelConfig, Moe};
use crate::names::ExpertNaming;
use crate::nf4::{Nf4Config, Nf4Info, QUANT_STATE};
use crate::HfError;
use pesc_io::Checkpoint;
use pesc_tensor::shape_str;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A model folder whose config and weights agree.
#[derive(Debug)]
pub struct Model {
    /// The folder.
    pub dir: PathBuf,
    /// Its config.
    pub config: ModelConfig,
    /// Its weights.
    pub weights: Checkpoint,
    /// How PESC experts are named in the weights (PESC models only).
    pub naming: Option<ExpertNaming>,
    /// The bitsandbytes 4-bit `quantization_config` of an NF4 folder.
    pub quantization: Option<Nf4Config>,
    nf4: BTreeMap<String, Nf4Info>,
}

impl Model {
    /// Opens `dir` and checks every tensor against `config.json`.
    pub fn open(dir: &Path) -> Result<Self, HfError> {
        // Weights first: a folder of pickles gets the pickle explanation, not "no config.json".
        let weights = Checkpoint::open_dir(dir)?;
        let config = ModelConfig::load(dir)?;
        let naming = match &config.moe {
            Moe::Pesc(_) => {
                let indexed = ExpertNaming::Indexed.adapter(0, 0, "down");
                Some(if weights.get(&indexed).is_some() { ExpertNaming::Indexed } else { ExpertNaming::Camelidae })
            }
            _ => None,
        };
        let quantization = Nf4Config::parse(&config.path, &config.raw)?;
        let mut model = Model { dir: dir.into(), config, weights, naming, quantization, nf4: BTreeMap::new() };
        model.nf4 = model.check()?;
        Ok(model)
    }

    /// The name under which this checkpoint stores the tensor that this tool
    /// calls `canonical` (differs only for `experts.{j}.` PESC naming).
    #[must_use]
    pub fn stored_name(&self, canonical: &str) -> String {
        match self.naming {
            Some(ExpertNaming::Indexed) => canonical.replace(".experts.expert_", ".experts."),
            _ => canonical.to_owned(),
        }
    }

    fn check(&self) -> Result<BTreeMap<String, Nf4Info>, HfError> {
        let expected: BTreeMap<String, Vec<u64>> =
            self.config.expected_tensors()?.into_iter().map(|(n, s)| (self.stored_name(&n), s)).collect();
        let file = |name: &str| self.weights.file_of(name).map_or_else(|| self.dir.clone(), Path::to_path_buf);
        let mut nf4 = BTreeMap::new();
        for (name, shape) in &expected {
            let state = format!("{name}.{QUANT_STATE}");
            if self.weights.get(&state).is_some() || self.weights.get(name).is_some_and(|t| t.dtype == pesc_tensor::DType::U8) {
                let Some(cfg) = &self.quantization else {
                    return Err(HfError::Nf4 {
                        path: file(&state),
                        tensor: name.clone(),
                        field: "quant_state".into(),
                        problem: "is stored, but config.json has no quantization_config".into(),
                    });
                };
                if shape.len() != 2 || name == "model.embed_tokens.weight" {
                    return Err(HfError::Nf4 {
                        path: file(name),
                        tensor: name.clone(),
                        field: "weight".into(),
                        problem: "is not a linear layer's weight, which alone can be NF4".into(),
                    });
                }
                nf4.insert(name.clone(), crate::nf4::check_weight(&self.dir, &self.weights, cfg, name, shape)?);
                continue;
            }
            let Some(t) = self.weights.get(name) else {
                return Err(HfError::MissingTensor { path: self.dir.clone(), tensor: name.clone(), shape: shape_str(shape) });
            };
            if &t.shape != shape {
                return Err(HfError::Shape {
                    path: file(name),
                    tensor: name.clone(),
                    actual: shape_str(&t.shape),
                    expected: shape_str(shape),
                    sizes: self.config.sizes(),
                });
            }
        }
        let vocab_h = [self.config.vocab_size, self.config.hidden_size];
        let nf4_piece = |n: &str| {
            nf4.iter().any(|(w, i): (&String, &Nf4Info)| {
                n == w
                    || n.strip_prefix(w.as_str())
                        .and_then(|rest| rest.strip_prefix('.'))
                        .is_some_and(|p| crate::nf4::pieces(i.offset.is_some()).contains(&p))
            })
        };
        for t in self.weights.tensors() {
            if nf4_piece(&t.name) {
                continue;
            }
            let known = expected.contains_key(&t.name)
                || (t.name == "lm_head.weight" && self.config.tie_word_embeddings && t.shape == vocab_h)
                || t.name.ends_with(".rotary_emb.inv_freq");
            if !known {
                return Err(HfError::UnexpectedTensor { path: file(&t.name), tensor: t.name.clone(), kind: self.kind() });
            }
            if !t.dtype.is_compute_float() {
                return Err(HfError::DType { path: file(&t.name), tensor: t.name.clone(), dtype: t.dtype });
            }
        }
        Ok(nf4)
    }

    /// The NF4 description of the stored weight `name`, if it is NF4.
    #[must_use]
    pub fn nf4(&self, name: &str) -> Option<&Nf4Info> {
        self.nf4.get(name)
    }

    /// Every NF4 weight, by name.
    pub fn nf4_weights(&self) -> impl Iterator<Item = (&str, &Nf4Info)> {
        self.nf4.iter().map(|(n, i)| (n.as_str(), i))
    }

    /// The shape of the stored tensor `name` as the model sees it (an NF4
    /// weight's original shape, not its packed one).
    #[must_use]
    pub fn shape_of(&self, name: &str) -> Option<Vec<u64>> {
        match self.nf4.get(name) {
            Some(i) => Some(i.shape.clone()),
            None => self.weights.get(name).map(|t| t.shape.clone()),
        }
    }

    /// The stored NF4 weight `name`, checked (its absmax and maps finite).
    pub fn read_nf4(&self, name: &str) -> Result<pesc_quant::nf4::Nf4Tensor, HfError> {
        let info = self.nf4.get(name).ok_or_else(|| HfError::Nf4 {
            path: self.dir.clone(),
            tensor: name.to_owned(),
            field: "weight".into(),
            problem: "is not an NF4 weight of this model".into(),
        })?;
        crate::nf4::read(&self.weights, &self.dir, name, info)
    }

    /// The stored tensor `name` as f32 values, row-major: float tensors
    /// converted, NF4 weights dequantized exactly as bitsandbytes'
    /// `dequantize_4bit` does (`code * absmax` in f32, then rounded to the
    /// weight's original dtype, which the quant state records).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, HfError> {
        if let Some(info) = self.nf4.get(name) {
            return Ok(crate::nf4::dequantize_as(&self.read_nf4(name)?, info.dtype));
        }
        let t = self.weights.get(name).ok_or_else(|| HfError::MissingTensor {
            path: self.dir.clone(),
            tensor: name.to_owned(),
            shape: "(any)".into(),
        })?;
        let bytes = self.weights.read(name)?;
        pesc_tensor::to_f32(t.dtype, &bytes).ok_or_else(|| HfError::DType {
            path: self.weights.file_of(name).map_or_else(|| self.dir.clone(), Path::to_path_buf),
            tensor: name.to_owned(),
            dtype: t.dtype,
        })
    }

    /// Rows `rows` (along the first dimension) of the stored float tensor
    /// `name` as f32 values; NF4 weights are read whole ([`Model::read_f32`]).
    pub fn read_rows_f32(&self, name: &str, rows: std::ops::Range<u64>) -> Result<Vec<f32>, HfError> {
        let t = self.weights.get(name).ok_or_else(|| HfError::MissingTensor {
            path: self.dir.clone(),
            tensor: name.to_owned(),
            shape: "(any)".into(),
        })?;
        let row_bytes = t.shape.iter().skip(1).product::<u64>() * t.dtype.size();
        let bytes = self.weights.read_range(name, rows.start * row_bytes, (rows.end - rows.start) * row_bytes)?;
        pesc_tensor::to_f32(t.dtype, &bytes).ok_or_else(|| HfError::DType {
            path: self.weights.file_of(name).map_or_else(|| self.dir.clone(), Path::to_path_buf),
            tensor: name.to_owned(),
            dtype: t.dtype,
        })
    }

    /// Writes the stored tensor `name` into `out` as `to`: its bytes verbatim
    /// when it is stored as `to`, else converted (rounded to nearest) piece by
    /// piece, so memory stays bounded by the piece, not the tensor.
    pub fn write_tensor(&self, name: &str, to: pesc_tensor::DType, out: &mut dyn pesc_io::Sink) -> Result<(), HfError> {
        let info = self.weights.get(name).ok_or_else(|| HfError::MissingTensor {
            path: self.dir.clone(),
            tensor: name.to_owned(),
            shape: "(any)".into(),
        })?;
        if info.dtype == to {
            return Ok(self.weights.copy_to(name, out)?);
        }
        let from = info.dtype;
        if !from.is_compute_float() {
            return Err(HfError::DType {
                path: self.weights.file_of(name).map_or_else(|| self.dir.clone(), Path::to_path_buf),
                tensor: name.to_owned(),
                dtype: from,
            });
        }
        if !to.is_compute_float() {
            return Err(pesc_io::Error::NotAFloatType { dtype: to }.into());
        }
        self.weights
            .for_each_chunk(name, 4 << 20, &mut |piece| out.write_bytes(&pesc_tensor::convert(from, to, piece).unwrap_or_default()))?;
        Ok(())
    }

    /// `llama`, `PESC qwen2`, `Mixtral` ...: for messages.
    #[must_use]
    pub fn kind(&self) -> String {
        let f = self.config.family.model_type();
        match self.config.moe {
            Moe::Dense => f.to_owned(),
            Moe::Pesc(_) => format!("PESC {f}"),
            Moe::Mixtral { .. } => "Mixtral".to_owned(),
        }
    }

    /// Tensors the loader skips (`rotary_emb.inv_freq` buffers).
    pub fn ignored_tensors(&self) -> impl Iterator<Item = &str> {
        self.weights.tensors().map(|t| t.name.as_str()).filter(|n| n.ends_with(".rotary_emb.inv_freq"))
    }
}
