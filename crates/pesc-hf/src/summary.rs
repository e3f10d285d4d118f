//! What `inspect` reports about a model or a lone weights file.

use crate::config::{Moe, RopeScaling};
use crate::Model;
use pesc_io::Checkpoint;
use std::collections::BTreeMap;

/// Sizes and counts of a model, or as much of them as a weights file alone shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// `llama`, `mistral`, `qwen2`, `pesc-llama`, `mixtral` ... (guessed from names for a lone file).
    pub architecture: Option<String>,
    /// `model_type` from config.json.
    pub model_type: Option<String>,
    /// `architectures` from config.json.
    pub architectures: Vec<String>,
    /// Decoder layers.
    pub num_layers: Option<u64>,
    /// Hidden size.
    pub hidden_size: Option<u64>,
    /// Attention heads.
    pub num_attention_heads: Option<u64>,
    /// Key/value heads.
    pub num_key_value_heads: Option<u64>,
    /// Per-head width.
    pub head_dim: Option<u64>,
    /// FFN width.
    pub intermediate_size: Option<u64>,
    /// Vocabulary.
    pub vocab_size: Option<u64>,
    /// RoPE base.
    pub rope_theta: Option<f64>,
    /// RoPE scaling, as `linear x2` / `llama3 x8` / a type name.
    pub rope_scaling: Option<String>,
    /// Tied embeddings.
    pub tie_word_embeddings: Option<bool>,
    /// Experts per layer (MoE only).
    pub num_experts: Option<u64>,
    /// Experts per token (MoE only).
    pub top_k: Option<u64>,
    /// PESC adapter width.
    pub adapter_dim: Option<u64>,
    /// PESC adapter scale.
    pub moe_scaling: Option<f64>,
    /// Exact element count of all tensors.
    pub parameters: u64,
    /// Parameters used per token (differs from `parameters` for MoE).
    pub active_parameters: u64,
    /// Tensor count.
    pub tensors: u64,
    /// Tensor bytes (headers excluded).
    pub bytes: u64,
    /// Weight files.
    pub files: u64,
    /// Elements per dtype.
    pub dtypes: BTreeMap<String, u64>,
    /// The NF4 quantization of an NF4 folder.
    pub quantization: Option<QuantSummary>,
}

/// How an NF4 folder is quantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantSummary {
    /// Always `nf4`.
    pub method: String,
    /// Elements per absmax block (the smallest, if weights differ).
    pub blocksize: u64,
    /// Whether the absmax is quantized again.
    pub double_quant: bool,
    /// `bnb_4bit_compute_dtype`.
    pub compute_dtype: String,
    /// NF4 weights.
    pub weights: u64,
}

impl Summary {
    /// Summarises a validated model folder.
    #[must_use]
    pub fn of_model(m: &Model) -> Self {
        let c = &m.config;
        let mut s = Self::of_weights(&m.weights);
        s.architecture = Some(match c.moe {
            Moe::Dense => c.family.model_type().to_owned(),
            Moe::Pesc(_) => format!("pesc-{}", c.family.model_type()),
            Moe::Mixtral { .. } => "mixtral".to_owned(),
        });
        s.model_type = Some(c.model_type.clone());
        s.architectures.clone_from(&c.architectures);
        s.num_layers = Some(c.num_layers);
        s.hidden_size = Some(c.hidden_size);
        s.num_attention_heads = Some(c.num_heads);
        s.num_key_value_heads = Some(c.num_kv_heads);
        s.head_dim = Some(c.head_dim);
        s.intermediate_size = Some(c.intermediate_size);
        s.vocab_size = Some(c.vocab_size);
        s.rope_theta = Some(c.rope_theta);
        s.rope_scaling = match &c.rope_scaling {
            RopeScaling::None => None,
            RopeScaling::Linear { factor } => Some(format!("linear x{factor}")),
            RopeScaling::Llama3 { factor, .. } => Some(format!("llama3 x{factor}")),
            RopeScaling::Other { rope_type } => Some(rope_type.clone()),
        };
        s.tie_word_embeddings = Some(c.tie_word_embeddings);
        if let Some(q) = &m.quantization {
            // Count an NF4 weight by its original elements, not its packed bytes and pieces.
            for (name, info) in m.nf4_weights() {
                let stored: u64 = m
                    .weights
                    .tensors()
                    .filter(|t| t.name == name || t.name.strip_prefix(name).is_some_and(|r| r.starts_with('.')))
                    .map(pesc_io::TensorInfo::numel)
                    .sum();
                s.parameters = s.parameters - stored + info.numel();
            }
            s.active_parameters = s.parameters;
            s.quantization = Some(QuantSummary {
                method: "nf4".into(),
                blocksize: m.nf4_weights().map(|(_, i)| i.blocksize as u64).min().unwrap_or(0),
                double_quant: q.double_quant,
                compute_dtype: q.compute_dtype.clone(),
                weights: m.nf4_weights().count() as u64,
            });
        }
        let l = c.num_layers;
        match &c.moe {
            Moe::Dense => {}
            Moe::Pesc(p) => {
                s.num_experts = Some(p.num_experts);
                s.top_k = Some(p.top_k);
                s.adapter_dim = Some(p.adapter_dim);
                s.moe_scaling = Some(p.scaling);
                let per_expert = 2 * c.hidden_size * p.adapter_dim;
                s.active_parameters -= l * (p.num_experts - p.top_k) * per_expert;
            }
            Moe::Mixtral { num_experts, top_k } => {
                s.num_experts = Some(*num_experts);
                s.top_k = Some(*top_k);
                let per_expert = 3 * c.hidden_size * c.intermediate_size;
                s.active_parameters -= l * (num_experts - top_k) * per_expert;
            }
        }
        s
    }

    /// Summarises a weights file without a config, guessing sizes from names.
    #[must_use]
    pub fn of_weights(w: &Checkpoint) -> Self {
        let mut dtypes = BTreeMap::new();
        let mut parameters = 0u64;
        let mut layers = std::collections::BTreeSet::new();
        for t in w.tensors() {
            parameters += t.numel();
            *dtypes.entry(t.dtype.to_string()).or_insert(0) += t.numel();
            if let Some(rest) = t.name.strip_prefix("model.layers.") {
                if let Some(Ok(i)) = rest.split('.').next().map(str::parse::<u64>) {
                    layers.insert(i);
                }
            }
        }
        let shape = |name: &str| w.get(name).map(|t| t.shape.clone());
        let embed = shape("model.embed_tokens.weight").filter(|s| s.len() == 2);
        let has = |needle: &str| w.tensors().any(|t| t.name.contains(needle));
        let architecture = if embed.is_none() {
            None
        } else if has(".moe_adapter.") {
            Some("pesc".to_owned())
        } else if has(".block_sparse_moe.") {
            Some("mixtral".to_owned())
        } else if has(".self_attn.q_proj.bias") {
            Some("qwen2-like".to_owned())
        } else {
            Some("llama-like".to_owned())
        };
        let gate = shape("model.layers.0.mlp.gate_proj.weight").or_else(|| shape("model.layers.0.block_sparse_moe.experts.0.w1.weight"));
        Summary {
            architecture,
            model_type: None,
            architectures: Vec::new(),
            num_layers: layers.last().map(|l| l + 1),
            hidden_size: embed.as_ref().map(|s| s[1]),
            num_attention_heads: None,
            num_key_value_heads: None,
            head_dim: None,
            intermediate_size: gate.and_then(|s| s.first().copied()),
            vocab_size: embed.as_ref().map(|s| s[0]),
            rope_theta: None,
            rope_scaling: None,
            tie_word_embeddings: None,
            num_experts: None,
            top_k: None,
            adapter_dim: None,
            moe_scaling: None,
            parameters,
            active_parameters: parameters,
            tensors: w.len() as u64,
            bytes: w.total_bytes(),
            files: w.shard_count() as u64,
            dtypes,
            quantization: None,
        }
    }
}
