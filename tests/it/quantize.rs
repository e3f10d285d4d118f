//! `quantize --to TYPE -o FILE.gguf`: dense llama/mistral folders to llama.cpp
//! GGUF. The files are read back with `pesc_gguf` and checked against the
//! rules written out independently here (metadata in the converter's order,
//! tensor types per llama-quantize's recipe and shape fallback, norms F32),
//! their tensor bytes against `pesc_quant` applied to the permuted weights,
//! and the whole file against `import-gguf` (weights and tokenizer round trip).

#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]

use crate::common::{assert_code, assert_rejects, entries, fixture, run, sha256};
use pesc_gguf::{GgmlType, GgufFile, Value};
use pesc_hf::ModelConfig;
use pesc_hf::TextModel;
use pesc_io::{Checkpoint, SafetensorsFile};
use pesc_llamacpp::recipe::plan;
use pesc_llamacpp::{ExportOptions, GgufType};
use pesc_tensor::{to_f32, DType};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

const TYPES: [&str; 9] = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "q4_k_m"];
/// Dense fixtures quantize accepts: (name, tied embeddings, layers).
const DENSE: [(&str, bool, u64); 5] =
    [("llama-chat", true, 2), ("llama-gqa", false, 2), ("llama-tied", true, 2), ("mistral", false, 2), ("llama-sharded", false, 3)];

fn quantize(model: &Path, to: &str, out: &Path, flags: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["quantize".as_ref(), model.as_os_str(), "--to".as_ref(), to.as_ref(), "-o".as_ref(), out.as_os_str()];
    args.extend(flags.iter().map(|f| std::ffi::OsStr::new(*f)));
    run(args)
}

/// Quantizes `model` to `dir/NAME-TO.gguf` and returns the path.
fn quantized(dir: &Path, model: &Path, to: &str, flags: &[&str]) -> PathBuf {
    let name = model.file_name().unwrap().to_string_lossy();
    let out = dir.join(format!("{name}-{to}{}.gguf", flags.join("")));
    assert_code(&quantize(model, to, &out, flags), 0);
    out
}

/// The original weights as f32: `name -> (shape, values)`.
fn originals(model: &Path) -> BTreeMap<String, (Vec<u64>, Vec<f32>)> {
    let c = Checkpoint::open_dir(model).unwrap();
    c.tensors().map(|t| (t.name.clone(), (t.shape.clone(), to_f32(t.dtype, &c.read(&t.name).unwrap()).unwrap()))).collect()
}

/// llama.cpp's converter permutation, written from its numpy definition
/// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`:
/// output row (h, i, t) is input row (h, t, i).
fn converter_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = rows / n_head / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for i in 0..half {
            for t in 0..2 {
                let src = ((h * 2 + t) * half + i) * cols;
                out.extend_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// GGUF name -> Hugging Face name for the dense layout (written out again here).
fn hf_name(gguf: &str) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.").unwrap();
    let (layer, tail) = rest.split_once('.').unwrap();
    let hf = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => panic!("unexpected tensor {other}"),
    };
    format!("model.layers.{layer}.{hf}")
}

fn layer_of(name: &str) -> Option<u64> {
    name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

/// llama-quantize's `use_more_bits`, restated.
fn more_bits(l: u64, n: u64) -> bool {
    l < n / 8 || l >= 7 * n / 8 || (l as i64 - (n / 8) as i64) % 3 == 2
}

/// The type each tensor of a 64-wide fixture (every row 64 or 128 long:
/// whole 32-blocks, never whole 256-blocks) must get, written as a table per
/// file type rather than as llama-quantize's rules.
fn expected_small(to: &str, pure: bool, name: &str, tied: bool, layers: u64) -> GgmlType {
    use GgmlType::*;
    if name.ends_with("_norm.weight") {
        return F32;
    }
    // output.weight, or token_embd.weight when it is also the output.
    let output = name == "output.weight" || (tied && name == "token_embd.weight");
    let layer = layer_of(name);
    let picked = |l: Option<u64>| l.is_some_and(|l| more_bits(l, layers));
    match (to, pure) {
        ("f32", _) => F32,
        ("f16", _) => F16,
        ("bf16", _) => BF16,
        ("q8_0", _) => Q8_0,
        // Output: Q6_K by the recipe, which 64-long rows turn into Q8_0.
        ("q4_0", false) if output => Q8_0,
        ("q4_1", false) if output => Q8_0,
        ("q4_0", _) => Q4_0,
        ("q4_1", _) => Q4_1,
        // Every K-quant falls back: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0.
        ("q6_k", _) => Q8_0,
        ("q4_k" | "q4_k_m", true) => Q5_0,
        ("q4_k" | "q4_k_m", false) if output => Q8_0,
        ("q4_k", false) if name.ends_with("attn_v.weight") && layer.unwrap() < 4 => Q5_1,
        ("q4_k", false) if name.ends_with("ffn_down.weight") && layer.unwrap() < layers / 8 => Q5_1,
        ("q4_k_m", false) if (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight")) && picked(layer) => Q8_0,
        ("q4_k" | "q4_k_m", false) => Q5_0,
        _ => unreachable!("{to}"),
    }
}

fn file_type(to: &str) -> u32 {
    match to {
        "f32" => 0,
        "f16" => 1,
        "q4_0" => 2,
        "q4_1" => 3,
        "q8_0" => 7,
        "q4_k" => 14,
        "q4_k_m" => 15,
        "q6_k" => 18,
        "bf16" => 32,
        _ => unreachable!(),
    }
}

/// The tensor names llama-quantize's loader order gives: outside the blocks
/// by name, then each block's by name.
fn expected_names(tied: bool, layers: u64) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if !tied {
        v.push("output.weight".into());
    }
    v.push("output_norm.weight".into());
    v.push("token_embd.weight".into());
    for l in 0..layers {
        for t in ["attn_k", "attn_norm", "attn_output", "attn_q", "attn_v", "ffn_down", "ffn_gate", "ffn_norm", "ffn_up"] {
            v.push(format!("blk.{l}.{t}.weight"));
        }
    }
    v
}

/// The stored bytes `pesc_quant` gives for the original tensor behind `gguf_name`
/// (permuted first for q and k).
fn want_bytes(orig: &BTreeMap<String, (Vec<u64>, Vec<f32>)>, config: &Json, gguf_name: &str, ty: GgmlType) -> Vec<u8> {
    let (shape, values) = &orig[&hf_name(gguf_name)];
    let heads = |key: &str| usize::try_from(config[key].as_u64().unwrap()).unwrap();
    let values = if gguf_name.ends_with("attn_q.weight") {
        converter_permute(values, shape[0] as usize, shape[1] as usize, heads("num_attention_heads"))
    } else if gguf_name.ends_with("attn_k.weight") {
        converter_permute(values, shape[0] as usize, shape[1] as usize, heads("num_key_value_heads"))
    } else {
        values.clone()
    };
    pesc_quant::quantize(ty, &values).unwrap()
}

fn config_json(model: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap()
}

#[test]
fn every_type_has_the_recipes_tensor_types_and_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, tied, layers) in DENSE {
        let model = fixture(name);
        let orig = originals(&model);
        let config = config_json(&model);
        for to in TYPES {
            for pure in [false, true] {
                if pure && !["q4_0", "q4_k", "q4_k_m"].contains(&to) {
                    continue;
                }
                let flags: &[&str] = if pure { &["--pure"] } else { &[] };
                let path = quantized(tmp.path(), &model, to, flags);
                let g = GgufFile::open(&path).unwrap();
                assert_eq!(g.get_u32("general.file_type").unwrap(), file_type(to), "{name} {to}");
                assert_eq!(g.get_u32("general.quantization_version").unwrap(), 2, "{name} {to}");
                let names: Vec<String> = g.tensors().iter().map(|t| t.name.clone()).collect();
                assert_eq!(names, expected_names(tied, layers), "{name} {to}: tensor names or order");
                for t in g.tensors() {
                    let want = expected_small(to, pure, &t.name, tied, layers);
                    assert_eq!(t.ty, want, "{name} --to {to} pure={pure}: {}", t.name);
                    let (shape, _) = &orig[&hf_name(&t.name)];
                    assert_eq!(t.shape(), *shape, "{name} {to}: {}", t.name);
                    assert!(
                        g.read(t).unwrap() == want_bytes(&orig, &config, &t.name, t.ty),
                        "{name} {to}: {} bytes differ from pesc_quant",
                        t.name
                    );
                }
            }
        }
    }
}

#[test]
fn metadata_follows_the_converters_order_and_types() {
    let tmp = tempfile::tempdir().unwrap();
    let path = quantized(tmp.path(), &fixture("llama-chat"), "q4_k_m", &[]);
    let g = GgufFile::open(&path).unwrap();
    let keys: Vec<&str> = g.metadata().iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "general.architecture",
            "general.type",
            "general.name",
            "general.size_label",
            "llama.block_count",
            "llama.context_length",
            "llama.embedding_length",
            "llama.feed_forward_length",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
            "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon",
            "llama.attention.key_length",
            "llama.attention.value_length",
            "general.file_type",
            "llama.vocab_size",
            "llama.rope.dimension_count",
            "general.quantization_version",
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.chat_template",
        ]
    );
    let md = g.metadata();
    let u = |k: &str| md.get_u32(k).unwrap();
    assert_eq!(md.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(md.get_str("general.type").unwrap(), "model");
    assert_eq!(md.get_str("general.name").unwrap(), "llama-chat");
    assert_eq!(md.get_str("general.size_label").unwrap(), "95K", "gguf-py's label for 94,528 parameters");
    assert_eq!(
        [u("llama.block_count"), u("llama.context_length"), u("llama.embedding_length"), u("llama.feed_forward_length")],
        [2, 256, 64, 128]
    );
    assert_eq!([u("llama.attention.head_count"), u("llama.attention.head_count_kv"), u("llama.vocab_size")], [4, 2, 320]);
    assert_eq!([u("llama.rope.dimension_count"), u("llama.attention.key_length"), u("llama.attention.value_length")], [16, 16, 16]);
    assert_eq!(md.get_f32("llama.rope.freq_base").unwrap(), 10_000.0);
    assert_eq!(md.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-6_f32);
    assert_eq!(u("general.file_type"), 15);
    assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    // A plain ByteLevel pre-tokenizer is llama.cpp's `gpt-2` (its `default` splits punctuation and digit groups).
    assert_eq!(md.get_str("tokenizer.ggml.pre").unwrap(), "gpt-2");
    let tj: Json = serde_json::from_slice(&std::fs::read(fixture("llama-chat").join("tokenizer.json")).unwrap()).unwrap();
    let tokens = md.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 320);
    for (t, id) in tj["model"]["vocab"].as_object().unwrap() {
        assert_eq!(tokens.get(usize::try_from(id.as_u64().unwrap()).unwrap()), Some(t.as_str()));
    }
    let types = md.get_i32_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(&types[..4], [3, 3, 3, 1], "the three added special tokens are control tokens");
    assert!(types[3..].iter().all(|&t| t == 1));
    let merges = md.get_str_array("tokenizer.ggml.merges").unwrap();
    let want: Vec<String> = tj["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()))
        .collect();
    assert_eq!(merges.iter().collect::<Vec<_>>(), want);
    assert_eq!(
        [
            u("tokenizer.ggml.bos_token_id"),
            u("tokenizer.ggml.eos_token_id"),
            u("tokenizer.ggml.unknown_token_id"),
            u("tokenizer.ggml.padding_token_id")
        ],
        [1, 2, 0, 2]
    );
    let template = std::fs::read_to_string(fixture("llama-chat").join("chat_template.jinja")).unwrap();
    assert_eq!(md.get_str("tokenizer.chat_template").unwrap(), template);
    assert!(!md.contains("tokenizer.ggml.add_bos_token"), "llama-chat's tokenizer says nothing about BOS: the converter writes no flag");
}

#[test]
fn linear_rope_scaling_and_missing_vocabulary_are_written_as_llama_cpp_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GgufFile::open(quantized(tmp.path(), &fixture("llama-sharded"), "q8_0", &[])).unwrap();
    let md = g.metadata();
    assert_eq!(md.get_str("llama.rope.scaling.type").unwrap(), "linear");
    assert_eq!(md.get_f32("llama.rope.scaling.factor").unwrap(), 2.0);
    let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
    let at = |k: &str| keys.iter().position(|x| *x == k).unwrap();
    assert!(
        at("llama.attention.head_count_kv") < at("llama.rope.scaling.type") && at("llama.rope.scaling.factor") < at("llama.rope.freq_base")
    );
    // No tokenizer files: `none`, which llama.cpp loads with vocab_size placeholder tokens.
    assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "none");
    assert!(keys.iter().filter(|k| k.starts_with("tokenizer.")).count() == 1, "{keys:?}");
    // qwen2-bias has no explicit head_dim... but is refused; mistral has one: key/value length present.
    let g = GgufFile::open(quantized(tmp.path(), &fixture("mistral"), "f16", &[])).unwrap();
    assert_eq!(g.metadata().get_u32("llama.attention.key_length").unwrap(), 16);
    assert_eq!(g.metadata().get_str("general.name").unwrap(), "mistral");
}

/// A dense llama folder whose hidden and FFN sizes are 256, so the K-quants
/// apply (the attention is narrow: 2 heads of 32), with 8 layers so that
/// llama-quantize's layer pattern has something to pick; random weights.
fn k_quant_model(dir: &Path, tied: bool) -> PathBuf {
    let (layers, hidden, ffn, heads, kv, head_dim, vocab) = (8u64, 256u64, 256u64, 2u64, 1u64, 32u64, 64u64);
    let model = dir.join(if tied { "kq-tied" } else { "kq" });
    std::fs::create_dir_all(&model).unwrap();
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": ffn,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim, "vocab_size": vocab,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
    });
    std::fs::write(model.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut rng = pesc_tensor::SplitMix64(7);
    let mut tensors: Vec<(String, Vec<u64>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, shape: Vec<u64>, norm: bool| {
        let n: u64 = shape.iter().product();
        #[allow(clippy::cast_possible_truncation)]
        let values: Vec<f32> =
            (0..n).map(|_| if norm { 1.0 + 0.1 * rng.next_f64() as f32 } else { (rng.next_f64() as f32 - 0.5) * 0.2 }).collect();
        tensors.push((name, shape, pesc_tensor::from_f32(DType::BF16, &values).unwrap()));
    };
    add("model.embed_tokens.weight".into(), vec![vocab, hidden], false);
    add("model.norm.weight".into(), vec![hidden], true);
    if !tied {
        add("lm_head.weight".into(), vec![vocab, hidden], false);
    }
    for l in 0..layers {
        let p = format!("model.layers.{l}.");
        add(format!("{p}input_layernorm.weight"), vec![hidden], true);
        add(format!("{p}post_attention_layernorm.weight"), vec![hidden], true);
        add(format!("{p}self_attn.q_proj.weight"), vec![heads * head_dim, hidden], false);
        add(format!("{p}self_attn.k_proj.weight"), vec![kv * head_dim, hidden], false);
        add(format!("{p}self_attn.v_proj.weight"), vec![kv * head_dim, hidden], false);
        add(format!("{p}self_attn.o_proj.weight"), vec![hidden, heads * head_dim], false);
        add(format!("{p}mlp.gate_proj.weight"), vec![ffn, hidden], false);
        add(format!("{p}mlp.up_proj.weight"), vec![ffn, hidden], false);
        add(format!("{p}mlp.down_proj.weight"), vec![hidden, ffn], false);
    }
    let refs: Vec<(&str, DType, &[u64], &[u8])> =
        tensors.iter().map(|(n, s, b)| (n.as_str(), DType::BF16, s.as_slice(), b.as_slice())).collect();
    let mut bytes = Vec::new();
    pesc_io::safetensors::write_all(&mut bytes, &refs, &BTreeMap::new()).unwrap();
    std::fs::write(model.join("model.safetensors"), bytes).unwrap();
    model
}

#[test]
fn k_quant_recipes_on_256_wide_rows() {
    use GgmlType::*;
    let tmp = tempfile::tempdir().unwrap();
    for tied in [false, true] {
        let model = k_quant_model(tmp.path(), tied);
        let orig = originals(&model);
        let config = config_json(&model);
        // 8 layers: use_more_bits picks 0, 3, 6, 7; Q4_K_S's attn_v rule the first 4, its ffn_down rule layer 0.
        let runs: &[(&str, bool)] = if tied {
            &[("q4_k_m", false)]
        } else {
            &[("q4_k_m", false), ("q4_k", false), ("q6_k", false), ("q4_0", false), ("q4_k", true)]
        };
        for &(to, pure) in runs {
            let flags: &[&str] = if pure { &["--pure"] } else { &[] };
            let g = GgufFile::open(quantized(tmp.path(), &model, to, flags)).unwrap();
            for t in g.tensors() {
                let l = layer_of(&t.name);
                let output = t.name == "output.weight" || (tied && t.name == "token_embd.weight");
                let v = t.name.ends_with("attn_v.weight");
                let down = t.name.ends_with("ffn_down.weight");
                // attn_output's rows are the 64-wide attention output: K-quants fall back there.
                let narrow = t.name.ends_with("attn_output.weight");
                let want = if t.name.ends_with("_norm.weight") {
                    F32
                } else if narrow {
                    match to {
                        "q6_k" => Q8_0,
                        "q4_0" => Q4_0,
                        _ => Q5_0,
                    }
                } else {
                    match (to, pure) {
                        ("q4_k", true) => Q4_K,
                        ("q6_k", _) => Q6_K,
                        (_, false) if output => Q6_K,
                        ("q4_0", _) => Q4_0,
                        ("q4_k_m", _) if (v || down) && [0, 3, 6, 7].contains(&l.unwrap()) => Q6_K,
                        ("q4_k", _) if v && l.unwrap() < 4 => Q5_K,
                        ("q4_k", _) if down && l.unwrap() < 1 => Q5_K,
                        _ => Q4_K,
                    }
                };
                assert_eq!(t.ty, want, "--to {to} pure={pure} tied={tied}: {}", t.name);
                // The bytes once per type (pesc_quant is slow unoptimized).
                if to == "q4_k_m" || t.name.starts_with("blk.0.") {
                    assert!(
                        g.read(t).unwrap() == want_bytes(&orig, &config, &t.name, t.ty),
                        "{to}: {} bytes differ from pesc_quant",
                        t.name
                    );
                }
            }
        }
    }
}

#[test]
fn smollm2_shapes_get_llama_quantizes_mix() {
    // SmolLM2-135M's config: 576 wide (not whole 256-blocks), FFN 1536 (whole), 30 layers, tied embeddings.
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true,
    });
    let config = ModelConfig::parse(Path::new("smollm2/config.json"), &serde_json::to_vec(&config).unwrap()).unwrap();
    let count = |to: GgufType, pure: bool| {
        let plan = plan(&config, ExportOptions { to, pure });
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for t in &plan {
            *m.entry(t.ty.name().to_owned()).or_default() += 1;
        }
        let fallbacks = plan.iter().filter(|t| t.fallback_from.is_some()).count();
        (m.into_iter().collect::<Vec<_>>(), fallbacks)
    };
    let c = |v: &[(&str, usize)]| v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect::<Vec<_>>();
    // Q4_K_M: ffn_down (rows of 1536) Q6_K in the 14 use_more_bits layers, Q4_K in the other 16; attn_v Q6_K there
    // too but 576-long rows fall back to Q8_0, Q4_K to Q5_0 elsewhere; q, k, o, gate, up Q4_K -> Q5_0; the tied
    // embedding (the output) Q8_0 because 576 is not whole 256-blocks.
    assert_eq!(count(GgufType::Q4_K_M, false), (c(&[("F32", 61), ("Q4_K", 16), ("Q5_0", 166), ("Q6_K", 14), ("Q8_0", 15)]), 180));
    assert_eq!(count(GgufType::Q8_0, false), (c(&[("F32", 61), ("Q8_0", 211)]), 0));
    // Q4_1 reproduces the layout of the published SmolLM2 Q4_1 file: the tied embedding Q8_0 (Q6_K by the recipe,
    // which 576 turns into Q8_0), every other weight Q4_1.
    assert_eq!(count(GgufType::Q4_1, false), (c(&[("F32", 61), ("Q4_1", 210), ("Q8_0", 1)]), 1));
    // Q4_K_S: attn_v Q5_K in layers 0-3 (-> Q5_1), ffn_down Q5_K in layers 0-2, Q4_K after.
    assert_eq!(count(GgufType::Q4_K, false), (c(&[("F32", 61), ("Q4_K", 27), ("Q5_0", 176), ("Q5_1", 4), ("Q5_K", 3), ("Q8_0", 1)]), 180));
    assert_eq!(count(GgufType::Q6_K, false), (c(&[("F32", 61), ("Q6_K", 30), ("Q8_0", 181)]), 180));
}

#[test]
fn f32_export_imports_back_exactly_and_q8_0_as_its_dequantization() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-chat");
    let orig = originals(&model);
    for to in ["f32", "q8_0", "q4_k_m"] {
        let gguf = quantized(tmp.path(), &model, to, &[]);
        let out = tmp.path().join(format!("imported-{to}"));
        assert_code(&run([Path::new("import-gguf"), &gguf, Path::new("-o"), &out]), 0);
        let f = SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
        assert_eq!(f.tensors().len(), orig.len());
        let g = GgufFile::open(&gguf).unwrap();
        for t in f.tensors() {
            let got = to_f32(t.dtype, &f.read(t).unwrap()).unwrap();
            let (shape, w) = &orig[&t.name];
            assert_eq!(&t.shape, shape, "{to}: {}", t.name);
            let want = match to {
                "f32" => w.clone(),
                // Q8_0 blocks lie within rows, so quantizing permuted rows and un-permuting is quantizing in place.
                _ => {
                    let gname = g.tensors().iter().find(|x| hf_name(&x.name) == t.name).unwrap();
                    pesc_quant::dequantize(gname.ty, &pesc_quant::quantize(gname.ty, w).unwrap(), w.len()).unwrap()
                }
            };
            assert!(got.iter().map(|x| x.to_bits()).eq(want.iter().map(|x| x.to_bits())), "{to}: {} differs after export + import", t.name);
        }
        let config = config_json(&out);
        for key in [
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "vocab_size",
            "tie_word_embeddings",
        ] {
            assert_eq!(config[key], config_json(&model)[key], "{to}: config key {key}");
        }
    }
}

#[test]
fn exports_without_a_vocabulary_hold_the_original_weights() {
    // import-gguf does not read `tokenizer.ggml.model = none` files (yet), so the inverse is done here:
    // dequantize, un-permute (GGUF row h*d + 2i + t is Hugging Face row h*d + t*d/2 + i), compare.
    let tmp = tempfile::tempdir().unwrap();
    for (name, _, _) in DENSE {
        let model = fixture(name);
        let orig = originals(&model);
        let config = config_json(&model);
        let g = GgufFile::open(quantized(tmp.path(), &model, "f32", &[])).unwrap();
        for t in g.tensors() {
            let values = to_f32(DType::F32, &g.read(t).unwrap()).unwrap();
            let (rows, cols) = (t.shape()[0] as usize, *t.shape().last().unwrap() as usize);
            let heads = if t.name.ends_with("attn_q.weight") {
                config["num_attention_heads"].as_u64()
            } else if t.name.ends_with("attn_k.weight") {
                config["num_key_value_heads"].as_u64()
            } else {
                None
            };
            let values = match heads {
                Some(h) => {
                    let d = rows / h as usize;
                    let mut out = vec![0f32; values.len()];
                    for (r, row) in values.chunks(cols).enumerate() {
                        let (head, within) = (r / d, r % d);
                        let dst = head * d + (within % 2) * (d / 2) + within / 2;
                        out[dst * cols..(dst + 1) * cols].copy_from_slice(row);
                    }
                    out
                }
                None => values,
            };
            assert!(values == orig[&hf_name(&t.name)].1, "{name}: {}", t.name);
        }
        assert_eq!(
            g.tensors().len(),
            orig.keys().filter(|k| !(k.as_str() == "lm_head.weight" && config["tie_word_embeddings"] == true)).count()
        );
    }
}

use crate::common::ids;

#[test]
fn tokenizer_survives_export_and_import() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-chat");
    let r: Json = serde_json::from_slice(&std::fs::read(fixture("").join("llama-chat.chat.json")).unwrap()).unwrap();
    let original = TextModel::load(&model).unwrap();
    for to in ["q8_0", "q4_k_m"] {
        let gguf = quantized(tmp.path(), &model, to, &[]);
        let out = tmp.path().join(format!("tok-{to}"));
        assert_code(&run([Path::new("import-gguf"), &gguf, Path::new("-o"), &out]), 0);
        let text = TextModel::load(&out).unwrap();
        let mut n = 0;
        for e in r["encodings"].as_array().unwrap() {
            let s = e["text"].as_str().unwrap();
            let want = ids(&e["ids"]);
            assert_eq!(text.encode(s).unwrap(), want, "{to}: {s:?}");
            assert_eq!(original.encode(s).unwrap(), want, "{s:?}");
            assert_eq!(text.decode(&want).unwrap(), original.decode(&want).unwrap(), "{to}: {s:?}");
            n += 1;
        }
        assert!(n >= 5, "only {n} encodings in the fixture");
        let messages = crate::common::chat_messages(&r);
        let prompt = text.apply_chat_template(&messages, true).unwrap();
        assert_eq!(prompt, r["prompt"].as_str().unwrap(), "{to}");
        assert_eq!(text.encode(&prompt).unwrap(), ids(&r["prompt_ids"]), "{to}");
        assert_eq!(text.eos_ids(), original.eos_ids(), "{to}");
    }
}

#[test]
fn exports_are_byte_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-chat");
    for to in ["bf16", "q4_1", "q4_k_m"] {
        let a = tmp.path().join(format!("a-{to}.gguf"));
        let b = tmp.path().join(format!("other-name-{to}.gguf"));
        assert_code(&quantize(&model, to, &a, &[]), 0);
        assert_code(&quantize(&model, to, &b, &[]), 0);
        assert_eq!(sha256(&a), sha256(&b), "{to}: two runs differ");
    }
    // The output is only the file: no staging leftovers beside it.
    assert!(entries(tmp.path()).iter().all(|e| e.ends_with(".gguf")), "{:?}", entries(tmp.path()));
}

#[test]
fn existing_output_needs_force_and_bad_input_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model.gguf");
    std::fs::write(&out, b"keep me").unwrap();
    assert_rejects(&quantize(&fixture("llama-gqa"), "q8_0", &out, &[]), &["model.gguf", "exists"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    assert_code(&quantize(&fixture("llama-gqa"), "q8_0", &out, &["--force"]), 0);
    assert!(GgufFile::open(&out).is_ok());

    let dir = tmp.path().join("a-folder.gguf");
    std::fs::create_dir(&dir).unwrap();
    assert_rejects(&quantize(&fixture("llama-gqa"), "q8_0", &dir, &["--force"]), &["a-folder.gguf", "folder"]);

    let fresh = tmp.path().join("fresh.gguf");
    // --to nf4 writes a folder (tests/it/nf4.rs) and refuses the GGUF-only flags.
    assert_rejects(&quantize(&fixture("llama-gqa"), "nf4", &fresh, &["--pure"]), &["--pure"]);
    assert!(!fresh.exists());
    assert_rejects(&quantize(&tmp.path().join("missing"), "q8_0", &fresh, &[]), &["missing"]);

    // An unsupported tokenizer is named, before any output exists.
    let odd = tmp.path().join("odd-tokenizer");
    crate::common::copy_dir(&fixture("llama-chat"), &odd);
    let mut tj: Json = serde_json::from_slice(&std::fs::read(odd.join("tokenizer.json")).unwrap()).unwrap();
    tj["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false});
    std::fs::write(odd.join("tokenizer.json"), serde_json::to_vec(&tj).unwrap()).unwrap();
    assert_rejects(&quantize(&odd, "q8_0", &fresh, &[]), &["tokenizer.json", "Metaspace"]);
    // A SentencePiece model (which wins over tokenizer.json) cut short: a piece claiming 16 bytes, one there.
    std::fs::write(odd.join("tokenizer.model"), [0x0a, 0x10, 0x0a]).unwrap();
    assert_rejects(&quantize(&odd, "q8_0", &fresh, &[]), &["tokenizer.model", "ModelProto", "claims 16 bytes but only 1 are left"]);

    assert!(!fresh.exists());
    let left: Vec<String> = entries(tmp.path()).into_iter().filter(|e| e.contains("staging")).collect();
    assert!(left.is_empty(), "staging files left behind: {left:?}");
}

#[test]
fn tokenizer_flags_come_from_the_post_processor_and_tokenizer_config() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("flags");
    crate::common::copy_dir(&fixture("llama-chat"), &m);
    let mut tj: Json = serde_json::from_slice(&std::fs::read(m.join("tokenizer.json")).unwrap()).unwrap();
    // Llama 3 style: the template prepends the BOS token.
    tj["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}},
    });
    tj["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]});
    std::fs::write(m.join("tokenizer.json"), serde_json::to_vec(&tj).unwrap()).unwrap();
    let mut tc: Json = serde_json::from_slice(&std::fs::read(m.join("tokenizer_config.json")).unwrap()).unwrap();
    tc["add_eos_token"] = json!(false);
    tc["add_prefix_space"] = json!(false);
    tc["chat_template"] = json!("{{ messages[0]['content'] }}");
    std::fs::write(m.join("tokenizer_config.json"), serde_json::to_vec(&tc).unwrap()).unwrap();
    let g = GgufFile::open(quantized(tmp.path(), &m, "q8_0", &[])).unwrap();
    let md = g.metadata();
    assert_eq!(md.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert!(md.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert!(!md.get_bool("tokenizer.ggml.add_eos_token").unwrap());
    assert!(!md.get_bool("tokenizer.ggml.add_space_prefix").unwrap());
    assert_eq!(md.get_str("tokenizer.chat_template").unwrap(), "{{ messages[0]['content'] }}", "tokenizer_config.json's template wins");
    let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys.iter().position(|k| *k == "tokenizer.ggml.add_space_prefix"),
        keys.iter().position(|k| *k == "tokenizer.ggml.model").map(|p| p - 1)
    );
    assert!(matches!(md.get("tokenizer.ggml.bos_token_id"), Some(Value::U32(1))));
}

#[test]
fn a_model_without_tokenizer_round_trips_through_gguf() {
    // Exported with `tokenizer.ggml.model = "none"`, as llama.cpp's converter does.
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("gqa.gguf");
    let back = tmp.path().join("back");
    let o = crate::common::run([
        std::path::Path::new("quantize"),
        &crate::common::fixture("llama-gqa"),
        std::path::Path::new("--to"),
        std::path::Path::new("f32"),
        std::path::Path::new("-o"),
        &gguf,
    ]);
    crate::common::assert_code(&o, 0);
    let o = crate::common::run([std::path::Path::new("import-gguf"), &gguf, std::path::Path::new("-o"), &back]);
    crate::common::assert_code(&o, 0);
    assert!(!back.join("tokenizer.json").exists());
    let (a, b) =
        (pesc_io::Checkpoint::open_dir(&crate::common::fixture("llama-gqa")).unwrap(), pesc_io::Checkpoint::open_dir(&back).unwrap());
    for t in a.tensors() {
        assert_eq!(a.read(&t.name).unwrap(), b.read(&t.name).unwrap(), "{}", t.name);
    }
}

/// Crafts (PESC, 4 experts) or upcycles (Mixtral, 8 experts) `llama-chat` into `dir/NAME`.
fn moe_model(dir: &Path, kind: &str) -> PathBuf {
    let out = dir.join(kind);
    let base = fixture("llama-chat");
    let args: Vec<&str> = match kind {
        "pesc" => {
            vec!["craft", base.to_str().unwrap(), "-o", out.to_str().unwrap(), "--experts", "4", "--top-k", "2", "--adapter-dim", "8"]
        }
        _ => vec!["upcycle", base.to_str().unwrap(), "-o", out.to_str().unwrap(), "--experts", "8", "--top-k", "2"],
    };
    assert_code(&run(args), 0);
    out
}

#[test]
fn moe_exports_stack_the_experts_and_import_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in ["pesc", "mixtral"] {
        let model = moe_model(tmp.path(), kind);
        let orig = originals(&model);
        for to in ["f32", "q8_0"] {
            let gguf = quantized(tmp.path(), &model, to, &[]);
            let g = GgufFile::open(&gguf).unwrap();
            let arch = g.metadata().get_str("general.architecture").unwrap().to_owned();
            assert_eq!(arch, if kind == "pesc" { "pesc" } else { "llama" });
            let experts = if kind == "pesc" { 4 } else { 8 };
            assert_eq!(g.metadata().get_u32(&format!("{arch}.expert_count")).unwrap(), experts);
            assert_eq!(g.metadata().get_u32(&format!("{arch}.expert_used_count")).unwrap(), 2);
            let stacked: Vec<&str> = g.tensors().iter().filter(|t| t.name.contains("_exps.")).map(|t| t.name.as_str()).collect();
            assert_eq!(stacked.len(), if kind == "pesc" { 2 * 2 } else { 3 * 2 }, "{kind}: {stacked:?}");
            for t in g.tensors() {
                if t.name.contains("gate_inp") {
                    assert_eq!(t.ty, GgmlType::F32, "{kind} {to}: router {} is kept F32", t.name);
                    assert_eq!(t.ne, [64, experts as u64]);
                }
                if t.name.contains("_exps.") {
                    assert_eq!(t.ne[2], experts as u64, "{}", t.name);
                }
                if t.name.contains("adapter_") && to == "q8_0" && !t.name.contains("gate_inp") {
                    assert_eq!(t.ty, GgmlType::F16, "{}: adapters stay 16-bit", t.name);
                }
            }
            let out = tmp.path().join(format!("imported-{kind}-{to}"));
            assert_code(&run([Path::new("import-gguf"), &gguf, Path::new("-o"), &out]), 0);
            let f = SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
            assert_eq!(f.tensors().len(), orig.len(), "{kind} {to}");
            for t in f.tensors() {
                let got = to_f32(t.dtype, &f.read(t).unwrap()).unwrap();
                let (shape, w) = &orig[&t.name];
                assert_eq!(&t.shape, shape, "{kind} {to}: {}", t.name);
                // F32 files, norms and routers (kept F32) and the all-zero adapter_up are exact.
                let router = t.name.ends_with("moe.gate.weight") || t.name.contains("router");
                let lossless = to == "f32" || t.shape.len() == 1 || router || t.name.contains("adapter_up");
                if lossless {
                    assert!(got.iter().map(|x| x.to_bits()).eq(w.iter().map(|x| x.to_bits())), "{kind} {to}: {} differs", t.name);
                } else {
                    let max = got.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    let scale = w.iter().map(|x| x.abs()).fold(0f32, f32::max);
                    assert!(max <= scale / 100.0, "{kind} {to}: {} off by {max} (scale {scale})", t.name);
                }
            }
            let config = config_json(&out);
            let want = config_json(&model);
            let keys: &[&str] = if kind == "pesc" {
                &["model_type", "num_experts", "topk", "adapter_dim", "moe_scaling"]
            } else {
                &["model_type", "num_local_experts", "num_experts_per_tok"]
            };
            for key in keys {
                assert_eq!(config[*key], want[*key], "{kind} {to}: config key {key}");
            }
        }
    }
}

#[test]
fn eight_expert_mixtral_gets_llama_quantizes_moe_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let model = moe_model(tmp.path(), "mixtral");
    for (to, k, v, o) in
        [("q4_0", GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q4_0), ("q4_k_m", GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q5_1)]
    {
        let g = GgufFile::open(quantized(tmp.path(), &model, to, &[])).unwrap();
        let ty = |name: &str| g.tensor(name).unwrap().ty;
        for l in 0..2 {
            // With 8 experts llama-quantize gives attn_k and attn_v Q8_0, and attn_output
            // Q5_K for Q4_K_M (which rows of 64 turn into Q5_1 by the shape fallback).
            assert_eq!(ty(&format!("blk.{l}.attn_k.weight")), k, "{to}");
            assert_eq!(ty(&format!("blk.{l}.attn_v.weight")), v, "{to}");
            assert_eq!(ty(&format!("blk.{l}.attn_output.weight")), o, "{to}");
            assert_eq!(ty(&format!("blk.{l}.ffn_gate_inp.weight")), GgmlType::F32, "{to}");
        }
        let label = g.metadata().get_str("general.size_label").unwrap();
        assert!(label.starts_with("8x"), "{label}");
    }
}

#[test]
fn qwen2_models_export_as_llama_cpps_qwen2_and_import_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dense = fixture("qwen2-bias");
    let pesc = tmp.path().join("pesc-qwen2");
    let (d, p) = (dense.to_str().unwrap(), pesc.to_str().unwrap());
    assert_code(&run(["craft", d, "-o", p, "--experts", "4", "--top-k", "2", "--adapter-dim", "8"]), 0);
    let ids = "1,17,250,3,99,8,141,60";
    let logits = |model: &Path, name: &str| -> Vec<u8> {
        let out = tmp.path().join(format!("{name}.safetensors"));
        assert_code(&run([Path::new("logits"), model, Path::new("--token-ids"), Path::new(ids), Path::new("-o"), &out]), 0);
        let f = SafetensorsFile::open(&out).unwrap();
        f.read(&f.tensors()[0]).unwrap()
    };
    for (model, arch) in [(dense.clone(), "qwen2"), (pesc.clone(), "pesc")] {
        let orig = originals(&model);
        let gguf = quantized(tmp.path(), &model, "f32", &[]);
        let g = GgufFile::open(&gguf).unwrap();
        let md = g.metadata();
        assert_eq!(md.get_str("general.architecture").unwrap(), arch);
        if arch == "qwen2" {
            // As the converter's Qwen2 model: neither key, llama.cpp derives both.
            assert!(!md.contains("qwen2.vocab_size") && !md.contains("qwen2.rope.dimension_count"));
        } else {
            assert_eq!(md.get_str("pesc.base_architecture").unwrap(), "qwen2");
        }
        // Biases F32 under llama.cpp's names; q and k rows as stored (llama.cpp rotates Qwen2's halves, no permutation).
        for t in g.tensors() {
            if t.name.contains("adapter") || t.name.contains("gate_inp") {
                continue;
            }
            let hf = hf_name(&t.name);
            let got = to_f32(DType::F32, &g.read(t).unwrap()).unwrap();
            assert!(got == orig[&hf].1, "{arch}: {} is not {hf} as stored", t.name);
        }
        assert_eq!(g.tensors().iter().filter(|t| t.name.ends_with(".bias")).count(), 3 * 2);
        assert!(g.tensors().iter().filter(|t| t.name.ends_with(".bias")).all(|t| t.ty == GgmlType::F32));

        let back = tmp.path().join(format!("back-{arch}"));
        assert_code(&run([Path::new("import-gguf"), &gguf, Path::new("-o"), &back]), 0);
        let f = SafetensorsFile::open(&back.join("model.safetensors")).unwrap();
        assert_eq!(f.tensors().len(), orig.len(), "{arch}");
        for t in f.tensors() {
            assert!(to_f32(t.dtype, &f.read(t).unwrap()).unwrap() == orig[&t.name].1, "{arch}: {} differs after the round trip", t.name);
        }
        let config = config_json(&back);
        assert_eq!(config["model_type"], if arch == "qwen2" { "qwen2" } else { "qwen2idae" });
        if arch == "pesc" {
            assert_eq!(config["pesc_base_model_type"], "qwen2");
        }
        // The GGUF computes what the folder computes.
        assert_eq!(logits(&gguf, &format!("{arch}-gguf")), logits(&model, &format!("{arch}-folder")), "{arch}");
    }
}
