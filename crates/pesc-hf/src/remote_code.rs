//! The transformers modeling code every PESC folder carries: the files of the
//! `pesc_hf` Python package (`python/pesc_hf/`), embedded in the binary, and
//! the `auto_map` that makes `AutoModelForCausalLM.from_pretrained(dir,
//! trust_remote_code=True)` load them.

use serde_json::{json, Map, Value};

/// The files written beside `config.json`, with their bytes.
pub const FILES: [(&str, &str); 2] = [
    ("configuration_pesc.py", include_str!("../../../python/pesc_hf/configuration_pesc.py")),
    ("modeling_pesc.py", include_str!("../../../python/pesc_hf/modeling_pesc.py")),
];

/// The class-name stem of a PESC config's base (`Llama`, `Mistral`, `Qwen2`),
/// found as readers find it (docs/format.md §4.2); `None` for other configs.
fn pesc_stem(config: &Map<String, Value>) -> Option<&'static str> {
    let s = |k: &str| config.get(k).and_then(Value::as_str);
    let base = match (s("pesc_base_model_type"), s("model_type")) {
        (Some(base), _) => base,
        (None, Some("camelidae")) => "llama",
        (None, Some("qwen2idae")) => "qwen2",
        (None, Some("sparsetral")) => "mistral",
        (None, Some(dense)) if config.contains_key("num_experts") && config.contains_key("adapter_dim") => dense,
        _ => return None,
    };
    match base {
        "llama" => Some("Llama"),
        "mistral" => Some("Mistral"),
        "qwen2" => Some("Qwen2"),
        _ => None,
    }
}

/// Sets `auto_map` of a PESC config to the embedded classes (replacing any
/// other remote code it named); returns whether `config` is a PESC config.
pub fn add_auto_map(config: &mut Map<String, Value>) -> bool {
    let Some(stem) = pesc_stem(config) else { return false };
    config.insert(
        "auto_map".into(),
        json!({
            "AutoConfig": format!("configuration_pesc.Pesc{stem}Config"),
            "AutoModelForCausalLM": format!("modeling_pesc.Pesc{stem}ForCausalLM"),
        }),
    );
    true
}

/// The usage snippet for a model card.
#[must_use]
pub fn usage_snippet() -> &'static str {
    "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n\
     model = AutoModelForCausalLM.from_pretrained(\"path/or/repo\", trust_remote_code=True)\n\
     tokenizer = AutoTokenizer.from_pretrained(\"path/or/repo\")\n```\n\n\
     The modeling code is in `modeling_pesc.py` and `configuration_pesc.py` (pesc-convert's `pesc_hf` package); \
     with `output_router_logits=True` the output carries the router logits and the balancing loss."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_map_follows_the_base() {
        for (config, stem) in [
            (json!({"model_type": "camelidae", "pesc_base_model_type": "mistral"}), Some("Mistral")),
            (json!({"model_type": "qwen2idae"}), Some("Qwen2")),
            (json!({"model_type": "llama", "num_experts": 4, "adapter_dim": 8}), Some("Llama")),
            (json!({"model_type": "llama"}), None),
            (json!({"model_type": "mixtral", "num_local_experts": 8}), None),
        ] {
            let mut c = config.as_object().unwrap().clone();
            assert_eq!(add_auto_map(&mut c), stem.is_some(), "{config}");
            if let Some(stem) = stem {
                assert_eq!(c["auto_map"]["AutoModelForCausalLM"], format!("modeling_pesc.Pesc{stem}ForCausalLM"));
            } else {
                assert!(!c.contains_key("auto_map"));
            }
        }
    }
}
