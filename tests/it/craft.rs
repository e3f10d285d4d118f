//! `craft` (dense -> PESC) and `upcycle` (dense -> Mixtral).

use crate::common::{assert_code, assert_rejects, entries, fixture, run, sha256, stdout};
use pesc_io::Checkpoint;
use pesc_tensor::{to_f32, DType};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn craft(dense: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<std::ffi::OsString> = vec!["craft".into(), dense.into(), "-o".into(), out.into()];
    for a in ["--experts", "4", "--top-k", "2", "--adapter-dim", "8"].iter().chain(extra) {
        args.push(a.into());
    }
    run(args)
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn floats(ck: &Checkpoint, name: &str) -> Vec<f32> {
    let t = ck.get(name).unwrap_or_else(|| panic!("no {name}"));
    to_f32(t.dtype, &ck.read(name).unwrap()).unwrap()
}

#[test]
fn craft_keeps_dense_tensors_and_adds_zero_adapters() {
    for name in ["llama-gqa", "qwen2-bias", "mistral", "llama-sharded", "llama-tied"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("pesc");
        assert_code(&craft(&fixture(name), &out, &[]), 0);
        let dense = Checkpoint::open_dir(&fixture(name)).unwrap();
        let pesc = Checkpoint::open_dir(&out).unwrap();
        for t in dense.tensors() {
            let u = pesc.get(&t.name).unwrap();
            assert_eq!((t.dtype, &t.shape), (u.dtype, &u.shape), "{name}: {}", t.name);
            assert_eq!(dense.read(&t.name).unwrap(), pesc.read(&t.name).unwrap(), "{name}: {} changed", t.name);
        }
        let layers = json(&fixture(name).join("config.json"))["num_hidden_layers"].as_u64().unwrap();
        let (n, h, a) = (4u64, 64u64, 8u64);
        let bound = 1.0 / (h as f32).sqrt();
        let embed_dtype = dense.get("model.embed_tokens.weight").unwrap().dtype;
        for l in 0..layers {
            let router = floats(&pesc, &format!("model.layers.{l}.mlp.moe_adapter.router.weight"));
            assert_eq!(router.len() as u64, n * h);
            assert!(router.iter().all(|v| v.abs() <= bound) && router.iter().any(|v| *v != 0.0));
            for j in 0..n {
                let p = format!("model.layers.{l}.mlp.moe_adapter.experts.expert_{j}");
                let up = pesc.get(&format!("{p}.adapter_up.weight")).unwrap();
                assert_eq!((up.shape.as_slice(), up.dtype), ([h, a].as_slice(), embed_dtype));
                assert!(floats(&pesc, &format!("{p}.adapter_up.weight")).iter().all(|v| *v == 0.0));
                let down = floats(&pesc, &format!("{p}.adapter_down.weight"));
                assert_eq!(pesc.get(&format!("{p}.adapter_down.weight")).unwrap().shape, [a, h]);
                assert!(down.iter().all(|v| v.abs() <= bound) && down.iter().any(|v| *v != 0.0));
            }
        }
        // dense + L * (N * 2 * H * A + N * H)
        let dense_params: u64 = dense.tensors().map(pesc_io::TensorInfo::numel).sum();
        let pesc_params: u64 = pesc.tensors().map(pesc_io::TensorInfo::numel).sum();
        assert_eq!(pesc_params, dense_params + layers * (n * 2 * h * a + n * h), "{name}");
        let o = run([Path::new("inspect"), &out, Path::new("--json")]);
        assert_code(&o, 0);
        let info: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(info["parameters"], pesc_params);
        assert_eq!(info["active_parameters"], pesc_params - layers * 2 * (2 * h * a));
        assert_eq!((info["num_experts"].as_u64(), info["top_k"].as_u64(), info["adapter_dim"].as_u64()), (Some(4), Some(2), Some(8)));
    }
}

#[test]
fn craft_config_has_the_pesc_keys_and_matches_the_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let schema: Value = serde_json::from_str(include_str!("../../schemas/pesc-config.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for (name, model_type, base) in
        [("llama-gqa", "camelidae", "llama"), ("qwen2-bias", "qwen2idae", "qwen2"), ("mistral", "camelidae", "mistral")]
    {
        let out = tmp.path().join(name);
        assert_code(&craft(&fixture(name), &out, &["--scaling", "0.5"]), 0);
        let c = json(&out.join("config.json"));
        let errors: Vec<String> = validator.iter_errors(&c).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        assert_eq!(c["model_type"], model_type);
        assert_eq!(c["pesc_base_model_type"], base);
        assert_eq!((c["num_experts"].as_u64(), c["topk"].as_u64(), c["adapter_dim"].as_u64()), (Some(4), Some(2), Some(8)));
        assert_eq!(c["moe_scaling"], 0.5);
        assert_eq!(c["output_router_logits"], false);
        // Everything else of the dense config is kept.
        let dense = json(&fixture(name).join("config.json"));
        for (k, v) in dense.as_object().unwrap() {
            if !["model_type", "architectures"].contains(&k.as_str()) {
                assert_eq!(&c[k], v, "{name}: {k}");
            }
        }
        assert!(out.join("generation_config.json").is_file());
    }
    // A config that breaks the schema is caught by it.
    let mut bad = json(&tmp.path().join("llama-gqa/config.json"));
    bad["topk"] = Value::from(0);
    assert!(!validator.is_valid(&bad));
}

#[test]
fn craft_is_reproducible_per_seed() {
    let tmp = tempfile::tempdir().unwrap();
    // Same folder name in different places: the model card names the output by its folder name.
    let outs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| tmp.path().join(n).join("pesc")).collect();
    outs.iter().for_each(|o| std::fs::create_dir(o.parent().unwrap()).unwrap());
    assert_code(&craft(&fixture("llama-sharded"), &outs[0], &["--seed", "7", "--shard-size", "100KB"]), 0);
    assert_code(&craft(&fixture("llama-sharded"), &outs[1], &["--seed", "7", "--shard-size", "100KB"]), 0);
    assert_code(&craft(&fixture("llama-sharded"), &outs[2], &["--seed", "8", "--shard-size", "100KB"]), 0);
    let files = entries(&outs[0]);
    assert!(files.iter().filter(|f| f.ends_with(".safetensors")).count() > 1, "{files:?}");
    for f in &files {
        assert_eq!(sha256(&outs[0].join(f)), sha256(&outs[1].join(f)), "{f} differs for the same seed");
    }
    let weights = |o: &Path| Checkpoint::open_dir(o).unwrap().read("model.layers.0.mlp.moe_adapter.router.weight").unwrap();
    assert_eq!(weights(&outs[0]), weights(&outs[1]));
    assert_ne!(weights(&outs[0]), weights(&outs[2]), "another seed gives other routers");
}

#[test]
fn craft_converts_dtype_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bf16");
    assert_code(&craft(&fixture("llama-gqa"), &out, &["--dtype", "bf16"]), 0);
    let ck = Checkpoint::open_dir(&out).unwrap();
    assert!(ck.tensors().all(|t| t.dtype == DType::BF16));
    assert_eq!(json(&out.join("config.json"))["dtype"], "bfloat16");
}

#[test]
fn model_card_has_hub_metadata_and_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("card");
    assert_code(&craft(&fixture("llama-gqa"), &out, &[]), 0);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    let front = card.strip_prefix("---\n").unwrap().split("\n---\n").next().unwrap();
    assert!(front.contains("base_model: \"llama-gqa\""), "{front}");
    assert!(front.contains("base_model_relation: merge"));
    assert!(front.contains("- moe") && front.contains("- pesc"));
    assert!(card.contains("| total parameters | 123,712 |"), "{card}");
    assert!(card.contains("| activated per token | 119,616 |"), "{card}");
    assert!(card.contains("pesc-convert craft llama-gqa -o card --experts 4 --top-k 2 --adapter-dim 8 --scaling 0.25 --seed 0 --dtype keep --shard-size 5000000000"), "{card}");
    assert_code(&run([Path::new("verify-manifest"), &out]), 0);
}

#[test]
fn indexed_expert_naming_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pesc");
    assert_code(&craft(&fixture("llama-gqa"), &out, &[]), 0);
    // Rewrite as a sparsetral-style folder: `experts.{j}.` instead of `experts.expert_{j}.`.
    let ck = Checkpoint::open_dir(&out).unwrap();
    let renamed: Vec<(String, DType, Vec<u64>, Vec<u8>)> = ck
        .tensors()
        .map(|t| (t.name.replace(".experts.expert_", ".experts."), t.dtype, t.shape.clone(), ck.read(&t.name).unwrap()))
        .collect();
    let variant = tmp.path().join("indexed");
    std::fs::create_dir(&variant).unwrap();
    std::fs::copy(out.join("config.json"), variant.join("config.json")).unwrap();
    let list: Vec<_> = renamed.iter().map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice())).collect();
    let mut f = std::fs::File::create(variant.join("model.safetensors")).unwrap();
    pesc_io::safetensors::write_all(&mut f, &list, &Default::default()).unwrap();
    let o = run([Path::new("inspect"), &variant, Path::new("--json")]);
    assert_code(&o, 0);
    let info: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(info["architecture"], "pesc-llama");
    assert_eq!(info["num_experts"], 4);
    // Crafting it again is refused: it is already PESC.
    assert_rejects(&craft(&variant, &tmp.path().join("again"), &[]), &["already a PESC llama model"]);
}

#[test]
fn upcycle_copies_the_ffn_into_every_expert() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mixtral");
    let o = run([
        Path::new("upcycle"),
        &fixture("llama-sharded"),
        Path::new("-o"),
        &out,
        Path::new("--experts"),
        Path::new("3"),
        Path::new("--top-k"),
        Path::new("2"),
    ]);
    assert_code(&o, 0);
    let dense = Checkpoint::open_dir(&fixture("llama-sharded")).unwrap();
    let moe = Checkpoint::open_dir(&out).unwrap();
    for l in 0..3 {
        for (w, proj) in [("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")] {
            let src = dense.read(&format!("model.layers.{l}.mlp.{proj}.weight")).unwrap();
            for j in 0..3 {
                assert_eq!(moe.read(&format!("model.layers.{l}.block_sparse_moe.experts.{j}.{w}.weight")).unwrap(), src);
            }
            assert!(moe.get(&format!("model.layers.{l}.mlp.{proj}.weight")).is_none());
        }
        assert_eq!(moe.get(&format!("model.layers.{l}.block_sparse_moe.gate.weight")).unwrap().shape, [3, 64]);
    }
    let c = json(&out.join("config.json"));
    assert_eq!(
        (c["model_type"].as_str(), c["num_local_experts"].as_u64(), c["num_experts_per_tok"].as_u64()),
        (Some("mixtral"), Some(3), Some(2))
    );
    assert_eq!(c["architectures"][0], "MixtralForCausalLM");
    let info: Value = serde_json::from_str(&stdout(&run([Path::new("inspect"), &out, Path::new("--json")]))).unwrap();
    assert_eq!(info["architecture"], "mixtral");
    assert_eq!(info["parameters"], 152_000 + 3 * (2 * 3 * 64 * 128 + 3 * 64));
}

#[test]
fn bad_craft_requests_exit_2_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let gqa = fixture("llama-gqa");
    let cases: [(&[&str], &str); 5] = [
        (&["--experts", "2", "--top-k", "3", "--adapter-dim", "8"], "--top-k 3 must be between 1 and --experts 2"),
        (&["--experts", "0", "--top-k", "1", "--adapter-dim", "8"], "--experts must be at least 1"),
        (&["--experts", "4", "--top-k", "2", "--adapter-dim", "0"], "--adapter-dim must be at least 1"),
        (&["--experts", "4", "--top-k", "2", "--adapter-dim", "65"], "above the hidden size 64"),
        (&["--experts", "4", "--top-k", "0", "--adapter-dim", "8"], "--top-k 0 must be between 1"),
    ];
    for (flags, needle) in cases {
        let mut args: Vec<std::ffi::OsString> = vec!["craft".into(), gqa.clone().into(), "-o".into(), out.clone().into()];
        args.extend(flags.iter().map(Into::into));
        assert_rejects(&run(args), &[needle]);
        assert!(entries(tmp.path()).is_empty(), "{needle}: {:?}", entries(tmp.path()));
    }
    // --force allows the wide adapter.
    let wide = ["-o", "out", "--experts", "4", "--top-k", "2", "--adapter-dim", "65", "--force"];
    let o = std::process::Command::new(crate::common::bin()).current_dir(tmp.path()).arg("craft").arg(&gqa).args(wide).output().unwrap();
    assert_code(&o, 0);
    let mixtral = tmp.path().join("mixtral");
    assert_code(
        &run([
            Path::new("upcycle"),
            &gqa,
            Path::new("-o"),
            &mixtral,
            Path::new("--experts"),
            Path::new("2"),
            Path::new("--top-k"),
            Path::new("1"),
        ]),
        0,
    );
    let dense = tmp.path().join("dense");
    crate::common::copy_dir(&gqa, &dense);
    let before = entries(tmp.path());
    for (src, needle) in [(&out, "already a PESC llama model"), (&mixtral, "already a Mixtral model")] {
        assert_rejects(&craft(src, &tmp.path().join("x"), &[]), &[needle]);
        let o = run([
            Path::new("upcycle"),
            src.as_path(),
            Path::new("-o"),
            &tmp.path().join("y"),
            Path::new("--experts"),
            Path::new("2"),
            Path::new("--top-k"),
            Path::new("1"),
        ]);
        assert_rejects(&o, &[needle]);
    }
    let o = run([
        Path::new("upcycle"),
        &fixture("qwen2-bias"),
        Path::new("-o"),
        &tmp.path().join("q"),
        Path::new("--experts"),
        Path::new("2"),
        Path::new("--top-k"),
        Path::new("1"),
    ]);
    assert_rejects(&o, &["biases", "use `craft`"]);
    assert_rejects(&craft(&dense, &dense.join("inner"), &[]), &["is the input"]);
    assert_rejects(&craft(&dense, &dense, &["--force"]), &["is the input"]);
    assert_eq!(entries(&dense), entries(&gqa));
    assert_eq!(entries(tmp.path()), before, "a refused run wrote something");
}

#[test]
fn pesc_folders_carry_their_modeling_code() {
    // Every PESC folder the tool writes: craft, reshard, NF4, import-gguf of a `pesc` GGUF, merge-lora.
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name);
    let s = |path: &std::path::Path| path.to_str().unwrap().to_owned();
    let (base, qwen) = (fixture("llama-gqa"), fixture("qwen2-bias"));
    let craft = |src: &std::path::Path, out: &std::path::Path| {
        assert_code(&run(["craft", &s(src), "-o", &s(out), "--experts", "4", "--top-k", "2", "--adapter-dim", "8"]), 0);
    };
    craft(&base, &p("pesc"));
    craft(&qwen, &p("pesc-qwen2"));
    assert_code(&run(["reshard", &s(&p("pesc")), "-o", &s(&p("resharded")), "--dtype", "bf16"]), 0);
    assert_code(&run(["quantize", &s(&p("pesc")), "--to", "nf4", "-o", &s(&p("nf4"))]), 0);
    assert_code(&run(["quantize", &s(&p("pesc")), "--to", "f32", "-o", &s(&p("pesc.gguf"))]), 0);
    assert_code(&run(["import-gguf", &s(&p("pesc.gguf")), "-o", &s(&p("imported"))]), 0);
    // A dense folder gets none.
    assert_code(&run(["reshard", &s(&base), "-o", &s(&p("dense"))]), 0);
    assert!(!p("dense").join("modeling_pesc.py").exists());
    assert!(
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(p("dense").join("config.json")).unwrap()).unwrap()["auto_map"].is_null()
    );

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/pesc_hf");
    for (folder, stem) in [("pesc", "Llama"), ("pesc-qwen2", "Qwen2"), ("resharded", "Llama"), ("nf4", "Llama"), ("imported", "Llama")] {
        let dir = p(folder);
        for file in ["configuration_pesc.py", "modeling_pesc.py"] {
            assert_eq!(std::fs::read(dir.join(file)).unwrap(), std::fs::read(root.join(file)).unwrap(), "{folder}: {file}");
            let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
            assert!(sums.contains(file), "{folder}: {file} is not in SHA256SUMS");
        }
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["auto_map"]["AutoConfig"], format!("configuration_pesc.Pesc{stem}Config"), "{folder}");
        assert_eq!(config["auto_map"]["AutoModelForCausalLM"], format!("modeling_pesc.Pesc{stem}ForCausalLM"), "{folder}");
    }
    let card = std::fs::read_to_string(p("pesc").join("README.md")).unwrap();
    assert!(card.contains("trust_remote_code=True"), "{card}");
    assert_code(&run(["verify-manifest", &s(&p("pesc"))]), 0);
}
