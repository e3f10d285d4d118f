//! The runner: `logits` against transformers' reference logits, the KV cache,
//! and `verify` (exactness of fresh crafts, tolerance, bad input).

use crate::common::{assert_code, assert_rejects, copy_dir, fixture, run, stderr, stdout};
use pesc_runner::{Cache, ComputeDType, Runner};
use pesc_tensor::{from_f32, to_f32, DType};
use serde_json::Value;
use std::path::Path;

const FIXTURES: [&str; 5] = ["llama-gqa", "qwen2-bias", "mistral", "llama-sharded", "llama-tied"];

/// `(token_ids, logits [T][V])` that transformers computed for a fixture.
fn reference(name: &str) -> (Vec<u32>, Vec<Vec<f32>>) {
    let f = pesc_io::SafetensorsFile::open(&fixture("").join(format!("{name}.reference.safetensors"))).unwrap();
    let ids = f.read(f.tensor("token_ids").unwrap()).unwrap();
    let ids: Vec<u32> = ids.chunks_exact(8).map(|c| u32::try_from(i64::from_le_bytes(c.try_into().unwrap())).unwrap()).collect();
    let t = f.tensor("logits").unwrap();
    let v = usize::try_from(t.shape[1]).unwrap();
    let logits = to_f32(DType::F32, &f.read(t).unwrap()).unwrap();
    (ids, logits.chunks(v).map(<[f32]>::to_vec).collect())
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn logits_match_transformers_on_every_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let (ids, want) = reference(name);
        let out = tmp.path().join(format!("{name}.safetensors"));
        let o = run([Path::new("logits"), &fixture(name), Path::new("--token-ids"), Path::new(&ids_arg(&ids)), Path::new("-o"), &out]);
        assert_code(&o, 0);
        let f = pesc_io::SafetensorsFile::open(&out).unwrap();
        assert_eq!(f.tensors().len(), 1);
        let t = f.tensor("logits").unwrap();
        assert_eq!((t.dtype, t.shape.as_slice()), (DType::F32, [12u64, 320].as_slice()));
        let got: Vec<Vec<f32>> = to_f32(DType::F32, &f.read(t).unwrap()).unwrap().chunks(320).map(<[f32]>::to_vec).collect();
        let d = max_diff(&got, &want);
        assert!(d <= 1e-4, "{name}: max |ours - transformers| = {d}");
    }
}

#[test]
fn kv_cache_decoding_equals_the_full_forward() {
    for name in ["llama-gqa", "qwen2-bias"] {
        let model = pesc_model::Weights::open(&fixture(name)).unwrap();
        let runner = Runner::load(&model, ComputeDType::F32, &candle_core::Device::Cpu).unwrap();
        let (ids, want) = reference(name);
        let mut cache = Cache::default();
        let mut got = runner.forward(&ids[..5], &mut cache).unwrap().logits.to_vec2::<f32>().unwrap();
        for &t in &ids[5..] {
            got.extend(runner.forward(&[t], &mut cache).unwrap().logits.to_vec2::<f32>().unwrap());
        }
        assert_eq!(cache.len(), ids.len());
        let d = max_diff(&got, &want);
        assert!(d <= 1e-4, "{name}: {d}");
    }
}

#[test]
fn bf16_compute_stays_close_to_f32() {
    let model = pesc_model::Weights::open(&fixture("llama-sharded")).unwrap();
    let (ids, want) = reference("llama-sharded");
    let runner = Runner::load(&model, ComputeDType::BF16, &candle_core::Device::Cpu).unwrap();
    let got = runner.forward(&ids, &mut Cache::default()).unwrap().logits.to_vec2::<f32>().unwrap();
    let d = max_diff(&got, &want);
    assert!(d > 0.0 && d < 0.05, "bf16 differs from f32 by {d}");
}

fn craft(dense: &Path, out: &Path) {
    let o = run([
        Path::new("craft"),
        dense,
        Path::new("-o"),
        out,
        Path::new("--experts"),
        Path::new("4"),
        Path::new("--top-k"),
        Path::new("2"),
        Path::new("--adapter-dim"),
        Path::new("8"),
    ]);
    assert_code(&o, 0);
}

fn verify_json(candidate: &Path, reference: &Path, code: i32) -> Value {
    let o = run([Path::new("verify"), candidate, Path::new("--against"), reference, Path::new("--json")]);
    assert_code(&o, code);
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// Copies a crafted folder without its checksum files, setting the `adapter_up`
/// tensors to `value`: everywhere, or (`one_element`) only their first element.
fn with_adapters(src: &Path, dst: &Path, layer: &str, one_element: bool, value: f32) {
    copy_dir(src, dst);
    for f in [pesc_io::SHA256SUMS, pesc_io::MANIFEST] {
        std::fs::remove_file(dst.join(f)).unwrap();
    }
    let ck = pesc_io::Checkpoint::open_dir(src).unwrap();
    let tensors: Vec<(String, DType, Vec<u64>, Vec<u8>)> = ck
        .tensors()
        .map(|t| {
            let mut bytes = ck.read(&t.name).unwrap();
            if t.name.ends_with(".adapter_up.weight") && t.name.starts_with(layer) {
                let n = if one_element { 1 } else { usize::try_from(t.numel()).unwrap() };
                let new = from_f32(t.dtype, &vec![value; n]).unwrap();
                bytes[..new.len()].copy_from_slice(&new);
            }
            (t.name.clone(), t.dtype, t.shape.clone(), bytes)
        })
        .collect();
    let list: Vec<_> = tensors.iter().map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice())).collect();
    let mut file = std::fs::File::create(dst.join("model.safetensors")).unwrap();
    pesc_io::safetensors::write_all(&mut file, &list, &Default::default()).unwrap();
}

#[test]
fn a_fresh_craft_verifies_exactly_and_any_adapter_breaks_it() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let out = tmp.path().join(name);
        craft(&fixture(name), &out);
        let r = verify_json(&out, &fixture(name), 0);
        assert_eq!(
            (r["max_abs_diff"].as_f64(), r["exact"].as_bool(), r["exact_required"].as_bool()),
            (Some(0.0), Some(true), Some(true)),
            "{name}"
        );
        assert_eq!(r["tokens_compared"], 96);
        let load = r["expert_load"].as_array().unwrap();
        assert!(!load.is_empty());
        // Every token goes to top-k = 2 experts in every layer.
        assert!(load.iter().all(|l| l.as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum::<u64>() == 2 * 96));
    }
    // One non-zero weight per expert of layer 0 (so that some routed expert has it): not exact, not within tolerance.
    let one = tmp.path().join("one");
    let gqa = tmp.path().join("llama-gqa");
    with_adapters(&gqa, &one, "model.layers.0.", true, 0.5);
    let r = verify_json(&one, &fixture("llama-gqa"), 1);
    assert_eq!((r["exact"].as_bool(), r["exact_required"].as_bool()), (Some(false), Some(false)), "{r}");
    let o = run([Path::new("verify"), &one, Path::new("--against"), &fixture("llama-gqa")]);
    assert!(stderr(&o).contains("max_abs_diff") && stderr(&o).contains("at sequence"), "{}", stderr(&o));
    // Adapters everywhere fail too.
    let big = tmp.path().join("big");
    with_adapters(&gqa, &big, "model.layers.", false, 0.05);
    let r = verify_json(&big, &fixture("llama-gqa"), 1);
    assert!(r["max_abs_diff"].as_f64().unwrap() > 1e-3, "{r}");
    assert_eq!(r["exact_required"], false);
    assert_eq!(r["pass"], false);
}

#[test]
fn the_upcycled_model_verifies_within_tolerance() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mixtral");
    let o = run([
        Path::new("upcycle"),
        &fixture("mistral"),
        Path::new("-o"),
        &out,
        Path::new("--experts"),
        Path::new("4"),
        Path::new("--top-k"),
        Path::new("2"),
    ]);
    assert_code(&o, 0);
    let r = verify_json(&out, &fixture("mistral"), 0);
    assert!(r["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{r}");
    assert_eq!(r["candidate"], "Mixtral");
    let (ids, want) = reference("mistral");
    let model = pesc_model::Weights::open(&out).unwrap();
    let got = Runner::load(&model, ComputeDType::F32, &candle_core::Device::Cpu).unwrap().forward(&ids, &mut Cache::default()).unwrap();
    assert!(max_diff(&got.logits.to_vec2::<f32>().unwrap(), &want) <= 1e-4);
}

#[test]
fn verify_and_logits_reject_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run([
        Path::new("logits"),
        &fixture("llama-gqa"),
        Path::new("--token-ids"),
        Path::new("1,320"),
        Path::new("-o"),
        &tmp.path().join("x.safetensors"),
    ]);
    assert_rejects(&o, &["token id 320 is outside the vocabulary (size 320)"]);
    assert!(!tmp.path().join("x.safetensors").exists());
    let o = run([
        Path::new("logits"),
        &fixture("llama-gqa"),
        Path::new("--token-ids"),
        Path::new("1,,2"),
        Path::new("-o"),
        &tmp.path().join("x.safetensors"),
    ]);
    assert_code(&o, 2);
    // A vocabulary of another size cannot be compared.
    let other = tmp.path().join("other");
    copy_dir(&fixture("llama-gqa"), &other);
    let cfg = std::fs::read_to_string(other.join("config.json")).unwrap().replace("\"vocab_size\": 320", "\"vocab_size\": 160");
    std::fs::write(other.join("config.json"), cfg).unwrap();
    let o = run([Path::new("verify"), &fixture("llama-gqa"), Path::new("--against"), &other]);
    assert_code(&o, 2);
    let o = run([
        Path::new("verify"),
        &fixture("llama-gqa"),
        Path::new("--against"),
        &fixture("qwen2-bias"),
        Path::new("--token-ids"),
        Path::new("1,400"),
    ]);
    assert_rejects(&o, &["token id 400 is outside the vocabulary"]);
    // Checksums are checked first: a tampered crafted folder fails with exit 1.
    let crafted = tmp.path().join("crafted");
    craft(&fixture("llama-gqa"), &crafted);
    std::fs::write(crafted.join("generation_config.json"), "{}").unwrap();
    let o = run([Path::new("verify"), &crafted, Path::new("--against"), &fixture("llama-gqa")]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("`generation_config.json` has SHA-256"), "{}", stderr(&o));
}

/// Logits of `model` (a folder or a GGUF file) on `ids`, f32 compute.
fn logits_of(model: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let w = pesc_model::Weights::open(model).unwrap();
    let r = Runner::load(&w, ComputeDType::F32, &candle_core::Device::Cpu).unwrap();
    r.forward(ids, &mut Cache::default()).unwrap().logits.to_vec2::<f32>().unwrap()
}

fn quantize_to(model: &Path, to: &str, out: &Path) {
    assert_code(&run([Path::new("quantize"), model, Path::new("--to"), Path::new(to), Path::new("-o"), out]), 0);
}

#[test]
fn f32_gguf_files_run_bit_for_bit_like_their_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let pesc = tmp.path().join("pesc");
    craft(&fixture("llama-gqa"), &pesc);
    // Trained-looking adapters, so that the stacked adapter slices matter.
    let adapted = tmp.path().join("adapted");
    with_adapters(&pesc, &adapted, "model.layers.", false, 0.05);
    let mixtral = tmp.path().join("mixtral");
    assert_code(
        &run([
            Path::new("upcycle"),
            &fixture("mistral"),
            Path::new("-o"),
            &mixtral,
            Path::new("--experts"),
            Path::new("4"),
            Path::new("--top-k"),
            Path::new("2"),
        ]),
        0,
    );
    let (ids, _) = reference("llama-gqa");
    for model in [fixture("llama-gqa"), fixture("llama-chat"), adapted, mixtral] {
        let gguf = tmp.path().join(format!("{}.gguf", model.file_name().unwrap().to_string_lossy()));
        quantize_to(&model, "f32", &gguf);
        let (a, b) = (logits_of(&model, &ids), logits_of(&gguf, &ids));
        assert!(
            a.iter().flatten().map(|x| x.to_bits()).eq(b.iter().flatten().map(|x| x.to_bits())),
            "{}: GGUF logits differ",
            model.display()
        );
    }
}

#[test]
fn quantized_gguf_runs_like_its_dequantized_import_and_a_fresh_pesc_equals_its_dense_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let (ids, _) = reference("llama-gqa");
    for to in ["q8_0", "q4_k_m"] {
        let gguf = tmp.path().join(format!("gqa-{to}.gguf"));
        quantize_to(&fixture("llama-gqa"), to, &gguf);
        let imported = tmp.path().join(format!("imported-{to}"));
        assert_code(&run([Path::new("import-gguf"), &gguf, Path::new("-o"), &imported, Path::new("--dtype"), Path::new("f32")]), 0);
        // Decoding a few tokens, the block dot products also round the activations to
        // 8-bit blocks: close to the dequantized weights' logits, not equal.
        let few = &ids[..ids.len().min(pesc_model::DEQUANTIZED_ROWS - 1)];
        let (q, d) = (logits_of(&gguf, few), logits_of(&imported, few));
        let diff = max_diff(&q, &d);
        let scale = d.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        assert!(diff > 0.0 && diff < scale / 20.0, "{to}: {diff} (logits up to {scale})");
        // A prefill multiplies by the dequantized matrices: the imported model's logits, bit for bit.
        let many: Vec<u32> = ids.iter().cycle().take(pesc_model::DEQUANTIZED_ROWS + 3).copied().collect();
        let (q, d) = (logits_of(&gguf, &many), logits_of(&imported, &many));
        assert!(q.iter().flatten().map(|x| x.to_bits()).eq(d.iter().flatten().map(|x| x.to_bits())), "{to}: prefill differs");
    }
    let pesc = tmp.path().join("pesc");
    craft(&fixture("llama-gqa"), &pesc);
    let (pq, dq) = (tmp.path().join("pesc-q8_0.gguf"), tmp.path().join("gqa-q8_0.gguf"));
    quantize_to(&pesc, "q8_0", &pq);
    let r = verify_json(&pq, &dq, 0);
    assert_eq!((r["exact"].as_bool(), r["exact_required"].as_bool()), (Some(true), Some(true)), "{r}");
    assert!(r["candidate"].as_str().unwrap().starts_with("PESC llama (GGUF"), "{r}");
    // Against the unquantized folder the same file is only close.
    let r = verify_json(&pq, &fixture("llama-gqa"), 1);
    assert_eq!(r["exact_required"], false, "{r}");
}

#[test]
fn run_chats_with_a_gguf_files_own_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("chat.gguf");
    quantize_to(&fixture("llama-chat"), "f32", &gguf);
    let args = |m: &Path| -> Vec<std::ffi::OsString> {
        ["run".into(), m.as_os_str().to_owned(), "--prompt".into(), "hello there".into(), "--max-new-tokens".into(), "8".into()].to_vec()
    };
    let (a, b) = (run(args(&fixture("llama-chat"))), run(args(&gguf)));
    assert_code(&a, 0);
    assert_code(&b, 0);
    assert_eq!(a.stdout, b.stdout, "the GGUF's rebuilt tokenizer and template must give the folder's text");
}

#[test]
fn streamed_and_resident_runners_compute_the_same_bits() {
    for name in FIXTURES {
        let model = pesc_model::Weights::open(&fixture(name)).unwrap();
        let (ids, _) = reference(name);
        let dev = candle_core::Device::Cpu;
        let resident = Runner::load(&model, ComputeDType::F32, &dev).unwrap();
        let streamed = Runner::stream(&model, ComputeDType::F32, &dev, None).unwrap();
        assert!(resident.is_resident() && !streamed.is_resident());
        let seqs = vec![ids.clone(), ids[..5].to_vec()];
        let a = resident.forward_batch(&seqs).unwrap();
        let b = streamed.forward_batch(&seqs).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.logits.to_vec2::<f32>().unwrap(), y.logits.to_vec2::<f32>().unwrap(), "{name}");
        }
        // Decoding with a KV cache: the same bits streamed and resident.
        let decode = |r: &Runner| {
            let mut cache = Cache::default();
            let mut got = r.forward(&ids[..5], &mut cache).unwrap().logits.to_vec2::<f32>().unwrap();
            for &t in &ids[5..] {
                got.extend(r.forward(&[t], &mut cache).unwrap().logits.to_vec2::<f32>().unwrap());
            }
            got
        };
        assert_eq!(decode(&streamed), decode(&resident), "{name}");
    }
}

#[test]
fn a_layer_larger_than_the_memory_allowed_is_refused_before_any_compute() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-gqa");
    let out = tmp.path().join("l.safetensors");
    let o = run([
        "logits".as_ref(),
        model.as_os_str(),
        "--token-ids".as_ref(),
        "1,2,3".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--max-memory".as_ref(),
        "1000".as_ref(),
    ]);
    assert_rejects(&o, &["layer 0 needs", "bytes in memory", "only 1000 bytes are available"]);
    assert!(!out.exists());
    let o = run([
        Path::new("verify"),
        &model,
        Path::new("--against"),
        &model,
        Path::new("--max-memory"),
        Path::new("1000"),
        Path::new("--json"),
    ]);
    assert_rejects(&o, &["layer 0 needs", "only 1000 bytes"]);
    assert_eq!(stdout(&o), "", "no report");
}

#[test]
fn verify_reports_its_speed_and_peak_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pesc");
    craft(&fixture("llama-gqa"), &out);
    let r = verify_json(&out, &fixture("llama-gqa"), 0);
    assert!(r["tokens_per_second"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
    assert!(r["seconds"].as_f64().unwrap() > 0.0, "{r}");
    // Every expert has a column, chosen or not: each layer's counts sum to top-k per token.
    let tokens = r["tokens_compared"].as_u64().unwrap();
    let load = r["expert_load"].as_array().unwrap();
    assert!(!load.is_empty());
    for layer in load {
        let counts: Vec<u64> = layer.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
        assert_eq!(counts.len(), 4, "{r}");
        assert_eq!(counts.iter().sum::<u64>(), 2 * tokens, "{r}");
    }
}

#[test]
fn run_continues_token_ids_greedily_resident_or_streamed() {
    // A model without a tokenizer: the new ids are printed; greedy decoding picks each argmax.
    let model = fixture("llama-gqa");
    let args = |extra: &[&str]| {
        let mut a: Vec<std::ffi::OsString> =
            vec!["run".into(), model.clone().into(), "--token-ids".into(), "1,2,3".into(), "--max-new-tokens".into(), "4".into()];
        a.extend(extra.iter().map(Into::into));
        a
    };
    let o = run(args(&[]));
    assert_code(&o, 0);
    let ids: Vec<u32> = stdout(&o).trim().split(',').map(|t| t.parse().unwrap()).collect();
    assert_eq!(ids.len(), 4);
    let mut seq = vec![1, 2, 3];
    for &next in &ids {
        let logits = logits_of(&model, &seq);
        let last = logits.last().unwrap();
        let argmax = last.iter().enumerate().fold(0, |b, (i, v)| if *v > last[b] { i } else { b });
        assert_eq!(next as usize, argmax);
        seq.push(next);
    }
    // Too little memory to hold the model: it streams, and says so, with the same tokens.
    let o = run(args(&["--max-memory", "300KB"]));
    assert_code(&o, 0);
    assert!(stderr(&o).contains("does not fit"), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
}
