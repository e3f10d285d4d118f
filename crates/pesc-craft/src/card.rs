//! The model card (`README.md`) of a crafted or upcycled folder, with the Hub's
//! YAML metadata.

use pesc_arch::Model;
use std::fmt::Write as _;

/// What the card says about the new model.
pub(crate) struct Card<'a> {
    /// The dense source.
    pub base: &'a Model,
    /// Hub id or name of the base model (`base_model`).
    pub base_model: String,
    /// Title line.
    pub title: String,
    /// Short description paragraph(s).
    pub description: String,
    /// Rows of the facts table.
    pub facts: Vec<(String, String)>,
    /// Tags.
    pub tags: Vec<&'static str>,
    /// The command that produced the folder.
    pub command: String,
}

/// `_name_or_path` from the model's config when it looks like a Hub id.
#[must_use]
pub(crate) fn hub_id(model: &Model) -> Option<String> {
    let id = model.config.raw.get("_name_or_path").and_then(|v| v.as_str())?;
    (id.split('/').count() == 2 && !id.starts_with('/') && !id.starts_with('.')).then(|| id.to_owned())
}

/// The base model's name: its Hub id (see [`hub_id`]), else its folder name.
#[must_use]
pub(crate) fn base_model_name(model: &Model) -> String {
    hub_id(model).unwrap_or_else(|| {
        std::fs::canonicalize(&model.dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "dense-model".into())
    })
}

/// The `license:` of the base folder's model card front matter, if any.
#[must_use]
pub(crate) fn base_license(model: &Model) -> Option<String> {
    let text = pesc_io::read_capped(&model.dir.join("README.md"), 1 << 20).ok()?;
    let text = String::from_utf8(text).ok()?;
    let front = text.strip_prefix("---\n")?.split("\n---").next()?;
    front.lines().find_map(|l| l.strip_prefix("license:").map(|v| v.trim().trim_matches('"').to_owned())).filter(|v| !v.is_empty())
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

impl Card<'_> {
    /// Renders the card.
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = String::from("---\n");
        let _ = writeln!(s, "base_model: {}", yaml_str(&self.base_model));
        s.push_str("base_model_relation: merge\n");
        if let Some(l) = base_license(self.base) {
            let _ = writeln!(s, "license: {}", yaml_str(&l));
        }
        s.push_str("tags:\n");
        for t in &self.tags {
            let _ = writeln!(s, "- {t}");
        }
        s.push_str("---\n\n");
        let _ = write!(s, "# {}\n\n{}\n\n", self.title, self.description);
        s.push_str("| | |\n|---|---|\n");
        for (k, v) in &self.facts {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = write!(
            s,
            "\nMade with pesc-convert {} by:\n\n```sh\n{}\n```\n\nEvery file is listed with its SHA-256 in `SHA256SUMS` (`sha256sum -c SHA256SUMS`) and `pesc-manifest.json` (`pesc-convert verify-manifest .`).\n",
            env!("CARGO_PKG_VERSION"),
            self.command
        );
        s
    }
}

/// Formats a count with thousands separators.
#[must_use]
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

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
    if !matches!(model.config.moe, pesc_arch::Moe::Dense) {
        facts.push(("architecture".into(), model.kind()));
    }
    let mut tags = vec!["lora", "merge", "pesc-convert"];
    if !matches!(model.config.moe, pesc_arch::Moe::Dense) {
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
    }
    .render()
}
