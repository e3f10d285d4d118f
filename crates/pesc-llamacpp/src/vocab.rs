//! Vocabularies, both ways: a model folder's tokenizer written as the
//! `tokenizer.ggml.*` metadata llama.cpp's converter writes ([`from_folder`]),
//! and that metadata read back ([`GgufVocab::read`]) into the
//! `tokenizer.json` and `tokenizer_config.json` transformers would write
//! ([`GgufVocab::to_hf`]).
//!
//! ## Import
//!
//! - Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the
//!   pre-tokenizers named by `tokenizer.ggml.pre` below. Tokens are already
//!   spelled in the byte-level alphabet, merges are `"left right"` strings, and
//!   token types 3 (control) and 4 (user-defined) become added tokens, special
//!   and not, as llama.cpp treats them.
//! - SentencePiece (`llama`): transformers' legacy Llama tokenizer over the
//!   same tokens, merges generated from the scores ([`pesc_hf::spm`]);
//!   `add_space_prefix` and `add_bos_token` default to true as in llama.cpp.
//!   Scores and token types are required, every array must have one entry per
//!   token, and special ids must lie inside the vocabulary.
//!
//! ## Export
//!
//! As `convert_hf_to_gguf.py` (vendored in llama-cpp-python 0.3.36:
//! `conversion/base.py::get_vocab_base` and `_set_vocab_gpt2`, gguf-py's
//! `SpecialVocab`). Byte-level BPE in `tokenizer.json` (`tokenizer.ggml.model =
//! gpt2`), and SentencePiece (below). The converter names the pre-tokenizer by hashing the token ids of
//! a test string; here it is read from `tokenizer.json`'s `pre_tokenizer`,
//! which must be one that a llama.cpp pre-tokenizer reproduces:
//!
//! | `pre_tokenizer` | `tokenizer.ggml.pre` |
//! | --- | --- |
//! | `ByteLevel` (GPT-2 regex, no prefix space) | `gpt-2` |
//! | `Sequence[Digits(individual), ByteLevel]` | `smollm` |
//! | `Sequence[Split(Llama 3 regex), ByteLevel(no regex)]` | `llama-bpe` |
//! | `Sequence[Split(Qwen2 regex), ByteLevel(no regex)]` | `qwen2` |
//!
//! A plain `ByteLevel` maps to `gpt-2`, not `default`: llama.cpp's `default`
//! pre-tokenizer first splits punctuation runs and groups digits by three
//! (`llama-vocab.cpp`), so it tokenizes `don't` or `12345` differently from
//! the Hugging Face tokenizer; `gpt-2` is the GPT-2 split alone.
//!
//! The rest follows the converter:
//!
//! - `tokenizer.ggml.tokens`: every id below `vocab_size` in id order, added
//!   tokens included; ids the tokenizer lacks become `[PAD{id}]` (type 5,
//!   unused).
//! - `tokenizer.ggml.token_type`: 1 normal; added tokens 3 (control) when
//!   special or when they look special (`<|...|>` and the converter's short
//!   list), else 4 (user-defined, with `▁` written as a space).
//! - `tokenizer.ggml.merges`: `"left right"` strings; the pair form's spaces
//!   are written as U+0120 as gguf-py does.
//! - special token ids, in the order bos, eos, unk, sep, pad, cls, mask: first
//!   `tokenizer_config.json`'s `*_token` strings looked up among the added
//!   tokens, then `config.json`'s integer `*_token_id`.
//! - `tokenizer.ggml.add_bos_token` / `add_eos_token` / `add_sep_token`: from
//!   the post-processor (a `ByteLevel` one means false; a
//!   `TemplateProcessing` one that starts with the BOS token means true),
//!   then `tokenizer_config.json`'s `add_*_token`. A vocabulary of exactly
//!   49152 tokens gets `add_bos_token = false`, as the converter does for
//!   Granite and SmolLM models.
//! - `tokenizer.ggml.add_space_prefix` from `tokenizer_config.json`'s
//!   `add_prefix_space`, written first.
//! - `tokenizer.chat_template`: `tokenizer_config.json`'s `chat_template`,
//!   else `chat_template.jinja`, else `chat_template.json`. (The converter
//!   reads the last two only when `tokenizer_config.json` exists.)
//!
//! SentencePiece vocabularies (`tokenizer.ggml.model = llama`), as the
//! converter's `_set_vocab_sentencepiece`: from `tokenizer.model` when the
//! folder has one (it wins over `tokenizer.json`, as in the converter): its
//! pieces, scores and types (user-defined pieces written as normal), then
//! `added_tokens.json` (user-defined, score -1000) and `tokenizer_config.json`'s
//! `added_tokens_decoder` (control or user-defined, score -1000), ids beyond
//! the pieces `[PAD{id}]` (unused, score -10000); `tokenizer.ggml.pre =
//! default`, no merges. From a byte-fallback BPE `tokenizer.json` alone the
//! tokens, types and flags are read as for byte-level BPE, `<0xXX>` pieces
//! typed as bytes, the prefix space from its normalizer or Metaspace
//! pre-tokenizer, and each token's score minus the rank of the first merge
//! producing it (the converter's -1000 everywhere would make llama.cpp merge
//! left to right, not in the BPE's order).
//!
//! A folder with neither `tokenizer.json` nor `tokenizer.model` gets
//! `tokenizer.ggml.model = none` alone (the converter's `_set_vocab_none`):
//! llama.cpp then creates `llama.vocab_size` placeholder tokens
//! (`llama-vocab.cpp`, `no_vocab`/`none`).

use crate::LlamaCppError;
use pesc_gguf::{GgufFile, MetadataError, StringArray, Value};
use pesc_hf::spm::piece_type::{self, CONTROL, NORMAL, UNUSED, USER_DEFINED};
use pesc_hf::spm::{SpmModel, SpmVocab};
use pesc_hf::ModelConfig;
use serde_json::{json, Map, Value as Json};
use std::path::Path;

/// The GPT-2 split as Llama 3's `tokenizer.json` spells it (and as byte-level BPE applies it with `use_regex`).
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
    /// `tokenizer.ggml.scores` (SentencePiece vocabularies).
    pub scores: Vec<f32>,
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
    /// `tokenizer.ggml.add_bos_token` (absent: true for `llama`, false for `gpt2`, as llama.cpp).
    pub add_bos: bool,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: bool,
    /// `tokenizer.ggml.add_space_prefix` (absent: true for `llama`, as llama.cpp).
    pub add_space_prefix: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// `<arch>.context_length`.
    pub context_length: Option<u64>,
}

fn pre_tokenizer(pre: &str) -> Result<Json, (&'static str, String)> {
    let byte_level =
        |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    // llama.cpp applies its regexes one after another, each to the pieces the
    // previous left (matches and the text between them), then maps bytes.
    let splits = |regexes: &[&str]| {
        let mut seq: Vec<Json> =
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
            return Err((
                "tokenizer.ggml.pre",
                format!("`{other}` is not supported (known: default, gpt2, smollm, starcoder, llama3/llama-bpe, qwen2)"),
            ))
        }
    })
}

impl GgufVocab {
    /// Reads `tokenizer.ggml.*` (`context`: `{arch}.context_length`); `None`
    /// when the file has no vocabulary.
    pub fn read(file: &GgufFile, context: Option<u64>) -> Result<Option<Self>, LlamaCppError> {
        let md = file.metadata();
        let Some(model) = md.opt_str("tokenizer.ggml.model").map_err(|e| meta(file, e))? else { return Ok(None) };
        // llama.cpp's placeholder for a model without a vocabulary.
        if matches!(model, "none" | "no_vocab") {
            return Ok(None);
        }
        let strings = |key: &str| -> Result<Vec<String>, LlamaCppError> {
            if !md.contains(key) {
                return Ok(Vec::new());
            }
            Ok(md.get_str_array(key).map_err(|e| meta(file, e))?.iter().map(str::to_owned).collect())
        };
        let id = |key: &str| -> Result<Option<u32>, LlamaCppError> { md.opt_u32(key).map_err(|e| meta(file, e)) };
        let token_types = if md.contains("tokenizer.ggml.token_type") {
            md.get_i32_array("tokenizer.ggml.token_type").map_err(|e| meta(file, e))?.to_vec()
        } else {
            Vec::new()
        };
        let scores = if md.contains("tokenizer.ggml.scores") {
            md.get_f32_array("tokenizer.ggml.scores").map_err(|e| meta(file, e))?.to_vec()
        } else {
            Vec::new()
        };
        let flag = |key: &str| md.opt_bool(key).map_err(|e| meta(file, e));
        let spm = model == "llama";
        Ok(Some(GgufVocab {
            model: model.to_owned(),
            pre: md.opt_str("tokenizer.ggml.pre").map_err(|e| meta(file, e))?.map(str::to_owned),
            tokens: strings("tokenizer.ggml.tokens")?,
            token_types,
            scores,
            merges: strings("tokenizer.ggml.merges")?,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token")?.unwrap_or(spm),
            add_eos: flag("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?.unwrap_or(spm),
            chat_template: md.opt_str("tokenizer.chat_template").map_err(|e| meta(file, e))?.map(str::to_owned),
            context_length: context,
        }))
    }

    /// `(tokenizer.json, tokenizer_config.json)` as transformers would write
    /// them for this vocabulary; `path` (the GGUF file) names it in errors.
    pub fn to_hf(&self, path: &Path) -> Result<(Json, Json), LlamaCppError> {
        hf_tokenizer(self).map_err(|(key, problem)| LlamaCppError::Vocabulary { path: path.into(), key, problem })
    }
}

/// Builds `(tokenizer.json, tokenizer_config.json)`; an error names the key at fault.
fn hf_tokenizer(v: &GgufVocab) -> Result<(Json, Json), (&'static str, String)> {
    match v.model.as_str() {
        "gpt2" => {}
        "llama" => return spm_tokenizer(v),
        other => {
            return Err((
                "tokenizer.ggml.model",
                format!("`{other}` is not supported for import (supported: `llama`, SentencePiece; `gpt2`, byte-level BPE)"),
            ))
        }
    }
    if !v.token_types.is_empty() && v.token_types.len() != v.tokens.len() {
        return Err(("tokenizer.ggml.token_type", format!("has {} entries for {} tokens", v.token_types.len(), v.tokens.len())));
    }
    let mut vocab = serde_json::Map::new();
    for (i, t) in v.tokens.iter().enumerate() {
        if vocab.insert(t.clone(), json!(i)).is_some() {
            return Err(("tokenizer.ggml.tokens", format!("holds `{t}` twice")));
        }
    }
    let added: Vec<Json> = v
        .tokens
        .iter()
        .zip(&v.token_types)
        .enumerate()
        .filter(|(_, (_, ty))| matches!(ty, 3 | 4))
        .map(|(id, (t, ty))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": *ty == 3})
        })
        .collect();
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", v.bos),
        ("tokenizer.ggml.eos_token_id", v.eos),
        ("tokenizer.ggml.unknown_token_id", v.unk),
        ("tokenizer.ggml.padding_token_id", v.pad),
    ] {
        if let Some(id) = id.filter(|&i| i as usize >= v.tokens.len()) {
            return Err((key, format!("{id} is outside the vocabulary of {} tokens", v.tokens.len())));
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

/// A SentencePiece vocabulary: transformers' legacy Llama tokenizer over the
/// same tokens, merges ordered by score (see [`pesc_hf::spm`]).
fn spm_tokenizer(v: &GgufVocab) -> Result<(Json, Json), (&'static str, String)> {
    if v.scores.is_empty() {
        return Err(("tokenizer.ggml.scores", "is missing; a `llama` (SentencePiece) vocabulary merges by its scores".into()));
    }
    if v.token_types.is_empty() {
        return Err(("tokenizer.ggml.token_type", "is missing; a `llama` (SentencePiece) vocabulary needs its token types".into()));
    }
    let spm = SpmVocab {
        tokens: v.tokens.clone(),
        scores: v.scores.clone(),
        types: v.token_types.clone(),
        unk: v.unk,
        bos: v.bos,
        eos: v.eos,
        pad: v.pad,
        add_bos: v.add_bos,
        add_eos: v.add_eos,
        add_space_prefix: v.add_space_prefix,
    };
    spm.check()?;
    Ok((spm.tokenizer_json(), spm.tokenizer_config(v.context_length, v.chat_template.as_deref())))
}

/// Largest tokenizer file read (Llama 3's `tokenizer.json` is 9 MB).
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// The special token kinds gguf-py's `SpecialVocab` looks for, in its order,
/// with the GGUF key each is written under.
const SPECIAL_KINDS: [(&str, &str); 7] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("cls", "tokenizer.ggml.cls_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
];

/// The `add_*_token` flags llama.cpp reads (the converter skips the others).
const ADD_KINDS: [&str; 3] = ["bos", "eos", "sep"];

/// What [`from_folder`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VocabKind {
    /// No tokenizer files: `tokenizer.ggml.model = none`.
    None,
    /// Byte-level BPE with this `tokenizer.ggml.pre`.
    Bpe {
        /// The pre-tokenizer name.
        pre: String,
        /// Number of tokens written.
        tokens: usize,
    },
    /// SentencePiece (`tokenizer.ggml.model = llama`).
    Spm {
        /// The file it was read from: `tokenizer.model` or `tokenizer.json`.
        source: &'static str,
        /// Number of tokens written.
        tokens: usize,
    },
}

/// The `tokenizer.*` metadata of the model folder `dir` (with its `config`),
/// in the converter's order, and what kind of vocabulary it is.
pub fn from_folder(dir: &Path, config: &ModelConfig) -> Result<(Vec<(String, Value)>, VocabKind), LlamaCppError> {
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() { Some(read_json(dir, "tokenizer.json")?) } else { None };
    let tokenizer_config = if dir.join("tokenizer_config.json").is_file() { Some(read_json(dir, "tokenizer_config.json")?) } else { None };
    let err = |problem: String| LlamaCppError::Tokenizer { path: tokenizer_path.clone(), problem };
    let tj = match &tokenizer {
        Some(t) => Some(t.as_object().ok_or_else(|| err("is not a JSON object".into()))?),
        None => None,
    };
    let tc = tokenizer_config.as_ref().and_then(Json::as_object);
    // As the converter: a SentencePiece model wins over tokenizer.json.
    let sp_path = dir.join("tokenizer.model");
    if sp_path.is_file() {
        pesc_io::confined(dir, &sp_path)?;
        let sp = SpmModel::read(&sp_path)?;
        let vocab = spm_from_model(&sp, dir, tc, config.vocab_size)?;
        return spm_metadata(vocab, "tokenizer.model", dir, tj, tc, config);
    }
    let Some(tj) = tj else {
        return Ok((vec![("tokenizer.ggml.model".into(), Value::from("none"))], VocabKind::None));
    };
    let model = tj.get("model").and_then(Json::as_object).ok_or_else(|| err("has no `model` object".into()))?;
    let model_type = model.get("type").and_then(Json::as_str).unwrap_or("");
    if model_type != "BPE" {
        return Err(err(format!("tokenizer model `{model_type}` is not supported for GGUF export (only BPE)")));
    }
    if model.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
        let vocab = spm_from_json(tj, model, config.vocab_size).map_err(err)?;
        return spm_metadata(vocab, "tokenizer.json", dir, Some(tj), tc, config);
    }
    if !matches!(tj.get("normalizer"), None | Some(Json::Null)) {
        return Err(err(format!(
            "has a normalizer ({}); llama.cpp's byte-level BPE applies none, so the export would tokenize differently",
            brief(&tj["normalizer"])
        )));
    }
    let pre = pre_tokenizer_name(tj.get("pre_tokenizer").unwrap_or(&Json::Null)).map_err(err)?;

    let (tokens, types) = token_list(tj, model, config.vocab_size).map_err(err)?;
    let merges = merges(model).map_err(err)?;

    let mut md: Vec<(String, Value)> = Vec::new();
    if let Some(b) = tc.and_then(|c| c.get("add_prefix_space")).and_then(Json::as_bool) {
        md.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(b)));
    }
    md.push(("tokenizer.ggml.model".into(), Value::from("gpt2")));
    md.push(("tokenizer.ggml.pre".into(), Value::from(pre.as_str())));
    let n_tokens = tokens.len();
    md.push(("tokenizer.ggml.tokens".into(), Value::from(tokens)));
    md.push(("tokenizer.ggml.token_type".into(), Value::from(types)));
    if !merges.is_empty() {
        md.push(("tokenizer.ggml.merges".into(), Value::from(merges)));
    }
    special_and_template(&mut md, dir, Some(tj), tc, config)?;
    Ok((md, VocabKind::Bpe { pre, tokens: n_tokens }))
}

/// Special token ids, `add_*_token` flags and the chat template (gguf-py's
/// `SpecialVocab`), then the converter's per-model overrides.
fn special_and_template(
    md: &mut Vec<(String, Value)>,
    dir: &Path,
    tj: Option<&Map<String, Json>>,
    tc: Option<&Map<String, Json>>,
    config: &ModelConfig,
) -> Result<(), LlamaCppError> {
    let special = special_vocab(tj, tc, &config.raw, config.vocab_size, dir)?;
    for (kind, id) in &special.ids {
        let key = SPECIAL_KINDS.iter().find(|(k, _)| k == kind).map_or("", |(_, key)| key);
        md.push((key.to_owned(), Value::U32(*id)));
    }
    for (kind, add) in &special.add {
        md.push((format!("tokenizer.ggml.add_{kind}_token"), Value::Bool(*add)));
    }
    if let Some(t) = chat_template(dir, tc)? {
        md.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    // CodeLlama's infill tokens, as the converter sets them for its 32016-token vocabulary.
    if config.vocab_size == 32_016 {
        for (kind, id) in [("prefix", 32_007u32), ("suffix", 32_008), ("middle", 32_009), ("eot", 32_010)] {
            md.push((format!("tokenizer.ggml.{kind}_token_id"), Value::U32(id)));
        }
    }
    if config.vocab_size == 49_152 {
        match md.iter_mut().find(|(k, _)| k == "tokenizer.ggml.add_bos_token") {
            Some(entry) => entry.1 = Value::Bool(false),
            None => md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false))),
        }
    }
    Ok(())
}

/// A SentencePiece vocabulary written as the converter writes a `llama` one.
fn spm_metadata(
    vocab: SpmVocab,
    source: &'static str,
    dir: &Path,
    tj: Option<&Map<String, Json>>,
    tc: Option<&Map<String, Json>>,
    config: &ModelConfig,
) -> Result<(Vec<(String, Value)>, VocabKind), LlamaCppError> {
    vocab.check().map_err(|(key, problem)| LlamaCppError::Tokenizer { path: dir.join(source), problem: format!("{key}: {problem}") })?;
    let mut md: Vec<(String, Value)> = Vec::new();
    // The converter writes the flag from tokenizer_config.json only; a vocabulary
    // without the prefix space gets it too, or llama.cpp would add one.
    match tc.and_then(|c| c.get("add_prefix_space")).and_then(Json::as_bool) {
        Some(b) => md.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(b))),
        None if !vocab.add_space_prefix => md.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false))),
        None => {}
    }
    md.push(("tokenizer.ggml.model".into(), Value::from("llama")));
    md.push(("tokenizer.ggml.pre".into(), Value::from("default")));
    let n_tokens = vocab.tokens.len();
    let mut tokens = StringArray::with_capacity(n_tokens, 0);
    for t in &vocab.tokens {
        tokens.push(t);
    }
    md.push(("tokenizer.ggml.tokens".into(), Value::from(tokens)));
    md.push(("tokenizer.ggml.scores".into(), Value::from(vocab.scores)));
    md.push(("tokenizer.ggml.token_type".into(), Value::from(vocab.types)));
    special_and_template(&mut md, dir, tj, tc, config)?;
    Ok((md, VocabKind::Spm { source, tokens: n_tokens }))
}

/// `_create_vocab_sentencepiece`: the model's pieces up to `vocab_size`, then
/// `added_tokens.json` and `tokenizer_config.json`'s `added_tokens_decoder`
/// over them; ids without a piece are `[PAD{id}]`.
fn spm_from_model(sp: &SpmModel, dir: &Path, tc: Option<&Map<String, Json>>, vocab_size: u64) -> Result<SpmVocab, LlamaCppError> {
    let n = usize::try_from(vocab_size).map_err(|_| LlamaCppError::Tokenizer {
        path: dir.join("config.json"),
        problem: format!("vocab_size {vocab_size} is too large"),
    })?;
    if sp.pieces.len() > n {
        return Err(LlamaCppError::Tokenizer {
            path: dir.join("tokenizer.model"),
            problem: format!(
                "pieces: the model has {} pieces but config.json's vocab_size is {vocab_size}; the embedding has no row for the rest",
                sp.pieces.len()
            ),
        });
    }
    let mut v = sp.vocab();
    v.tokens = (0..n).map(|i| format!("[PAD{i}]")).collect();
    v.scores = vec![-10_000.0; n];
    v.types = vec![UNUSED; n];
    for (i, p) in sp.pieces.iter().enumerate().take(n) {
        v.tokens[i].clone_from(&p.text);
        v.scores[i] = p.score;
        v.types[i] = match p.kind {
            piece_type::UNKNOWN | piece_type::CONTROL | piece_type::UNUSED | piece_type::BYTE => p.kind,
            _ => NORMAL,
        };
    }
    let added_path = dir.join("added_tokens.json");
    if added_path.is_file() {
        let added = read_json(dir, "added_tokens.json")?;
        let bad = |problem: String| LlamaCppError::Tokenizer { path: added_path.clone(), problem };
        for (content, id) in added.as_object().ok_or_else(|| bad("is not a JSON object".into()))? {
            let id = id.as_u64().ok_or_else(|| bad(format!("token {content:?} has id {id}, not a non-negative integer")))?;
            if let Some(i) = usize::try_from(id).ok().filter(|&i| i < n) {
                v.tokens[i].clone_from(content);
                v.scores[i] = -1000.0;
                v.types[i] = USER_DEFINED;
            }
        }
    }
    if let Some(decoder) = tc.and_then(|c| c.get("added_tokens_decoder")).and_then(Json::as_object) {
        let bad = |problem: String| LlamaCppError::Tokenizer { path: dir.join("tokenizer_config.json"), problem };
        for (id, entry) in decoder {
            let i: usize = id.parse().map_err(|_| bad(format!("added_tokens_decoder key {id:?} is not a token id")))?;
            let content =
                entry.get("content").and_then(Json::as_str).ok_or_else(|| bad(format!("added_tokens_decoder[{id}] has no content")))?;
            if i >= n {
                continue;
            }
            let special = entry.get("special").and_then(Json::as_bool).unwrap_or(false);
            let (text, ty) = if special || looks_special(content) {
                (content.to_owned(), CONTROL)
            } else {
                (content.replace('\u{2581}', " "), USER_DEFINED)
            };
            v.tokens[i] = text;
            v.scores[i] = -1000.0;
            v.types[i] = ty;
        }
    }
    if !sp.add_dummy_prefix {
        v.add_space_prefix = false;
    }
    Ok(v)
}

/// A SentencePiece-style BPE `tokenizer.json` (byte fallback) without its
/// `tokenizer.model`. llama.cpp's converter writes every score as -1000 here,
/// which its tokenizer then merges left to right, not by rank; the scores
/// written instead rank each token by the first merge producing it, so that
/// llama.cpp merges in the order the BPE does.
fn spm_from_json(tj: &Map<String, Json>, model: &Map<String, Json>, vocab_size: u64) -> Result<SpmVocab, String> {
    let add_space_prefix = spm_prefix_space(tj)?;
    let (tokens, mut types) = token_list(tj, model, vocab_size)?;
    let tokens: Vec<String> = tokens.iter().map(str::to_owned).collect();
    let unk = model.get("unk_token").and_then(Json::as_str);
    for (t, ty) in tokens.iter().zip(types.iter_mut()) {
        if Some(t.as_str()) == unk {
            *ty = piece_type::UNKNOWN;
        } else if *ty == NORMAL && is_byte_piece(t) {
            *ty = piece_type::BYTE;
        }
    }
    let index: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let pairs = merge_pairs(model)?;
    let lowest = -(pairs.len() as f32) - 1.0;
    let mut scores: Vec<f32> = types
        .iter()
        .map(|&t| {
            if t == NORMAL {
                lowest
            } else if t == UNUSED {
                -10_000.0
            } else {
                0.0
            }
        })
        .collect();
    let mut ranked = vec![false; tokens.len()];
    for (rank, (l, r)) in pairs.iter().enumerate() {
        if let Some(&i) = index.get(format!("{l}{r}").as_str()) {
            if !ranked[i] && types[i] == NORMAL {
                ranked[i] = true;
                scores[i] = -(rank as f32);
            }
        }
    }
    // The special ids and add flags are written by `special_and_template`, as for every vocabulary.
    Ok(SpmVocab { tokens, scores, types, unk: None, bos: None, eos: None, pad: None, add_bos: true, add_eos: false, add_space_prefix })
}

/// `<0xXX>`, a byte-fallback piece.
fn is_byte_piece(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether a SentencePiece-style `tokenizer.json` puts a space before the
/// text, from the forms transformers writes (legacy: `Prepend` and `Replace`
/// normalizers; current: a `Metaspace` pre-tokenizer); other forms are refused,
/// as llama.cpp's tokenizer could not reproduce them.
fn spm_prefix_space(tj: &Map<String, Json>) -> Result<bool, String> {
    let null = Json::Null;
    let (norm, pre) = (tj.get("normalizer").unwrap_or(&null), tj.get("pre_tokenizer").unwrap_or(&null));
    let ty = |v: &Json| v.get("type").and_then(Json::as_str).map(str::to_owned);
    let is_replace = |v: &Json| {
        ty(v).as_deref() == Some("Replace")
            && v.get("pattern").and_then(|p| p.get("String")).and_then(Json::as_str) == Some(" ")
            && v.get("content").and_then(Json::as_str) == Some("\u{2581}")
    };
    let is_prepend = |v: &Json| ty(v).as_deref() == Some("Prepend") && v.get("prepend").and_then(Json::as_str) == Some("\u{2581}");
    if pre.is_null() {
        if is_replace(norm) {
            return Ok(false);
        }
        if let Some([a, b]) = norm.get("normalizers").and_then(Json::as_array).map(Vec::as_slice) {
            if ty(norm).as_deref() == Some("Sequence") && is_prepend(a) && is_replace(b) {
                return Ok(true);
            }
        }
    } else if norm.is_null()
        && ty(pre).as_deref() == Some("Metaspace")
        && pre.get("replacement").and_then(Json::as_str) == Some("\u{2581}")
        && !pre.get("split").and_then(Json::as_bool).unwrap_or(true)
    {
        match pre.get("prepend_scheme").and_then(Json::as_str) {
            Some("first" | "always") => return Ok(true),
            Some("never") => return Ok(false),
            _ => {}
        }
    }
    Err(format!(
        "is a SentencePiece-style BPE (byte_fallback) whose normalizer ({}) and pre_tokenizer ({}) llama.cpp's `llama` \
         tokenizer cannot reproduce; supported: the normalizers Prepend(▁) + Replace(' ', ▁) (or Replace alone) without a \
         pre-tokenizer, or a Metaspace pre-tokenizer (split false) without a normalizer",
        brief(norm),
        brief(pre)
    ))
}

/// `model.merges` as pairs (SentencePiece tokens hold no spaces, so a `"a b"` string splits at its space).
fn merge_pairs(model: &Map<String, Json>) -> Result<Vec<(String, String)>, String> {
    let list = match model.get("merges") {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::Array(a)) => a,
        Some(_) => return Err("`model.merges` is not a list".into()),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            match m {
                Json::String(s) => s.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())),
                Json::Array(pair) => match pair.as_slice() {
                    [Json::String(a), Json::String(b)] => Some((a.clone(), b.clone())),
                    _ => None,
                },
                _ => None,
            }
            .ok_or_else(|| format!("`model.merges[{i}]` is neither a pair of strings nor \"left right\""))
        })
        .collect()
}

fn read_json(dir: &Path, name: &str) -> Result<Json, LlamaCppError> {
    let path = dir.join(name);
    pesc_io::confined(dir, &path)?;
    let bytes = pesc_io::read_capped(&path, MAX_TOKENIZER_BYTES)?;
    pesc_io::parse_strict(&bytes).map_err(|e| pesc_io::Error::Json { path, message: e.to_string() }.into())
}

/// A short rendering of a JSON value for messages.
fn brief(v: &Json) -> String {
    let s = v.to_string();
    if s.len() > 200 {
        format!("{}...", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

/// `type` of a pre-tokenizer (or `Sequence[A, B]`), for messages.
fn pre_tokenizer_kind(v: &Json) -> String {
    match v.get("type").and_then(Json::as_str) {
        Some("Sequence") => {
            let parts: Vec<String> =
                v.get("pretokenizers").and_then(Json::as_array).map(|a| a.iter().map(pre_tokenizer_kind).collect()).unwrap_or_default();
            format!("Sequence[{}]", parts.join(", "))
        }
        Some(t) => t.to_owned(),
        None if v.is_null() => "none".to_owned(),
        None => brief(v),
    }
}

fn is_byte_level(v: &Json, use_regex: bool) -> bool {
    v.get("type").and_then(Json::as_str) == Some("ByteLevel")
        && !v.get("add_prefix_space").and_then(Json::as_bool).unwrap_or(true)
        && v.get("use_regex").and_then(Json::as_bool).unwrap_or(true) == use_regex
}

fn is_split(v: &Json, regex: &str) -> bool {
    v.get("type").and_then(Json::as_str) == Some("Split")
        && v.get("pattern").and_then(|p| p.get("Regex")).and_then(Json::as_str) == Some(regex)
        && v.get("behavior").and_then(Json::as_str) == Some("Isolated")
        && !v.get("invert").and_then(Json::as_bool).unwrap_or(false)
}

/// The llama.cpp pre-tokenizer that reproduces `pre`.
fn pre_tokenizer_name(pre: &Json) -> Result<String, String> {
    if is_byte_level(pre, true) {
        return Ok("gpt-2".into());
    }
    let parts = match pre.get("type").and_then(Json::as_str) {
        Some("Sequence") => pre.get("pretokenizers").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default(),
        _ => &[],
    };
    if let [first, second] = parts {
        let digits = first.get("type").and_then(Json::as_str) == Some("Digits")
            && first.get("individual_digits").and_then(Json::as_bool) == Some(true);
        if digits && is_byte_level(second, true) {
            return Ok("smollm".into());
        }
        if is_split(first, LLAMA3_SPLIT) && is_byte_level(second, false) {
            return Ok("llama-bpe".into());
        }
        if is_split(first, QWEN2_SPLIT) && is_byte_level(second, false) {
            return Ok("qwen2".into());
        }
    }
    Err(format!(
        "pre_tokenizer {} ({}) is not one a llama.cpp pre-tokenizer reproduces; supported: ByteLevel (gpt-2), \
         Sequence[Digits(individual_digits), ByteLevel] (smollm), Sequence[Split(Llama 3 regex), ByteLevel] (llama-bpe), \
         Sequence[Split(Qwen2 regex), ByteLevel] (qwen2), each without a prefix space",
        pre_tokenizer_kind(pre),
        brief(pre)
    ))
}

/// gguf-py's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Tokens in id order (`vocab_size` of them) and their types.
fn token_list(tj: &Map<String, Json>, model: &Map<String, Json>, vocab_size: u64) -> Result<(StringArray, Vec<i32>), String> {
    let n = usize::try_from(vocab_size).map_err(|_| format!("vocab_size {vocab_size} is too large"))?;
    let vocab = model.get("vocab").and_then(Json::as_object).ok_or("`model.vocab` is missing or not an object")?;
    let mut by_id: Vec<Option<(&str, i32)>> = vec![None; n];
    let id_of = |v: &Json, what: &str| -> Result<usize, String> {
        let id = v.as_u64().ok_or_else(|| format!("{what} has id {v}, not a non-negative integer"))?;
        usize::try_from(id).ok().filter(|&i| i < n).ok_or_else(|| {
            format!("{what} has id {id}, outside config.json's vocab_size {vocab_size} (llama.cpp needs every id below vocab_size)")
        })
    };
    for (token, id) in vocab {
        let i = id_of(id, &format!("token {token:?}"))?;
        if let Some((other, _)) = by_id[i] {
            return Err(format!("tokens {other:?} and {token:?} share id {i}"));
        }
        by_id[i] = Some((token.as_str(), NORMAL));
    }
    let added = match tj.get("added_tokens") {
        None | Some(Json::Null) => &[][..],
        Some(Json::Array(a)) => a.as_slice(),
        Some(_) => return Err("`added_tokens` is not a list".into()),
    };
    for a in added {
        let content = a.get("content").and_then(Json::as_str).ok_or_else(|| format!("added token {} has no `content`", brief(a)))?;
        let i = id_of(a.get("id").unwrap_or(&Json::Null), &format!("added token {content:?}"))?;
        let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
        let ty = if special || looks_special(content) { CONTROL } else { USER_DEFINED };
        by_id[i] = Some((content, ty));
    }
    let mut tokens = StringArray::with_capacity(n, 0);
    let mut types = Vec::with_capacity(n);
    let mut seen = std::collections::HashMap::with_capacity(n);
    for (i, entry) in by_id.iter().enumerate() {
        let (text, ty) = match entry {
            Some((t, USER_DEFINED)) => (t.replace('\u{2581}', " "), USER_DEFINED),
            Some((t, ty)) => ((*t).to_owned(), *ty),
            None => (format!("[PAD{i}]"), UNUSED),
        };
        if let Some(j) = seen.insert(text.clone(), i) {
            return Err(format!("ids {j} and {i} are both the token {text:?}; llama.cpp needs distinct tokens"));
        }
        tokens.push(&text);
        types.push(ty);
    }
    Ok((tokens, types))
}

/// `model.merges` as `"left right"` strings.
fn merges(model: &Map<String, Json>) -> Result<StringArray, String> {
    let list = match model.get("merges") {
        None | Some(Json::Null) => return Ok(StringArray::new()),
        Some(Json::Array(a)) => a,
        Some(_) => return Err("`model.merges` is not a list".into()),
    };
    let mut out = StringArray::with_capacity(list.len(), 0);
    for (i, m) in list.iter().enumerate() {
        match m {
            Json::String(s) => out.push(s),
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(a), Json::String(b)] => {
                    // gguf-py writes a space inside a part as U+0120 (`Ġ`), so the pair survives the join.
                    let enc = |s: &str| s.replace(' ', "\u{120}");
                    out.push(&format!("{} {}", enc(a), enc(b)));
                }
                _ => return Err(format!("`model.merges[{i}]` is not a pair of strings")),
            },
            _ => return Err(format!("`model.merges[{i}]` is neither a string nor a pair")),
        }
    }
    Ok(out)
}

/// What gguf-py's `SpecialVocab` collects: token ids and add flags, each in insertion order.
struct Special {
    ids: Vec<(&'static str, u32)>,
    add: Vec<(&'static str, bool)>,
}

impl Special {
    fn set_id(&mut self, kind: &'static str, id: u64, vocab_size: u64, source: &Path) -> Result<(), LlamaCppError> {
        if self.ids.iter().any(|(k, _)| *k == kind) {
            return Ok(());
        }
        match u32::try_from(id) {
            Ok(v) if id < vocab_size => {
                self.ids.push((kind, v));
                Ok(())
            }
            _ => Err(LlamaCppError::Tokenizer {
                path: source.into(),
                problem: format!("the {kind} token id {id} is outside vocab_size {vocab_size}"),
            }),
        }
    }

    fn set_add(&mut self, kind: &'static str, add: bool, overwrite: bool) {
        match self.add.iter_mut().find(|(k, _)| *k == kind) {
            Some(entry) if overwrite => entry.1 = add,
            Some(_) => {}
            None => self.add.push((kind, add)),
        }
    }
}

/// The content of `tokenizer_config.json`'s `{kind}_token` (a string or `{"content": ...}`).
fn config_token(tc: Option<&Map<String, Json>>, kind: &str) -> Option<String> {
    match tc?.get(&format!("{kind}_token"))? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    }
}

/// gguf-py's `SpecialVocab._try_load_from_tokenizer_json` and
/// `_try_load_from_config_json`, for the templates causal LMs use.
fn special_vocab(
    tj: Option<&Map<String, Json>>,
    tc: Option<&Map<String, Json>>,
    config: &Map<String, Json>,
    vocab_size: u64,
    dir: &Path,
) -> Result<Special, LlamaCppError> {
    let tokenizer_path = dir.join("tokenizer.json");
    let unsupported = |what: String| LlamaCppError::Tokenizer {
        path: tokenizer_path.clone(),
        problem: format!("{what} is not supported for GGUF export"),
    };
    let mut s = Special { ids: Vec::new(), add: Vec::new() };
    let mut bos = config_token(tc, "bos");
    let mut cls = config_token(tc, "cls");
    let mut eos = config_token(tc, "eos");
    let sep = config_token(tc, "sep");
    if tc.is_some() {
        if bos.is_none() {
            bos.clone_from(&cls);
        }
        if eos.is_none() {
            eos.clone_from(&sep);
        }
    }
    // The post-processor says whether BOS/EOS are added: a `ByteLevel` one
    // adds neither; a `TemplateProcessing` one whose single-sequence template
    // starts with a special token adds BOS if that token is the BOS (or CLS)
    // token, or becomes the BOS token when none is named.
    if let Some(pp) = tj.and_then(|t| t.get("post_processor")).filter(|v| !v.is_null()) {
        let list: Vec<&Json> = match pp.get("processors").and_then(Json::as_array) {
            Some(a) => a.iter().collect(),
            None => vec![pp],
        };
        for p in list {
            match p.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => {
                    s.set_add("bos", false, false);
                    s.set_add("eos", false, false);
                }
                Some("TemplateProcessing") => {
                    let single = p.get("single").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default();
                    if single.len() > 1 {
                        let special_id =
                            |v: &Json| v.get("SpecialToken").and_then(|t| t.get("id")).and_then(Json::as_str).map(str::to_owned);
                        if let Some(first) = single.first().and_then(special_id) {
                            if tc.is_none() {
                                bos = Some(first.clone());
                            } else if bos.as_ref() != Some(&first) && cls.as_ref() != Some(&first) {
                                if bos.is_none() {
                                    bos = Some(first.clone());
                                }
                                if cls.is_none() {
                                    cls = Some(first.clone());
                                }
                            }
                            let add = bos.as_ref() == Some(&first) || cls.as_ref() == Some(&first);
                            s.set_add("bos", add, true);
                        }
                        if let Some(last) = single.last().and_then(special_id) {
                            if tc.is_none() {
                                eos = Some(last.clone());
                            } else if eos.as_ref() != Some(&last) {
                                // gguf-py then makes it the EOS token and the named one EOT/EOM.
                                return Err(unsupported(format!("a post-processor appending `{last}`, which is not the eos_token,")));
                            }
                            s.set_add("eos", true, true);
                        }
                    }
                }
                Some(other) => return Err(unsupported(format!("post_processor `{other}`"))),
                None => {}
            }
        }
    }
    let Some(tc) = tc else {
        // Without tokenizer_config.json gguf-py takes the ids from config.json only.
        config_ids(&mut s, config, vocab_size, dir)?;
        return Ok(s);
    };
    for kind in ADD_KINDS {
        if let Some(b) = tc.get(&format!("add_{kind}_token")).and_then(Json::as_bool) {
            s.set_add(kind, b, false);
        }
    }
    let added: Vec<(&str, u64)> = tj
        .and_then(|t| t.get("added_tokens"))
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(|t| Some((t.get("content")?.as_str()?, t.get("id")?.as_u64()?))).collect())
        .unwrap_or_default();
    let tc_path = dir.join("tokenizer_config.json");
    for (kind, _) in SPECIAL_KINDS {
        let content = match kind {
            "bos" => bos.clone(),
            "eos" => eos.clone(),
            "cls" => cls.clone(),
            _ => config_token(Some(tc), kind),
        };
        // Looked up among the added tokens only, first match, as gguf-py does.
        if let Some(id) = content.and_then(|c| added.iter().find(|(t, _)| *t == c).map(|(_, id)| *id)) {
            s.set_id(kind, id, vocab_size, &tc_path)?;
        }
    }
    config_ids(&mut s, config, vocab_size, dir)?;
    Ok(s)
}

/// `config.json`'s integer `*_token_id` for the kinds still unset (a list,
/// like Llama 3's `eos_token_id`, is skipped as gguf-py skips it).
fn config_ids(s: &mut Special, config: &Map<String, Json>, vocab_size: u64, dir: &Path) -> Result<(), LlamaCppError> {
    let config_path = dir.join("config.json");
    for (kind, _) in SPECIAL_KINDS {
        if let Some(id) = config.get(&format!("{kind}_token_id")).and_then(Json::as_u64) {
            s.set_id(kind, id, vocab_size, &config_path)?;
        }
    }
    Ok(())
}

fn chat_template(dir: &Path, tc: Option<&Map<String, Json>>) -> Result<Option<String>, LlamaCppError> {
    let template_of = |v: &Json, source: &Path| -> Result<Option<String>, LlamaCppError> {
        match v {
            Json::Null => Ok(None),
            Json::String(s) => Ok(Some(s.clone())),
            // A list of named templates: the one named `default` is the chat template.
            Json::Array(list) => Ok(list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Json::as_str))
                .map(str::to_owned)),
            _ => Err(LlamaCppError::Tokenizer { path: source.into(), problem: "`chat_template` is neither a string nor a list".into() }),
        }
    };
    if let Some(v) = tc.and_then(|c| c.get("chat_template")) {
        return template_of(v, &dir.join("tokenizer_config.json"));
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        pesc_io::confined(dir, &jinja)?;
        let bytes = pesc_io::read_capped(&jinja, MAX_TOKENIZER_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| pesc_hf::HfError::NotUtf8 { path: jinja.clone() })?;
        return Ok(Some(text));
    }
    if dir.join("chat_template.json").is_file() {
        let v = read_json(dir, "chat_template.json")?;
        return template_of(v.get("chat_template").unwrap_or(&Json::Null), &dir.join("chat_template.json"));
    }
    Ok(None)
}

fn meta(file: &GgufFile, e: MetadataError) -> LlamaCppError {
    LlamaCppError::from(file.metadata_error(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pre_tokenizers_map_to_llama_cpp_names() {
        let bl = |r: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": r});
        assert_eq!(pre_tokenizer_name(&bl(true)).unwrap(), "gpt-2");
        let smol = json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, bl(true)]});
        assert_eq!(pre_tokenizer_name(&smol).unwrap(), "smollm");
        let split = |r: &str| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false});
        let l3 = json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), bl(false)]});
        assert_eq!(pre_tokenizer_name(&l3).unwrap(), "llama-bpe");
        let q2 = json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), bl(false)]});
        assert_eq!(pre_tokenizer_name(&q2).unwrap(), "qwen2");
        let meta = json!({"type": "Metaspace", "replacement": "\u{2581}"});
        let e = pre_tokenizer_name(&meta).unwrap_err();
        assert!(e.contains("Metaspace"), "{e}");
        let prefixed = json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true});
        assert!(pre_tokenizer_name(&prefixed).is_err());
        let digits3 = json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": false}, bl(true)]});
        assert!(pre_tokenizer_name(&digits3).unwrap_err().contains("Sequence[Digits, ByteLevel]"));
    }

    #[test]
    fn merges_in_both_forms() {
        let m = json!({"merges": ["a b", ["c d", "e"]]});
        let got = merges(m.as_object().unwrap()).unwrap();
        assert_eq!(got.iter().collect::<Vec<_>>(), ["a b", "c\u{120}d e"]);
    }

    #[test]
    fn looks_special_follows_the_converter() {
        assert!(looks_special("<|im_start|>"));
        assert!(looks_special("<pad>"));
        assert!(!looks_special("<repo_name>"));
    }
}
