//! Tokenizer, chat template and generation against transformers
//! (`fixtures/models/llama-chat.chat.json`, made by `fixtures/generate.py`).

use crate::common::{assert_code, assert_rejects, fixture, run, stdout};
use pesc_hf::{ChatMessage, TextModel};
use pesc_runner::{ComputeDType, Runner, Sampler};
use serde_json::Value;
use std::path::Path;

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("").join("llama-chat.chat.json")).unwrap()).unwrap()
}

use crate::common::ids;

#[test]
fn tokenization_and_chat_template_match_transformers() {
    let r = reference();
    let text = TextModel::load(&fixture("llama-chat")).unwrap();
    for e in r["encodings"].as_array().unwrap() {
        let s = e["text"].as_str().unwrap();
        assert_eq!(text.encode(s).unwrap(), ids(&e["ids"]), "{s:?}");
    }
    let messages = crate::common::chat_messages(&r);
    let prompt = text.apply_chat_template(&messages, true).unwrap();
    assert_eq!(prompt, r["prompt"].as_str().unwrap());
    assert_eq!(text.encode(&prompt).unwrap(), ids(&r["prompt_ids"]));
    assert_eq!(text.eos_ids(), [2]);
}

#[test]
fn greedy_generation_matches_transformers() {
    let r = reference();
    let model = pesc_model::Weights::open(&fixture("llama-chat")).unwrap();
    let runner = Runner::load(&model, ComputeDType::F32, &candle_core::Device::Cpu).unwrap();
    let text = TextModel::load(&fixture("llama-chat")).unwrap();
    let mut seen = Vec::new();
    let out = pesc_runner::generate(&runner, &ids(&r["prompt_ids"]), 12, &mut Sampler::new(0.0, 1.0, 0), text.eos_ids(), &mut |t| {
        seen.push(t);
        Ok(())
    })
    .unwrap();
    assert_eq!(out, ids(&r["generated_ids"]));
    assert_eq!(seen, out);
}

#[test]
fn run_streams_the_answer() {
    let r = reference();
    let o = run([
        Path::new("run"),
        &fixture("llama-chat"),
        Path::new("--prompt"),
        Path::new("What is 12 + 30?"),
        Path::new("--max-new-tokens"),
        Path::new("12"),
    ]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o), format!("{}\n", r["generated_text"].as_str().unwrap()));
    // Seeded sampling repeats.
    let sample = |seed: &str| {
        let o = run([
            Path::new("run"),
            &fixture("llama-chat"),
            Path::new("--prompt"),
            Path::new("hi"),
            Path::new("--temperature"),
            Path::new("1.0"),
            Path::new("--seed"),
            Path::new(seed),
            Path::new("--max-new-tokens"),
            Path::new("16"),
        ]);
        assert_code(&o, 0);
        stdout(&o)
    };
    assert_eq!(sample("5"), sample("5"));
}

#[test]
fn run_rejects_bad_input() {
    assert_rejects(&run([Path::new("run"), &fixture("llama-chat"), Path::new("--prompt"), Path::new("  ")]), &["the prompt is empty"]);
    assert_rejects(
        &run([Path::new("run"), &fixture("llama-gqa"), Path::new("--prompt"), Path::new("hi")]),
        &["tokenizer.json", "no tokenizer"],
    );
    assert_rejects(
        &run([Path::new("run"), &fixture("llama-chat"), Path::new("--prompt"), Path::new("hi"), Path::new("--top-p"), Path::new("0")]),
        &["--top-p"],
    );
}

#[test]
fn verify_uses_prompts_when_the_reference_has_a_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let crafted = tmp.path().join("pesc");
    let o = run([
        Path::new("craft"),
        &fixture("llama-chat"),
        Path::new("-o"),
        &crafted,
        Path::new("--experts"),
        Path::new("4"),
        Path::new("--top-k"),
        Path::new("1"),
        Path::new("--adapter-dim"),
        Path::new("8"),
    ]);
    assert_code(&o, 0);
    let o = run([Path::new("verify"), &crafted, Path::new("--against"), &fixture("llama-chat"), Path::new("--json")]);
    assert_code(&o, 0);
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((r["sequences"].as_u64(), r["exact"].as_bool()), (Some(4), Some(true)));
    let text = TextModel::load(&fixture("llama-chat")).unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "What is 12 + 30?\nHello, world!\n").unwrap();
    let o = run([
        Path::new("verify"),
        &crafted,
        Path::new("--against"),
        &fixture("llama-chat"),
        Path::new("--prompts"),
        &prompts,
        Path::new("--json"),
    ]);
    assert_code(&o, 0);
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let want = text.encode("What is 12 + 30?").unwrap().len() + text.encode("Hello, world!").unwrap().len();
    assert_eq!(r["tokens_compared"].as_u64(), Some(want as u64));
    std::fs::write(&prompts, "hello\n\nworld\n").unwrap();
    let o = run([Path::new("verify"), &crafted, Path::new("--against"), &fixture("llama-chat"), Path::new("--prompts"), &prompts]);
    assert_rejects(&o, &["prompts.txt", "line 2 is an empty prompt"]);
}

#[test]
fn a_tokenizer_rebuilt_from_gguf_metadata_tokenizes_alike() {
    // Take the fixture's tokenizer apart as llama.cpp stores it (tokens by id,
    // merges as strings, specials as control tokens) and rebuild it.
    let tj: Value = serde_json::from_slice(&std::fs::read(fixture("llama-chat").join("tokenizer.json")).unwrap()).unwrap();
    let vocab = tj["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[usize::try_from(id.as_u64().unwrap()).unwrap()] = t.clone();
    }
    let specials: Vec<u64> = tj["added_tokens"].as_array().unwrap().iter().map(|a| a["id"].as_u64().unwrap()).collect();
    let token_types = (0..tokens.len() as u64).map(|i| if specials.contains(&i) { 3 } else { 1 }).collect();
    let merges = tj["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            pair => format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
        })
        .collect();
    let v = pesc_llamacpp::GgufVocab {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        tokens,
        token_types,
        scores: Vec::new(),
        merges,
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        pad: Some(2),
        add_bos: false,
        add_eos: false,
        add_space_prefix: false,
        chat_template: Some(std::fs::read_to_string(fixture("llama-chat").join("chat_template.jinja")).unwrap()),
        context_length: Some(256),
    };
    let (tokenizer, config) = v.to_hf(std::path::Path::new("vocab.gguf")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(tmp.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let rebuilt = TextModel::load(tmp.path()).unwrap();
    let r = reference();
    for e in r["encodings"].as_array().unwrap() {
        let s = e["text"].as_str().unwrap();
        assert_eq!(rebuilt.encode(s).unwrap(), ids(&e["ids"]), "{s:?}");
        assert_eq!(
            rebuilt.decode(&ids(&e["ids"])).unwrap(),
            TextModel::load(&fixture("llama-chat")).unwrap().decode(&ids(&e["ids"])).unwrap()
        );
    }
    let prompt = rebuilt.apply_chat_template(&[ChatMessage { role: "user".into(), content: "What is 12 + 30?".into() }], true).unwrap();
    assert_eq!(prompt, r["prompt"].as_str().unwrap());
    assert_eq!(rebuilt.eos_ids(), [2]);
}

#[test]
fn verify_refuses_a_candidate_with_another_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other");
    crate::common::copy_dir(&fixture("llama-chat"), &other);
    let tj = std::fs::read_to_string(other.join("tokenizer.json")).unwrap().replace("<|im_end|>", "<|im_stop|>");
    std::fs::write(other.join("tokenizer.json"), tj).unwrap();
    let o = run([Path::new("verify"), &other, Path::new("--against"), &fixture("llama-chat")]);
    assert_rejects(&o, &["tokenizer maps tokens to other ids than the reference's"]);
}
