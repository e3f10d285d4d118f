//! `merge-lora` against PEFT's own `merge_and_unload` (fixtures/lora, made by
//! fixtures/lora/make_adapters.py), against `dequant(NF4(W)) + delta`, and on
//! bad adapters (exit 2, nothing written).

use crate::common::{assert_code, assert_rejects, copy_dir, entries, fixture, run, sha256, stderr, stdout};
use pesc_io::{Checkpoint, SafetensorsFile};
use pesc_quant::nf4::{roundtrip, Nf4Options};
use pesc_tensor::{to_f32, DType};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;
use tempfile::{tempdir, TempDir};

/// A committed fixture adapter (`fixtures/lora/NAME`).
fn adapter(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lora").join(name)
}

/// `pesc-convert merge-lora BASE ADAPTER -o OUT ARGS...`.
fn merge(base: &Path, adapter: &Path, out: &Path, args: &[&str]) -> Output {
    let mut v: Vec<&OsStr> = vec![OsStr::new("merge-lora"), base.as_os_str(), adapter.as_os_str(), OsStr::new("-o"), out.as_os_str()];
    v.extend(args.iter().map(OsStr::new));
    run(v)
}

/// Every tensor of a safetensors file as f32.
fn tensors_of(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let f = SafetensorsFile::open(path).unwrap();
    f.tensors().iter().map(|t| (t.name.clone(), to_f32(t.dtype, &f.read(t).unwrap()).unwrap())).collect()
}

/// Every tensor of a model folder as f32.
fn model_tensors(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let ck = Checkpoint::open_dir(dir).unwrap();
    ck.tensors().map(|t| (t.name.clone(), to_f32(t.dtype, &ck.read(&t.name).unwrap()).unwrap())).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The PESC base of the `pesc` fixture, crafted as make_adapters.py did (and checked to be the same bytes).
fn crafted_pesc(tmp: &Path) -> PathBuf {
    let dir = tmp.join("pesc");
    let o = run([OsStr::new("craft"), fixture("llama-gqa").as_os_str(), OsStr::new("-o"), dir.as_os_str()]
        .into_iter()
        .chain(["--experts", "2", "--top-k", "1", "--adapter-dim", "8", "--seed", "0"].map(OsStr::new)));
    assert_code(&o, 0);
    let manifest: Value = serde_json::from_slice(&std::fs::read(adapter("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        sha256(&dir.join("model.safetensors")),
        manifest["pesc_base"]["model.safetensors sha256"].as_str().unwrap(),
        "craft no longer makes the fixture's PESC base"
    );
    dir
}

/// Merges `name` onto `base` with --onto original and checks every tensor:
/// PEFT's result within 1e-5 where PEFT changed it, the base's bytes elsewhere.
fn matches_peft(name: &str, base: &Path) -> Output {
    let tmp = tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = merge(base, &adapter(name), &out, &["--onto", "original"]);
    assert_code(&o, 0);
    let reference = tensors_of(&adapter(&format!("{name}.merged.safetensors")));
    let (merged, original) = (model_tensors(&out), model_tensors(base));
    assert_eq!(merged.keys().collect::<Vec<_>>(), original.keys().collect::<Vec<_>>());
    for (t, values) in &merged {
        match reference.get(t) {
            Some(want) => {
                let d = max_abs_diff(values, want);
                assert!(d <= 1e-5, "{name}: `{t}` differs from PEFT's merge by {d}");
            }
            None => assert_eq!(values, &original[t], "{name}: `{t}` changed but PEFT left it alone"),
        }
    }
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("merge-report.json")).unwrap()).unwrap();
    assert_eq!(report["onto"], "original");
    assert_code(&run([OsStr::new("verify-manifest"), out.as_os_str()]), 0);
    o
}

#[test]
fn plain_lora_equals_peft() {
    let o = matches_peft("plain", &fixture("llama-gqa"));
    let table = stdout(&o);
    assert!(
        table.contains("nf4_err/delta") && table.lines().filter(|l| l.starts_with("0 ") || l.starts_with("1 ")).count() == 2,
        "{table}"
    );
}

#[test]
fn rslora_with_regex_targets_and_patterns_equals_peft() {
    matches_peft("rslora", &fixture("llama-gqa"));
}

#[test]
fn dora_on_some_layers_equals_peft() {
    matches_peft("dora", &fixture("llama-gqa"));
}

#[test]
fn fan_in_fan_out_and_modules_to_save_equal_peft() {
    let o = matches_peft("fifo", &fixture("llama-gqa"));
    assert!(stderr(&o).contains("fan_in_fan_out"), "{}", stderr(&o));
}

#[test]
fn lora_on_pesc_adapters_with_trained_tensors_equals_peft() {
    let tmp = tempdir().unwrap();
    let base = crafted_pesc(tmp.path());
    matches_peft("pesc", &base);
}

/// Checks `out` = dequant(NF4(W)) (+ PEFT's delta) on every NF4 linear and the base elsewhere.
fn check_nf4_merge(out: &Path, base: &Path, deltas: &BTreeMap<String, Vec<f32>>, opts: Nf4Options) {
    let (merged, original) = (model_tensors(out), model_tensors(base));
    let targets = pesc_craft::nf4_targets(&pesc_hf::Model::open(base).unwrap());
    let mut quantized = 0;
    for (t, values) in &merged {
        if !targets.contains(t) {
            assert_eq!(values, &original[t], "`{t}` changed");
            continue;
        }
        quantized += 1;
        let mut want = roundtrip(&original[t], opts).unwrap();
        if let Some(d) = deltas.get(t) {
            want.iter_mut().zip(d).for_each(|(w, d)| *w += d);
        }
        let diff = max_abs_diff(values, &want);
        assert!(diff <= 1e-6, "`{t}` differs from dequant(NF4(W)) + delta by {diff}");
    }
    assert_eq!(quantized, 14);
}

#[test]
fn qlora_adapter_defaults_to_the_dequantized_nf4_base() {
    let tmp = tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = merge(&fixture("llama-gqa"), &adapter("qlora"), &out, &[]);
    assert_code(&o, 0);
    assert!(stderr(&o).contains("merging onto dequantized-nf4 (trained on a 4-bit base"), "{}", stderr(&o));
    let deltas = tensors_of(&adapter("qlora.delta.safetensors"));
    assert_eq!(deltas.len(), 2);
    check_nf4_merge(&out, &fixture("llama-gqa"), &deltas, Nf4Options::default());
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("merge-report.json")).unwrap()).unwrap();
    assert_eq!(report["onto"], "dequantized-nf4");
    assert_eq!(report["tensors"].as_array().unwrap().len(), 2);
    assert!(report["tensors"][0]["nf4_error_over_delta"].as_f64().unwrap() > 0.0);
}

#[test]
fn nf4_folder_base_gives_the_same_weights_as_its_16_bit_source() {
    let tmp = tempdir().unwrap();
    let nf4 = tmp.path().join("nf4");
    let q = run([
        OsStr::new("quantize"),
        fixture("llama-gqa").as_os_str(),
        OsStr::new("--to"),
        OsStr::new("nf4"),
        OsStr::new("-o"),
        nf4.as_os_str(),
    ]);
    assert_code(&q, 0);
    let (from_nf4, from_16) = (tmp.path().join("a"), tmp.path().join("b"));
    assert_code(&merge(&nf4, &adapter("qlora"), &from_nf4, &[]), 0);
    assert_code(&merge(&fixture("llama-gqa"), &adapter("qlora"), &from_16, &[]), 0);
    assert_eq!(sha256(&from_nf4.join("model.safetensors")), sha256(&from_16.join("model.safetensors")));
    let config: Value = serde_json::from_slice(&std::fs::read(from_nf4.join("config.json")).unwrap()).unwrap();
    assert!(config.get("quantization_config").is_none());
    let o = merge(&nf4, &adapter("plain"), &tmp.path().join("c"), &["--onto", "original"]);
    assert_rejects(&o, &["is an NF4 folder", "--onto original is impossible"]);
}

#[test]
fn peft_model_card_record_of_bitsandbytes_selects_nf4_and_its_settings() {
    let tmp = tempdir().unwrap();
    let a = tmp.path().join("adapter");
    copy_dir(&adapter("plain"), &a);
    std::fs::write(
        a.join("README.md"),
        "## Training procedure\n\n\nThe following `bitsandbytes` quantization config was used during training:\n- quant_method: bitsandbytes\n- load_in_4bit: True\n- bnb_4bit_quant_type: nf4\n- bnb_4bit_use_double_quant: False\n- bnb_4bit_compute_dtype: bfloat16\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = merge(&fixture("llama-gqa"), &a, &out, &["--blocksize", "128"]);
    assert_code(&o, 0);
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("merge-report.json")).unwrap()).unwrap();
    assert_eq!(report["nf4"], json!({"blocksize": 128, "double_quant": false}));
    // The plain fixture's PEFT merge minus the base is its delta (up to f32 rounding).
    let (reference, base) = (tensors_of(&adapter("plain.merged.safetensors")), model_tensors(&fixture("llama-gqa")));
    let deltas = reference.iter().map(|(t, v)| (t.clone(), v.iter().zip(&base[t]).map(|(m, w)| m - w).collect())).collect();
    check_nf4_merge(&out, &fixture("llama-gqa"), &deltas, Nf4Options { blocksize: 128, double_quant: false });
}

#[test]
fn merge_is_reproducible_and_converts_dtype() {
    let tmp = tempdir().unwrap();
    // Same folder name (the model card quotes it), different parents.
    let (a, b) = (tmp.path().join("x/out"), tmp.path().join("y/out"));
    std::fs::create_dir_all(tmp.path().join("x")).unwrap();
    std::fs::create_dir_all(tmp.path().join("y")).unwrap();
    for out in [&a, &b] {
        assert_code(&merge(&fixture("llama-gqa"), &adapter("rslora"), out, &["--dtype", "bf16"]), 0);
    }
    assert_eq!(sha256(&a.join("SHA256SUMS")), sha256(&b.join("SHA256SUMS")));
    let ck = Checkpoint::open_dir(&a).unwrap();
    assert!(ck.tensors().all(|t| t.dtype == DType::BF16));
    let config: Value = serde_json::from_slice(&std::fs::read(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
}

// ---------------------------------------------------------------------------
// Bad adapters
// ---------------------------------------------------------------------------

/// An f32 copy of an adapter's tensors, editable.
type Tensors = BTreeMap<String, (Vec<u64>, Vec<f32>)>;

/// Copies adapter `name` into a fresh folder, editing its config and tensors.
fn edited(name: &str, config: impl FnOnce(&mut Value), tensors: impl FnOnce(&mut Tensors)) -> (TempDir, PathBuf) {
    let tmp = tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(&adapter(name), &dir);
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    config(&mut cfg);
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let f = SafetensorsFile::open(&dir.join("adapter_model.safetensors")).unwrap();
    let mut t: Tensors =
        f.tensors().iter().map(|t| (t.name.clone(), (t.shape.clone(), to_f32(t.dtype, &f.read(t).unwrap()).unwrap()))).collect();
    drop(f);
    tensors(&mut t);
    write_tensors(&dir.join("adapter_model.safetensors"), &t);
    (tmp, dir)
}

fn write_tensors(path: &Path, t: &Tensors) {
    let bytes: Vec<(String, Vec<u64>, Vec<u8>)> =
        t.iter().map(|(n, (s, v))| (n.clone(), s.clone(), pesc_tensor::from_f32(DType::F32, v).unwrap())).collect();
    let list: Vec<(&str, DType, &[u64], &[u8])> =
        bytes.iter().map(|(n, s, b)| (n.as_str(), DType::F32, s.as_slice(), b.as_slice())).collect();
    let mut file = std::fs::File::create(path).unwrap();
    pesc_io::safetensors::write_all(&mut file, &list, &BTreeMap::new()).unwrap();
}

/// Asserts that merging `adapter_dir` onto `base` exits 2 with every needle and writes nothing.
#[track_caller]
fn refuses_on(base: &Path, adapter_dir: &Path, needles: &[&str]) {
    let tmp = tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = merge(base, adapter_dir, &out, &[]);
    assert_rejects(&o, needles);
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "something was written");
}

#[track_caller]
fn refuses(adapter_dir: &Path, needles: &[&str]) {
    refuses_on(&fixture("llama-gqa"), adapter_dir, needles);
}

const Q0A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const Q0B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

#[test]
fn rank_that_disagrees_with_the_config_is_refused() {
    let (_t, a) = edited("plain", |c| c["r"] = json!(8), |_| {});
    refuses(&a, &["rank mismatch", "model.layers.0.self_attn.q_proj", "r = 8"]);
}

#[test]
fn adapter_for_another_hidden_size_is_refused() {
    let (_t, a) = edited(
        "plain",
        |_| {},
        |t| {
            t.insert(Q0A.into(), (vec![4, 128], vec![0.0; 512]));
        },
    );
    refuses(&a, &["shape mismatch", "model.layers.0.self_attn.q_proj", "[64, 128]", "hidden_size is 64"]);
}

#[test]
fn missing_lora_b_is_refused() {
    let (_t, a) = edited(
        "plain",
        |_| {},
        |t| {
            t.remove(Q0B);
        },
    );
    refuses(&a, &["model.layers.0.self_attn.q_proj", "`lora_B.weight` is missing"]);
}

#[test]
fn targets_matching_nothing_are_refused() {
    let (_t, a) = edited("plain", |c| c["target_modules"] = json!(["wq", "wv"]), |_| {});
    refuses(&a, &["adapter_config.json", "`target_modules` selects no module"]);
}

#[test]
fn lora_weights_outside_target_modules_are_refused() {
    let (_t, a) = edited("plain", |c| c["target_modules"] = json!(["q_proj"]), |_| {});
    refuses(&a, &["model.layers.0.self_attn.v_proj", "does not select it"]);
}

#[test]
fn module_the_base_lacks_is_refused() {
    let (_t, a) = edited(
        "plain",
        |_| {},
        |t| {
            let (a, b) = (t.remove(Q0A).unwrap(), t.remove(Q0B).unwrap());
            t.insert(Q0A.replace("layers.0", "layers.7"), a);
            t.insert(Q0B.replace("layers.0", "layers.7"), b);
        },
    );
    refuses(&a, &["model.layers.7.self_attn.q_proj", "lands on no tensor"]);
}

#[test]
fn rank_zero_and_bad_alphas_are_refused() {
    let (_t, a) = edited("plain", |c| c["r"] = json!(0), |_| {});
    refuses(&a, &["adapter_config.json", "`r` is 0"]);
    let (_t, a) = edited("plain", |c| c["lora_alpha"] = json!(0), |_| {});
    refuses(&a, &["`lora_alpha` is 0"]);
    let (_t, a) = edited("plain", |c| c["alpha_pattern"] = json!({"q_proj": 0.0}), |_| {});
    refuses(&a, &["`alpha_pattern.q_proj` is 0"]);
    // Python's json writes NaN as a bare token.
    let (_t, a) = edited("plain", |_| {}, |_| {});
    let cfg = std::fs::read_to_string(a.join("adapter_config.json")).unwrap().replace("\"lora_alpha\": 8", "\"lora_alpha\": NaN");
    std::fs::write(a.join("adapter_config.json"), cfg).unwrap();
    refuses(&a, &["adapter_config.json", "`lora_alpha` is \"NaN\""]);
}

#[test]
fn non_finite_weights_and_overflowing_deltas_are_refused() {
    let (_t, a) = edited("plain", |_| {}, |t| t.get_mut(Q0B).unwrap().1[3] = f32::NAN);
    refuses(&a, &["adapter_model.safetensors", Q0B, "NaN or Inf"]);
    let (_t, a) = edited(
        "plain",
        |_| {},
        |t| {
            t.get_mut(Q0A).unwrap().1.iter_mut().for_each(|x| *x = 1e30);
            t.get_mut(Q0B).unwrap().1.iter_mut().for_each(|x| *x = 1e30);
        },
    );
    // Found while writing, after the "merging onto" note: the staged output is discarded.
    let tmp = tempdir().unwrap();
    let o = merge(&fixture("llama-gqa"), &a, &tmp.path().join("out"), &[]);
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains(
            "error: tensor `model.layers.0.self_attn.q_proj.weight`: the merged weight holds NaN or Inf (the LoRA delta overflows)"
        ),
        "{}",
        stderr(&o)
    );
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "something was written");
}

#[test]
fn malformed_config_and_pickles_are_refused() {
    let (_t, a) = edited("plain", |_| {}, |_| {});
    std::fs::write(a.join("adapter_config.json"), b"{\"r\": 4,").unwrap();
    refuses(&a, &["adapter_config.json", "not valid JSON"]);
    let (_t, a) = edited("plain", |c| c["peft_type"] = json!("LOHA"), |_| {});
    refuses(&a, &["`peft_type`", "only LORA"]);
    let (_t, a) = edited("plain", |_| {}, |_| {});
    std::fs::remove_file(a.join("adapter_model.safetensors")).unwrap();
    std::fs::write(a.join("adapter_model.bin"), b"\x80\x02}q\x00.").unwrap();
    refuses(&a, &["adapter_model.bin", "pickled", "safe_serialization=True"]);
}

#[test]
fn bad_trained_pesc_tensors_are_refused() {
    let tmp = tempdir().unwrap();
    let base = crafted_pesc(tmp.path());
    let router = "base_model.model.model.layers.0.mlp.moe_adapter.router.weight";
    let (_t, a) = edited("pesc", |_| {}, |_| {});
    write_tensors(&a.join("moe_model.safetensors"), &BTreeMap::from([(router.to_owned(), (vec![3, 64], vec![0.0; 192]))]));
    refuses_on(&base, &a, &["moe_model.safetensors", router, "has shape [3, 64]", "[2, 64]"]);
    write_tensors(
        &a.join("moe_model.safetensors"),
        &BTreeMap::from([("model.layers.9.mlp.moe_adapter.router.weight".to_owned(), (vec![2, 64], vec![0.0; 128]))]),
    );
    refuses_on(&base, &a, &["moe_model.safetensors", "layers.9", "no counterpart"]);
    std::fs::remove_file(a.join("moe_model.safetensors")).unwrap();
    std::fs::write(a.join("moe_model.bin"), b"\x80\x02}q\x00.").unwrap();
    refuses_on(&base, &a, &["moe_model.bin", "never unpickles", "moe_model.safetensors"]);
}
