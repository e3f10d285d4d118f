//! `upcycle`: dense -> Mixtral (sparse upcycling, Komatsuzaki et al. 2023),
//! the baseline PESC is compared against. Every expert is a full copy of the
//! dense FFN (`w1` = gate, `w2` = down, `w3` = up) and each layer gains a
//! seeded router, so the upcycled model equals the dense model up to the
//! rounding of the routing weights' sum.

use crate::craft::{new_tensor_dtype, require_dense};
use crate::CraftError;
use pesc_hf::names::{dense_mlp, mixtral_expert, mixtral_gate};
use pesc_hf::output::{set_config_dtype, write_config};
use pesc_hf::Model;
use pesc_hf::StoreDType;
use pesc_io::{write_weights, OutputDir, TensorSpec};
use pesc_tensor::kaiming_uniform;
use serde_json::{json, Value};

/// What to upcycle.
#[derive(Debug, Clone, PartialEq)]
pub struct UpcycleParams {
    /// Experts per layer.
    pub experts: u64,
    /// Experts used per token.
    pub top_k: u64,
    /// Seed of the router initialisation.
    pub seed: u64,
    /// Stored dtype.
    pub dtype: StoreDType,
}

/// Checks `params` against `model` before anything is written.
pub fn validate_upcycle(model: &Model, p: &UpcycleParams) -> Result<(), CraftError> {
    require_dense(model)?;
    let c = &model.config;
    if c.qkv_bias || c.o_bias || c.mlp_bias {
        return Err(CraftError::Biases { path: model.dir.clone(), family: c.family.model_type() });
    }
    if p.experts == 0 || p.experts > pesc_hf::MAX_EXPERTS {
        return Err(CraftError::Flag {
            flag: "--experts",
            problem: format!("{} must be between 1 and {}", p.experts, pesc_hf::MAX_EXPERTS),
        });
    }
    if p.top_k == 0 || p.top_k > p.experts {
        return Err(CraftError::Flag { flag: "--top-k", problem: format!("{} must be between 1 and --experts {}", p.top_k, p.experts) });
    }
    Ok(())
}

/// The Mixtral `config.json`.
#[must_use]
pub fn mixtral_config(model: &Model, p: &UpcycleParams) -> serde_json::Map<String, Value> {
    let mut c = model.config.raw.clone();
    for key in ["attention_bias", "mlp_bias", "pretraining_tp", "auto_map"] {
        c.shift_remove(key);
    }
    c.insert("model_type".into(), json!("mixtral"));
    c.insert("architectures".into(), json!(["MixtralForCausalLM"]));
    c.insert("num_local_experts".into(), json!(p.experts));
    c.insert("num_experts_per_tok".into(), json!(p.top_k));
    c.insert("output_router_logits".into(), json!(false));
    c.insert("router_aux_loss_coef".into(), json!(0.01));
    c.insert("router_jitter_noise".into(), json!(0.0));
    if !c.contains_key("sliding_window") {
        c.insert("sliding_window".into(), Value::Null);
    }
    if let StoreDType::To(d) = p.dtype {
        set_config_dtype(&mut c, d);
    }
    c
}

/// Writes the upcycled weights and `config.json` into `out`.
pub fn upcycle(
    model: &Model,
    out: &mut OutputDir,
    p: &UpcycleParams,
    shard_size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), CraftError> {
    validate_upcycle(model, p)?;
    let c = &model.config;
    let is_dense_mlp = |n: &str| n.contains(".mlp.") && n.starts_with("model.layers.");
    // Output name -> input name, for every copied tensor.
    let mut sources = std::collections::BTreeMap::new();
    let mut specs = Vec::new();
    for t in model.weights.tensors() {
        if !is_dense_mlp(&t.name) && !t.name.ends_with(".rotary_emb.inv_freq") {
            sources.insert(t.name.clone(), t.name.clone());
            specs.push(TensorSpec { name: t.name.clone(), dtype: p.dtype.of(t.dtype), shape: t.shape.clone() });
        }
    }
    let gate_dtype = new_tensor_dtype(model, p.dtype);
    for l in 0..c.num_layers {
        specs.push(TensorSpec { name: mixtral_gate(l), dtype: gate_dtype, shape: vec![p.experts, c.hidden_size] });
        for j in 0..p.experts {
            for (w, proj) in [("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")] {
                let src = dense_mlp(l, proj);
                let t = model.weights.get(&src).ok_or_else(|| pesc_hf::HfError::MissingTensor {
                    path: model.dir.clone(),
                    tensor: src.clone(),
                    shape: "(any)".into(),
                })?;
                let name = mixtral_expert(l, j, w);
                specs.push(TensorSpec { name: name.clone(), dtype: p.dtype.of(t.dtype), shape: t.shape.clone() });
                sources.insert(name, src);
            }
        }
    }
    write_config(out, &mixtral_config(model, p))?;
    write_weights::<CraftError>(
        out,
        specs,
        shard_size,
        &mut |spec, w| {
            if let Some(src) = sources.get(&spec.name) {
                return Ok(model.write_tensor(src, spec.dtype, w)?);
            }
            let n = usize::try_from(pesc_tensor::numel(&spec.shape).unwrap_or(0)).unwrap_or(0);
            let values = kaiming_uniform(p.seed, &spec.name, c.hidden_size, n);
            Ok(pesc_io::write_values(w, spec.dtype, &values)?)
        },
        progress,
    )
}
