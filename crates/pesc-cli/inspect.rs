//! `pesc-convert inspect PATH [--json]`.

use crate::cli::InspectArgs;
use crate::output::{self, human_bytes, thousands};
use anyhow::Result;
use pesc_hf::{Model, Summary};
use pesc_io::Checkpoint;
use serde_json::{json, Value};

pub fn run(args: &InspectArgs) -> Result<()> {
    if is_gguf(&args.path) {
        return gguf(args);
    }
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
    if let Some(q) = &s.quantization {
        v["quantization"] = json!({
            "method": q.method, "blocksize": q.blocksize, "double_quant": q.double_quant,
            "compute_dtype": q.compute_dtype, "weights": q.weights,
        });
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
    if let Some(q) = &s.quantization {
        let dq = if q.double_quant { "double quant" } else { "no double quant" };
        rows.push((
            "quantization",
            format!("{} (blocksize {}, {dq}) on {} linear weights, compute dtype {}", q.method, q.blocksize, q.weights, q.compute_dtype),
        ));
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

/// A file is read as GGUF when it is named `.gguf` or starts with the magic.
fn is_gguf(path: &std::path::Path) -> bool {
    if path.is_dir() {
        return false;
    }
    let named = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let mut magic = [0u8; 4];
    let starts = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok() && magic == *b"GGUF";
    named || starts
}

/// A metadata value for display: scalars as they are, long arrays summarised.
fn gguf_value(v: &pesc_gguf::Value) -> Value {
    use pesc_gguf::{Array, Value as G};
    match v {
        G::U8(x) => json!(x),
        G::I8(x) => json!(x),
        G::U16(x) => json!(x),
        G::I16(x) => json!(x),
        G::U32(x) => json!(x),
        G::I32(x) => json!(x),
        G::U64(x) => json!(x),
        G::I64(x) => json!(x),
        G::F32(x) => json!(x),
        G::F64(x) => json!(x),
        G::Bool(x) => json!(x),
        G::String(s) => json!(s),
        G::Array(a) if a.len() <= 16 => match a {
            Array::String(s) => json!(s.iter().collect::<Vec<_>>()),
            other => json!(format!("[{} x {}]", other.len(), other.element_type())),
        },
        G::Array(a) => json!(format!("[{} x {}]", a.len(), a.element_type())),
    }
}

fn gguf(args: &InspectArgs) -> Result<()> {
    let f = pesc_gguf::GgufFile::open(&args.path)?;
    let md = f.metadata();
    let arch = md.opt_str("general.architecture").ok().flatten().map(str::to_owned);
    let key = |k: &str| arch.as_ref().and_then(|a| md.get(&format!("{a}.{k}"))).map(gguf_value);
    let parameters: u64 = f.tensors().iter().map(pesc_gguf::TensorInfo::n_elements).sum();
    let bytes: u64 = f.tensors().iter().map(|t| t.nbytes).sum();
    let mut types: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for t in f.tensors() {
        *types.entry(t.ty.to_string()).or_insert(0) += t.n_elements();
    }
    let tensors: Vec<Value> =
        f.tensors().iter().map(|t| json!({"name": t.name, "type": t.ty.to_string(), "shape": t.shape(), "bytes": t.nbytes})).collect();
    let metadata: serde_json::Map<String, Value> = md.iter().map(|(k, v)| (k.to_owned(), gguf_value(v))).collect();
    let report = json!({
        "format": "gguf",
        "version": f.version(),
        "architecture": arch,
        "num_layers": key("block_count"),
        "hidden_size": key("embedding_length"),
        "num_attention_heads": key("attention.head_count"),
        "num_key_value_heads": key("attention.head_count_kv"),
        "intermediate_size": key("feed_forward_length"),
        "vocab_size": key("vocab_size"),
        "num_experts": key("expert_count"),
        "top_k": key("expert_used_count"),
        "parameters": parameters,
        "tensors": f.tensors().len(),
        "bytes": bytes,
        "dtypes": types,
        "metadata": metadata,
        "tensor_list": tensors,
    });
    if args.json {
        return output::data(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    }
    let mut t = format!(
        "format            GGUF v{} ({} bytes, alignment {})\narchitecture      {}\nparameters        {}\ntensors           {}\nbytes             {} ({})\ndtypes            {}\n\nmetadata\n",
        f.version(),
        thousands(f.file_len()),
        f.alignment(),
        arch.as_deref().unwrap_or("unknown"),
        thousands(parameters),
        f.tensors().len(),
        thousands(bytes),
        human_bytes(bytes),
        types.iter().map(|(d, n)| format!("{d} {}", thousands(*n))).collect::<Vec<_>>().join(", ")
    );
    for (k, v) in md.iter() {
        let shown = match gguf_value(v) {
            Value::String(s) if s.len() > 80 => format!("{:?}... ({} chars)", s.chars().take(60).collect::<String>(), s.chars().count()),
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        t.push_str(&format!("  {k:<44} {shown}\n"));
    }
    t.push_str("\ntensors\n");
    for ti in f.tensors() {
        t.push_str(&format!("  {:<36} {:<6} {:<18} {}\n", ti.name, ti.ty.to_string(), format!("{:?}", ti.shape()), thousands(ti.nbytes)));
    }
    output::data(&t)
}
