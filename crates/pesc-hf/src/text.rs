//! Text in and out: `tokenizer.json` (or a SentencePiece `tokenizer.model`) through the `tokenizers` crate, and the
//! model's chat template (Jinja, as transformers' `apply_chat_template`).

use crate::spm::SpmModel;
use crate::HfError;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A model's tokenizer and chat template.
pub struct TextModel {
    tokenizer: Tokenizer,
    template: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
    eos_ids: Vec<u32>,
    /// The tokenizer file (or the GGUF file), for errors.
    source: PathBuf,
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn read_json(dir: &Path, name: &str) -> Result<Option<Value>, HfError> {
    let path = dir.join(name);
    if !path.is_file() {
        return Ok(None);
    }
    pesc_io::confined(dir, &path)?;
    let bytes = pesc_io::read_capped(&path, 64 << 20)?;
    let v = pesc_io::parse_strict(&bytes).map_err(|e| pesc_io::Error::Json { path, message: e.to_string() })?;
    Ok(Some(v))
}

impl TextModel {
    /// Loads `dir/tokenizer.json` (else `dir/tokenizer.model`), the chat template (`chat_template.jinja`,
    /// else `tokenizer_config.json`'s `chat_template`), the special tokens and
    /// the end-of-sequence ids (`generation_config.json`, else the tokenizer's).
    pub fn load(dir: &Path) -> Result<Self, HfError> {
        let config = read_json(dir, "tokenizer_config.json")?.unwrap_or(Value::Null);
        let mut path = dir.join("tokenizer.json");
        let sp_path = dir.join("tokenizer.model");
        let bytes = if path.is_file() {
            pesc_io::confined(dir, &path)?;
            pesc_io::read_capped(&path, 256 << 20)?
        } else if sp_path.is_file() {
            // A SentencePiece model alone: the tokenizer.json transformers would build for it.
            pesc_io::confined(dir, &sp_path)?;
            let mut vocab = SpmModel::read(&sp_path)?.vocab();
            let flag = |key: &str| config.get(key).and_then(Value::as_bool);
            vocab.add_bos = flag("add_bos_token").unwrap_or(vocab.add_bos);
            vocab.add_eos = flag("add_eos_token").unwrap_or(vocab.add_eos);
            vocab.add_space_prefix = flag("add_prefix_space").unwrap_or(vocab.add_space_prefix);
            vocab.check().map_err(|(field, problem)| HfError::SentencePiece { path: sp_path.clone(), field: field.into(), problem })?;
            path = sp_path;
            serde_json::to_vec(&vocab.tokenizer_json()).unwrap_or_default()
        } else {
            return Err(HfError::NoTokenizer { path });
        };
        let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| HfError::Tokenizer { path: path.clone(), message: e.to_string() })?;
        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.is_file() {
            pesc_io::confined(dir, &jinja)?;
            let bytes = pesc_io::read_capped(&jinja, 4 << 20)?;
            Some(String::from_utf8(bytes).map_err(|_| HfError::NotUtf8 { path: jinja })?)
        } else {
            config.get("chat_template").and_then(Value::as_str).map(str::to_owned)
        };
        let generation = read_json(dir, "generation_config.json")?;
        Ok(Self::build(tokenizer, template, &config, generation.as_ref(), path))
    }

    /// The tokenizer of `tokenizer.json`'s content, with `tokenizer_config.json`'s
    /// and `generation_config.json`'s; `source` names them in errors.
    pub fn from_json(source: &Path, tokenizer: &Value, config: &Value, generation: Option<&Value>) -> Result<Self, HfError> {
        let bytes = serde_json::to_vec(tokenizer).unwrap_or_default();
        let tok = Tokenizer::from_bytes(&bytes).map_err(|e| HfError::Tokenizer { path: source.into(), message: e.to_string() })?;
        let template = config.get("chat_template").and_then(Value::as_str).map(str::to_owned);
        Ok(Self::build(tok, template, config, generation, source.into()))
    }

    fn build(tokenizer: Tokenizer, template: Option<String>, config: &Value, generation: Option<&Value>, source: PathBuf) -> Self {
        let (bos, eos) = (token_string(config.get("bos_token")), token_string(config.get("eos_token")));
        let mut eos_ids: Vec<u32> = match generation.and_then(|g| g.get("eos_token_id")) {
            Some(Value::Number(n)) => n.as_u64().into_iter().filter_map(|v| u32::try_from(v).ok()).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).filter_map(|v| u32::try_from(v).ok()).collect(),
            _ => Vec::new(),
        };
        if let Some(id) = eos.as_deref().and_then(|e| tokenizer.token_to_id(e)) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        TextModel { tokenizer, template, bos, eos, eos_ids, source }
    }

    /// Whether `other` maps every token to the same id (so that ids mean the
    /// same to both models).
    #[must_use]
    pub fn same_vocabulary(&self, other: &TextModel) -> bool {
        self.tokenizer.get_vocab(true) == other.tokenizer.get_vocab(true)
    }

    /// Token ids of `text`, without added special tokens (as transformers
    /// tokenizes a rendered chat template).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, HfError> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| self.tokenizer_error(&e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of plain `text` with the special tokens the tokenizer adds
    /// (a Llama tokenizer's BOS), as transformers' `tokenizer(text)` and llama.cpp do.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, HfError> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| self.tokenizer_error(&e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, HfError> {
        self.tokenizer.decode(ids, true).map_err(|e| self.tokenizer_error(&e))
    }

    /// Vocabulary size including added tokens.
    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Ids that end generation.
    #[must_use]
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether the model has a chat template.
    #[must_use]
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Renders the chat template for `messages`, ending with the assistant's
    /// turn when `add_generation_prompt`.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, HfError> {
        let template = self.template.as_deref().ok_or_else(|| HfError::NoChatTemplate { path: self.source.clone() })?;
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template).map_err(|e| self.template_error(&e))?;
        let msgs: Vec<minijinja::Value> =
            messages.iter().map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() }).collect();
        let ctx = minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
        };
        env.get_template("chat").and_then(|t| t.render(ctx)).map_err(|e| self.template_error(&e))
    }

    fn tokenizer_error(&self, e: &dyn std::fmt::Display) -> HfError {
        HfError::Tokenizer { path: self.source.clone(), message: e.to_string() }
    }

    fn template_error(&self, e: &minijinja::Error) -> HfError {
        HfError::ChatTemplate { path: self.source.clone(), message: e.to_string() }
    }
}
