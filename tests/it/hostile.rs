//! Hostile inputs: one test per rule; each must exit 2 naming the file, tensor and field, and write nothing.
//!
//! Every bad input is built here, byte by byte or by editing a copy of a valid
//! fixture, and fed to the real binary: `inspect` for lone files, and both
//! `inspect` and `reshard -o OUT` for model folders (which must then leave
//! neither OUT nor a staging folder behind).

use crate::common::{assert_code, assert_rejects, copy_dir, entries, fixture, run, stderr, stdout};
use serde_json::{json, Map, Value};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;
use tempfile::{tempdir, TempDir};

// ---------------------------------------------------------------------------
// Byte builders
// ---------------------------------------------------------------------------

/// A safetensors file: the header's length as u64 LE, the header, the data.
fn st(header_json: &str, data: &[u8]) -> Vec<u8> {
    framed(header_json.len() as u64, header_json.as_bytes(), data)
}

/// A file whose length prefix is `declared`, whatever follows.
fn framed(declared: u64, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = declared.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// One tensor entry's JSON.
fn entry(dtype: &str, shape: &str, start: u64, end: u64) -> String {
    format!(r#"{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{start},{end}]}}"#)
}

/// A header holding one tensor, `layer.w`, with entry JSON `e`.
fn one(e: &str) -> String {
    format!(r#"{{"layer.w":{e}}}"#)
}

/// A header holding `layer.a` and `layer.b`.
fn two(a: &str, b: &str) -> String {
    format!(r#"{{"layer.a":{a},"layer.b":{b}}}"#)
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// Writes `bytes` to `dir/name`.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `pesc-convert inspect PATH`.
fn inspect(path: &Path) -> Output {
    run([OsStr::new("inspect"), path.as_os_str()])
}

/// Saves `bytes` as `x.safetensors` in a fresh folder and asserts that `inspect`
/// refuses it, naming the file and every needle.
#[track_caller]
fn rejects_st(bytes: &[u8], needles: &[&str]) {
    rejects_named("x.safetensors", bytes, needles);
}

/// As [`rejects_st`], with the file called `name`.
#[track_caller]
fn rejects_named(name: &str, bytes: &[u8], needles: &[&str]) {
    let tmp = tempdir().unwrap();
    let o = inspect(&write(tmp.path(), name, bytes));
    assert_rejects(&o, &[&[name][..], needles].concat());
}

/// Asserts that `inspect DIR` and `reshard DIR -o OUT` both refuse `dir` with
/// every needle, and that the failed reshard left nothing at OUT or beside it.
#[track_caller]
fn rejects_dir(dir: &Path, needles: &[&str]) {
    assert_rejects(&inspect(dir), needles);
    let parent = dir.parent().unwrap();
    let out = parent.join("out");
    let o = run([OsStr::new("reshard"), dir.as_os_str(), OsStr::new("-o"), out.as_os_str()]);
    assert_rejects(&o, needles);
    assert!(!out.exists(), "reshard left {} behind", out.display());
    let staging: Vec<String> = entries(parent).into_iter().filter(|e| e.starts_with(".out.pesc-staging-")).collect();
    assert!(staging.is_empty(), "reshard left staging folders: {staging:?}");
}

// ---------------------------------------------------------------------------
// Editing copies of the fixtures
// ---------------------------------------------------------------------------

/// A copy of a fixture model folder at `TMP/model`.
struct Model {
    tmp: TempDir,
    dir: PathBuf,
}

/// The sharded fixture's index and the names of its shards.
const INDEX: &str = "model.safetensors.index.json";
const SHARD1: &str = "model-00001-of-00004.safetensors";
const SHARD3: &str = "model-00003-of-00004.safetensors";
const SHARD4: &str = "model-00004-of-00004.safetensors";

/// One tensor of a safetensors file, decoded for rewriting.
struct Tensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

impl Model {
    fn copy_of(name: &str) -> Self {
        let tmp = tempdir().unwrap();
        let dir = tmp.path().join("model");
        copy_dir(&fixture(name), &dir);
        Model { tmp, dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Rewrites a JSON object file of the folder.
    fn edit_json(&self, file: &str, f: impl FnOnce(&mut Map<String, Value>)) {
        let path = self.path(file);
        let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(v.as_object_mut().unwrap());
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    /// Rewrites the index's `weight_map`.
    fn edit_weight_map(&self, f: impl FnOnce(&mut Map<String, Value>)) {
        self.edit_json(INDEX, |top| f(top["weight_map"].as_object_mut().unwrap()));
    }

    /// Rewrites a file of the folder as text.
    fn edit_text(&self, file: &str, f: impl FnOnce(String) -> String) {
        let path = self.path(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, f(text)).unwrap();
    }

    /// Rewrites a (valid) safetensors file of the folder, tensor by tensor.
    fn edit_weights(&self, file: &str, f: impl FnOnce(&mut Vec<Tensor>)) {
        let path = self.path(file);
        let mut tensors = read_tensors(&path);
        f(&mut tensors);
        std::fs::write(&path, encode(&tensors)).unwrap();
    }

    fn rejects(&self, needles: &[&str]) {
        rejects_dir(&self.dir, needles);
    }
}

/// Decodes a valid safetensors file (a fixture) into its tensors.
fn read_tensors(path: &Path) -> Vec<Tensor> {
    let bytes = std::fs::read(path).unwrap();
    let n = usize::try_from(u64::from_le_bytes(bytes[..8].try_into().unwrap())).unwrap();
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, e)| {
            let offsets: Vec<usize> = serde_json::from_value(e["data_offsets"].clone()).unwrap();
            Tensor {
                name,
                dtype: e["dtype"].as_str().unwrap().to_owned(),
                shape: serde_json::from_value(e["shape"].clone()).unwrap(),
                data: data[offsets[0]..offsets[1]].to_vec(),
            }
        })
        .collect()
}

/// Encodes tensors as a safetensors file, laid out in order.
fn encode(tensors: &[Tensor]) -> Vec<u8> {
    let mut header = Map::new();
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.data.len();
        header.insert(t.name.clone(), json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let data: Vec<u8> = tensors.iter().flat_map(|t| t.data.iter().copied()).collect();
    st(&Value::Object(header).to_string(), &data)
}

/// A small F32 tensor.
fn f32_tensor(name: &str, n: u64) -> Tensor {
    Tensor { name: name.into(), dtype: "F32".into(), shape: vec![n], data: vec![0; 4 * usize::try_from(n).unwrap()] }
}

const K_PROJ: &str = "model.layers.0.self_attn.k_proj.weight";

// ---------------------------------------------------------------------------
// Framing: the length prefix
// ---------------------------------------------------------------------------

#[test]
fn empty_file() {
    rejects_st(b"", &["0 bytes", "too small for a safetensors header"]);
}

#[test]
fn file_shorter_than_the_length_prefix() {
    for len in 1..8 {
        rejects_st(&vec![b'{'; len], &[&format!("file is {len} bytes"), "too small"]);
    }
}

#[test]
fn header_length_u64_max() {
    rejects_st(&framed(u64::MAX, b"{}", b""), &["header length 18446744073709551615", "exceeds the limit"]);
}

#[test]
fn header_length_beyond_the_file() {
    rejects_st(&framed(100, b"{}", b""), &["header length 100", "runs past the end of the file (10 bytes)"]);
}

#[test]
fn header_length_above_the_cap() {
    let declared = (16 << 20) + 1;
    rejects_st(&framed(declared, b"{}", b""), &["header length 16777217", "limit of 16777216 bytes"]);
}

// ---------------------------------------------------------------------------
// Header JSON
// ---------------------------------------------------------------------------

#[test]
fn header_not_utf8() {
    let bytes = framed(6, b"{\"\xff\xfe\":", b"");
    rejects_st(&bytes, &["header is not valid UTF-8", "byte 2"]);
}

#[test]
fn header_invalid_json() {
    rejects_st(&st(r#"{"layer.w": "#, b""), &["invalid JSON", "EOF while parsing"]);
}

#[test]
fn header_json_array() {
    rejects_st(&st("[]", b""), &["header is not a JSON object"]);
}

#[test]
fn duplicate_tensor_key() {
    let e = entry("F32", "[1]", 0, 4);
    rejects_st(&st(&format!(r#"{{"layer.w":{e},"layer.w":{e}}}"#), &[0; 4]), &["invalid JSON", "duplicate key `layer.w`"]);
}

#[test]
fn duplicate_metadata_key() {
    let h = r#"{"__metadata__":{"format":"pt"},"__metadata__":{"format":"pt"}}"#;
    rejects_st(&st(h, b""), &["duplicate key `__metadata__`"]);
}

#[test]
fn metadata_value_not_a_string() {
    rejects_st(&st(r#"{"__metadata__":{"format":1}}"#, b""), &["`__metadata__` value of `format` is a number, not a string"]);
}

// ---------------------------------------------------------------------------
// Tensor entries
// ---------------------------------------------------------------------------

#[test]
fn unknown_dtype() {
    rejects_st(&st(&one(&entry("F128", "[1]", 0, 16)), &[0; 16]), &["tensor `layer.w`", "field `dtype`", "\"F128\""]);
}

#[test]
fn lowercase_dtype() {
    rejects_st(&st(&one(&entry("f32", "[1]", 0, 4)), &[0; 4]), &["tensor `layer.w`", "field `dtype`", "unsupported value \"f32\""]);
}

#[test]
fn unknown_field_in_entry() {
    let e = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4],"strides":[1]}"#;
    rejects_st(&st(&one(e), &[0; 4]), &["tensor `layer.w`", "field `strides`", "is not a safetensors field"]);
}

#[test]
fn rank_above_eight() {
    let shape = format!("[{}]", ["1"; 9].join(","));
    rejects_st(
        &st(&one(&entry("F32", &shape, 0, 4)), &[0; 4]),
        &["tensor `layer.w`", "field `shape`", "9 dimensions, above the limit of 8"],
    );
}

#[test]
fn shape_dim_negative_or_fractional() {
    for dim in ["-1", "1.5"] {
        let h = one(&entry("F32", &format!("[{dim}]"), 0, 4));
        rejects_st(&st(&h, &[0; 4]), &["tensor `layer.w`", "field `shape`", &format!("holds {dim}, not a non-negative integer")]);
    }
}

#[test]
fn shape_product_overflows() {
    let h = one(&entry("U8", "[2, 18446744073709551614]", 0, 0));
    rejects_st(&st(&h, b""), &["tensor `layer.w`", "[2, 18446744073709551614]", "overflows a 64-bit byte count"]);
}

#[test]
fn byte_length_disagrees_with_dtype_and_shape() {
    rejects_st(&st(&one(&entry("F32", "[2]", 0, 4)), &[0; 4]), &["tensor `layer.w`", "data_offsets span 4 bytes but F32 [2] needs 8"]);
}

#[test]
fn end_before_start() {
    rejects_st(&st(&one(&entry("F32", "[1]", 8, 4)), &[0; 8]), &["tensor `layer.w`", "field `data_offsets`", "end 4 is before start 8"]);
}

#[test]
fn empty_tensor_name() {
    rejects_st(&st(&format!(r#"{{"":{}}}"#, entry("F32", "[1]", 0, 4)), &[0; 4]), &["invalid tensor name \"\": empty"]);
}

#[test]
fn tensor_name_with_nul() {
    let h = format!(r#"{{"layer\u0000w":{}}}"#, entry("F32", "[1]", 0, 4));
    rejects_st(&st(&h, &[0; 4]), &["invalid tensor name \"layer\\0w\"", "contains a NUL byte"]);
}

#[test]
fn tensor_name_too_long() {
    let h = format!(r#"{{"{}":{}}}"#, "n".repeat(1025), entry("F32", "[1]", 0, 4));
    rejects_st(&st(&h, &[0; 4]), &["invalid tensor name", "longer than 1024 bytes"]);
}

// ---------------------------------------------------------------------------
// Data layout
// ---------------------------------------------------------------------------

#[test]
fn overlapping_offsets() {
    let h = two(&entry("F32", "[2]", 0, 8), &entry("F32", "[2]", 4, 12));
    rejects_st(&st(&h, &[0; 12]), &["tensor `layer.b`", "starts at offset 4, expected 8", "overlaps the previous tensor"]);
}

#[test]
fn gap_between_tensors() {
    let h = two(&entry("F32", "[1]", 0, 4), &entry("F32", "[1]", 8, 12));
    rejects_st(&st(&h, &[0; 12]), &["tensor `layer.b`", "starts at offset 8, expected 4", "leaves a gap"]);
}

#[test]
fn trailing_bytes_after_last_tensor() {
    rejects_st(&st(&one(&entry("F32", "[1]", 0, 4)), &[0; 6]), &["2 trailing bytes after the last tensor"]);
}

#[test]
fn truncated_data() {
    rejects_st(&st(&one(&entry("F32", "[4]", 0, 16)), &[0; 4]), &["file is truncated"]);
}

/// The message must name the first tensor running past the end and give the
/// header's real total (here 8 + header + 32), not that tensor's end.
#[test]
fn truncated_data_names_the_tensor() {
    let h = two(&entry("F32", "[4]", 0, 16), &entry("F32", "[4]", 16, 32));
    let total = (8 + h.len() + 32).to_string();
    rejects_st(&st(&h, &[0; 8]), &["truncated", "tensor `layer.a`", &total]);
}

/// A valid header padded to 640 bytes starts with `80 02`, the opening bytes of
/// a protocol-2 pickle. Any other fault must still be reported as itself.
#[test]
fn pickle_sniffing_does_not_mask_real_errors() {
    let mut h = one(&entry("F32", "[1]", 0, 4));
    h.push_str(&" ".repeat(640 - h.len()));
    let bytes = st(&h, &[0; 6]);
    assert_eq!(bytes[..2], [0x80, 0x02]);
    rejects_st(&bytes, &["2 trailing bytes after the last tensor"]);
}

// ---------------------------------------------------------------------------
// Not safetensors at all
// ---------------------------------------------------------------------------

const LFS_OID: &str = "sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

#[test]
fn git_lfs_pointer() {
    let m = Model::copy_of("llama-gqa");
    let pointer = format!("version https://git-lfs.github.com/spec/v1\noid {LFS_OID}\nsize 460032\n");
    write(&m.dir, "model.safetensors", pointer.as_bytes());
    m.rejects(&["model.safetensors", "is a Git LFS pointer", LFS_OID, "460032 bytes", "git lfs pull"]);
}

#[test]
fn pickle_renamed_safetensors() {
    rejects_st(
        b"\x80\x02\x8a\x0alZ\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02}q\x00",
        &["PyTorch pickle (pickle protocol 2)", "refusing to open it"],
    );
}

#[test]
fn zip_renamed_safetensors() {
    rejects_st(b"PK\x03\x04\x00\x00\x08\x08\x00\x00archive/data.pkl", &["PyTorch pickle (zip archive", "refusing to open it"]);
}

#[test]
fn folder_with_only_pytorch_model_bin() {
    let m = Model::copy_of("llama-gqa");
    std::fs::remove_file(m.path("model.safetensors")).unwrap();
    write(&m.dir, "pytorch_model.bin", b"\x80\x02}q\x00.");
    m.rejects(&[
        "model",
        "pickled PyTorch weights (`pytorch_model.bin`)",
        "this tool never unpickles",
        "hint: convert them to safetensors",
    ]);
}

/// Weights are diagnosed before the config: a pickle-only download without
/// `config.json` must still get the pickle explanation, not "No such file".
#[test]
fn pickle_only_folder_without_config() {
    let tmp = tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "pytorch_model.bin", b"\x80\x02}q\x00.");
    rejects_dir(&dir, &["pickled PyTorch weights (`pytorch_model.bin`)", "never unpickles", "hint:"]);
}

/// Refused by its extension: the content here is a valid safetensors file, so
/// only a refusal that never looks inside can produce this message.
#[test]
fn bin_file_refused_without_opening() {
    let valid = st(&one(&entry("F32", "[1]", 0, 4)), &[0; 4]);
    rejects_named("x.bin", &valid, &["PyTorch pickle (`.bin` checkpoint)", "refusing to open it"]);
    // A path that does not exist is refused the same way, not with "No such file".
    let o = run(["inspect", "/nonexistent/weights.bin"]);
    assert_rejects(&o, &["weights.bin", "`.bin` checkpoint"]);
    assert!(!stderr(&o).contains("No such file"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------
// Shard indexes
// ---------------------------------------------------------------------------

#[test]
fn index_shard_name_with_parent_dir() {
    let m = Model::copy_of("llama-sharded");
    m.edit_weight_map(|wm| wm["lm_head.weight"] = json!(format!("../{SHARD4}")));
    m.rejects(&[INDEX, "tensor `lm_head.weight`", &format!("\"../{SHARD4}\""), "path separator"]);
}

#[test]
fn index_shard_name_absolute() {
    let m = Model::copy_of("llama-sharded");
    let abs = m.path(SHARD4).display().to_string();
    m.edit_weight_map(|wm| wm["lm_head.weight"] = json!(abs));
    m.rejects(&[INDEX, "tensor `lm_head.weight`", &format!("{abs:?}"), "is not allowed", "path separator"]);
}

#[test]
fn symlinked_shard_escaping_the_folder() {
    let m = Model::copy_of("llama-sharded");
    let outside = m.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::rename(m.path(SHARD1), outside.join(SHARD1)).unwrap();
    std::os::unix::fs::symlink(outside.join(SHARD1), m.path(SHARD1)).unwrap();
    m.rejects(&[SHARD1, "is a symlink to", "outside", "outside the model folder", "cp -L"]);
}

#[test]
fn index_names_missing_shard() {
    let m = Model::copy_of("llama-sharded");
    std::fs::remove_file(m.path(SHARD4)).unwrap();
    m.rejects(&[INDEX, &format!("shard `{SHARD4}`"), "listed for tensor `lm_head.weight`", "does not exist"]);
}

#[test]
fn index_entry_absent_from_its_shard() {
    let m = Model::copy_of("llama-sharded");
    m.edit_weight_map(|wm| {
        wm.insert("model.ghost.weight".into(), json!(SHARD1));
    });
    m.rejects(&[INDEX, "tensor `model.ghost.weight`", &format!("mapped to `{SHARD1}`, which does not contain it")]);
}

#[test]
fn shard_tensor_missing_from_index() {
    let m = Model::copy_of("llama-sharded");
    m.edit_weight_map(|wm| {
        wm.remove("model.norm.weight");
    });
    m.rejects(&[INDEX, "tensor `model.norm.weight`", SHARD3, "not listed in the index"]);
}

#[test]
fn same_tensor_in_two_shards() {
    let m = Model::copy_of("llama-sharded");
    m.edit_weights(SHARD4, |ts| ts.push(f32_tensor("model.norm.weight", 64)));
    m.rejects(&[INDEX, "tensor `model.norm.weight`", "stored in two shards", SHARD3, SHARD4]);
}

#[test]
fn index_without_weight_map() {
    let m = Model::copy_of("llama-sharded");
    m.edit_json(INDEX, |top| {
        top.remove("weight_map");
    });
    m.rejects(&[INDEX, "`weight_map` is missing or not an object"]);
}

#[test]
fn index_with_duplicate_keys() {
    let m = Model::copy_of("llama-sharded");
    let line = format!("\"lm_head.weight\": \"{SHARD4}\",\n");
    m.edit_text(INDEX, |text| {
        assert!(text.contains(&line), "fixture index changed layout");
        text.replacen(&line, &line.repeat(2), 1)
    });
    m.rejects(&[INDEX, "invalid JSON", "duplicate key `lm_head.weight`"]);
}

#[test]
fn folder_with_single_file_and_index() {
    let m = Model::copy_of("llama-sharded");
    std::fs::copy(fixture("llama-gqa").join("model.safetensors"), m.path("model.safetensors")).unwrap();
    m.rejects(&["model", "holds both `model.safetensors` and `model.safetensors.index.json`", "stale"]);
}

// ---------------------------------------------------------------------------
// config.json against the weights
// ---------------------------------------------------------------------------

#[test]
fn config_missing_hidden_size() {
    let m = Model::copy_of("llama-gqa");
    m.edit_json("config.json", |c| {
        c.remove("hidden_size");
    });
    m.rejects(&["config.json", "`hidden_size` is missing"]);
}

#[test]
fn config_kv_heads_do_not_divide_heads() {
    let m = Model::copy_of("llama-gqa");
    m.edit_json("config.json", |c| c["num_key_value_heads"] = json!(3));
    m.rejects(&["config.json", "`num_key_value_heads` 3 does not divide num_attention_heads 4"]);
}

#[test]
fn config_odd_head_dim() {
    // Rotary embeddings rotate pairs: an odd head size would leave a row of q and k unpaired.
    let m = Model::copy_of("llama-gqa");
    m.edit_json("config.json", |c| c["head_dim"] = json!(7));
    m.rejects(&["config.json", "`head_dim` 7 is odd"]);
    let m = Model::copy_of("llama-gqa");
    m.edit_json("config.json", |c| {
        c.remove("head_dim");
        c["num_attention_heads"] = json!(64);
        c["num_key_value_heads"] = json!(64);
    });
    m.rejects(&["config.json", "`num_attention_heads`", "head size of 1, which is odd"]);
}

#[test]
fn tensor_shape_contradicts_config() {
    let m = Model::copy_of("llama-gqa");
    m.edit_weights("model.safetensors", |ts| {
        let k = ts.iter_mut().find(|t| t.name == K_PROJ).unwrap();
        k.shape.reverse();
    });
    m.rejects(&["model.safetensors", &format!("tensor `{K_PROJ}` has shape [64, 32]"), "num_key_value_heads 2", "implies [32, 64]"]);
}

#[test]
fn tensor_implied_by_config_missing() {
    let m = Model::copy_of("llama-gqa");
    m.edit_weights("model.safetensors", |ts| ts.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight"));
    m.rejects(&["model", "tensor `model.layers.1.mlp.up_proj.weight` [128, 64], implied by config.json, is missing"]);
}

#[test]
fn unexpected_extra_tensor() {
    let m = Model::copy_of("llama-gqa");
    m.edit_weights("model.safetensors", |ts| ts.push(f32_tensor("model.layers.0.self_attn.extra.weight", 4)));
    m.rejects(&["model.safetensors", "tensor `model.layers.0.self_attn.extra.weight` is not part of a llama model"]);
}

#[test]
fn integer_weight_refused() {
    let m = Model::copy_of("llama-gqa");
    m.edit_weights("model.safetensors", |ts| {
        let norm = ts.iter_mut().find(|t| t.name == "model.norm.weight").unwrap();
        norm.dtype = "I32".into();
    });
    m.rejects(&["model.safetensors", "tensor `model.norm.weight` has dtype I32", "must be F32, F16 or BF16"]);
}

#[test]
fn unsupported_model_type() {
    let m = Model::copy_of("llama-gqa");
    m.edit_json("config.json", |c| {
        c["model_type"] = json!("gpt2");
        c["architectures"] = json!(["GPT2LMHeadModel"]);
    });
    m.rejects(&["config.json", "model_type `gpt2`", "GPT2LMHeadModel", "is not supported"]);
}

#[test]
fn absurd_layer_count() {
    let m = Model::copy_of("llama-gqa");
    m.edit_json("config.json", |c| c["num_hidden_layers"] = json!(1_000_000_000u64));
    m.rejects(&["config.json", "`num_hidden_layers` 1000000000 is above the limit of 10000"]);
}

// ---------------------------------------------------------------------------
// The file system
// ---------------------------------------------------------------------------

#[test]
fn unreadable_file() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempdir().unwrap();
    let path = write(tmp.path(), "x.safetensors", &st(&one(&entry("F32", "[1]", 0, 4)), &[0; 4]));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&path).is_ok() {
        // Running as root (or with CAP_DAC_OVERRIDE): mode 000 does not stop reads.
        return;
    }
    assert_rejects(&inspect(&path), &["x.safetensors", "Permission denied"]);
}

#[test]
fn directory_where_weights_file_expected() {
    let m = Model::copy_of("llama-gqa");
    std::fs::remove_file(m.path("model.safetensors")).unwrap();
    std::fs::create_dir(m.path("model.safetensors")).unwrap();
    m.rejects(&["model.safetensors", "not a regular file"]);
}

// ---------------------------------------------------------------------------
// Edge cases that are valid
// ---------------------------------------------------------------------------

/// A zero-size tensor sharing its offset with the next one, a rank-0 scalar and
/// whitespace around the header JSON are all legal safetensors.
#[test]
fn legal_edge_cases_accepted() {
    let empty = entry("F32", "[0, 3]", 0, 0);
    let scalar = entry("F32", "[]", 0, 4);
    let half = entry("BF16", "[2]", 4, 8);
    let h = format!("  \n{{ \"layer.empty\" : {empty},\n \"layer.scalar\": {scalar}, \"layer.half\":{half} }}\t\n  ");
    let tmp = tempdir().unwrap();
    let o = inspect(&write(tmp.path(), "x.safetensors", &st(&h, &[0; 8])));
    assert_code(&o, 0);
    assert!(stdout(&o).contains("tensors"), "{}", stdout(&o));
}

// ---------------------------------------------------------------------------
// Snapshot of the messages themselves
// ---------------------------------------------------------------------------

/// Turns a copy of a valid fixture folder into a bad one.
type Spoil = fn(&Path);

/// Escapes a literal for use in a regex.
fn regex_literal(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// Representative refusals, their stderr joined, with the temp folder redacted.
#[test]
fn messages_snapshot() {
    let tmp = tempdir().unwrap();
    let lone: [(&str, &str, Vec<u8>); 9] = [
        ("short file", "short.safetensors", b"abc".to_vec()),
        ("header too large", "huge.safetensors", framed(u64::MAX, b"{}", b"")),
        ("duplicate key", "dup.safetensors", st(&format!(r#"{{"a":{0},"a":{0}}}"#, entry("F32", "[1]", 0, 4)), &[0; 4])),
        ("unknown dtype", "dtype.safetensors", st(&one(&entry("F128", "[1]", 0, 16)), &[0; 16])),
        ("size mismatch", "size.safetensors", st(&one(&entry("F32", "[2]", 0, 4)), &[0; 4])),
        ("overlap", "overlap.safetensors", st(&two(&entry("F32", "[2]", 0, 8), &entry("F32", "[2]", 4, 12)), &[0; 12])),
        ("trailing bytes", "trailing.safetensors", st(&one(&entry("F32", "[1]", 0, 4)), &[0; 5])),
        ("pickle", "pickle.safetensors", b"\x80\x02}q\x00.".to_vec()),
        ("bin by name", "weights.bin", b"".to_vec()),
    ];
    let mut report = String::new();
    for (label, name, bytes) in &lone {
        let o = inspect(&write(tmp.path(), name, bytes));
        assert_code(&o, 2);
        report.push_str(&format!("== {label}\n{}", stderr(&o)));
    }
    let folders: [(&str, Spoil); 2] = [
        ("unsupported model_type", |dir| {
            let path = dir.join("config.json");
            let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            c["model_type"] = json!("gpt2");
            std::fs::write(&path, c.to_string()).unwrap();
        }),
        ("pickled folder", |dir| {
            std::fs::remove_file(dir.join("model.safetensors")).unwrap();
            write(dir, "pytorch_model.bin", b"\x80\x02.");
        }),
    ];
    for (i, (label, spoil)) in folders.iter().enumerate() {
        let dir = tmp.path().join(format!("model{i}"));
        copy_dir(&fixture("llama-gqa"), &dir);
        spoil(&dir);
        let o = inspect(&dir);
        assert_code(&o, 2);
        report.push_str(&format!("== {label}\n{}", stderr(&o)));
    }
    let tmp_path = regex_literal(&tmp.path().display().to_string());
    let canonical = regex_literal(&tmp.path().canonicalize().unwrap().display().to_string());
    insta::with_settings!({filters => vec![(tmp_path.as_str(), "[TMP]"), (canonical.as_str(), "[TMP]")]}, {
        insta::assert_snapshot!(report);
    });
}
