//! `craft`: dense -> PESC. Every dense tensor is kept; each layer gains a
//! router and `num_experts` adapters whose up projections are zero, so the
//! crafted model computes exactly what the dense model computes.

use crate::CraftError;
use pesc_hf::names::pesc_router;
use pesc_hf::output::{set_config_dtype, write_config};
use pesc_hf::StoreDType;
use pesc_hf::{ExpertNaming, Family, Model, Moe};
use pesc_io::{write_weights, OutputDir, TensorSpec};
use pesc_tensor::kaiming_uniform;
use pesc_tensor::DType;
use serde_json::{json, Value};

/// Default `--scaling`, as the released Camelidae and Qwen2idae models.
pub const DEFAULT_SCALING: f64 = 0.25;

/// What to craft.
#[derive(Debug, Clone, PartialEq)]
pub struct CraftParams {
    /// Experts per layer.
    pub experts: u64,
    /// Experts used per token.
    pub top_k: u64,
    /// Adapter bottleneck width.
    pub adapter_dim: u64,
    /// Scale of the adapter branch (`moe_scaling`).
    pub scaling: f64,
    /// Seed of the router and adapter-down initialisation.
    pub seed: u64,
    /// Stored dtype.
    pub dtype: StoreDType,
    /// Allow an adapter wider than the hidden size.
    pub force: bool,
}

/// The dtype of new tensors: the `--dtype` target, or the embedding's dtype.
pub(crate) fn new_tensor_dtype(model: &Model, dtype: StoreDType) -> DType {
    let embed = model.weights.get("model.embed_tokens.weight").map_or(DType::F32, |t| t.dtype);
    dtype.of(embed)
}

/// Refuses a model that is already a mixture of experts.
pub(crate) fn require_dense(model: &Model) -> Result<(), CraftError> {
    match model.config.moe {
        Moe::Dense => Ok(()),
        _ => Err(CraftError::NotDense { path: model.dir.clone(), kind: model.kind() }),
    }
}

/// Checks `params` against `model` before anything is written.
pub fn validate(model: &Model, p: &CraftParams) -> Result<(), CraftError> {
    require_dense(model)?;
    let h = model.config.hidden_size;
    let bad = |flag: &'static str, problem: String| Err(CraftError::Flag { flag, problem });
    if p.experts == 0 {
        return bad("--experts", "must be at least 1".into());
    }
    if p.experts > pesc_hf::MAX_EXPERTS {
        return bad("--experts", format!("{} is above the limit of {}", p.experts, pesc_hf::MAX_EXPERTS));
    }
    if p.top_k == 0 || p.top_k > p.experts {
        return bad("--top-k", format!("{} must be between 1 and --experts {}", p.top_k, p.experts));
    }
    if p.adapter_dim == 0 {
        return bad("--adapter-dim", "must be at least 1".into());
    }
    if p.adapter_dim > h && !p.force {
        return bad(
            "--adapter-dim",
            format!(
                "{} is above the hidden size {h}: the adapter would not be a bottleneck; pass --force to craft it anyway",
                p.adapter_dim
            ),
        );
    }
    if !p.scaling.is_finite() {
        return bad("--scaling", format!("{} is not a finite number", p.scaling));
    }
    Ok(())
}

/// `model_type` and `architectures` of a PESC model on `family`.
fn pesc_names(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::Llama => ("camelidae", "PescLlamaForCausalLM"),
        Family::Mistral => ("camelidae", "PescMistralForCausalLM"),
        Family::Qwen2 => ("qwen2idae", "PescQwen2ForCausalLM"),
    }
}

/// The crafted `config.json`: the dense one plus the PESC keys.
#[must_use]
pub fn pesc_config(model: &Model, p: &CraftParams) -> serde_json::Map<String, Value> {
    let mut c = model.config.raw.clone();
    let (model_type, arch) = pesc_names(model.config.family);
    let dtype = new_tensor_dtype(model, p.dtype);
    c.insert("model_type".into(), json!(model_type));
    c.insert("architectures".into(), json!([arch]));
    c.insert("pesc_base_model_type".into(), json!(model.config.family.model_type()));
    c.insert("num_experts".into(), json!(p.experts));
    c.insert("topk".into(), json!(p.top_k));
    c.insert("adapter_dim".into(), json!(p.adapter_dim));
    c.insert("moe_scaling".into(), json!(p.scaling));
    c.insert("moe_dtype".into(), json!(StoreDType::torch_name(dtype)));
    c.insert("output_router_logits".into(), json!(false));
    if let StoreDType::To(d) = p.dtype {
        set_config_dtype(&mut c, d);
    }
    c
}

/// Writes the crafted weights and `config.json` into `out`.
pub fn craft(
    model: &Model,
    out: &mut OutputDir,
    p: &CraftParams,
    shard_size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), CraftError> {
    validate(model, p)?;
    let cfg = &model.config;
    let h = cfg.hidden_size;
    let new = new_tensor_dtype(model, p.dtype);
    let mut specs: Vec<TensorSpec> = model
        .weights
        .tensors()
        .filter(|t| !t.name.ends_with(".rotary_emb.inv_freq"))
        .map(|t| TensorSpec { name: t.name.clone(), dtype: p.dtype.of(t.dtype), shape: t.shape.clone() })
        .collect();
    let naming = ExpertNaming::Camelidae;
    for l in 0..cfg.num_layers {
        specs.push(TensorSpec { name: pesc_router(l), dtype: new, shape: vec![p.experts, h] });
        for j in 0..p.experts {
            specs.push(TensorSpec { name: naming.adapter(l, j, "down"), dtype: new, shape: vec![p.adapter_dim, h] });
            specs.push(TensorSpec { name: naming.adapter(l, j, "up"), dtype: new, shape: vec![h, p.adapter_dim] });
        }
    }
    write_config(out, &pesc_config(model, p))?;
    write_weights::<CraftError>(
        out,
        specs,
        shard_size,
        &mut |spec, w| {
            if model.weights.get(&spec.name).is_some() {
                return Ok(model.write_tensor(&spec.name, spec.dtype, w)?);
            }
            let n = usize::try_from(pesc_tensor::numel(&spec.shape).unwrap_or(0)).unwrap_or(0);
            let values = if spec.name.ends_with(".adapter_up.weight") {
                vec![0.0f32; n]
            } else {
                // Routers and adapter-down projections both read the hidden state: fan_in = H.
                kaiming_uniform(p.seed, &spec.name, h, n)
            };
            Ok(pesc_io::write_values(w, spec.dtype, &values)?)
        },
        progress,
    )
}
