//! `quantize --to nf4`: a folder in transformers' bitsandbytes 4-bit layout
//! (`pesc_hf::nf4` writes it).
//!
//! The linear layers transformers quantizes by default become NF4 (q, k, v, o
//! and the dense or shared FFN's gate, up and down; in a Mixtral only the
//! attention, since transformers 5 keeps its fused experts and router in
//! float); embeddings, norms, `lm_head`, biases and the PESC routers and
//! adapters keep their stored dtype, as the reference implementation keeps
//! them. `config.json` gains transformers' `quantization_config`.

use crate::CraftError;
use pesc_hf::nf4::{nf4_config, stored_pieces};
use pesc_hf::output::write_config;
use pesc_hf::{Model, Moe};
use pesc_io::{write_weights, OutputDir, TensorSpec};
use pesc_quant::nf4::{self, Nf4Options};
use std::collections::BTreeMap;

/// The weights `quantize --to nf4` stores as NF4.
#[must_use]
pub fn nf4_targets(model: &Model) -> Vec<String> {
    let mut out = Vec::new();
    for l in 0..model.config.num_layers {
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            out.push(format!("model.layers.{l}.self_attn.{p}.weight"));
        }
        if !matches!(model.config.moe, Moe::Mixtral { .. }) {
            for p in ["gate_proj", "up_proj", "down_proj"] {
                out.push(pesc_hf::names::dense_mlp(l, p));
            }
        }
    }
    out
}

/// Checks that `model` can be quantized with `opts` before anything is written.
pub fn validate_nf4(model: &Model, opts: Nf4Options) -> Result<(), CraftError> {
    opts.check().map_err(|e| CraftError::Flag { flag: "--blocksize", problem: e.to_string() })?;
    if model.quantization.is_some() {
        return Err(CraftError::AlreadyNf4 { path: model.dir.clone() });
    }
    Ok(())
}

/// Writes `model` with its linear layers in NF4, and its `config.json`, into `out`.
pub fn quantize_nf4(
    model: &Model,
    out: &mut OutputDir,
    opts: Nf4Options,
    shard_size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), CraftError> {
    validate_nf4(model, opts)?;
    let targets = nf4_targets(model);
    let mut specs: Vec<TensorSpec> = model
        .weights
        .tensors()
        .filter(|t| !t.name.ends_with(".rotary_emb.inv_freq") && !targets.contains(&t.name))
        .map(|t| TensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() })
        .collect();
    // Every weight is quantized once up front, because the quant-state JSON's length depends on the
    // double-quantization offset and the file layout on every length; only the small pieces are kept.
    // The packed codes (half a byte per weight) are quantized again when their turn to be written comes,
    // so memory holds one weight at a time, not the model's codes.
    let mut pieces: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let quantized = |name: &String| -> Result<Vec<pesc_hf::nf4::Piece>, CraftError> {
        let t = model.weights.get(name).ok_or_else(|| pesc_hf::HfError::MissingTensor {
            path: model.dir.clone(),
            tensor: name.clone(),
            shape: "(any)".into(),
        })?;
        let q = nf4::quantize(&model.read_f32(name)?, opts).map_err(|source| CraftError::Quantize { tensor: name.clone(), source })?;
        Ok(stored_pieces(name, &q, t.dtype, &t.shape))
    };
    for name in &targets {
        for p in quantized(name)? {
            specs.push(TensorSpec { name: p.name.clone(), dtype: p.dtype, shape: p.shape });
            if p.name != *name {
                pieces.insert(p.name, p.bytes);
            }
        }
    }
    write_config(out, &nf4_config(model, opts.double_quant))?;
    write_weights::<CraftError>(
        out,
        specs,
        shard_size,
        &mut |spec, w| {
            if let Some(bytes) = pieces.remove(&spec.name) {
                return Ok(pesc_io::Sink::write_bytes(w, &bytes)?);
            }
            if targets.contains(&spec.name) {
                let packed = quantized(&spec.name)?.into_iter().next().map(|p| p.bytes).unwrap_or_default();
                return Ok(pesc_io::Sink::write_bytes(w, &packed)?);
            }
            Ok(model.write_tensor(&spec.name, spec.dtype, w)?)
        },
        progress,
    )
}
