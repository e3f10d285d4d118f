//! Training data: one JSON record per line, in any of four formats, turned
//! into token ids and labels (`-100` where no loss is taken).
//!
//! - reference: `{"conversation": [{"input", "output"}, ...], "system"?, "instruction"?}`
//!   (the reference implementation's, whose `instruction` is the system prompt);
//! - Alpaca: `{"instruction", "input"?, "output"}`;
//! - chat: `{"messages": [{"role", "content"}, ...]}`;
//! - pre-tokenized: `{"input_ids": [...], "labels"?: [...]}` (without labels every token is trained).
//!
//! A record may carry `"source"` (or the reference's `"dataset"`) naming where it comes from.

use crate::{Result, TrainError};
use pesc_hf::{ChatMessage, TextModel};
use serde_json::{Map, Value};
use std::path::Path;

/// The label of positions that carry no loss.
pub const IGNORE: i64 = -100;

/// How text records become a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// The model's chat template (`tokenizer_config.json` / `chat_template.jinja`).
    Chat,
    /// The reference implementation's: `{bos}### System:\n{system}\n### Human:\n{input}\n### Assistant:\n` then `{output}{eos}`.
    Reference,
}

/// One tokenized record.
#[derive(Debug, Clone)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Per position: the token id when it is a response token, else [`IGNORE`].
    pub labels: Vec<i64>,
    /// 1-based line in the data file.
    pub line: usize,
    /// The record's `source` (or `dataset`), if any.
    pub source: Option<String>,
}

/// A data file, tokenized.
#[derive(Debug)]
pub struct Dataset {
    /// The records in file order.
    pub examples: Vec<Example>,
    /// How many records were cut to the sequence length.
    pub truncated: usize,
}

/// What tokenizes text records.
pub struct Tokenizing<'a> {
    /// The model's tokenizer, if it has one.
    pub text: Option<&'a TextModel>,
    /// The prompt template.
    pub template: Template,
    /// The beginning-of-sequence id (reference template).
    pub bos: Option<u32>,
    /// The end-of-sequence id appended to responses (reference template).
    pub eos: Option<u32>,
    /// Vocabulary size (pre-tokenized ids are checked against it).
    pub vocab: usize,
    /// Longest sequence; longer records are truncated.
    pub seq_len: usize,
}

impl Dataset {
    /// Reads and tokenizes `path`.
    pub fn load(path: &Path, tk: &Tokenizing<'_>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| TrainError::Io { path: path.into(), source })?;
        let err = |line: usize, message: String| TrainError::Data { path: path.into(), line, message };
        let text = String::from_utf8(bytes).map_err(|e| {
            let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count();
            err(line, "not UTF-8 text".into())
        })?;
        if tk.seq_len < 2 {
            return Err(TrainError::Flag { flag: "--seq-len", problem: "must be at least 2".into() });
        }
        let mut examples = Vec::new();
        let mut truncated = 0;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(raw).map_err(|e| {
                let hint = if line == 1 && raw.starts_with('[') {
                    " (a JSON array? the data file must be JSONL: one record per line)"
                } else {
                    ""
                };
                err(line, format!("not a JSON record: {e}{hint}"))
            })?;
            let Value::Object(rec) = value else {
                return Err(err(line, "a record must be a JSON object (JSONL: one object per line)".into()));
            };
            let mut ex = tokenize(&rec, tk).map_err(|m| err(line, m))?;
            ex.line = line;
            if ex.input_ids.len() > tk.seq_len {
                ex.input_ids.truncate(tk.seq_len);
                ex.labels.truncate(tk.seq_len);
                truncated += 1;
                if !has_response(&ex.labels) {
                    return Err(err(line, format!("no response token is left within --seq-len {}; raise it", tk.seq_len)));
                }
            }
            examples.push(ex);
        }
        if examples.is_empty() {
            return Err(err(0, "holds no records".into()));
        }
        Ok(Dataset { examples, truncated })
    }
}

/// Whether some position after the first carries a label (the first is never predicted).
fn has_response(labels: &[i64]) -> bool {
    labels.iter().skip(1).any(|&l| l >= 0)
}

fn string_field(rec: &Map<String, Value>, key: &str) -> std::result::Result<Option<String>, String> {
    match rec.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field `{key}` must be a string")),
    }
}

fn message(role: &str, content: String) -> ChatMessage {
    ChatMessage { role: role.into(), content }
}

/// The record as chat messages (text formats) or ids and labels (pre-tokenized).
fn tokenize(rec: &Map<String, Value>, tk: &Tokenizing<'_>) -> std::result::Result<Example, String> {
    let source = string_field(rec, "source")?.or(string_field(rec, "dataset")?);
    let (ids, labels) = if let Some(ids) = rec.get("input_ids") {
        pretokenized(ids, rec.get("labels"), tk.vocab)?
    } else {
        let messages = messages(rec)?;
        let text =
            tk.text.ok_or("a text record needs the model's tokenizer (`tokenizer.json`); this model has none (use `input_ids` records)")?;
        let pieces = match tk.template {
            Template::Chat => chat_pieces(text, &messages)?,
            Template::Reference => reference_pieces(&messages),
        };
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        if tk.template == Template::Reference {
            if let Some(bos) = tk.bos {
                ids.push(bos);
                labels.push(IGNORE);
            }
        }
        for (piece, train) in pieces {
            let mut t = text.encode(&piece).map_err(|e| e.to_string())?;
            if train && tk.template == Template::Reference {
                t.extend(tk.eos);
            }
            labels.extend(t.iter().map(|&id| if train { i64::from(id) } else { IGNORE }));
            ids.extend(t);
        }
        (ids, labels)
    };
    if !has_response(&labels) {
        return Err("the record has no response tokens to train on".into());
    }
    Ok(Example { input_ids: ids, labels, line: 0, source })
}

fn pretokenized(ids: &Value, labels: Option<&Value>, vocab: usize) -> std::result::Result<(Vec<u32>, Vec<i64>), String> {
    let ids: Vec<u32> = ids
        .as_array()
        .ok_or("`input_ids` must be an array of token ids")?
        .iter()
        .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()).filter(|&x| (x as usize) < vocab))
        .collect::<Option<_>>()
        .ok_or(format!("`input_ids` must hold token ids below the vocabulary size {vocab}"))?;
    let labels = match labels {
        None | Some(Value::Null) => ids.iter().map(|&x| i64::from(x)).collect(),
        Some(v) => {
            let l: Vec<i64> = v
                .as_array()
                .ok_or("`labels` must be an array")?
                .iter()
                .map(|x| x.as_i64().filter(|&x| x == IGNORE || (0..i64::try_from(vocab).unwrap_or(i64::MAX)).contains(&x)))
                .collect::<Option<_>>()
                .ok_or(format!("`labels` must hold token ids below {vocab} or -100"))?;
            if l.len() != ids.len() {
                return Err(format!("`labels` has {} entries but `input_ids` has {}", l.len(), ids.len()));
            }
            l
        }
    };
    Ok((ids, labels))
}

/// The conversation of a text record as chat messages.
fn messages(rec: &Map<String, Value>) -> std::result::Result<Vec<ChatMessage>, String> {
    if let Some(conv) = rec.get("conversation") {
        let turns = conv.as_array().ok_or("`conversation` must be an array of {\"input\", \"output\"} turns")?;
        let mut msgs = Vec::new();
        if let Some(s) = string_field(rec, "system")?.or(string_field(rec, "instruction")?).filter(|s| !s.is_empty()) {
            msgs.push(message("system", s));
        }
        for (i, t) in turns.iter().enumerate() {
            let t = t.as_object().ok_or(format!("`conversation[{i}]` must be an object"))?;
            let input = string_field(t, "input")?.ok_or(format!("`conversation[{i}].input` is missing"))?;
            let output = string_field(t, "output")?.ok_or(format!("`conversation[{i}].output` is missing"))?;
            msgs.push(message("user", input));
            msgs.push(message("assistant", output));
        }
        return Ok(msgs);
    }
    if let Some(list) = rec.get("messages") {
        let list = list.as_array().ok_or("`messages` must be an array of {\"role\", \"content\"}")?;
        return list
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let m = m.as_object().ok_or(format!("`messages[{i}]` must be an object"))?;
                let role = string_field(m, "role")?.ok_or(format!("`messages[{i}].role` is missing"))?;
                if !matches!(role.as_str(), "system" | "user" | "assistant") {
                    return Err(format!("`messages[{i}].role` is `{role}`, not system, user or assistant"));
                }
                let content = string_field(m, "content")?.ok_or(format!("`messages[{i}].content` is missing"))?;
                Ok(message(&role, content))
            })
            .collect();
    }
    if rec.contains_key("instruction") && rec.contains_key("output") {
        let instruction = string_field(rec, "instruction")?.unwrap_or_default();
        let output = string_field(rec, "output")?.unwrap_or_default();
        let input = string_field(rec, "input")?.unwrap_or_default();
        let user = if input.is_empty() { instruction } else { format!("{instruction}\n\n{input}") };
        return Ok(vec![message("user", user), message("assistant", output)]);
    }
    let mut keys: Vec<&str> = rec.keys().map(String::as_str).collect();
    keys.sort_unstable();
    Err(format!(
        "unknown record format (keys: {}); expected `conversation`, `messages`, `instruction`+`output` or `input_ids`",
        if keys.is_empty() { "none".into() } else { keys.join(", ") }
    ))
}

/// Text pieces in order, each marked whether it is a response (trained).
/// Each assistant turn is the difference between the template rendered up to
/// and including it and the template rendered up to it with the generation prompt.
fn chat_pieces(text: &TextModel, msgs: &[ChatMessage]) -> std::result::Result<Vec<(String, bool)>, String> {
    let mut pieces = Vec::new();
    let mut done = String::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prompt = text.apply_chat_template(&msgs[..i], true).map_err(|e| e.to_string())?;
        let full = text.apply_chat_template(&msgs[..=i], false).map_err(|e| e.to_string())?;
        let (Some(p), Some(r)) = (prompt.strip_prefix(done.as_str()), full.strip_prefix(prompt.as_str())) else {
            return Err(format!(
                "the chat template does not render message {i} as an extension of the messages before it; use --template reference"
            ));
        };
        pieces.push((p.to_owned(), false));
        pieces.push((r.to_owned(), true));
        done = full;
    }
    Ok(pieces)
}

/// The reference implementation's prompt, extended to several turns.
fn reference_pieces(msgs: &[ChatMessage]) -> Vec<(String, bool)> {
    let mut pieces: Vec<(String, bool)> = Vec::new();
    let mut prompt = String::new();
    for m in msgs {
        match m.role.as_str() {
            "system" if !m.content.is_empty() => prompt.push_str(&format!("### System:\n{}\n", m.content)),
            "user" => prompt.push_str(&format!("### Human:\n{}\n### Assistant:\n", m.content)),
            "assistant" => {
                pieces.push((std::mem::take(&mut prompt), false));
                pieces.push((m.content.clone(), true));
            }
            _ => {}
        }
    }
    pieces
}
