//! `pesc-convert inspect PATH [--json]`.

use crate::cli::InspectArgs;
use crate::output::{self, human_bytes, thousands};
use anyhow::Result;
use pesc_arch::{Model, Summary};
use pesc_io::Checkpoint;
use serde_json::{json, Value};

pub fn run(args: &InspectArgs) -> Result<()> {
    let (format, summary, warnings) = if args.path.is_dir() {
        let model = Model::open(&args.path)?;
        let format = if model.weights.is_sharded() { "safetensors-sharded" } else { "safetensors-folder" };
        (format, Summary::of_model(&model), model.weights.warnings().to_vec())
    } else {
        let weights = Checkpoint::open_file(&args.path)?;
        ("safetensors", Summary::of_weights(&weights), Vec::new())
    };
    for w in &warnings {
        output::warn(w);
    }
    if args.json {
        let mut text = serde_json::to_string_pretty(&to_json(format, &summary))?;
        text.push('\n');
        output::data(&text)
    } else {
        output::data(&table(format, &summary))
    }
}

fn to_json(format: &str, s: &Summary) -> Value {
    let mut v = json!({
        "format": format,
        "architecture": s.architecture,
        "model_type": s.model_type,
        "architectures": s.architectures,
        "num_layers": s.num_layers,
        "hidden_size": s.hidden_size,
        "num_attention_heads": s.num_attention_heads,
        "num_key_value_heads": s.num_key_value_heads,
        "head_dim": s.head_dim,
        "intermediate_size": s.intermediate_size,
        "vocab_size": s.vocab_size,
        "rope_theta": s.rope_theta,
        "rope_scaling": s.rope_scaling,
        "tie_word_embeddings": s.tie_word_embeddings,
        "parameters": s.parameters,
        "tensors": s.tensors,
        "bytes": s.bytes,
        "files": s.files,
        "dtypes": s.dtypes,
    });
    if s.num_experts.is_some() {
        v["num_experts"] = json!(s.num_experts);
        v["top_k"] = json!(s.top_k);
        v["active_parameters"] = json!(s.active_parameters);
        if s.adapter_dim.is_some() {
            v["adapter_dim"] = json!(s.adapter_dim);
            v["moe_scaling"] = json!(s.moe_scaling);
        }
    }
    v
}

fn table(format: &str, s: &Summary) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "unknown".to_owned(), thousands);
    let mut rows: Vec<(&str, String)> = vec![
        ("format", format!("{format} ({} weight file{})", s.files, if s.files == 1 { "" } else { "s" })),
        (
            "architecture",
            match (&s.architecture, s.architectures.first()) {
                (Some(a), Some(class)) => format!("{a} ({class})"),
                (Some(a), None) => a.clone(),
                (None, _) => "unknown".into(),
            },
        ),
        ("layers", opt(s.num_layers)),
        ("hidden size", opt(s.hidden_size)),
    ];
    if let (Some(h), Some(kv), Some(d)) = (s.num_attention_heads, s.num_key_value_heads, s.head_dim) {
        rows.push(("attention heads", format!("{h} ({kv} key-value, head_dim {d})")));
    }
    rows.push(("intermediate size", opt(s.intermediate_size)));
    rows.push(("vocab size", opt(s.vocab_size)));
    if let Some(theta) = s.rope_theta {
        let scaling = s.rope_scaling.as_ref().map_or_else(String::new, |r| format!(", scaling {r}"));
        rows.push(("rope", format!("theta {theta}{scaling}")));
    }
    if let Some(t) = s.tie_word_embeddings {
        rows.push(("tied embeddings", if t { "yes" } else { "no" }.into()));
    }
    if let (Some(n), Some(k)) = (s.num_experts, s.top_k) {
        let adapter = s.adapter_dim.map_or_else(String::new, |a| format!(", adapter_dim {a}, scaling {}", s.moe_scaling.unwrap_or(1.0)));
        rows.push(("experts", format!("{n} (top-{k}{adapter})")));
    }
    rows.push(("parameters", thousands(s.parameters)));
    if s.active_parameters != s.parameters {
        rows.push(("active per token", thousands(s.active_parameters)));
    }
    rows.push(("tensors", thousands(s.tensors)));
    rows.push(("bytes", format!("{} ({})", thousands(s.bytes), human_bytes(s.bytes))));
    let dtypes: Vec<String> = s.dtypes.iter().map(|(d, n)| format!("{d} {}", thousands(*n))).collect();
    rows.push(("dtypes", dtypes.join(", ")));
    rows.iter().map(|(k, v)| format!("{k:<18}{v}\n")).collect()
}
