//! A model folder: validated config plus weights checked against it.

use crate::config::{ModelConfig, Moe};
use crate::names::ExpertNaming;
use pesc_io::Checkpoint;
use pesc_tensor::shape_str;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What can be wrong with a model folder beyond its file framing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchError {
    /// A file-level error.
    #[error(transparent)]
    Io(#[from] pesc_io::Error),
    /// A `config.json` key is missing or has a bad value.
    #[error("`{path}`: `{key}` {problem}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The architecture is not one this tool handles.
    #[error("`{path}`: model_type `{model_type}` (architectures: {architectures}) is not supported; supported are llama (TinyLlama, Llama 2/3, Yi, SmolLM2), mistral and qwen2, and their PESC and Mixtral forms")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// Its `model_type`.
        model_type: String,
        /// Its `architectures`.
        architectures: String,
    },
    /// A tensor the config implies is absent.
    #[error("`{path}`: tensor `{tensor}` {shape}, implied by config.json, is missing")]
    MissingTensor {
        /// The model folder.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its expected shape.
        shape: String,
    },
    /// A tensor's shape contradicts the config.
    #[error("`{path}`: tensor `{tensor}` has shape {actual} but config.json ({sizes}) implies {expected}")]
    Shape {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its shape.
        actual: String,
        /// The implied shape.
        expected: String,
        /// The config's sizes.
        sizes: String,
    },
    /// A tensor that the config does not account for.
    #[error("`{path}`: tensor `{tensor}` is not part of a {kind} model with this config.json")]
    UnexpectedTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The model kind.
        kind: String,
    },
    /// A GGUF file could not be read.
    #[error(transparent)]
    GgufFile(Box<pesc_gguf::GgufError>),
    /// A GGUF file's metadata or tensors do not describe a supported model.
    #[error("`{path}`: {problem}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A weight is not stored as a float type.
    #[error("`{path}`: tensor `{tensor}` has dtype {dtype}; weights must be F32, F16 or BF16")]
    DType {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: pesc_tensor::DType,
    },
}

impl From<pesc_gguf::GgufError> for ArchError {
    fn from(e: pesc_gguf::GgufError) -> Self {
        ArchError::GgufFile(Box::new(e))
    }
}

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
}

impl Model {
    /// Opens `dir` and checks every tensor against `config.json`.
    pub fn open(dir: &Path) -> Result<Self, ArchError> {
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
        let model = Model { dir: dir.into(), config, weights, naming };
        model.check()?;
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

    fn check(&self) -> Result<(), ArchError> {
        let expected: BTreeMap<String, Vec<u64>> = self
            .config
            .expected_tensors()?
            .into_iter()
            .map(|(n, s)| (self.stored_name(&n), s))
            .collect();
        let file = |name: &str| self.weights.file_of(name).map_or_else(|| self.dir.clone(), Path::to_path_buf);
        for (name, shape) in &expected {
            let Some(t) = self.weights.get(name) else {
                return Err(ArchError::MissingTensor { path: self.dir.clone(), tensor: name.clone(), shape: shape_str(shape) });
            };
            if &t.shape != shape {
                return Err(ArchError::Shape {
                    path: file(name),
                    tensor: name.clone(),
                    actual: shape_str(&t.shape),
                    expected: shape_str(shape),
                    sizes: self.config.sizes(),
                });
            }
        }
        let vocab_h = [self.config.vocab_size, self.config.hidden_size];
        for t in self.weights.tensors() {
            let known = expected.contains_key(&t.name)
                || (t.name == "lm_head.weight" && self.config.tie_word_embeddings && t.shape == vocab_h)
                || t.name.ends_with(".rotary_emb.inv_freq");
            if !known {
                return Err(ArchError::UnexpectedTensor { path: file(&t.name), tensor: t.name.clone(), kind: self.kind() });
            }
            if !t.dtype.is_compute_float() {
                return Err(ArchError::DType { path: file(&t.name), tensor: t.name.clone(), dtype: t.dtype });
            }
        }
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
