//! A Hugging Face `tokenizer.json` (and `tokenizer_config.json`) rebuilt from
//! the `tokenizer.ggml.*` metadata llama.cpp stores in a GGUF file.
//!
//! Supported: byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the
//! pre-tokenizers named by `tokenizer.ggml.pre` below. Tokens are already
//! spelled in the byte-level alphabet, merges are `"left right"` strings, and
//! token types 3 (control) and 4 (user-defined) become added tokens, special
//! and not, as llama.cpp treats them.

use serde_json::{json, Value};

/// The GPT-2 split, as byte-level BPE applies it with `use_regex`.
const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's regexes for `tokenizer.ggml.pre = "default"` (or none), in order.
const DEFAULT_SPLITS: [&str; 4] =
    [r"[\p{P}\$\+<=>\^~\|]+", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)", r"\p{N}+", r"[0-9][0-9][0-9]"];

/// What the GGUF says about its tokenizer.
pub struct GgufVocab {
    /// `tokenizer.ggml.model`.
    pub model: String,
    /// `tokenizer.ggml.pre` (absent means `default`).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`.
    pub merges: Vec<String>,
    /// Special token ids.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// Unknown.
    pub unk: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// `<arch>.context_length`.
    pub context_length: Option<u64>,
}

fn pre_tokenizer(pre: &str) -> Result<Value, String> {
    let byte_level =
        |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    // llama.cpp applies its regexes one after another, each to the pieces the
    // previous left (matches and the text between them), then maps bytes.
    let splits = |regexes: &[&str]| {
        let mut seq: Vec<Value> =
            regexes.iter().map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false})).collect();
        seq.push(byte_level(false));
        json!({"type": "Sequence", "pretokenizers": seq})
    };
    let split = |regex: &str| splits(&[regex]);
    Ok(match pre {
        "gpt-2" | "gpt2" => byte_level(true),
        // llama.cpp's fallback for BPE vocabularies it does not name.
        "default" => splits(&DEFAULT_SPLITS),
        // Digits one by one, then the GPT-2 split (llama.cpp's `smollm` and `starcoder`).
        "smollm" | "starcoder" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" => split(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT),
        other => {
            return Err(format!(
                "tokenizer.ggml.pre `{other}` is not supported (known: default, gpt2, smollm, starcoder, llama3/llama-bpe, qwen2)"
            ))
        }
    })
}

/// Builds `(tokenizer.json, tokenizer_config.json)`.
pub fn hf_tokenizer(v: &GgufVocab) -> Result<(Value, Value), String> {
    if v.model != "gpt2" {
        return Err(format!("tokenizer.ggml.model `{}` is not supported for import (only byte-level BPE, `gpt2`)", v.model));
    }
    if !v.token_types.is_empty() && v.token_types.len() != v.tokens.len() {
        return Err(format!("tokenizer.ggml.token_type has {} entries for {} tokens", v.token_types.len(), v.tokens.len()));
    }
    let mut vocab = serde_json::Map::new();
    for (i, t) in v.tokens.iter().enumerate() {
        if vocab.insert(t.clone(), json!(i)).is_some() {
            return Err(format!("tokenizer.ggml.tokens holds `{t}` twice"));
        }
    }
    let added: Vec<Value> = v
        .tokens
        .iter()
        .zip(&v.token_types)
        .enumerate()
        .filter(|(_, (_, ty))| matches!(ty, 3 | 4))
        .map(|(id, (t, ty))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": *ty == 3})
        })
        .collect();
    for (key, id) in [("bos_token_id", v.bos), ("eos_token_id", v.eos), ("unknown_token_id", v.unk), ("padding_token_id", v.pad)] {
        if let Some(id) = id.filter(|&i| i as usize >= v.tokens.len()) {
            return Err(format!("tokenizer.ggml.{key} {id} is outside the vocabulary of {} tokens", v.tokens.len()));
        }
    }
    let name = |id: Option<u32>| id.and_then(|i| v.tokens.get(i as usize)).cloned();
    let post = match (v.add_bos, name(v.bos)) {
        (true, Some(bos)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [v.bos], "tokens": [bos]}},
        }),
        _ => json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true}),
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(v.pre.as_deref().unwrap_or("default"))?,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": name(v.unk), "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": v.merges,
        },
    });
    let mut config = json!({
        "add_bos_token": v.add_bos,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": v.context_length.unwrap_or(2048),
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    for (key, id) in [("bos_token", v.bos), ("eos_token", v.eos), ("unk_token", v.unk), ("pad_token", v.pad)] {
        if let Some(t) = name(id) {
            config[key] = json!(t);
        }
    }
    if let Some(t) = &v.chat_template {
        config["chat_template"] = json!(t);
    }
    Ok((tokenizer, config))
}
