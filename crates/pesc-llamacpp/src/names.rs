//! llama.cpp's tensor names and how they map to Hugging Face's, in one
//! table read in both directions (export plans from it, import resolves
//! through it; `docs/format.md` §8).
//!
//! Four layouts: llama.cpp's `llama`, dense or Mixtral (`ffn_gate_inp`
//! router, experts stacked along the outermost dimension in
//! `ffn_{gate,up,down}_exps`); llama.cpp's `qwen2` (the `llama` names plus
//! `attn_{q,k,v}.bias`, q and k rows not permuted: llama.cpp rotates Qwen2's
//! halves as Hugging Face does); and this project's `pesc` (the layout of its
//! base plus an `ffn_adapter_gate_inp` router and stacked
//! `ffn_adapter_{down,up}_exps` adapters per layer).

use pesc_hf::{names, ExpertNaming, Family, ModelConfig, Moe};

/// The role of a tensor in `llama-quantize`'s rules (`tensor_get_category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `token_embd`.
    TokenEmbd,
    /// `output`.
    Output,
    /// `attn_q`.
    AttnQ,
    /// `attn_k`.
    AttnK,
    /// `attn_v`.
    AttnV,
    /// `attn_output`.
    AttnOutput,
    /// `ffn_gate` (and Mixtral's `ffn_gate_exps`).
    FfnGate,
    /// `ffn_up`.
    FfnUp,
    /// `ffn_down`.
    FfnDown,
    /// A norm.
    Norm,
    /// A bias (Qwen2's q, k and v): F32 always, as every 1-D tensor.
    Bias,
    /// A Mixtral or PESC router: F32 always (llama.cpp never quantizes `ffn_gate_inp`).
    Router,
    /// PESC adapters: kept 16-bit in quantized files.
    Adapter,
}

/// Outside the blocks: GGUF name, Hugging Face name, category.
const GLOBAL: [(&str, &str, Category); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight", Category::TokenEmbd),
    ("output_norm.weight", "model.norm.weight", Category::Norm),
    ("output.weight", "lm_head.weight", Category::Output),
];

/// In block `blk.N.` / `model.layers.N.`: GGUF name, Hugging Face name, category.
const LAYER: [(&str, &str, Category); 9] = [
    ("attn_norm.weight", "input_layernorm.weight", Category::Norm),
    ("ffn_norm.weight", "post_attention_layernorm.weight", Category::Norm),
    ("attn_q.weight", "self_attn.q_proj.weight", Category::AttnQ),
    ("attn_k.weight", "self_attn.k_proj.weight", Category::AttnK),
    ("attn_v.weight", "self_attn.v_proj.weight", Category::AttnV),
    ("attn_output.weight", "self_attn.o_proj.weight", Category::AttnOutput),
    ("ffn_gate.weight", "mlp.gate_proj.weight", Category::FfnGate),
    ("ffn_up.weight", "mlp.up_proj.weight", Category::FfnUp),
    ("ffn_down.weight", "mlp.down_proj.weight", Category::FfnDown),
];

/// Mixtral's stacked experts: GGUF name and the expert projection (`w1` gate, `w3` up, `w2` down).
const MIXTRAL_EXPERTS: [(&str, &str, Category); 3] = [
    ("ffn_gate_exps.weight", "w1", Category::FfnGate),
    ("ffn_up_exps.weight", "w3", Category::FfnUp),
    ("ffn_down_exps.weight", "w2", Category::FfnDown),
];

/// A GGUF tensor and the Hugging Face tensors it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The GGUF name.
    pub gguf: String,
    /// The Hugging Face tensors: one, or the experts stacked along the
    /// outermost dimension in expert order.
    pub hf: Vec<String>,
    /// Whether `hf` are stacked experts (the GGUF tensor has an expert dimension).
    pub stacked: bool,
    /// Its role in llama-quantize's rules.
    pub category: Category,
    /// Its block (0 outside the blocks).
    pub layer: u64,
    /// For q and k: the head count of llama.cpp's rotary row permutation.
    pub permute_heads: Option<u64>,
}

/// Qwen2's q, k and v biases: GGUF name (in `blk.N.`), Hugging Face name (in `model.layers.N.`).
const QKV_BIASES: [(&str, &str); 3] =
    [("attn_q.bias", "self_attn.q_proj.bias"), ("attn_k.bias", "self_attn.k_proj.bias"), ("attn_v.bias", "self_attn.v_proj.bias")];

/// The GGUF architecture of a model: `pesc` for PESC models, `qwen2` for
/// dense Qwen2 models, `llama` for the rest (dense and Mixtral).
#[must_use]
pub fn architecture(config: &ModelConfig) -> &'static str {
    match (&config.moe, config.family) {
        (Moe::Pesc(_), _) => "pesc",
        (_, Family::Qwen2) => "qwen2",
        _ => "llama",
    }
}

/// Whether q and k rows are stored in llama.cpp's interleaved rotary layout:
/// every layout but a Qwen2 base's.
#[must_use]
pub fn permutes_rotary_rows(config: &ModelConfig) -> bool {
    config.family != Family::Qwen2
}

/// Every GGUF tensor of a model with `config`, in table order (global
/// tensors first, then block by block). With tied embeddings there is no
/// `output.weight` (llama.cpp falls back to `token_embd`).
#[must_use]
pub fn tensor_map(config: &ModelConfig) -> Vec<Mapped> {
    let one = |gguf: &str, hf: String, category: Category, layer: u64, permute_heads: Option<u64>| Mapped {
        gguf: gguf.to_owned(),
        hf: vec![hf],
        stacked: false,
        category,
        layer,
        permute_heads,
    };
    let stacked = |gguf: String, hf: Vec<String>, category: Category, layer: u64| Mapped {
        gguf,
        hf,
        stacked: true,
        category,
        layer,
        permute_heads: None,
    };
    let mut out = Vec::new();
    for (g, hf, cat) in GLOBAL {
        if cat != Category::Output || !config.tie_word_embeddings {
            out.push(one(g, hf.into(), cat, 0, None));
        }
    }
    for l in 0..config.num_layers {
        for (g, hf, cat) in LAYER {
            let is_ffn = matches!(cat, Category::FfnGate | Category::FfnUp | Category::FfnDown);
            if is_ffn && matches!(config.moe, Moe::Mixtral { .. }) {
                continue;
            }
            let permute = match cat {
                Category::AttnQ if permutes_rotary_rows(config) => Some(config.num_heads),
                Category::AttnK if permutes_rotary_rows(config) => Some(config.num_kv_heads),
                _ => None,
            };
            out.push(one(&format!("blk.{l}.{g}"), format!("model.layers.{l}.{hf}"), cat, l, permute));
            if cat == Category::AttnV && config.qkv_bias {
                for (g, hf) in QKV_BIASES {
                    out.push(one(&format!("blk.{l}.{g}"), format!("model.layers.{l}.{hf}"), Category::Bias, l, None));
                }
            }
        }
        match &config.moe {
            Moe::Mixtral { num_experts, .. } => {
                out.push(one(&format!("blk.{l}.ffn_gate_inp.weight"), names::mixtral_gate(l), Category::Router, l, None));
                for (g, w, cat) in MIXTRAL_EXPERTS {
                    let hf = (0..*num_experts).map(|j| names::mixtral_expert(l, j, w)).collect();
                    out.push(stacked(format!("blk.{l}.{g}"), hf, cat, l));
                }
            }
            Moe::Pesc(p) => {
                out.push(one(&format!("blk.{l}.ffn_adapter_gate_inp.weight"), names::pesc_router(l), Category::Router, l, None));
                for which in ["down", "up"] {
                    let hf = (0..p.num_experts).map(|j| ExpertNaming::Camelidae.adapter(l, j, which)).collect();
                    out.push(stacked(format!("blk.{l}.ffn_adapter_{which}_exps.weight"), hf, Category::Adapter, l));
                }
            }
            Moe::Dense => {}
        }
    }
    out
}

/// Sort key of llama.cpp's `weight_name_comparer` (the order `llama-quantize`
/// writes): block number (-1 outside the blocks), then name.
#[must_use]
pub fn loader_order(name: &str) -> (i64, &str) {
    let layer = name.strip_prefix("blk.").and_then(|r| r.split_once('.')).and_then(|(l, _)| l.parse::<i64>().ok()).unwrap_or(-1);
    (layer, name)
}

/// The block number of a GGUF tensor name, if it has one.
#[must_use]
pub fn block_of(name: &str) -> Option<u64> {
    name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_order_sorts_blocks_numerically() {
        let mut names = vec![
            "blk.10.attn_q.weight",
            "token_embd.weight",
            "blk.2.ffn_up.weight",
            "output.weight",
            "blk.2.attn_k.weight",
            "output_norm.weight",
        ];
        names.sort_by(|a, b| loader_order(a).cmp(&loader_order(b)));
        assert_eq!(
            names,
            [
                "output.weight",
                "output_norm.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_q.weight"
            ]
        );
    }

    #[test]
    fn every_config_tensor_is_mapped_once() {
        for moe in [
            Moe::Dense,
            Moe::Mixtral { num_experts: 3, top_k: 2 },
            Moe::Pesc(pesc_hf::PescParams { num_experts: 3, top_k: 2, adapter_dim: 4, scaling: 1.0 }),
        ] {
            for (tied, model_type) in [(false, "llama"), (true, "llama"), (false, "qwen2"), (true, "qwen2")] {
                let config = format!(
                    r#"{{"model_type": "{model_type}", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 10}}"#
                );
                let mut cfg = ModelConfig::parse(std::path::Path::new("config.json"), config.as_bytes()).unwrap();
                cfg.moe = moe.clone();
                cfg.tie_word_embeddings = tied;
                let mut mapped: Vec<String> = tensor_map(&cfg).into_iter().flat_map(|m| m.hf).collect();
                mapped.sort();
                let expected: Vec<String> = cfg.expected_tensors().unwrap().into_iter().map(|(n, _)| n).collect();
                assert_eq!(mapped, expected, "{moe:?}, tied {tied}, {model_type}");
            }
        }
    }
}
