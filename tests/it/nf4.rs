//! `quantize --to nf4` and reading NF4 folders: round trips against the
//! library quantizer, reproducibility, what stays 16-bit, and hostile NF4
//! folders (exit 2, an `error:` naming the weight and field, nothing written).

use crate::common::{assert_code, assert_rejects, copy_dir, entries, fixture, run, sha256, stderr, stdout};
use pesc_hf::{Model, QUANT_STATE};
use pesc_quant::nf4::{self, Nf4Options};
use serde_json::{json, Map, Value};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use tempfile::tempdir;

const Q: &str = "model.layers.0.self_attn.q_proj.weight";
const DOWN: &str = "model.layers.1.mlp.down_proj.weight";

fn quantize(src: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<&OsStr> =
        vec![OsStr::new("quantize"), src.as_os_str(), OsStr::new("--to"), OsStr::new("nf4"), OsStr::new("-o"), out.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    run(args)
}

fn quantized(src: &Path, out: &Path, extra: &[&str]) -> Model {
    let o = quantize(src, out, extra);
    assert_code(&o, 0);
    Model::open(out).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every NF4 weight of `q` dequantizes to the library round trip of the
/// source weight; every other tensor is stored exactly as in `src`.
fn check_against_source(src: &Model, q: &Model, opts: Nf4Options, want_nf4: usize) {
    assert_eq!(q.nf4_weights().count(), want_nf4);
    for (name, info) in q.nf4_weights() {
        let t = src.weights.get(name).unwrap();
        assert_eq!(info.shape, t.shape, "{name}");
        assert_eq!(info.dtype, t.dtype, "{name}");
        assert_eq!(info.blocksize, opts.blocksize);
        assert_eq!(info.offset.is_some(), opts.double_quant);
        assert_eq!(q.shape_of(name), Some(t.shape.clone()));
        let want = nf4::roundtrip(&src.read_f32(name).unwrap(), opts).unwrap();
        // bitsandbytes returns the dequantized weight in its original dtype
        let want = pesc_tensor::to_f32(t.dtype, &pesc_tensor::from_f32(t.dtype, &want).unwrap()).unwrap();
        assert_eq!(bits(&q.read_f32(name).unwrap()), bits(&want), "{name}");
    }
    for t in src.weights.tensors() {
        if q.nf4(&t.name).is_none() {
            let got = q.weights.get(&t.name).unwrap_or_else(|| panic!("{} missing", t.name));
            assert_eq!((got.dtype, &got.shape), (t.dtype, &t.shape), "{}", t.name);
            assert_eq!(q.weights.read(&t.name).unwrap(), src.weights.read(&t.name).unwrap(), "{}", t.name);
        }
    }
}

#[test]
fn nf4_folder_reopens_and_dequantizes_to_the_round_trip() {
    let tmp = tempdir().unwrap();
    let src = Model::open(&fixture("llama-gqa")).unwrap();
    let q = quantized(&src.dir, &tmp.path().join("q"), &[]);
    let cfg = q.quantization.clone().unwrap();
    assert!(cfg.double_quant);
    assert_eq!(cfg.compute_dtype, "float32");
    check_against_source(&src, &q, Nf4Options::default(), 14);
    assert!(q.nf4("lm_head.weight").is_none() && q.nf4("model.embed_tokens.weight").is_none());
    let qc = &q.config.raw["quantization_config"];
    let keys: Vec<&str> = qc.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    assert_eq!(qc["quant_method"], "bitsandbytes");
    assert_eq!(qc["bnb_4bit_quant_type"], "nf4");
    // bf16 shards, another blocksize, no double quantization
    let src = Model::open(&fixture("llama-sharded")).unwrap();
    let opts = Nf4Options { blocksize: 128, double_quant: false };
    let q = quantized(&src.dir, &tmp.path().join("s"), &["--blocksize", "128", "--no-double-quant"]);
    assert_eq!(q.quantization.clone().unwrap().compute_dtype, "bfloat16");
    check_against_source(&src, &q, opts, 21);
}

#[test]
fn nf4_output_is_byte_reproducible_and_inspect_names_it() {
    let tmp = tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    quantized(&fixture("qwen2-bias"), &a, &[]);
    quantized(&fixture("qwen2-bias"), &b, &[]);
    for f in ["model.safetensors", "config.json", "SHA256SUMS"] {
        assert_eq!(sha256(&a.join(f)), sha256(&b.join(f)), "{f}");
    }
    let o = run([OsStr::new("inspect"), a.as_os_str()]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("nf4 (blocksize 64, double quant)"), "{}", stdout(&o));
    let o = run([OsStr::new("inspect"), a.as_os_str(), OsStr::new("--json")]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["quantization"],
        json!({"method": "nf4", "blocksize": 64, "double_quant": true, "compute_dtype": "float32", "weights": 14})
    );
    // the runner reads it
    let logits = tmp.path().join("l.safetensors");
    let o =
        run([OsStr::new("logits"), a.as_os_str(), OsStr::new("--token-ids"), OsStr::new("1,5,17"), OsStr::new("-o"), logits.as_os_str()]);
    assert_code(&o, 0);
}

#[test]
fn pesc_routers_and_adapters_stay_16_bit_and_mixtral_experts_stay_float() {
    let tmp = tempdir().unwrap();
    let pesc = tmp.path().join("pesc");
    let o = run([
        OsStr::new("craft"),
        fixture("llama-gqa").as_os_str(),
        OsStr::new("-o"),
        pesc.as_os_str(),
        OsStr::new("--experts"),
        OsStr::new("4"),
        OsStr::new("--top-k"),
        OsStr::new("2"),
        OsStr::new("--adapter-dim"),
        OsStr::new("8"),
        OsStr::new("--dtype"),
        OsStr::new("bf16"),
    ]);
    assert_code(&o, 0);
    let src = Model::open(&pesc).unwrap();
    let q = quantized(&pesc, &tmp.path().join("pq"), &[]);
    check_against_source(&src, &q, Nf4Options::default(), 14);
    let adapters = q.weights.tensors().filter(|t| t.name.contains(".moe_adapter.")).count();
    assert_eq!(adapters, 2 * (1 + 2 * 4));
    assert!(q.weights.tensors().filter(|t| t.name.contains(".moe_adapter.")).all(|t| t.dtype == pesc_tensor::DType::BF16));
    assert_eq!(q.quantization.clone().unwrap().compute_dtype, "bfloat16");

    let up = tmp.path().join("up");
    let o = run([
        OsStr::new("upcycle"),
        fixture("llama-gqa").as_os_str(),
        OsStr::new("-o"),
        up.as_os_str(),
        OsStr::new("--experts"),
        OsStr::new("2"),
        OsStr::new("--top-k"),
        OsStr::new("1"),
    ]);
    assert_code(&o, 0);
    let src = Model::open(&up).unwrap();
    let q = quantized(&up, &tmp.path().join("uq"), &[]);
    // transformers 5 with bitsandbytes quantizes only the attention of a Mixtral
    check_against_source(&src, &q, Nf4Options::default(), 8);
    assert!(q.nf4_weights().all(|(n, _)| n.contains(".self_attn.")));
}

#[test]
fn bad_nf4_flags_exit_2_and_write_nothing() {
    let tmp = tempdir().unwrap();
    let out = tmp.path().join("out");
    for (flags, needle) in [
        (&["--blocksize", "100"][..], "blocksize 100"),
        (&["--blocksize", "8192"][..], "blocksize 8192"),
        (&["--blocksize", "16"][..], "blocksize 16"),
        (&["--pure"][..], "--pure"),
    ] {
        assert_rejects(&quantize(&fixture("llama-gqa"), &out, flags), &[needle]);
        assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
    }
    let o = run([
        OsStr::new("quantize"),
        fixture("llama-gqa").as_os_str(),
        OsStr::new("--to"),
        OsStr::new("q8_0"),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("--no-double-quant"),
    ]);
    assert_rejects(&o, &["--no-double-quant"]);
    let o = quantize(&fixture("llama-gqa"), &out, &["--blocksize", "x"]);
    assert_code(&o, 2);
    assert!(!stderr(&o).contains("panicked"));
    assert!(entries(tmp.path()).is_empty());
}

// ---------------------------------------------------------------------------
// Hostile NF4 folders
// ---------------------------------------------------------------------------

struct Tensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn read_tensors(path: &Path) -> Vec<Tensor> {
    let bytes = std::fs::read(path).unwrap();
    let n = usize::try_from(u64::from_le_bytes(bytes[..8].try_into().unwrap())).unwrap();
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, e)| {
            let o: Vec<usize> = serde_json::from_value(e["data_offsets"].clone()).unwrap();
            Tensor {
                name,
                dtype: e["dtype"].as_str().unwrap().to_owned(),
                shape: serde_json::from_value(e["shape"].clone()).unwrap(),
                data: data[o[0]..o[1]].to_vec(),
            }
        })
        .collect()
}

fn write_tensors(path: &Path, tensors: &[Tensor]) {
    let mut header = Map::new();
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.data.len();
        header.insert(t.name.clone(), json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let header = Value::Object(header).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    std::fs::write(path, out).unwrap();
}

/// A valid NF4 folder (llama-gqa, double quant) at `TMP/model`, to break.
struct Nf4Folder {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Nf4Folder {
    fn new(extra: &[&str]) -> Self {
        let tmp = tempdir().unwrap();
        let made = tmp.path().join("made");
        assert_code(&quantize(&fixture("llama-gqa"), &made, extra), 0);
        let dir = tmp.path().join("model");
        copy_dir(&made, &dir);
        std::fs::remove_dir_all(&made).unwrap();
        Nf4Folder { _tmp: tmp, dir }
    }

    fn edit(&self, f: impl FnOnce(&mut Vec<Tensor>)) -> &Self {
        let path = self.dir.join("model.safetensors");
        let mut t = read_tensors(&path);
        f(&mut t);
        write_tensors(&path, &t);
        self
    }

    fn tensor<'a>(t: &'a mut [Tensor], name: &str) -> &'a mut Tensor {
        t.iter_mut().find(|x| x.name == name).unwrap_or_else(|| panic!("no {name}"))
    }

    fn edit_state(&self, weight: &str, f: impl FnOnce(&mut Map<String, Value>)) -> &Self {
        self.edit(|t| {
            let s = Self::tensor(t, &format!("{weight}.{QUANT_STATE}"));
            let mut v: Map<String, Value> = serde_json::from_slice(&s.data).unwrap();
            f(&mut v);
            s.data = Value::Object(v).to_string().into_bytes();
            s.shape = vec![s.data.len() as u64];
        })
    }

    fn edit_config(&self, f: impl FnOnce(&mut Map<String, Value>)) -> &Self {
        let path = self.dir.join("config.json");
        let mut v: Map<String, Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        self
    }

    /// `inspect` and `quantize --to q8_0 -o OUT` both refuse it with every needle; OUT is not written.
    #[track_caller]
    fn rejects(&self, needles: &[&str]) {
        assert_rejects(&run([OsStr::new("inspect"), self.dir.as_os_str()]), needles);
        let parent = self.dir.parent().unwrap();
        let out = parent.join("out.gguf");
        let o =
            run([OsStr::new("quantize"), self.dir.as_os_str(), OsStr::new("--to"), OsStr::new("q8_0"), OsStr::new("-o"), out.as_os_str()]);
        assert_rejects(&o, needles);
        assert_eq!(entries(parent), vec!["model".to_owned()]);
    }
}

#[test]
fn hostile_absmax_of_the_wrong_length() {
    Nf4Folder::new(&[])
        .edit(|t| {
            let a = Nf4Folder::tensor(t, &format!("{Q}.absmax"));
            a.data.pop();
            a.shape = vec![a.data.len() as u64];
        })
        .rejects(&["model.safetensors", Q, "absmax", "U8 [64]"]);
}

#[test]
fn hostile_weight_byte_count() {
    Nf4Folder::new(&["--no-double-quant"])
        .edit(|t| {
            let w = Nf4Folder::tensor(t, DOWN);
            w.data.truncate(w.data.len() - 2);
            w.shape = vec![w.data.len() as u64, 1];
        })
        .rejects(&[DOWN, "weight", "U8 [4096, 1]"]);
}

#[test]
fn hostile_quant_state_malformed_json() {
    Nf4Folder::new(&[])
        .edit(|t| {
            let s = Nf4Folder::tensor(t, &format!("{Q}.{QUANT_STATE}"));
            s.data.truncate(10);
            s.shape = vec![10];
        })
        .rejects(&[Q, "quant_state", "not valid JSON"]);
}

#[test]
fn hostile_quant_state_missing() {
    Nf4Folder::new(&[]).edit(|t| t.retain(|x| x.name != format!("{Q}.{QUANT_STATE}"))).rejects(&[Q, "quant_state", "is missing"]);
}

#[test]
fn hostile_quant_state_shape_mismatch() {
    Nf4Folder::new(&[]).edit_state(Q, |s| s["shape"] = json!([64, 32])).rejects(&[Q, "quant_state.shape", "[64, 32]", "[64, 64]"]);
}

#[test]
fn hostile_blocksize_not_a_power_of_two() {
    Nf4Folder::new(&[]).edit_state(Q, |s| s["blocksize"] = json!(96)).rejects(&[Q, "quant_state.blocksize", "96"]);
}

#[test]
fn hostile_quant_state_unknown_key_and_bad_dtype() {
    Nf4Folder::new(&[]).edit_state(Q, |s| _ = s.insert("extra".into(), json!(1))).rejects(&[Q, "quant_state.extra"]);
    Nf4Folder::new(&[]).edit_state(Q, |s| s["dtype"] = json!("int8")).rejects(&[Q, "quant_state.dtype"]);
    Nf4Folder::new(&[]).edit_state(Q, |s| s["nested_offset"] = json!("x")).rejects(&[Q, "quant_state.nested_offset"]);
}

#[test]
fn hostile_nested_pieces_missing_while_double_quant_claimed() {
    Nf4Folder::new(&[]).edit(|t| t.retain(|x| x.name != format!("{Q}.nested_absmax"))).rejects(&[Q, "nested_absmax", "is missing"]);
    Nf4Folder::new(&[]).edit_state(Q, |s| _ = s.remove("nested_offset")).rejects(&[Q, "quant_state.nested_offset", "is missing"]);
}

#[test]
fn hostile_double_quant_disagrees_with_config() {
    Nf4Folder::new(&[])
        .edit_config(|c| c["quantization_config"]["bnb_4bit_use_double_quant"] = json!(false))
        .rejects(&["bnb_4bit_use_double_quant false"]);
}

#[test]
fn hostile_quant_map_is_not_the_codebook() {
    Nf4Folder::new(&[]).edit(|t| Nf4Folder::tensor(t, &format!("{Q}.quant_map")).data[0] ^= 1).rejects(&[Q, "quant_map", "codebook"]);
}

#[test]
fn hostile_quantization_config() {
    Nf4Folder::new(&[])
        .edit_config(|c| c["quantization_config"]["quant_method"] = json!("gptq"))
        .rejects(&["quantization_config.quant_method", "gptq"]);
    Nf4Folder::new(&[])
        .edit_config(|c| c["quantization_config"]["bnb_4bit_quant_type"] = json!("fp4"))
        .rejects(&["bnb_4bit_quant_type", "fp4"]);
    Nf4Folder::new(&[]).edit_config(|c| _ = c.remove("quantization_config")).rejects(&["down_proj.weight", "no quantization_config"]);
}

#[test]
fn hostile_nan_in_nested_absmax_is_refused_when_read() {
    let f = Nf4Folder::new(&[]);
    f.edit(|t| Nf4Folder::tensor(t, &format!("{Q}.nested_absmax")).data.copy_from_slice(&f32::NAN.to_le_bytes()));
    let m = Model::open(&f.dir).unwrap();
    let e = m.read_f32(Q).unwrap_err().to_string();
    assert!(e.contains(Q) && e.contains("nested_absmax") && e.contains("NaN"), "{e}");
    let out = f.dir.parent().unwrap().join("l.safetensors");
    let o = run([OsStr::new("logits"), f.dir.as_os_str(), OsStr::new("--token-ids"), OsStr::new("1"), OsStr::new("-o"), out.as_os_str()]);
    assert_rejects(&o, &[Q, "nested_absmax"]);
    assert!(!out.exists());
}

#[test]
fn a_corrupt_weight_of_the_last_layer_fails_verify_without_a_report() {
    // The damage is found only when the streamed runner reaches layer 1: exit 2 naming the
    // tensor, no report on stdout (never a partial result presented as a pass).
    let f = Nf4Folder::new(&[]);
    let last = "model.layers.1.mlp.down_proj.weight";
    f.edit(|t| Nf4Folder::tensor(t, &format!("{last}.nested_absmax")).data.copy_from_slice(&f32::NAN.to_le_bytes()));
    std::fs::remove_file(f.dir.join("SHA256SUMS")).unwrap();
    let o = run([OsStr::new("verify"), f.dir.as_os_str(), OsStr::new("--against"), f.dir.as_os_str(), OsStr::new("--json")]);
    assert_rejects(&o, &[last, "nested_absmax"]);
    assert_eq!(stdout(&o), "");
}
