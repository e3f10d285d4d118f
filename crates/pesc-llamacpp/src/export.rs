//! `quantize --to f32|f16|bf16|q8_0|q4_0|q4_1|q4_k|q6_k|q4_k_m`: a
//! Llama-family folder (`llama`, `mistral`; dense, Mixtral or PESC) to one
//! GGUF file, the reverse of [`crate::Import`]. Dense and Mixtral models
//! become llama.cpp's architecture `llama` (Mixtral with `llama.expert_count`
//! and stacked `ffn_*_exps` tensors, as llama.cpp's converter writes them);
//! PESC models become this project's architecture `pesc` (`docs/format.md`
//! §8.1): the `llama` layout plus a router and stacked adapters per layer.
//!
//! The result is what llama.cpp's own pipeline gives:
//! `convert_hf_to_gguf.py --outtype f32` followed, for the quantized types,
//! by `llama-quantize` without an importance matrix (the copies vendored in
//! llama-cpp-python 0.3.36, llama.cpp `0c1e57098`). `scripts/llama-cpp-check.sh`
//! runs both on SmolLM2: the converter's f32 and q8_0 files hold the same
//! metadata (but `general.name`, which the converter title-cases) and the same
//! tensor bytes, and `llama_model_quantize` of our f32 file gives our
//! quantized files' tensors byte for byte, in the same order.
//!
//! - **Metadata** in the converter's order and types: `general.architecture`,
//!   `general.type`, `general.name` (the folder's name), `general.size_label`,
//!   the `llama.*` hyperparameters, `general.file_type`, `llama.vocab_size`,
//!   `llama.rope.dimension_count`, `general.quantization_version` (the
//!   converter writes it for every file type), then `tokenizer.*` (see
//!   [`crate::vocab`]). `llama.attention.key_length` and `value_length`
//!   are written when `config.json` sets `head_dim`, as the converter does.
//! - **Tensors** under llama.cpp's names, in the order `llama-quantize`
//!   writes them (its loader's `weight_name_comparer`: the tensors outside
//!   the blocks by name, then block by block, by name within a block; the
//!   converter keeps the checkpoint's order instead). q and k rows are
//!   permuted for llama.cpp's adjacent-pair rotary layout ([`crate::rotary`])
//!   before anything is rounded. A tied `lm_head` is not written (llama.cpp
//!   falls back to `token_embd`).
//! - **Types** ([`crate::recipe`]): 1-D tensors and norms are F32 always. For
//!   f32/f16/bf16 every other tensor is that type; the rest follow
//!   `llama-quantize`'s per-tensor rules and its shape fallback.
//!
//! The file is written once, streaming one tensor at a time, through
//! `pesc-io`'s [`StagedFile`]: a failed or interrupted run leaves nothing at
//! the target. The bytes depend only on the input and the options
//! (quantization splits a tensor at row boundaries across rayon's threads;
//! each row's encoding is independent).

use crate::recipe::{plan, ExportOptions, PlannedTensor};
use crate::rotary::{permute_rows, Direction};
use crate::vocab::{from_folder, VocabKind};
use crate::LlamaCppError;
use pesc_gguf::{GgmlType, GgufWriter, Metadata, TensorSpec};
use pesc_hf::{Family, Model, ModelConfig, RopeScaling};
use pesc_io::StagedFile;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// The tensors, in file order.
    pub tensors: Vec<PlannedTensor>,
    /// The vocabulary written.
    pub vocab: VocabKind,
    /// Things the user should know (ignored config settings).
    pub warnings: Vec<String>,
}

impl ExportSummary {
    /// `(type name, count)` in ggml id order.
    #[must_use]
    pub fn type_counts(&self) -> Vec<(GgmlType, usize)> {
        let mut m: BTreeMap<u32, (GgmlType, usize)> = BTreeMap::new();
        for t in &self.tensors {
            m.entry(t.ty.id()).or_insert((t.ty, 0)).1 += 1;
        }
        m.into_values().collect()
    }
}

/// Checks that `config` is a model this export handles; returns warnings
/// about settings llama.cpp's `llama` architecture ignores.
pub fn check_exportable(config: &ModelConfig) -> Result<Vec<String>, LlamaCppError> {
    let refuse = |reason: String| LlamaCppError::NotExportable { path: config.path.parent().unwrap_or(Path::new(".")).into(), reason };
    let qwen2_biases = config.family == Family::Qwen2 && !config.o_bias && !config.mlp_bias;
    if !qwen2_biases && (config.qkv_bias || config.o_bias || config.mlp_bias) {
        return Err(refuse("has attention or MLP biases (`attention_bias`/`mlp_bias`), which GGUF export does not support yet".into()));
    }
    match &config.rope_scaling {
        RopeScaling::None | RopeScaling::Linear { .. } => {}
        RopeScaling::Llama3 { .. } => {
            return Err(refuse(
                "uses llama3 rope scaling, which GGUF export does not support yet (llama.cpp needs a `rope_freqs.weight` tensor)".into(),
            ))
        }
        RopeScaling::Other { rope_type } => {
            return Err(refuse(format!("uses rope scaling `{rope_type}`, which GGUF export does not support")));
        }
    }
    let mut warnings = Vec::new();
    if let Some(w) = config.sliding_window {
        warnings.push(format!(
            "config.json sets sliding_window {w}; llama.cpp's `llama` architecture attends to the whole context (as its converter, which drops the setting)"
        ));
    }
    Ok(warnings)
}

/// The metadata of the export of `model`, in the converter's order: the
/// general and hyperparameter keys ([`crate::hparams::write`]), then `tokenizer.*`.
pub fn export_metadata(model: &Model, opts: ExportOptions) -> Result<(Metadata, VocabKind), LlamaCppError> {
    let mut md = Metadata::new();
    crate::hparams::write(model, opts, &mut md)?;
    let (vocab, kind) = from_folder(&model.dir, &model.config)?;
    for (k, v) in vocab {
        md.push(k, v).map_err(LlamaCppError::MetadataEntry)?;
    }
    Ok((md, kind))
}

/// Encodes `values` (rows of `row_len`) as `ty`, the rows split across
/// threads; the bytes do not depend on the split.
fn encode(ty: GgmlType, values: &[f32], row_len: usize, tensor: &str) -> Result<Vec<u8>, LlamaCppError> {
    let fail = |source: pesc_quant::QuantError| LlamaCppError::Encode { tensor: tensor.into(), source };
    let row_bytes = ty
        .row_bytes(row_len as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| fail(pesc_quant::QuantError::PartialBlock { ty, len: row_len, block_size: ty.block_size() }))?;
    let rows = values.len() / row_len.max(1);
    let mut out = vec![0u8; rows * row_bytes];
    // Chunks of whole rows, at least 64 Ki values each.
    let per = (1usize << 16).div_ceil(row_len.max(1)).max(1);
    values
        .par_chunks(per * row_len)
        .zip(out.par_chunks_mut(per * row_bytes))
        .try_for_each(|(src, dst)| pesc_quant::quantize_into(ty, src, dst))
        .map_err(fail)?;
    Ok(out)
}

/// Writes the GGUF export of `model` to `target` (atomically; an existing
/// file is replaced only with `force`, and never one of the model's own
/// files), reporting `(done, total)` input bytes to `progress`.
pub fn export_gguf(
    model: &Model,
    opts: ExportOptions,
    target: &Path,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExportSummary, LlamaCppError> {
    let warnings = check_exportable(&model.config)?;
    let plan = plan(&model.config, opts);
    let (metadata, vocab) = export_metadata(model, opts)?;
    let mut total = 0u64;
    for t in &plan {
        for src in &t.sources {
            let stored = model.stored_name(src);
            let info = model.weights.get(&stored).ok_or_else(|| pesc_hf::HfError::MissingTensor {
                path: model.dir.clone(),
                tensor: stored.clone(),
                shape: "(any)".into(),
            })?;
            total += info.nbytes;
        }
    }
    let inputs = pesc_hf::output::input_files(model);
    let guarded: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let file = StagedFile::create(target, force, &guarded)?;
    let specs: Vec<TensorSpec> = plan.iter().map(|t| TensorSpec::new(t.name.clone(), t.ty, &t.ne)).collect();
    let write_error = |e: pesc_gguf::GgufError| match e {
        pesc_gguf::GgufError::Write(io) => LlamaCppError::from(pesc_io::Error::Io { path: target.into(), source: io }),
        other => LlamaCppError::from(other),
    };
    let mut w = GgufWriter::new(BufWriter::with_capacity(1 << 20, file), &metadata, &specs).map_err(write_error)?;
    let mut done = 0u64;
    progress(0, total);
    for t in &plan {
        pesc_io::check_interrupt()?;
        let cols = usize::try_from(t.ne[0]).unwrap_or(usize::MAX);
        let mut bytes = Vec::new();
        // Stacked experts: each expert's rows are whole blocks, so encoding
        // expert by expert and concatenating equals encoding the stack.
        for src in &t.sources {
            let stored = model.stored_name(src);
            let values = model.read_f32(&stored)?;
            let values = match t.permute_heads {
                Some(heads) => permute_rows(&values, cols, usize::try_from(heads).unwrap_or(1), Direction::ToGguf),
                None => values,
            };
            bytes.extend_from_slice(&encode(t.ty, &values, cols, &stored)?);
            done += model.weights.get(&stored).map_or(0, |i| i.nbytes);
        }
        w.write_tensor(&t.name, &bytes).map_err(write_error)?;
        progress(done, total);
    }
    let file =
        w.finish().map_err(write_error)?.into_inner().map_err(|e| pesc_io::Error::Io { path: target.into(), source: e.into_error() })?;
    let bytes = file.commit()?;
    Ok(ExportSummary { path: target.to_path_buf(), bytes, tensors: plan, vocab, warnings })
}
