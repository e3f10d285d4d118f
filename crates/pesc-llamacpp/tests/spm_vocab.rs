//! SentencePiece (`llama`) vocabularies against llama.cpp's own tokenizer
//! tests (`fixtures/llama-vocab/`): the strings must give llama.cpp's ids.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]

use pesc_gguf::GgufFile;
use pesc_hf::TextModel;
use pesc_llamacpp::GgufVocab;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama-vocab").join(name)
}

/// llama.cpp's test strings for `vocab` and the ids it gives each.
fn cases(vocab: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(fixture(&format!("ggml-vocab-{vocab}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(fixture(&format!("ggml-vocab-{vocab}.gguf.out"))).unwrap();
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> = out.lines().map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect()).collect();
    assert_eq!(texts.len(), ids.len(), "{vocab}: .inp and .out disagree");
    texts.into_iter().map(str::to_owned).zip(ids).collect()
}

/// The strings `encode` tokenizes otherwise than llama.cpp, described.
fn mismatches(vocab: &str, encode: impl Fn(&str) -> Vec<u32>) -> Vec<String> {
    cases(vocab)
        .into_iter()
        .filter_map(|(text, want)| {
            let got = encode(&text);
            (got != want).then(|| format!("{text:?}: got {got:?}, llama.cpp {want:?}"))
        })
        .collect()
}

fn imported(vocab: &str) -> TextModel {
    let path = fixture(&format!("ggml-vocab-{vocab}.gguf"));
    let file = GgufFile::open(&path).unwrap();
    let v = GgufVocab::read(&file, None).unwrap().unwrap();
    let (tokenizer, config) = v.to_hf(&path).unwrap();
    TextModel::from_json(&path, &tokenizer, &config, None).unwrap()
}

#[test]
fn imported_sentencepiece_vocabularies_tokenize_as_llama_cpp() {
    for vocab in ["llama-spm", "phi-3"] {
        let text = imported(vocab);
        let bad = mismatches(vocab, |s| text.encode(s).unwrap());
        assert!(bad.is_empty(), "{vocab}: {} of {} strings differ:\n{}", bad.len(), cases(vocab).len(), bad.join("\n"));
        // Plain text (`run --raw`) gets the BOS llama.cpp adds (`add_bos_token`), then the same ids.
        let (plain, bare) = (text.encode_text("Hello world").unwrap(), text.encode("Hello world").unwrap());
        assert_eq!(plain[0], 1, "{vocab}");
        assert_eq!(plain[1..], bare[..], "{vocab}");
    }
}

/// A vocabulary as llama.cpp's loader sees it.
struct LlamaCppVocab {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    add_space_prefix: bool,
}

impl LlamaCppVocab {
    fn of(md: &pesc_gguf::Metadata) -> Self {
        LlamaCppVocab {
            tokens: md.get_str_array("tokenizer.ggml.tokens").unwrap().iter().map(str::to_owned).collect(),
            scores: md.get_f32_array("tokenizer.ggml.scores").unwrap().to_vec(),
            types: md.get_i32_array("tokenizer.ggml.token_type").unwrap().to_vec(),
            add_space_prefix: md.opt_bool("tokenizer.ggml.add_space_prefix").unwrap().unwrap_or(true),
        }
    }

    /// llama.cpp's `llama` (SentencePiece) tokenization without special tokens,
    /// written from its description as the oracle for exported vocabularies
    /// (checked against llama.cpp's own expected ids below): a space before
    /// the text, spaces as `▁`; then, from single characters, repeatedly merge
    /// the adjacent pair whose concatenation is the highest-scoring token
    /// (leftmost on ties); a symbol left without a token becomes byte tokens.
    fn tokenize(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        let index: std::collections::HashMap<&str, usize> = self.tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
        let text = if self.add_space_prefix { format!(" {text}") } else { text.to_owned() }.replace(' ', "\u{2581}");
        let mut symbols: Vec<String> = text.chars().map(String::from).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..symbols.len().saturating_sub(1) {
                if let Some(&id) = index.get(format!("{}{}", symbols[i], symbols[i + 1]).as_str()) {
                    if best.is_none_or(|(s, _)| self.scores[id] > s) {
                        best = Some((self.scores[id], i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        let mut ids = Vec::new();
        for s in &symbols {
            match index.get(s.as_str()) {
                Some(&id) => ids.push(id as u32),
                None => ids.extend(s.bytes().map(|b| index[format!("<0x{b:02X}>").as_str()] as u32)),
            }
        }
        ids
    }
}

fn fixture_metadata(vocab: &str) -> pesc_gguf::Metadata {
    GgufFile::open(fixture(&format!("ggml-vocab-{vocab}.gguf"))).unwrap().metadata().clone()
}

#[test]
fn the_llama_cpp_oracle_reproduces_llama_cpps_ids() {
    let v = LlamaCppVocab::of(&fixture_metadata("llama-spm"));
    let bad = mismatches("llama-spm", |s| v.tokenize(s));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// A model folder (config only) holding `files`.
fn folder(vocab_size: usize, files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, pesc_hf::ModelConfig) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": {vocab_size}, "bos_token_id": 1, "eos_token_id": 2}}"#
    );
    std::fs::write(dir.path().join("config.json"), &config).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let config = pesc_hf::ModelConfig::load(dir.path()).unwrap();
    (dir, config)
}

fn exported(dir: &std::path::Path, config: &pesc_hf::ModelConfig) -> (pesc_gguf::Metadata, pesc_llamacpp::VocabKind) {
    let (entries, kind) = pesc_llamacpp::vocab::from_folder(dir, config).unwrap();
    let mut md = pesc_gguf::Metadata::new();
    for (k, v) in entries {
        md.push(k, v).unwrap();
    }
    (md, kind)
}

#[test]
fn a_tokenizer_json_alone_exports_a_vocabulary_llama_cpp_tokenizes_alike() {
    for vocab in ["llama-spm", "phi-3"] {
        let path = fixture(&format!("ggml-vocab-{vocab}.gguf"));
        let file = GgufFile::open(&path).unwrap();
        let v = GgufVocab::read(&file, None).unwrap().unwrap();
        let (tokenizer, config) = v.to_hf(&path).unwrap();
        let (dir, cfg) = folder(
            v.tokens.len(),
            &[("tokenizer.json", serde_json::to_vec(&tokenizer).unwrap()), ("tokenizer_config.json", serde_json::to_vec(&config).unwrap())],
        );
        let (md, kind) = exported(dir.path(), &cfg);
        assert!(matches!(kind, pesc_llamacpp::VocabKind::Spm { source: "tokenizer.json", .. }), "{kind:?}");
        assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "llama");
        let out = LlamaCppVocab::of(&md);
        let original = LlamaCppVocab::of(file.metadata());
        assert_eq!(out.tokens, original.tokens, "{vocab}: tokens");
        if vocab == "llama-spm" {
            assert_eq!(out.types, original.types, "{vocab}: token types");
        }
        let bad = mismatches(vocab, |s| out.tokenize(s));
        assert!(bad.is_empty(), "{vocab}: {} strings differ:\n{}", bad.len(), bad.join("\n"));
        assert_eq!(md.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
        assert!(md.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    }
}

/// `tokenizer.model` bytes (a SentencePiece BPE `ModelProto`) for `pieces`.
fn sentencepiece_model(tokens: &[String], scores: &[f32], types: &[i32]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn len_field(out: &mut Vec<u8>, number: u64, body: &[u8]) {
        varint(out, (number << 3) | 2);
        varint(out, body.len() as u64);
        out.extend_from_slice(body);
    }
    let mut m = Vec::new();
    for ((t, s), ty) in tokens.iter().zip(scores).zip(types) {
        let mut p = Vec::new();
        len_field(&mut p, 1, t.as_bytes());
        varint(&mut p, (2 << 3) | 5);
        p.extend_from_slice(&s.to_le_bytes());
        varint(&mut p, 3 << 3);
        varint(&mut p, *ty as u64);
        len_field(&mut m, 1, &p);
    }
    // trainer_spec: model_type BPE, byte_fallback.
    let mut trainer = Vec::new();
    for (field, value) in [(3u64, 2u64), (35, 1)] {
        varint(&mut trainer, field << 3);
        varint(&mut trainer, value);
    }
    len_field(&mut m, 2, &trainer);
    m
}

#[test]
fn a_tokenizer_model_exports_as_the_converter_writes_it_and_tokenizes_as_llama_cpp() {
    let md = fixture_metadata("llama-spm");
    let original = LlamaCppVocab::of(&md);
    let model = sentencepiece_model(&original.tokens, &original.scores, &original.types);
    let (dir, cfg) = folder(original.tokens.len(), &[("tokenizer.model", model)]);
    let (out, kind) = exported(dir.path(), &cfg);
    assert!(matches!(kind, pesc_llamacpp::VocabKind::Spm { source: "tokenizer.model", tokens: 32_000 }), "{kind:?}");
    let out_vocab = LlamaCppVocab::of(&out);
    assert_eq!(out_vocab.tokens, original.tokens);
    assert_eq!(out_vocab.scores, original.scores);
    assert_eq!(out_vocab.types, original.types);
    assert_eq!(out.get_str("tokenizer.ggml.pre").unwrap(), "default");
    assert!(!out.contains("tokenizer.ggml.add_space_prefix"));
    // Without tokenizer.json the special ids come from config.json, as gguf-py takes them.
    assert_eq!(out.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(out.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 2);

    // The runner reads the same folder through the tokenizer.json built from the model.
    let text = TextModel::load(dir.path()).unwrap();
    let bad = mismatches("llama-spm", |s| text.encode(s).unwrap());
    assert!(bad.is_empty(), "{}", bad.join("\n"));

    // A vocabulary wider than the pieces is padded as the converter pads it.
    let (wide, cfg) = folder(32_003, &[("tokenizer.model", sentencepiece_model(&original.tokens, &original.scores, &original.types))]);
    let padded = LlamaCppVocab::of(&exported(wide.path(), &cfg).0);
    assert_eq!(padded.tokens[32_002], "[PAD32002]");
    assert_eq!((padded.scores[32_002], padded.types[32_002]), (-10_000.0, 5));
}

#[test]
fn broken_vocabularies_are_refused_naming_the_field() {
    let md = fixture_metadata("llama-spm");
    let v = LlamaCppVocab::of(&md);
    // A tokenizer.model cut short.
    let model = sentencepiece_model(&v.tokens[..10], &v.scores[..10], &v.types[..10]);
    let (dir, cfg) = folder(10, &[("tokenizer.model", model[..model.len() / 2].to_vec())]);
    let err = pesc_llamacpp::vocab::from_folder(dir.path(), &cfg).unwrap_err().to_string();
    assert!(err.contains("tokenizer.model") && err.contains("claims"), "{err}");
    // A piece type that does not exist.
    let mut types = v.types[..10].to_vec();
    types[4] = 9;
    let (dir, cfg) = folder(10, &[("tokenizer.model", sentencepiece_model(&v.tokens[..10], &v.scores[..10], &types))]);
    let err = pesc_llamacpp::vocab::from_folder(dir.path(), &cfg).unwrap_err().to_string();
    assert!(err.contains("pieces[4]") && err.contains("`type` 9"), "{err}");

    // More pieces than the embedding has rows.
    let (dir, cfg) = folder(9, &[("tokenizer.model", sentencepiece_model(&v.tokens[..10], &v.scores[..10], &v.types[..10]))]);
    let err = pesc_llamacpp::vocab::from_folder(dir.path(), &cfg).unwrap_err().to_string();
    assert!(err.contains("tokenizer.model") && err.contains("10 pieces") && err.contains("vocab_size is 9"), "{err}");

    // GGUF vocabularies whose arrays disagree, with an unknown type, or a special id outside.
    let path = fixture("ggml-vocab-llama-spm.gguf");
    let good = GgufVocab::read(&GgufFile::open(&path).unwrap(), None).unwrap().unwrap();
    let refused = |change: &dyn Fn(&mut GgufVocab), key: &str| {
        let mut v = GgufVocab::read(&GgufFile::open(&path).unwrap(), None).unwrap().unwrap();
        change(&mut v);
        let err = v.to_hf(&path).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    };
    refused(
        &|v| {
            v.scores.pop();
        },
        "tokenizer.ggml.scores",
    );
    refused(&|v| v.scores.clear(), "tokenizer.ggml.scores");
    refused(&|v| v.token_types[7] = 0, "tokenizer.ggml.token_type");
    refused(&|v| v.eos = Some(40_000), "tokenizer.ggml.eos_token_id");
    refused(&|v| v.tokens[9] = v.tokens[8].clone(), "tokenizer.ggml.tokens");
    assert!(good.to_hf(&path).is_ok());
}
