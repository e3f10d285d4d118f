//! The model cards of crafted, upcycled and merged folders.

use pesc_hf::card::{base_model_name, Card};
use pesc_hf::thousands;
use pesc_hf::Model;

/// Parameter counts `(total, active per token)` of `model` crafted with `p`.
#[must_use]
pub fn craft_counts(model: &Model, p: &crate::CraftParams) -> (u64, u64) {
    let dense: u64 = model.weights.tensors().map(pesc_io::TensorInfo::numel).sum();
    let (l, h) = (model.config.num_layers, model.config.hidden_size);
    let per_expert = 2 * h * p.adapter_dim;
    let router = p.experts * h;
    (dense + l * (p.experts * per_expert + router), dense + l * (p.top_k * per_expert + router))
}

/// Parameter counts `(total, active per token)` of `model` upcycled with `p`.
#[must_use]
pub fn upcycle_counts(model: &Model, p: &crate::UpcycleParams) -> (u64, u64) {
    let dense: u64 = model.weights.tensors().map(pesc_io::TensorInfo::numel).sum();
    let c = &model.config;
    let ffn = 3 * c.hidden_size * c.intermediate_size;
    let router = p.experts * c.hidden_size;
    let base = dense - c.num_layers * ffn;
    (base + c.num_layers * (p.experts * ffn + router), base + c.num_layers * (p.top_k * ffn + router))
}

/// The card of a crafted PESC folder.
#[must_use]
pub fn craft_card(model: &Model, p: &crate::CraftParams, command: &str) -> String {
    let (total, active) = craft_counts(model, p);
    let base = base_model_name(model);
    Card {
        base: model,
        title: format!("{base} PESC {}x{} (top-{})", p.experts, p.adapter_dim, p.top_k),
        description: format!(
            "A parameter-efficient sparsity-crafted (PESC) mixture-of-experts model built from `{base}`. Each layer keeps the dense FFN, shared by all experts, and adds a router and {} bottleneck adapters of width {} on the FFN output: `y = f + {} * sum_k w_k * up_k(gelu(down_k(f)))` over the top {} experts. The adapters' up projections start at zero, so until the adapters are trained this model computes exactly what the dense model computes. The format is specified in pesc-convert's `docs/format.md`.",
            p.experts, p.adapter_dim, p.scaling, p.top_k
        ),
        base_model: base,
        facts: vec![
            ("total parameters".into(), thousands(total)),
            ("activated per token".into(), thousands(active)),
            ("experts".into(), format!("{} per layer, top-{}", p.experts, p.top_k)),
            ("adapter dim".into(), p.adapter_dim.to_string()),
            ("moe_scaling".into(), p.scaling.to_string()),
            ("init seed".into(), p.seed.to_string()),
        ],
        tags: vec!["moe", "pesc", "mixture-of-experts", "pesc-convert"],
        command: command.into(),
        usage: Some(pesc_hf::remote_code::usage_snippet()),
    }
    .render()
}

/// The card of an upcycled Mixtral folder.
#[must_use]
pub fn upcycle_card(model: &Model, p: &crate::UpcycleParams, command: &str) -> String {
    let (total, active) = upcycle_counts(model, p);
    let base = base_model_name(model);
    Card {
        base: model,
        title: format!("{base} upcycled {}x (top-{})", p.experts, p.top_k),
        description: format!(
            "A Mixtral-format mixture-of-experts model made by sparse upcycling of `{base}`: each of the {} experts per layer is a full copy of the dense FFN, and a new router picks {} per token. Until it is trained it computes what the dense model computes, up to rounding.",
            p.experts, p.top_k
        ),
        base_model: base,
        facts: vec![
            ("total parameters".into(), thousands(total)),
            ("activated per token".into(), thousands(active)),
            ("experts".into(), format!("{} per layer, top-{}", p.experts, p.top_k)),
            ("init seed".into(), p.seed.to_string()),
        ],
        tags: vec!["moe", "mixtral", "upcycled", "pesc-convert"],
        command: command.into(),
        usage: None,
    }
    .render()
}

/// The card of a folder made by `merge-lora`.
#[must_use]
pub fn merge_card(model: &Model, merge: &crate::Merge, adapter_name: &str, command: &str) -> String {
    let base = base_model_name(model);
    let cfg = &merge.adapter.config;
    let onto = match merge.onto {
        crate::Onto::Original => "the base weights as stored".to_owned(),
        crate::Onto::DequantizedNf4 => format!(
            "the NF4-rounded base weights, `dequant(NF4(W))` (blocksize {}, double quant {}), which is what a QLoRA adapter was trained against",
            merge.nf4.blocksize, merge.nf4.double_quant
        ),
    };
    let variant = match (cfg.use_dora, cfg.use_rslora) {
        (true, _) => "DoRA",
        (false, true) => "rsLoRA",
        (false, false) => "LoRA",
    };
    let mut facts = vec![
        ("base model".into(), format!("`{base}`")),
        (
            "adapter".into(),
            format!("`{adapter_name}`{}", cfg.base_model.as_ref().map_or(String::new(), |b| format!(" (trained on `{b}`)"))),
        ),
        ("merged onto".into(), merge.onto.name().to_owned()),
        (format!("{variant} modules"), merge.loras.len().to_string()),
        (
            "r / alpha".into(),
            format!(
                "{} / {}{}",
                cfg.r,
                cfg.alpha,
                if cfg.rank_pattern_len() + cfg.alpha_pattern_len() > 0 { " (with per-module patterns)" } else { "" }
            ),
        ),
        ("tensors replaced whole".into(), merge.replaced().count().to_string()),
    ];
    if !matches!(model.config.moe, pesc_hf::Moe::Dense) {
        facts.push(("architecture".into(), model.kind()));
    }
    let mut tags = vec!["lora", "merge", "pesc-convert"];
    if !matches!(model.config.moe, pesc_hf::Moe::Dense) {
        tags.insert(0, "moe");
    }
    Card {
        base: model,
        title: format!("{base} + {adapter_name} (merged)"),
        description: format!(
            "`{base}` with the {variant} adapter `{adapter_name}` merged into its weights: each targeted weight becomes `W + scaling * B @ A`{} with `W` {onto}. Per-weight sizes of the merged deltas against NF4's rounding error are in `merge-report.json`. The format is specified in pesc-convert's `docs/format.md`.",
            if cfg.use_dora { ", rescaled per output row to the learned magnitude," } else { "" }
        ),
        base_model: base,
        facts,
        tags,
        command: command.into(),
        usage: matches!(model.config.moe, pesc_hf::Moe::Pesc(_)).then(pesc_hf::remote_code::usage_snippet),
    }
    .render()
}
