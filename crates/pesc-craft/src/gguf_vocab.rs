//! A model folder's tokenizer as `tokenizer.ggml.*` metadata, the way
//! llama.cpp's converter (`convert_hf_to_gguf.py`, vendored in
//! llama-cpp-python 0.3.36: `conversion/base.py::get_vocab_base` and
//! `_set_vocab_gpt2`, gguf-py's `SpecialVocab`) writes it. The reverse of
//! [`pesc_arch::hf_tokenizer`].
//!
//! Supported: byte-level BPE in `tokenizer.json` (`tokenizer.ggml.model =
//! gpt2`). The converter names the pre-tokenizer by hashing the token ids of
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
//! A folder with neither `tokenizer.json` nor `tokenizer.model` gets
//! `tokenizer.ggml.model = none` alone (the converter's `_set_vocab_none`):
//! llama.cpp then creates `llama.vocab_size` placeholder tokens
//! (`llama-vocab.cpp`, `no_vocab`/`none`). SentencePiece vocabularies
//! (`tokenizer.model`, or a BPE `tokenizer.json` with `byte_fallback`, which
//! llama.cpp stores as `llama`) are refused for now.

use crate::CraftError;
use pesc_arch::ModelConfig;
use pesc_gguf::{StringArray, Value};
use serde_json::{Map, Value as Json};
use std::path::Path;

/// Largest tokenizer file read (Llama 3's `tokenizer.json` is 9 MB).
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// The GPT-2 split as Llama 3's `tokenizer.json` spells it.
const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (digits one by one).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.token_type` values (gguf-py `TokenType`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

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

/// What [`gguf_vocab`] found.
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
}

/// The `tokenizer.*` metadata of the model folder `dir` (with its `config`),
/// in the converter's order, and what kind of vocabulary it is.
pub fn gguf_vocab(dir: &Path, config: &ModelConfig) -> Result<(Vec<(String, Value)>, VocabKind), CraftError> {
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        if dir.join("tokenizer.model").is_file() {
            return Err(CraftError::Invalid(format!(
                "`{}`: a SentencePiece tokenizer (tokenizer.model) without tokenizer.json is not supported for GGUF export yet",
                dir.display()
            )));
        }
        return Ok((vec![("tokenizer.ggml.model".into(), Value::from("none"))], VocabKind::None));
    }
    let tokenizer = read_json(dir, "tokenizer.json")?;
    let tokenizer_config = if dir.join("tokenizer_config.json").is_file() { Some(read_json(dir, "tokenizer_config.json")?) } else { None };
    let err = |what: String| CraftError::Invalid(format!("`{}`: {what}", tokenizer_path.display()));
    let tj = tokenizer.as_object().ok_or_else(|| err("is not a JSON object".into()))?;
    let tc = tokenizer_config.as_ref().and_then(Json::as_object);

    let model = tj.get("model").and_then(Json::as_object).ok_or_else(|| err("has no `model` object".into()))?;
    let model_type = model.get("type").and_then(Json::as_str).unwrap_or("");
    if model_type != "BPE" {
        return Err(err(format!("tokenizer model `{model_type}` is not supported for GGUF export (only byte-level BPE)")));
    }
    if model.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
        return Err(err(
            "is a SentencePiece-style BPE (byte_fallback), which llama.cpp stores as a `llama` vocabulary; not supported for GGUF export yet".into(),
        ));
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
    if config.vocab_size == 49_152 {
        match md.iter_mut().find(|(k, _)| k == "tokenizer.ggml.add_bos_token") {
            Some(entry) => entry.1 = Value::Bool(false),
            None => md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false))),
        }
    }
    Ok((md, VocabKind::Bpe { pre, tokens: n_tokens }))
}

fn read_json(dir: &Path, name: &str) -> Result<Json, CraftError> {
    let path = dir.join(name);
    pesc_io::confined(dir, &path)?;
    let bytes = pesc_io::read_capped(&path, MAX_TOKENIZER_BYTES)?;
    pesc_io::parse_strict(&bytes).map_err(|e| CraftError::Io(pesc_io::Error::Json { path, message: e.to_string() }))
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
    fn set_id(&mut self, kind: &'static str, id: u64, vocab_size: u64, source: &str) -> Result<(), CraftError> {
        if self.ids.iter().any(|(k, _)| *k == kind) {
            return Ok(());
        }
        match u32::try_from(id) {
            Ok(v) if id < vocab_size => {
                self.ids.push((kind, v));
                Ok(())
            }
            _ => Err(CraftError::Invalid(format!("{source}: the {kind} token id {id} is outside vocab_size {vocab_size}"))),
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
    tj: &Map<String, Json>,
    tc: Option<&Map<String, Json>>,
    config: &Map<String, Json>,
    vocab_size: u64,
    dir: &Path,
) -> Result<Special, CraftError> {
    let tokenizer_path = dir.join("tokenizer.json");
    let unsupported =
        |what: String| CraftError::Invalid(format!("`{}`: {what} is not supported for GGUF export", tokenizer_path.display()));
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
    if let Some(pp) = tj.get("post_processor").filter(|v| !v.is_null()) {
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
        .get("added_tokens")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(|t| Some((t.get("content")?.as_str()?, t.get("id")?.as_u64()?))).collect())
        .unwrap_or_default();
    let tc_path = format!("`{}`", dir.join("tokenizer_config.json").display());
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
fn config_ids(s: &mut Special, config: &Map<String, Json>, vocab_size: u64, dir: &Path) -> Result<(), CraftError> {
    let config_path = format!("`{}`", dir.join("config.json").display());
    for (kind, _) in SPECIAL_KINDS {
        if let Some(id) = config.get(&format!("{kind}_token_id")).and_then(Json::as_u64) {
            s.set_id(kind, id, vocab_size, &config_path)?;
        }
    }
    Ok(())
}

fn chat_template(dir: &Path, tc: Option<&Map<String, Json>>) -> Result<Option<String>, CraftError> {
    let template_of = |v: &Json, source: &str| -> Result<Option<String>, CraftError> {
        match v {
            Json::Null => Ok(None),
            Json::String(s) => Ok(Some(s.clone())),
            // A list of named templates: the one named `default` is the chat template.
            Json::Array(list) => Ok(list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Json::as_str))
                .map(str::to_owned)),
            _ => Err(CraftError::Invalid(format!("{source}: `chat_template` is neither a string nor a list"))),
        }
    };
    if let Some(v) = tc.and_then(|c| c.get("chat_template")) {
        return template_of(v, &format!("`{}`", dir.join("tokenizer_config.json").display()));
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        pesc_io::confined(dir, &jinja)?;
        let bytes = pesc_io::read_capped(&jinja, MAX_TOKENIZER_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| CraftError::Invalid(format!("`{}` is not UTF-8", jinja.display())))?;
        return Ok(Some(text));
    }
    if dir.join("chat_template.json").is_file() {
        let v = read_json(dir, "chat_template.json")?;
        return template_of(v.get("chat_template").unwrap_or(&Json::Null), &format!("`{}`", dir.join("chat_template.json").display()));
    }
    Ok(None)
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
