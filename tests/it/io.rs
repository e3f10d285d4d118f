//! Reading and writing checkpoint folders: inspect, reshard, manifests, atomicity, determinism.

use crate::common::{assert_code, assert_rejects, copy_dir, entries, fixture, run, sha256, stderr, stdout};
use pesc_io::Checkpoint;
use serde_json::Value;
use std::path::Path;

const FIXTURES: [&str; 5] = ["llama-gqa", "qwen2-bias", "mistral", "llama-sharded", "llama-tied"];

fn expected(name: &str) -> Value {
    let path = fixture("").join(format!("{name}.expected.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn inspect_json(path: &Path) -> Value {
    let o = run([Path::new("inspect"), path, Path::new("--json")]);
    assert_code(&o, 0);
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn inspect_reports_transformers_parameter_counts_exactly() {
    for name in FIXTURES {
        let got = inspect_json(&fixture(name));
        let want = expected(name);
        let cfg = &want["config"];
        assert_eq!(got["parameters"], want["num_parameters"], "{name}");
        assert_eq!(got["tensors"], want["num_tensors"], "{name}");
        assert_eq!(got["bytes"], want["total_tensor_bytes"], "{name}");
        assert_eq!(got["files"], want["num_weight_files"], "{name}");
        for (ours, theirs) in [
            ("num_layers", "num_hidden_layers"),
            ("hidden_size", "hidden_size"),
            ("num_attention_heads", "num_attention_heads"),
            ("num_key_value_heads", "num_key_value_heads"),
            ("intermediate_size", "intermediate_size"),
            ("vocab_size", "vocab_size"),
        ] {
            assert_eq!(got[ours], cfg[theirs], "{name}: {ours}");
        }
        assert_eq!(got["architecture"], want["model_type"], "{name}");
    }
}

#[test]
fn inspect_output_snapshots() {
    for name in FIXTURES {
        let table = run([Path::new("inspect"), &fixture(name)]);
        assert_code(&table, 0);
        insta::assert_snapshot!(format!("inspect_{name}"), stdout(&table));
        insta::assert_json_snapshot!(format!("inspect_{name}_json"), inspect_json(&fixture(name)));
    }
    let lone = run([Path::new("inspect"), &fixture("qwen2-bias").join("model.safetensors")]);
    assert_code(&lone, 0);
    insta::assert_snapshot!("inspect_lone_file", stdout(&lone));
}

/// Every tensor of `a` is in `b` with the same dtype, shape and bytes, and vice versa.
fn assert_same_tensors(a: &Path, b: &Path) {
    let (a, b) = (Checkpoint::open_dir(a).unwrap(), Checkpoint::open_dir(b).unwrap());
    let names = |c: &Checkpoint| c.tensors().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    for t in a.tensors() {
        let u = b.get(&t.name).unwrap();
        assert_eq!((t.dtype, &t.shape), (u.dtype, &u.shape), "{}", t.name);
        assert_eq!(a.read(&t.name).unwrap(), b.read(&t.name).unwrap(), "{}", t.name);
    }
}

#[test]
fn reshard_keeps_every_tensor_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    let o = run([Path::new("reshard"), &fixture("llama-sharded"), Path::new("-o"), &one]);
    assert_code(&o, 0);
    assert!(one.join("model.safetensors").is_file(), "{:?}", entries(&one));
    assert_same_tensors(&fixture("llama-sharded"), &one);

    let many = tmp.path().join("many");
    let o = run([Path::new("reshard"), &one, Path::new("-o"), &many, Path::new("--shard-size"), Path::new("40KB")]);
    assert_code(&o, 0);
    assert_same_tensors(&one, &many);
    let shards: Vec<String> = entries(&many).into_iter().filter(|n| n.ends_with(".safetensors")).collect();
    let n = shards.len();
    assert!(n >= 5, "{shards:?}");
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s, &format!("model-{:05}-of-{n:05}.safetensors", i + 1));
        let f = pesc_io::SafetensorsFile::open(&many.join(s)).unwrap();
        assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
        let data: u64 = f.tensors().iter().map(|t| t.nbytes).sum();
        assert!(data <= 40_000 || f.tensors().len() == 1, "{s}: {data} bytes");
        // Tensors are aligned to their element size.
        for t in f.tensors() {
            assert_eq!(t.offset % t.dtype.size(), 0, "{}", t.name);
        }
    }
    let index: Value = serde_json::from_slice(&std::fs::read(many.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], 304_000);
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 30);
}

#[test]
fn reshard_converts_dtype_and_records_it_in_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("f32");
    assert_code(&run([Path::new("reshard"), &fixture("llama-sharded"), Path::new("-o"), &out, Path::new("--dtype"), Path::new("f32")]), 0);
    let got = inspect_json(&out);
    assert_eq!(got["dtypes"], serde_json::json!({"F32": 152_000}));
    let config: Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float32");
    // bf16 -> f32 is exact: converting back gives the original bytes.
    let back = tmp.path().join("bf16");
    assert_code(&run([Path::new("reshard"), &out, Path::new("-o"), &back, Path::new("--dtype"), Path::new("bf16")]), 0);
    assert_same_tensors(&fixture("llama-sharded"), &back);
}

#[test]
fn outputs_are_byte_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("sub-b");
    for out in [&a, &b] {
        assert_code(
            &run([Path::new("reshard"), &fixture("llama-sharded"), Path::new("-o"), out, Path::new("--shard-size"), Path::new("100KB")]),
            0,
        );
    }
    let files = entries(&a);
    assert_eq!(files, entries(&b));
    for f in &files {
        assert_eq!(sha256(&a.join(f)), sha256(&b.join(f)), "{f} differs between runs");
    }
}

#[test]
fn manifest_matches_schema_and_sha256sums() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    assert_code(&run([Path::new("reshard"), &fixture("llama-tied"), Path::new("-o"), &out]), 0);
    let schema: Value = serde_json::from_str(include_str!("../../schemas/manifest.schema.json")).unwrap();
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("pesc-manifest.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&manifest).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(manifest["command"], "reshard");
    let listed: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(listed, ["config.json", "generation_config.json", "model.safetensors"]);
    let inputs: Vec<&str> = manifest["inputs"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(inputs, ["config.json", "generation_config.json", "model.safetensors"]);
    assert_eq!(manifest["inputs"][2]["sha256"], sha256(&fixture("llama-tied").join("model.safetensors")));
    // SHA256SUMS lists every other file in `sha256sum -c` format.
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for line in sums.lines() {
        let (hash, name) = line.split_once("  ").unwrap();
        assert_eq!(hash, sha256(&out.join(name)), "{name}");
    }
    assert_eq!(sums.lines().count(), 4);
}

#[test]
fn verify_manifest_detects_every_kind_of_change() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    assert_code(&run([Path::new("reshard"), &fixture("llama-gqa"), Path::new("-o"), &clean]), 0);
    let o = run([Path::new("verify-manifest"), &clean]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("ok: 3 files"), "{}", stdout(&o));

    let case = |name: &str, damage: &dyn Fn(&Path), code: i32, needle: &str| {
        let dir = tmp.path().join(name);
        copy_dir(&clean, &dir);
        damage(&dir);
        let o = run([Path::new("verify-manifest"), &dir]);
        assert_code(&o, code);
        assert!(stderr(&o).contains(needle), "{name}: {}", stderr(&o));
    };
    case(
        "flipped",
        &|d| {
            let p = d.join("model.safetensors");
            let mut b = std::fs::read(&p).unwrap();
            let last = b.len() - 1;
            b[last] ^= 1;
            std::fs::write(p, b).unwrap();
        },
        1,
        "`model.safetensors` has SHA-256",
    );
    case(
        "missing",
        &|d| std::fs::remove_file(d.join("generation_config.json")).unwrap(),
        1,
        "`generation_config.json` is listed in the manifest but missing",
    );
    case("extra", &|d| std::fs::write(d.join("notes.txt"), "x").unwrap(), 1, "`notes.txt` is in the folder but not in the manifest");
    case("sums", &|d| std::fs::write(d.join("SHA256SUMS"), format!("{}  config.json\n", "0".repeat(64))).unwrap(), 1, "`SHA256SUMS` says");
    case(
        "garbled",
        &|d| std::fs::write(d.join("pesc-manifest.json"), "{\"format_version\": 1, \"files\": 3}").unwrap(),
        2,
        "`files` is missing or not an array",
    );
}

#[test]
fn existing_output_is_refused_and_force_replaces_it_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "user data").unwrap();
    let o = run([Path::new("reshard"), &fixture("llama-gqa"), Path::new("-o"), &out]);
    assert_rejects(&o, &["already exists", "--force"]);
    assert_eq!(entries(&out), ["keep.txt"]);
    let o = run([Path::new("reshard"), &fixture("llama-gqa"), Path::new("-o"), &out, Path::new("--force")]);
    assert_code(&o, 0);
    assert!(!out.join("keep.txt").exists());
    assert_code(&run([Path::new("verify-manifest"), &out]), 0);
    assert_eq!(entries(tmp.path()), ["out"], "no staging or old folder left behind");
}

#[test]
fn output_inside_the_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    copy_dir(&fixture("llama-gqa"), &model);
    let before = entries(&model);
    for out in [model.clone(), model.join("out")] {
        let o = run([Path::new("reshard"), &model, Path::new("-o"), &out, Path::new("--force")]);
        assert_rejects(&o, &["input"]);
    }
    assert_eq!(entries(&model), before);
}

/// Writes a synthetic valid Llama folder big enough that writing it takes a while.
fn big_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 1024,
        "intermediate_size": 4096, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 8, "vocab_size": 8192, "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let cfg = pesc_hf::ModelConfig::parse(&dir.join("config.json"), config.to_string().as_bytes()).unwrap();
    let tensors: Vec<(String, Vec<u64>)> = cfg.expected_tensors().unwrap();
    let data: Vec<Vec<u8>> =
        tensors.iter().map(|(_, s)| vec![0x3c; usize::try_from(pesc_tensor::numel(s).unwrap() * 2).unwrap()]).collect();
    let list: Vec<(&str, pesc_tensor::DType, &[u64], &[u8])> =
        tensors.iter().zip(&data).map(|((n, s), d)| (n.as_str(), pesc_tensor::DType::BF16, s.as_slice(), d.as_slice())).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("model.safetensors")).unwrap());
    pesc_io::safetensors::write_all(&mut f, &list, &Default::default()).unwrap();
}

/// Starts a reshard of `model` into `out` and waits until its staging folder holds a weights file.
fn start_and_wait_for_staging(model: &Path, out: &Path) -> Option<std::process::Child> {
    let mut child = std::process::Command::new(crate::common::bin())
        .args([Path::new("reshard"), model, Path::new("-o"), out, Path::new("--shard-size"), Path::new("20MB")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let parent = out.parent().unwrap();
    for _ in 0..2000 {
        let mine = format!(".out.pesc-staging-{}-", child.id());
        let staging = entries(parent).into_iter().find(|n| n.starts_with(&mine));
        if let Some(s) = staging {
            if entries(&parent.join(s)).iter().any(|f| f.ends_with(".safetensors")) {
                return Some(child);
            }
        }
        if child.try_wait().unwrap().is_some() {
            return None; // finished before we caught it mid-write
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    panic!("no staging folder appeared");
}

#[test]
fn killed_or_interrupted_runs_leave_nothing_at_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    big_model(&model);
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = work.join("out");

    // SIGKILL mid-write: the target never appears; the staging folder stays until the next run.
    let mut caught = 0;
    for _ in 0..3 {
        if let Some(mut child) = start_and_wait_for_staging(&model, &out) {
            child.kill().unwrap();
            child.wait().unwrap();
            assert!(!out.exists(), "killed run published its output");
            caught += 1;
        }
    }
    assert!(caught > 0, "never caught a run mid-write");

    // SIGINT: exit 130 and the staging folder is removed.
    if let Some(child) = start_and_wait_for_staging(&model, &out) {
        std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(130));
        assert!(!out.exists());
    }

    // The next run completes and clears stale staging folders of dead processes.
    let o = run([Path::new("reshard"), &model, Path::new("-o"), &out]);
    assert_code(&o, 0);
    assert_eq!(entries(&work), ["out"]);
    assert_code(&run([Path::new("verify-manifest"), &out]), 0);
}

/// Runs `pesc-convert ARGS` with writes limited to `kib` KiB per file (`ulimit -f`), so that a
/// write fails mid-stream as on a full disk (EFBIG, with SIGXFSZ ignored).
fn run_with_file_limit(kib: u64, args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\" \"$@\""))
        .arg(crate::common::bin())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_write_that_fails_mid_stream_names_the_file_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-gqa");
    // A folder: the shard being written is named, not `<output>`.
    let out = tmp.path().join("out");
    let o = run_with_file_limit(64, &["reshard".as_ref(), model.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    assert_rejects(&o, &["out/model.safetensors", "File too large"]);
    // A GGUF file: the file is named.
    let gguf = tmp.path().join("model.gguf");
    let o = run_with_file_limit(
        64,
        &["quantize".as_ref(), model.as_os_str(), "--to".as_ref(), "f32".as_ref(), "-o".as_ref(), gguf.as_os_str()],
    );
    assert_rejects(&o, &["model.gguf", "File too large"]);
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "nothing left: no output, no staging");
}
