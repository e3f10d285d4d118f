//! `import-gguf` and `inspect` on llama.cpp-style GGUF files: the committed
//! `fixtures/gguf/llama-chat.{Q8_0,Q4_1}.gguf` (made from `llama-chat` by
//! `fixtures/gguf/make_gguf.py` with the `gguf` package) and hostile variants
//! of them built here with `pesc_gguf`'s writer.

use crate::common::{assert_code, assert_rejects, entries, fixture, run, sha256, stdout};
use pesc_gguf::{write_gguf, GgufFile, Metadata, TensorSpec, Value};
use pesc_hf::TextModel;
use pesc_io::{Checkpoint, SafetensorsFile};
use pesc_runner::{Cache, ComputeDType, Runner};
use pesc_tensor::{from_f32, to_f32, DType};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Output;

const QUANTS: [&str; 2] = ["Q8_0", "Q4_1"];

/// Max |imported Q8_0 logits - llama-chat's f32 reference logits|. Measured
/// 6.5e-3 (the logits are about 0.17 in size, at most 1.1); skipping the q/k
/// un-permutation moves them by 0.16, so 2e-2 leaves 3x headroom over Q8_0's
/// rounding and still sits 8x below a rope-layout error.
const Q8_0_LOGITS_ATOL: f32 = 2e-2;
/// The same for Q4_1 (4-bit weights): measured 7.7e-2.
const Q4_1_LOGITS_ATOL: f32 = 0.2;

fn gguf_fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf").join(file)
}

fn gguf_file(quant: &str) -> PathBuf {
    gguf_fixture(&format!("llama-chat.{quant}.gguf"))
}

fn import(gguf: &Path, out: &Path, flags: &[&str]) -> Output {
    let mut args = vec![Path::new("import-gguf"), gguf, Path::new("-o"), out];
    args.extend(flags.iter().map(Path::new));
    run(args)
}

/// Imports `quant`'s fixture into `dir/name` and returns the folder.
fn imported(dir: &Path, quant: &str, flags: &[&str]) -> PathBuf {
    let out = dir.join(format!("{quant}{}", flags.join("")));
    assert_code(&import(&gguf_file(quant), &out, flags), 0);
    out
}

/// `name -> (dtype, shape, values as f32)` of one safetensors file.
fn tensors_of(path: &Path) -> Vec<(String, DType, Vec<u64>, Vec<f32>)> {
    let f = SafetensorsFile::open(path).unwrap();
    let mut v: Vec<_> =
        f.tensors().iter().map(|t| (t.name.clone(), t.dtype, t.shape.clone(), to_f32(t.dtype, &f.read(t).unwrap()).unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn json(path: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

use crate::common::ids;

#[test]
fn imported_tensors_equal_the_gguf_package_dequantization_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let original = Checkpoint::open_dir(&fixture("llama-chat")).unwrap();
    let mut want_names: Vec<(String, Vec<u64>)> = original.tensors().map(|t| (t.name.clone(), t.shape.clone())).collect();
    want_names.sort();
    for quant in QUANTS {
        let out = imported(tmp.path(), quant, &[]);
        let files: Vec<String> = entries(&out).into_iter().filter(|n| n.ends_with(".safetensors")).collect();
        assert_eq!(files, ["model.safetensors"], "{quant}");
        let got = tensors_of(&out.join("model.safetensors"));
        let want = tensors_of(&gguf_fixture(&format!("llama-chat.{quant}.dequant.safetensors")));
        let names: Vec<(String, Vec<u64>)> = got.iter().map(|(n, _, s, _)| (n.clone(), s.clone())).collect();
        assert_eq!(names, want_names, "{quant}: names and shapes differ from the original llama-chat");
        assert_eq!(got.len(), want.len());
        let mut changed = 0;
        for ((name, dtype, shape, values), (wname, wdtype, wshape, wvalues)) in got.iter().zip(&want) {
            assert_eq!((name, dtype, shape), (wname, wdtype, wshape), "{quant}");
            assert_eq!(*dtype, DType::F32, "{quant} {name}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(values) == bits(wvalues), "{quant} {name}: not bit-identical to the gguf package's dequantization");
            let orig = to_f32(DType::F32, &original.read(name).unwrap()).unwrap();
            changed += usize::from(bits(&orig) != bits(values));
        }
        // Every 2-D weight was quantized (the 5 norms are stored F32).
        assert_eq!(changed, want.len() - 5, "{quant}");
    }
}

#[test]
fn imported_config_has_the_fixture_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let want = json(&fixture("llama-chat").join("config.json"));
    for quant in QUANTS {
        let out = imported(tmp.path(), quant, &[]);
        let c = json(&out.join("config.json"));
        for key in [
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "vocab_size",
            "max_position_embeddings",
            "tie_word_embeddings",
            "bos_token_id",
            "eos_token_id",
        ] {
            assert_eq!(c[key], want[key], "{quant}: {key}");
        }
        assert_eq!(c["architectures"], serde_json::json!(["LlamaForCausalLM"]));
        assert_eq!(c["model_type"], "llama");
        assert_eq!(c["torch_dtype"], "float32");
        assert_eq!(c["pad_token_id"], 2, "{quant}: tokenizer.ggml.padding_token_id");
        assert_eq!(c["rope_theta"].as_f64(), Some(10_000.0));
        assert!(c["rope_scaling"].is_null());
        // GGUF stores the epsilon as an f32: it must be 1e-6 rounded to f32.
        #[allow(clippy::cast_possible_truncation)]
        let eps = c["rms_norm_eps"].as_f64().unwrap() as f32;
        assert_eq!(eps, 1e-6_f32, "{quant}");
        let g = json(&out.join("generation_config.json"));
        assert_eq!((g["bos_token_id"].as_u64(), g["eos_token_id"].as_u64()), (Some(1), Some(2)));
    }
}

#[test]
fn imported_tokenizer_and_chat_template_match_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let r = json(&fixture("").join("llama-chat.chat.json"));
    let original = TextModel::load(&fixture("llama-chat")).unwrap();
    for quant in QUANTS {
        let out = imported(tmp.path(), quant, &[]);
        let text = TextModel::load(&out).unwrap();
        for e in r["encodings"].as_array().unwrap() {
            let s = e["text"].as_str().unwrap();
            let want = ids(&e["ids"]);
            assert_eq!(text.encode(s).unwrap(), want, "{quant}: {s:?}");
            assert_eq!(text.decode(&want).unwrap(), original.decode(&want).unwrap(), "{quant}: {s:?}");
        }
        let messages = crate::common::chat_messages(&r);
        let prompt = text.apply_chat_template(&messages, true).unwrap();
        assert_eq!(prompt, r["prompt"].as_str().unwrap(), "{quant}");
        assert_eq!(text.encode(&prompt).unwrap(), ids(&r["prompt_ids"]), "{quant}");
        assert_eq!(text.eos_ids(), [2], "{quant}");
        let tc = json(&out.join("tokenizer_config.json"));
        assert_eq!(
            tc["chat_template"].as_str(),
            Some(std::fs::read_to_string(fixture("llama-chat").join("chat_template.jinja")).unwrap().as_str())
        );
        assert_eq!(tc["add_bos_token"], false);
    }
}

/// `(token_ids, logits [T][V])` that transformers computed for llama-chat in f32.
fn reference_logits() -> (Vec<u32>, Vec<f32>) {
    let f = SafetensorsFile::open(&fixture("").join("llama-chat.reference.safetensors")).unwrap();
    let ids = f.read(f.tensor("token_ids").unwrap()).unwrap();
    let ids = ids.chunks_exact(8).map(|c| u32::try_from(i64::from_le_bytes(c.try_into().unwrap())).unwrap()).collect();
    (ids, to_f32(DType::F32, &f.read(f.tensor("logits").unwrap()).unwrap()).unwrap())
}

#[test]
fn imported_logits_stay_close_to_the_f32_original() {
    let tmp = tempfile::tempdir().unwrap();
    let (ids, want) = reference_logits();
    for (quant, atol) in [("Q8_0", Q8_0_LOGITS_ATOL), ("Q4_1", Q4_1_LOGITS_ATOL)] {
        let out = imported(tmp.path(), quant, &[]);
        let model = pesc_model::Weights::open(&out).unwrap();
        let runner = Runner::load(&model, ComputeDType::F32, &candle_core::Device::Cpu).unwrap();
        let got: Vec<f32> = runner.forward(&ids, &mut Cache::default()).unwrap().logits.to_vec2::<f32>().unwrap().concat();
        assert_eq!(got.len(), want.len());
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        // > 0: the weights really went through quantization.
        assert!(d > 1e-4 && d <= atol, "{quant}: max |imported - f32 original| = {d}, expected in (1e-4, {atol}]");
    }
}

#[test]
fn import_with_dtype_bf16_stores_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    let out = imported(tmp.path(), "Q8_0", &["--dtype", "bf16"]);
    assert_eq!(json(&out.join("config.json"))["torch_dtype"], "bfloat16");
    let f = SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
    let want = tensors_of(&gguf_fixture("llama-chat.Q8_0.dequant.safetensors"));
    assert_eq!(f.tensors().len(), want.len());
    for (name, _, shape, values) in &want {
        let t = f.tensor(name).unwrap();
        assert_eq!((t.dtype, &t.shape), (DType::BF16, shape), "{name}");
        // The exact dequantized values, rounded to nearest-even bf16.
        assert!(f.read(t).unwrap() == from_f32(DType::BF16, values).unwrap(), "{name}: not the bf16 rounding of the dequantized values");
    }
}

#[test]
fn import_is_byte_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    for quant in QUANTS {
        let a = tmp.path().join(format!("a-{quant}"));
        let b = tmp.path().join(format!("other-name-{quant}"));
        for out in [&a, &b] {
            assert_code(&import(&gguf_file(quant), out, &[]), 0);
        }
        let files = entries(&a);
        assert_eq!(files, entries(&b));
        assert!(files.contains(&"tokenizer.json".to_owned()) && files.contains(&"SHA256SUMS".to_owned()), "{files:?}");
        for f in &files {
            assert_eq!(sha256(&a.join(f)), sha256(&b.join(f)), "{quant}: {f} differs between runs");
        }
    }
}

#[test]
fn inspect_json_reports_the_gguf() {
    for quant in QUANTS {
        let path = gguf_file(quant);
        let o = run([Path::new("inspect"), &path, Path::new("--json")]);
        assert_code(&o, 0);
        let r: Json = serde_json::from_str(&stdout(&o)).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(r["format"], "gguf");
        assert_eq!(r["architecture"], "llama");
        assert_eq!(r["tensors"].as_u64(), Some(20));
        assert_eq!(r["tensors"].as_u64(), Some(g.tensors().len() as u64));
        assert_eq!(r["parameters"].as_u64(), Some(94_528));
        let keys: Vec<&str> = r["metadata"].as_object().unwrap().keys().map(String::as_str).collect();
        let want: Vec<&str> = g.metadata().iter().map(|(k, _)| k).collect();
        assert_eq!(keys, want, "{quant}");
        for key in [
            "llama.block_count",
            "llama.context_length",
            "llama.embedding_length",
            "llama.feed_forward_length",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
            "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon",
            "llama.vocab_size",
            "llama.rope.dimension_count",
            "tokenizer.ggml.model",
            "tokenizer.ggml.merges",
            "tokenizer.chat_template",
        ] {
            assert!(keys.contains(&key), "{quant}: {key} not reported");
        }
        assert_eq!(r["metadata"]["llama.embedding_length"], 64);
        assert_eq!(r["metadata"]["tokenizer.ggml.pre"], "gpt-2");
        let types: Vec<&str> = r["tensor_list"].as_array().unwrap().iter().map(|t| t["type"].as_str().unwrap()).collect();
        assert_eq!(types.iter().filter(|t| **t == "F32").count(), 5, "{quant}");
        assert_eq!(types.iter().filter(|t| **t == quant).count(), if quant == "Q8_0" { 15 } else { 14 });
    }
}

// --- hostile GGUF files ---------------------------------------------------------

/// The Q8_0 fixture's metadata and tensors, to be edited and written back.
struct Parts {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(TensorSpec, Vec<u8>)>,
}

impl Parts {
    fn of_fixture() -> Self {
        let g = GgufFile::open(gguf_file("Q8_0")).unwrap();
        let metadata = g.metadata().clone().into_entries();
        let tensors = g.tensors().iter().map(|t| (TensorSpec::new(t.name.clone(), t.ty, &t.ne), g.read(t).unwrap())).collect();
        Parts { metadata, tensors }
    }

    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_owned(), value)),
        }
        self
    }

    fn remove(mut self, key: &str) -> Self {
        let before = self.metadata.len();
        self.metadata.retain(|(k, _)| k != key);
        assert_eq!(self.metadata.len(), before - 1, "{key} was not there");
        self
    }

    fn rename_tensor(mut self, from: &str, to: &str) -> Self {
        self.tensors.iter_mut().find(|(s, _)| s.name == from).unwrap().0.name = to.to_owned();
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut md = Metadata::new();
        for (k, v) in &self.metadata {
            md.push(k.clone(), v.clone()).unwrap();
        }
        let tensors: Vec<(TensorSpec, &[u8])> = self.tensors.iter().map(|(s, b)| (s.clone(), b.as_slice())).collect();
        write_gguf(Vec::new(), &md, &tensors).unwrap()
    }
}

/// Writes `bytes` as `dir/name`, runs `import-gguf` on it, and asserts it is
/// refused (exit 2, naming the file and every needle) with nothing at OUT.
fn import_rejects(name: &str, bytes: &[u8], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let out = tmp.path().join("out");
    let o = import(&path, &out, &[]);
    let mut all = vec![name];
    all.extend_from_slice(needles);
    assert_rejects(&o, &all);
    assert!(!out.exists(), "{name}: something was written at OUT: {:?}", entries(&out));
    assert_eq!(entries(tmp.path()), [name], "{name}: stray files beside OUT");
}

#[test]
fn the_unmodified_rebuild_imports() {
    // The hostile files below differ from this one only by their edit.
    let tmp = tempfile::tempdir().unwrap();
    let bytes = Parts::of_fixture().bytes();
    let path = tmp.path().join("rebuilt.gguf");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(bytes, std::fs::read(gguf_file("Q8_0")).unwrap(), "pesc_gguf's writer lays the fixture out as gguf-py did");
    assert_code(&import(&path, &tmp.path().join("out"), &[]), 0);
}

#[test]
fn import_rejects_another_architecture() {
    import_rejects(
        "gpt2-arch.gguf",
        &Parts::of_fixture().set("general.architecture", "gpt2").bytes(),
        &["architecture `gpt2`", "not supported"],
    );
}

#[test]
fn import_rejects_experts_the_tensors_do_not_hold() {
    import_rejects("moe.gguf", &Parts::of_fixture().set("llama.expert_count", 4u32).bytes(), &["llama.expert_used_count", "between 1 and"]);
    let parts = Parts::of_fixture().set("llama.expert_count", 4u32).set("llama.expert_used_count", 2u32);
    import_rejects("dense-tensors.gguf", &parts.bytes(), &["blk.0.ffn_down.weight", "not part of a Mixtral `llama` model"]);
}

#[test]
fn import_rejects_an_unknown_tensor() {
    let parts = Parts::of_fixture().rename_tensor("blk.1.ffn_up.weight", "blk.1.ffn_up_exps.weight");
    import_rejects("unknown-tensor.gguf", &parts.bytes(), &["blk.1.ffn_up_exps.weight"]);
}

#[test]
fn import_rejects_an_odd_head_size() {
    import_rejects(
        "odd-head.gguf",
        &Parts::of_fixture().set("llama.attention.key_length", 7u32).bytes(),
        &["llama.attention.key_length", "is odd"],
    );
}

#[test]
fn import_rejects_a_missing_hyperparameter() {
    import_rejects(
        "no-embedding-length.gguf",
        &Parts::of_fixture().remove("llama.embedding_length").bytes(),
        &["llama.embedding_length", "missing"],
    );
}

#[test]
fn import_rejects_a_sentencepiece_vocabulary_without_scores() {
    import_rejects(
        "spm.gguf",
        &Parts::of_fixture().set("tokenizer.ggml.model", "llama").bytes(),
        &["tokenizer.ggml.scores", "is missing", "merges by its scores"],
    );
}

#[test]
fn import_rejects_a_truncated_file() {
    let bytes = std::fs::read(gguf_file("Q8_0")).unwrap();
    import_rejects("truncated.gguf", &bytes[..bytes.len() - 100], &["truncated", "output_norm.weight"]);
}

#[test]
fn import_rejects_safetensors_named_gguf() {
    let bytes = std::fs::read(fixture("llama-chat").join("model.safetensors")).unwrap();
    import_rejects("model.gguf", &bytes, &["not a GGUF file"]);
}

#[test]
fn import_rejects_an_unknown_pre_tokenizer() {
    import_rejects(
        "tekken.gguf",
        &Parts::of_fixture().set("tokenizer.ggml.pre", "tekken").bytes(),
        &["tokenizer.ggml.pre", "`tekken`", "not supported"],
    );
}

#[test]
fn import_rejects_metadata_that_contradicts_the_tensors() {
    // llama.cpp refuses each of these at load ("tensor ... has wrong shape" or
    // "missing tensor"); an import must not publish a folder whose config.json
    // disagrees with its own tensors.
    let cases: [(&str, &str, Value); 6] = [
        ("heads8.gguf", "llama.attention.head_count", Value::U32(8)),
        ("kv4.gguf", "llama.attention.head_count_kv", Value::U32(4)),
        ("blocks3.gguf", "llama.block_count", Value::U32(3)),
        ("blocks1.gguf", "llama.block_count", Value::U32(1)),
        ("ffn99.gguf", "llama.feed_forward_length", Value::U32(99)),
        ("vocab500.gguf", "llama.vocab_size", Value::U32(500)),
    ];
    for (name, key, value) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(name);
        std::fs::write(&path, Parts::of_fixture().set(key, value).bytes()).unwrap();
        let out = tmp.path().join("out");
        let o = import(&path, &out, &[]);
        // The message may name the key or the tensor whose shape disagrees.
        assert_rejects(&o, &[name]);
        let err = crate::common::stderr(&o);
        assert!(err.contains(key) || err.contains(".weight"), "{name}: names neither `{key}` nor a tensor:\n{err}");
        assert!(!out.exists(), "{name}: something was written at OUT");
    }
}
