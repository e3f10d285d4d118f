//! SentencePiece vocabularies (Llama 1/2, Mistral, TinyLlama): a folder's
//! `tokenizer.model` ([`SpmModel`], the SentencePiece `ModelProto`, parsed
//! within the file's bytes) and the `tokenizer.json` transformers' fast
//! Llama tokenizer uses for such a vocabulary ([`SpmVocab::tokenizer_json`]).
//!
//! The `tokenizer.json` is the legacy Llama form (the one the Hub's Llama-2
//! folders carry): a normalizer that prepends `▁` and turns spaces into `▁`,
//! no pre-tokenizer, a BPE with byte fallback (`<0xXX>` pieces) whose merges
//! are every split of a piece into two pieces, the higher the merged piece's
//! score the earlier. That is SentencePiece's BPE encoding, and llama.cpp's
//! `llama` tokenizer: merge the adjacent pair whose concatenation is the
//! highest-scoring piece, characters without a piece become byte pieces.

use crate::HfError;
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::path::Path;

/// Piece types, numbered as SentencePiece and GGUF's `tokenizer.ggml.token_type` number them.
pub mod piece_type {
    /// An ordinary piece.
    pub const NORMAL: i32 = 1;
    /// The unknown piece.
    pub const UNKNOWN: i32 = 2;
    /// A control symbol (`<s>`, `</s>`).
    pub const CONTROL: i32 = 3;
    /// A user-defined symbol, always kept whole.
    pub const USER_DEFINED: i32 = 4;
    /// A piece never produced.
    pub const UNUSED: i32 = 5;
    /// A byte-fallback piece `<0xXX>`.
    pub const BYTE: i32 = 6;
}
use piece_type::{BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED};

/// Largest `tokenizer.model` read (Llama's is 0.5 MB, Gemma's 4 MB).
const MAX_MODEL_BYTES: u64 = 64 << 20;

/// One piece of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece's text (`▁` for a space).
    pub text: String,
    /// Its score (higher merges first).
    pub score: f32,
    /// Its type ([`piece_type`]).
    pub kind: i32,
}

/// A SentencePiece `tokenizer.model`: its pieces and the settings a tokenizer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    /// The pieces, in id order.
    pub pieces: Vec<Piece>,
    /// `trainer_spec.byte_fallback`.
    pub byte_fallback: bool,
    /// `trainer_spec.unk_id`, `bos_id`, `eos_id`, `pad_id` (negative: none).
    pub unk_id: i32,
    /// See `unk_id`.
    pub bos_id: i32,
    /// See `unk_id`.
    pub eos_id: i32,
    /// See `unk_id`.
    pub pad_id: i32,
    /// `normalizer_spec.add_dummy_prefix`: a space is put before the text.
    pub add_dummy_prefix: bool,
}

/// A protobuf reader over one message's bytes; every length is checked against what is left.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.bytes.get(self.pos) else { return Err(format!("ends inside a varint at byte {}", self.pos)) };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(format!("varint at byte {} overflows 64 bits", self.pos - 1));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint at byte {} is longer than 10 bytes", self.pos))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = self.bytes.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| format!("a field at byte {} claims {n} bytes but only {left} are left", self.pos))?;
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next field: its number, wire type and (for LEN) bytes or (else) value.
    fn field(&mut self) -> Result<(u64, Field<'a>), String> {
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return Err(format!("field number 0 at byte {}", self.pos));
        }
        let value = match wire {
            VARINT => Field::Varint(self.varint()?),
            FIXED64 => {
                self.take(8)?;
                Field::Fixed64
            }
            LEN => {
                let n = self.varint()?;
                Field::Len(self.take(n)?)
            }
            FIXED32 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default())),
            other => return Err(format!("field {number} has wire type {other}, which SentencePiece models do not use")),
        };
        Ok((number, value))
    }
}

enum Field<'a> {
    Varint(u64),
    /// Skipped: no field read here is a 64-bit value.
    Fixed64,
    Len(&'a [u8]),
    Fixed32(u32),
}

impl Field<'_> {
    fn wire_name(&self) -> &'static str {
        match self {
            Field::Varint(_) => "a varint",
            Field::Fixed64 => "a 64-bit value",
            Field::Len(_) => "length-delimited bytes",
            Field::Fixed32(_) => "a 32-bit value",
        }
    }
}

/// `field` must be a varint; `name` names it in errors.
fn varint(f: &Field, name: &str) -> Result<u64, String> {
    match f {
        Field::Varint(v) => Ok(*v),
        other => Err(format!("`{name}` is {}, not a varint", other.wire_name())),
    }
}

/// An `int32` field (negative values are sign-extended to 64 bits on the wire).
fn int32(f: &Field, name: &str) -> Result<i32, String> {
    let v = varint(f, name)?;
    i32::try_from(v as i64).map_err(|_| format!("`{name}` = {v} is not an int32"))
}

fn len_bytes<'a>(f: &Field<'a>, name: &str) -> Result<&'a [u8], String> {
    match f {
        Field::Len(b) => Ok(b),
        other => Err(format!("`{name}` is {}, not length-delimited", other.wire_name())),
    }
}

impl SpmModel {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, HfError> {
        let bytes = pesc_io::read_capped(path, MAX_MODEL_BYTES)?;
        Self::parse(&bytes).map_err(|(field, problem)| HfError::SentencePiece { path: path.into(), field, problem })
    }

    /// Parses a `ModelProto`; an error names the field at fault.
    pub fn parse(bytes: &[u8]) -> Result<Self, (String, String)> {
        let top = |p: String| ("ModelProto".to_owned(), p);
        let mut model =
            SpmModel { pieces: Vec::new(), byte_fallback: false, unk_id: 0, bos_id: 1, eos_id: 2, pad_id: -1, add_dummy_prefix: true };
        let mut model_type = 1; // UNIGRAM, the proto's default
        let mut r = Reader::new(bytes);
        while !r.done() {
            let (number, f) = r.field().map_err(top)?;
            match number {
                1 => {
                    let i = model.pieces.len();
                    let piece = parse_piece(len_bytes(&f, "pieces").map_err(top)?).map_err(|p| (format!("pieces[{i}]"), p))?;
                    model.pieces.push(piece);
                }
                2 => {
                    let mut t = Reader::new(len_bytes(&f, "trainer_spec").map_err(top)?);
                    while !t.done() {
                        let spec = |p: String| ("trainer_spec".to_owned(), p);
                        let (n, f) = t.field().map_err(spec)?;
                        let named = |name: &str| format!("trainer_spec.{name}");
                        let set = |name: &str, f: &Field| int32(f, &named(name)).map_err(|p| (named(name), p));
                        match n {
                            3 => model_type = set("model_type", &f)?,
                            35 => model.byte_fallback = varint(&f, &named("byte_fallback")).map_err(|p| (named("byte_fallback"), p))? != 0,
                            40 => model.unk_id = set("unk_id", &f)?,
                            41 => model.bos_id = set("bos_id", &f)?,
                            42 => model.eos_id = set("eos_id", &f)?,
                            43 => model.pad_id = set("pad_id", &f)?,
                            _ => {}
                        }
                    }
                }
                3 => {
                    let mut n = Reader::new(len_bytes(&f, "normalizer_spec").map_err(top)?);
                    while !n.done() {
                        let (k, f) = n.field().map_err(|p| ("normalizer_spec".to_owned(), p))?;
                        if k == 3 {
                            let name = "normalizer_spec.add_dummy_prefix";
                            model.add_dummy_prefix = varint(&f, name).map_err(|p| (name.to_owned(), p))? != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if model_type != 2 {
            let kind = match model_type {
                1 => "UNIGRAM",
                3 => "WORD",
                4 => "CHAR",
                _ => "unknown",
            };
            return Err((
                "trainer_spec.model_type".into(),
                format!("is {model_type} ({kind}); only BPE SentencePiece models (2: Llama, Mistral, TinyLlama) are supported"),
            ));
        }
        if model.pieces.is_empty() {
            return Err(("pieces".into(), "the model has no pieces".into()));
        }
        let mut seen = HashMap::with_capacity(model.pieces.len());
        for (i, p) in model.pieces.iter().enumerate() {
            if let Some(j) = seen.insert(p.text.as_str(), i) {
                return Err((format!("pieces[{i}]"), format!("repeats the piece {:?} of pieces[{j}]", p.text)));
            }
        }
        let n = model.pieces.len();
        for (name, id) in [("unk_id", model.unk_id), ("bos_id", model.bos_id), ("eos_id", model.eos_id), ("pad_id", model.pad_id)] {
            if usize::try_from(id).is_ok_and(|i| i >= n) {
                return Err((format!("trainer_spec.{name}"), format!("{id} is outside the {n} pieces")));
            }
        }
        Ok(model)
    }

    /// The vocabulary: pieces, scores and types as stored, special ids from the trainer spec.
    #[must_use]
    pub fn vocab(&self) -> SpmVocab {
        let id = |i: i32| u32::try_from(i).ok();
        SpmVocab {
            tokens: self.pieces.iter().map(|p| p.text.clone()).collect(),
            scores: self.pieces.iter().map(|p| p.score).collect(),
            types: self.pieces.iter().map(|p| p.kind).collect(),
            unk: id(self.unk_id),
            bos: id(self.bos_id),
            eos: id(self.eos_id),
            pad: id(self.pad_id),
            add_bos: true,
            add_eos: false,
            add_space_prefix: self.add_dummy_prefix,
        }
    }
}

fn parse_piece(b: &[u8]) -> Result<Piece, String> {
    let mut r = Reader::new(b);
    let (mut text, mut score, mut kind) = (None, 0.0f32, NORMAL);
    while !r.done() {
        let (n, f) = r.field()?;
        match n {
            1 => {
                let raw = len_bytes(&f, "piece")?;
                text = Some(std::str::from_utf8(raw).map_err(|_| format!("`piece` is not UTF-8 ({raw:02x?})"))?.to_owned());
            }
            2 => match f {
                Field::Fixed32(bits) => score = f32::from_bits(bits),
                other => return Err(format!("`score` is {}, not a 32-bit float", other.wire_name())),
            },
            3 => {
                kind = int32(&f, "type")?;
                if !(NORMAL..=BYTE).contains(&kind) {
                    return Err(format!("`type` {kind} is not a piece type (1 normal to 6 byte)"));
                }
            }
            _ => {}
        }
    }
    let text = text.filter(|t| !t.is_empty()).ok_or("has no (or an empty) `piece`")?;
    if !score.is_finite() {
        return Err(format!("piece {text:?} has the score {score}"));
    }
    Ok(Piece { text, score, kind })
}

/// A SentencePiece vocabulary as a tokenizer needs it: llama.cpp's `llama`
/// vocabulary, and what [`SpmVocab::tokenizer_json`] writes for transformers.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmVocab {
    /// Tokens in id order (`▁` for a space).
    pub tokens: Vec<String>,
    /// Their scores.
    pub scores: Vec<f32>,
    /// Their types ([`piece_type`]).
    pub types: Vec<i32>,
    /// The unknown token.
    pub unk: Option<u32>,
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
    /// Whether BOS is put before a text.
    pub add_bos: bool,
    /// Whether EOS is put after it.
    pub add_eos: bool,
    /// Whether a space is put before a text (SentencePiece's dummy prefix).
    pub add_space_prefix: bool,
}

impl SpmVocab {
    /// Checks the vocabulary is consistent; an error names `(field, problem)`
    /// with fields named as GGUF names them.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let n = self.tokens.len();
        if self.scores.len() != n {
            return Err(("tokenizer.ggml.scores", format!("has {} entries for {n} tokens", self.scores.len())));
        }
        if self.types.len() != n {
            return Err(("tokenizer.ggml.token_type", format!("has {} entries for {n} tokens", self.types.len())));
        }
        if let Some((i, t)) = self.types.iter().enumerate().find(|(_, t)| !(NORMAL..=BYTE).contains(*t)) {
            return Err(("tokenizer.ggml.token_type", format!("token {i} has type {t}, not one of 1 (normal) to 6 (byte)")));
        }
        if let Some((i, s)) = self.scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            return Err(("tokenizer.ggml.scores", format!("token {i} has the score {s}")));
        }
        let mut seen = HashMap::with_capacity(n);
        for (i, t) in self.tokens.iter().enumerate() {
            if let Some(j) = seen.insert(t.as_str(), i) {
                return Err(("tokenizer.ggml.tokens", format!("tokens {j} and {i} are both {t:?}")));
            }
        }
        for (key, id) in [
            ("tokenizer.ggml.unknown_token_id", self.unk),
            ("tokenizer.ggml.bos_token_id", self.bos),
            ("tokenizer.ggml.eos_token_id", self.eos),
            ("tokenizer.ggml.padding_token_id", self.pad),
        ] {
            if let Some(id) = id.filter(|&i| i as usize >= n) {
                return Err((key, format!("{id} is outside the vocabulary of {n} tokens")));
            }
        }
        Ok(())
    }

    /// The merges a BPE over these tokens needs to encode as SentencePiece
    /// does: every split of a token into two tokens, ordered by the merged
    /// token's score (highest first), then its id, then the longer left part.
    #[must_use]
    pub fn merges(&self) -> Vec<(&str, &str)> {
        let index: HashMap<&str, usize> = self.tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
        let mut merges: Vec<(usize, usize, &str, &str)> = Vec::new();
        for (id, t) in self.tokens.iter().enumerate() {
            for (cut, _) in t.char_indices().skip(1) {
                let (left, right) = t.split_at(cut);
                if index.contains_key(left) && index.contains_key(right) {
                    merges.push((id, cut, left, right));
                }
            }
        }
        merges.sort_by(|a, b| self.scores[b.0].total_cmp(&self.scores[a.0]).then(a.0.cmp(&b.0)).then(b.1.cmp(&a.1)));
        merges.into_iter().map(|(_, _, l, r)| (l, r)).collect()
    }

    fn name(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize)).map(String::as_str)
    }

    /// `tokenizer.json` for this vocabulary (transformers' legacy Llama form);
    /// call [`SpmVocab::check`] first.
    #[must_use]
    pub fn tokenizer_json(&self) -> Json {
        let vocab: Map<String, Json> = self.tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        let merges: Vec<Json> = self.merges().into_iter().map(|(l, r)| json!([l, r])).collect();
        let added: Vec<Json> = self
            .types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(**t, UNKNOWN | CONTROL | USER_DEFINED))
            .map(|(id, t)| {
                json!({"id": id, "content": self.tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": *t != USER_DEFINED})
            })
            .collect();
        let replace_space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        let normalizer = if self.add_space_prefix {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace_space]})
        } else {
            replace_space
        };
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.add_space_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": null,
            "post_processor": self.post_processor(),
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": self.name(self.unk), "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        })
    }

    /// BOS before (and EOS after) each sequence, as `LlamaTokenizerFast` sets it.
    fn post_processor(&self) -> Json {
        let bos = self.name(self.bos).filter(|_| self.add_bos);
        let eos = self.name(self.eos).filter(|_| self.add_eos);
        if bos.is_none() && eos.is_none() {
            return Json::Null;
        }
        let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
        let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let (mut single, mut pair, mut tokens) = (Vec::new(), Vec::new(), Map::new());
        for (t, id) in [(bos, self.bos), (eos, self.eos)] {
            if let Some(t) = t {
                tokens.insert(t.to_owned(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
        }
        single.extend(bos.map(special));
        single.push(seq("A", 0));
        single.extend(eos.map(special));
        pair.extend(single.iter().cloned());
        pair.extend(bos.map(|t| json!({"SpecialToken": {"id": t, "type_id": 1}})));
        pair.push(seq("B", 1));
        pair.extend(eos.map(|t| json!({"SpecialToken": {"id": t, "type_id": 1}})));
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": tokens})
    }

    /// `tokenizer_config.json` beside [`SpmVocab::tokenizer_json`].
    #[must_use]
    pub fn tokenizer_config(&self, model_max_length: Option<u64>, chat_template: Option<&str>) -> Json {
        let mut config = json!({
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "add_prefix_space": self.add_space_prefix,
            "clean_up_tokenization_spaces": false,
            "legacy": true,
            "model_max_length": model_max_length.unwrap_or(2048),
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        for (key, id) in [("bos_token", self.bos), ("eos_token", self.eos), ("unk_token", self.unk), ("pad_token", self.pad)] {
            if let Some(t) = self.name(id) {
                config[key] = json!(t);
            }
        }
        if let Some(t) = chat_template {
            config["chat_template"] = json!(t);
        }
        config
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
mod tests {
    use super::*;

    /// A protobuf writer for the tests' models.
    fn key(out: &mut Vec<u8>, number: u64, wire: u64) {
        varint_to(out, (number << 3) | wire);
    }
    fn varint_to(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn len_field(out: &mut Vec<u8>, number: u64, body: &[u8]) {
        key(out, number, LEN);
        varint_to(out, body.len() as u64);
        out.extend_from_slice(body);
    }
    fn piece(text: &str, score: f32, kind: i32) -> Vec<u8> {
        let mut p = Vec::new();
        len_field(&mut p, 1, text.as_bytes());
        key(&mut p, 2, FIXED32);
        p.extend_from_slice(&score.to_le_bytes());
        key(&mut p, 3, VARINT);
        varint_to(&mut p, kind as u64);
        p
    }
    fn model(pieces: &[(&str, f32, i32)]) -> Vec<u8> {
        let mut m = Vec::new();
        for (t, s, k) in pieces {
            len_field(&mut m, 1, &piece(t, *s, *k));
        }
        let mut trainer = Vec::new();
        key(&mut trainer, 3, VARINT);
        varint_to(&mut trainer, 2);
        key(&mut trainer, 43, VARINT);
        varint_to(&mut trainer, (-1i64) as u64);
        len_field(&mut m, 2, &trainer);
        m
    }

    const PIECES: [(&str, f32, i32); 7] = [
        ("<unk>", 0.0, UNKNOWN),
        ("<s>", 0.0, CONTROL),
        ("</s>", 0.0, CONTROL),
        ("\u{2581}", -1.0, NORMAL),
        ("a", -2.0, NORMAL),
        ("\u{2581}a", -0.5, NORMAL),
        ("aa", -3.0, NORMAL),
    ];

    #[test]
    fn parses_pieces_and_the_trainer_spec() {
        let m = SpmModel::parse(&model(&PIECES)).unwrap();
        assert_eq!(m.pieces.len(), 7);
        assert_eq!(m.pieces[5], Piece { text: "\u{2581}a".into(), score: -0.5, kind: NORMAL });
        assert_eq!((m.unk_id, m.bos_id, m.eos_id, m.pad_id), (0, 1, 2, -1));
        assert!(m.add_dummy_prefix);
        let v = m.vocab();
        assert_eq!(v.pad, None);
        assert_eq!(v.merges(), [("\u{2581}", "a"), ("a", "a")]);
    }

    #[test]
    fn malformed_models_name_the_field() {
        let good = model(&PIECES);
        let (field, problem) = SpmModel::parse(&good[..good.len() - 3]).unwrap_err();
        assert_eq!(field, "ModelProto", "{problem}");
        assert!(problem.contains("claims 14 bytes but only 11 are left"), "{problem}");
        let mut bad = Vec::new();
        len_field(&mut bad, 1, &[0x0a, 0x02, 0xff, 0xfe]);
        let (field, problem) = SpmModel::parse(&bad).unwrap_err();
        assert_eq!(field, "pieces[0]");
        assert!(problem.contains("not UTF-8"), "{problem}");
        let mut bad = Vec::new();
        key(&mut bad, 1, VARINT);
        varint_to(&mut bad, 7);
        let (field, problem) = SpmModel::parse(&bad).unwrap_err();
        assert_eq!(field, "ModelProto");
        assert!(problem.contains("not length-delimited"), "{problem}");
        let mut huge = Vec::new();
        key(&mut huge, 1, LEN);
        varint_to(&mut huge, u64::MAX >> 1);
        assert!(SpmModel::parse(&huge).unwrap_err().1.contains("claims"));
        let dup = model(&[("a", 0.0, NORMAL), ("a", 0.0, NORMAL)]);
        assert!(SpmModel::parse(&dup).unwrap_err().1.contains("repeats"));
        let mut unigram = model(&PIECES);
        let mut t = Vec::new();
        key(&mut t, 3, VARINT);
        varint_to(&mut t, 1);
        len_field(&mut unigram, 2, &t);
        assert_eq!(SpmModel::parse(&unigram).unwrap_err().0, "trainer_spec.model_type");
    }

    #[test]
    fn tokenizer_json_encodes_with_byte_fallback_and_the_prefix_space() {
        let v = SpmModel::parse(&model(&PIECES)).unwrap().vocab();
        // Without byte pieces `tokenizers` falls back to <unk>.
        let json = serde_json::to_vec(&v.tokenizer_json()).unwrap();
        let t = tokenizers::Tokenizer::from_bytes(&json).unwrap();
        assert_eq!(t.encode("a aa", false).unwrap().get_ids(), [5, 5, 4]);
        assert_eq!(t.encode("a aa", true).unwrap().get_ids(), [1, 5, 5, 4]);
    }
}
