//! What every output folder shares: the stored dtype choice, the files copied
//! from the input (tokenizer, generation config), input digests and the final
//! commit with its manifest.

use crate::CraftError;
use pesc_arch::Model;
use pesc_io::{FileDigest, OutputDir, RunRecord};
use pesc_tensor::DType;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

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

/// Size and SHA-256 of every input file the output depends on: config,
/// weights (and index) and the auxiliary files.
pub fn input_digests(model: &Model) -> Result<BTreeMap<String, FileDigest>, CraftError> {
    let mut paths = vec![model.dir.join("config.json")];
    paths.extend(model.weights.files());
    paths.extend(AUX_FILES.iter().map(|f| model.dir.join(f)).filter(|p| p.is_file()));
    let mut out = BTreeMap::new();
    for p in paths {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        out.insert(name, pesc_io::hash_file(&p)?);
    }
    Ok(out)
}

/// The parts of a run that end up in its manifest, and the commit.
pub struct Publish {
    /// Subcommand name.
    pub command: String,
    /// Canonical parameters.
    pub parameters: Value,
    /// Tool version.
    pub tool_version: String,
}

impl Publish {
    /// Copies the auxiliary files of the model folder `aux_from` (if given),
    /// then writes the manifest and checksums and moves the folder into place.
    pub fn finish(
        &self,
        mut out: OutputDir,
        aux_from: Option<&Path>,
        inputs: BTreeMap<String, BTreeMap<String, FileDigest>>,
    ) -> Result<std::path::PathBuf, CraftError> {
        for (src, name) in aux_from.iter().flat_map(|src| AUX_FILES.iter().map(move |n| (*src, *n))) {
            let path = src.join(name);
            if path.is_file() {
                pesc_io::confined(src, &path)?;
                let bytes = pesc_io::read_capped(&path, MAX_AUX_BYTES)?;
                out.write_file(name, &bytes)?;
            }
        }
        let run = RunRecord {
            tool_version: self.tool_version.clone(),
            command: self.command.clone(),
            parameters: self.parameters.clone(),
            inputs,
        };
        Ok(out.commit(&run)?)
    }
}

/// Writes `config.json` (pretty, two-space indent, trailing newline).
pub(crate) fn write_config(out: &mut OutputDir, config: &serde_json::Map<String, Value>) -> Result<(), CraftError> {
    let mut bytes = serde_json::to_vec_pretty(config).unwrap_or_default();
    bytes.push(b'\n');
    out.write_file("config.json", &bytes)?;
    Ok(())
}

/// Records the stored dtype in a config under the key(s) it already uses
/// (`dtype`, `torch_dtype`), or `torch_dtype` when it has neither.
pub(crate) fn set_config_dtype(config: &mut serde_json::Map<String, Value>, dtype: DType) {
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

/// Copies or converts one input tensor into `w`.
pub(crate) fn emit_tensor(model: &Model, name: &str, to: DType, w: &mut dyn std::io::Write) -> Result<(), CraftError> {
    let info = model.weights.get(name).ok_or_else(|| CraftError::Invalid(format!("no tensor `{name}`")))?;
    if info.dtype == to {
        model.weights.copy_to(name, w)?;
        return Ok(());
    }
    let from = info.dtype;
    if !from.is_compute_float() || !to.is_compute_float() {
        return Err(CraftError::Invalid(format!("tensor `{name}`: cannot convert {from} to {to}")));
    }
    // Converted piece by piece so memory stays bounded by the chunk, not the tensor.
    model.weights.for_each_chunk(name, 4 << 20, &mut |piece| {
        let converted = pesc_tensor::convert(from, to, piece).unwrap_or_default();
        w.write_all(&converted).map_err(|e| pesc_io::Error::Io { path: "<output>".into(), source: e })
    })?;
    Ok(())
}

/// Writes generated values in `dtype` into `w`.
pub(crate) fn emit_values(dtype: DType, values: &[f32], w: &mut dyn std::io::Write) -> Result<(), CraftError> {
    let bytes =
        pesc_tensor::from_f32(dtype, values).ok_or_else(|| CraftError::Invalid(format!("cannot store generated values as {dtype}")))?;
    w.write_all(&bytes).map_err(|e| pesc_io::Error::Io { path: "<output>".into(), source: e })?;
    Ok(())
}
