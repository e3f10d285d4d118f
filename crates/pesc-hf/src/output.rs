//! What every model folder this tool writes shares: `config.json` (with the
//! stored dtype's name), the tokenizer and generation files copied from the
//! input, the model card, and publishing it with its manifest
//! ([`publish_folder`], on `pesc-io`'s durable publisher).

use crate::{HfError, Model};
use pesc_io::{Input, OutputDir, Publication};
use pesc_tensor::DType;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Files copied unchanged from the input folder when present.
pub const AUX_FILES: [&str; 10] = [
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "merges.txt",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
];

/// Largest auxiliary file copied.
const MAX_AUX_BYTES: u64 = 256 << 20;

/// The dtype tensors are stored in (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDType {
    /// Each tensor keeps its dtype; bytes are copied verbatim.
    Keep,
    /// Every float tensor converted to this type.
    To(DType),
}

impl StoreDType {
    /// The output dtype of a tensor stored as `dtype`.
    #[must_use]
    pub fn of(self, dtype: DType) -> DType {
        match self {
            StoreDType::Keep => dtype,
            StoreDType::To(d) => d,
        }
    }

    /// The name transformers uses for a dtype in `config.json`.
    #[must_use]
    pub fn torch_name(dtype: DType) -> &'static str {
        match dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        }
    }
}

/// Every input file an output of `model` depends on: config, weights (and
/// index) and the auxiliary files present.
#[must_use]
pub fn input_files(model: &Model) -> Vec<PathBuf> {
    let mut paths = vec![model.dir.join("config.json")];
    paths.extend(model.weights.files());
    paths.extend(AUX_FILES.iter().map(|f| model.dir.join(f)).filter(|p| p.is_file()));
    paths
}

/// `model` as an input of a publication, under `role`.
#[must_use]
pub fn model_input(model: &Model, role: &str) -> Input {
    Input { role: role.into(), root: model.dir.clone(), files: input_files(model) }
}

/// Copies the auxiliary files of the model folder `src` that exist into `out`.
pub fn copy_aux_files(out: &mut OutputDir, src: &Path) -> Result<(), HfError> {
    for name in AUX_FILES {
        let path = src.join(name);
        if path.is_file() {
            pesc_io::confined(src, &path)?;
            let bytes = pesc_io::read_capped(&path, MAX_AUX_BYTES)?;
            out.write_file(name, &bytes)?;
        }
    }
    Ok(())
}

/// A model folder to publish: what `pesc-io` records, plus the model card and
/// the folder whose tokenizer and generation files are copied along.
pub struct FolderPublication<'a> {
    /// Target, command, parameters and inputs.
    pub publication: Publication<'a>,
    /// The `README.md`.
    pub card: Option<String>,
    /// The input folder whose [`AUX_FILES`] are copied.
    pub aux_from: Option<&'a Path>,
}

/// Publishes a model folder: `write` fills it (while the inputs are hashed),
/// then the auxiliary files and the card are added and it is committed with
/// its manifest. Returns the target and `write`'s result.
pub fn publish_folder<T, E: From<HfError> + From<pesc_io::Error>>(
    p: FolderPublication<'_>,
    write: impl FnOnce(&mut OutputDir) -> Result<T, E>,
) -> Result<(PathBuf, T), E> {
    let (card, aux_from) = (p.card, p.aux_from);
    pesc_io::publish(p.publication, |dir| {
        let value = write(dir)?;
        if let Some(src) = aux_from {
            copy_aux_files(dir, src)?;
        }
        if let Some(card) = card {
            dir.write_file("README.md", card.as_bytes())?;
        }
        Ok(value)
    })
}

/// Writes `name` as pretty JSON (two-space indent, trailing newline).
pub fn write_json(out: &mut OutputDir, name: &str, value: &Value) -> Result<(), HfError> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    out.write_file(name, &bytes)?;
    Ok(())
}

/// Writes `config.json`; a PESC config gets the `auto_map` of the modeling
/// code written beside it ([`crate::remote_code`]).
pub fn write_config(out: &mut OutputDir, config: &serde_json::Map<String, Value>) -> Result<(), HfError> {
    let mut config = config.clone();
    if crate::remote_code::add_auto_map(&mut config) {
        for (name, text) in crate::remote_code::FILES {
            out.write_file(name, text.as_bytes())?;
        }
    }
    write_json(out, "config.json", &Value::Object(config))
}

/// Records the stored dtype in a config under the key(s) it already uses
/// (`dtype`, `torch_dtype`), or `torch_dtype` when it has neither.
pub fn set_config_dtype(config: &mut serde_json::Map<String, Value>, dtype: DType) {
    let name = Value::String(StoreDType::torch_name(dtype).into());
    let mut found = false;
    for key in ["dtype", "torch_dtype"] {
        if let Some(v) = config.get_mut(key) {
            *v = name.clone();
            found = true;
        }
    }
    if !found {
        config.insert("torch_dtype".into(), name);
    }
}
