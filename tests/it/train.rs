//! The trainer: gradients against finite differences, learning, resuming,
//! the run folder, and bad input.

use crate::common::{assert_code, assert_rejects, fixture, run, stderr};
use candle_core::{DType, Device, Tensor, Var};
use pesc_train::{Example, TrainModel, TrainOptions};
use std::path::{Path, PathBuf};

/// Crafts `llama-gqa` (2 layers, hidden 64) into 4 experts, top-2, adapter 8.
fn crafted(dir: &Path) -> PathBuf {
    let out = dir.join("pesc");
    let o = run([
        "craft".as_ref(),
        fixture("llama-gqa").as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--experts".as_ref(),
        "4".as_ref(),
        "--top-k".as_ref(),
        "2".as_ref(),
        "--adapter-dim".as_ref(),
        "8".as_ref(),
    ]);
    assert_code(&o, 0);
    out
}

/// Pre-tokenized records: a class token selects the response, which follows a fixed pattern.
fn pattern_data(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        let c = u32::try_from(i % 4).unwrap();
        let ids: Vec<u32> = [1, 10 + c, 5].into_iter().chain((0..8).map(|k| 20 + c * 10 + k)).collect();
        let labels: Vec<i64> = ids.iter().enumerate().map(|(j, &t)| if j < 3 { -100 } else { i64::from(t) }).collect();
        s.push_str(&serde_json::json!({ "input_ids": ids, "labels": labels }).to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Deterministic pseudo-random values in [-scale, scale).
fn noise(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            #[allow(clippy::cast_precision_loss)]
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            scale * (2.0 * u - 1.0)
        })
        .collect()
}

/// The tiny model in f64 with every trainable tensor (adapters' zero `up` and LoRA's zero `B` included) set to noise.
fn model_f64(dir: &Path) -> TrainModel {
    model_f64_with(dir, false)
}

fn model_f64_with(dir: &Path, gradient_checkpointing: bool) -> TrainModel {
    let weights = pesc_model::Weights::open(&crafted(dir)).unwrap();
    let opts = TrainOptions {
        lora_r: 4,
        lora_alpha: 8.0,
        dtype: DType::F64,
        aux_loss_coef: 0.01,
        gradient_checkpointing,
        ..TrainOptions::default()
    };
    let m = TrainModel::load(&weights, opts, &Device::Cpu).unwrap();
    for (i, (_, v)) in m.params().iter().enumerate() {
        let t = Tensor::from_vec(noise(v.elem_count(), i as u64, 0.3), v.dims(), &Device::Cpu).unwrap();
        v.set(&t).unwrap();
    }
    m
}

fn examples() -> Vec<Example> {
    let mk = |ids: Vec<u32>, from: usize| Example {
        labels: ids.iter().enumerate().map(|(j, &t)| if j < from { -100 } else { i64::from(t) }).collect(),
        input_ids: ids,
        line: 1,
        source: None,
    };
    vec![mk(vec![1, 7, 99, 4, 250, 31, 8], 3), mk(vec![1, 12, 13, 14, 15], 2)]
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Compares d(loss)/d(param) at a few elements of each named tensor with central differences.
fn check_gradients(which: &dyn Fn(&TrainModel, &[&Example]) -> Tensor, names: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let m = model_f64(dir.path());
    let ex = examples();
    let batch: Vec<&Example> = ex.iter().collect();
    let grads = which(&m, &batch).backward().unwrap();
    for name in names {
        let (_, var): &(String, Var) = m.params().iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no trainable `{name}`"));
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for `{name}`"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let n = base.len();
        for &i in &[0, n / 3, n / 2, n - 1] {
            let eps = 1e-6;
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap()).unwrap();
                scalar(&which(&m, &batch))
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu).unwrap()).unwrap();
            let err = (fd - g[i]).abs();
            assert!(err <= 1e-6 + 1e-5 * fd.abs().max(g[i].abs()), "`{name}`[{i}]: autograd {} finite difference {fd}", g[i]);
        }
        assert!(g.iter().any(|x| x.abs() > 1e-8), "`{name}`: all-zero gradient");
    }
}

fn total(m: &TrainModel, b: &[&Example]) -> Tensor {
    let o = m.forward(b, None).unwrap();
    (o.ce + o.aux).unwrap()
}

#[test]
fn adapter_router_and_lora_gradients_match_finite_differences() {
    check_gradients(
        &total,
        &[
            "model.layers.0.mlp.moe_adapter.experts.expert_1.adapter_down.weight",
            "model.layers.1.mlp.moe_adapter.experts.expert_2.adapter_up.weight",
            "model.layers.0.mlp.moe_adapter.router.weight",
            "model.layers.1.mlp.moe_adapter.router.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
            "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight",
            "base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight",
        ],
    );
}

#[test]
fn balancing_loss_gradient_matches_finite_differences() {
    let aux = |m: &TrainModel, b: &[&Example]| m.forward(b, None).unwrap().aux;
    check_gradients(&aux, &["model.layers.0.mlp.moe_adapter.router.weight", "model.layers.1.mlp.moe_adapter.router.weight"]);
}

#[test]
fn gradient_checkpointing_gives_the_same_losses_and_gradients() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (plain, ckpt) = (model_f64_with(d1.path(), false), model_f64_with(d2.path(), true));
    let ex = examples();
    let batch: Vec<&Example> = ex.iter().collect();
    // With dropout (a key): the recomputed layers must draw the same masks.
    let a = plain.forward_backward(&batch, Some(7), 0.5).unwrap();
    let b = ckpt.forward_backward(&batch, Some(7), 0.5).unwrap();
    assert!((a.ce - b.ce).abs() < 1e-12 && (a.aux - b.aux).abs() < 1e-12, "{} {} / {} {}", a.ce, a.aux, b.ce, b.aux);
    assert_eq!(a.load, b.load);
    assert_eq!(a.grads.len(), plain.params().len());
    for ((name, _), (ga, gb)) in plain.params().iter().zip(a.grads.iter().zip(&b.grads)) {
        let (ga, gb) = (ga.as_ref().unwrap(), gb.as_ref().unwrap());
        let scale = ga.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        let diff = (ga - gb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(scale > 0.0, "{name}: zero gradient");
        assert!(diff <= 1e-10 * (1.0 + scale), "{name}: gradients differ by {diff} (scale {scale})");
    }
}

#[test]
fn crafted_model_loss_equals_the_runner() {
    // With zero adapters the training forward computes the runner's logits: compare the loss.
    let dir = tempfile::tempdir().unwrap();
    let path = crafted(dir.path());
    let weights = pesc_model::Weights::open(&path).unwrap();
    let opts = TrainOptions { lora_r: 0, dtype: DType::F32, ..TrainOptions::default() };
    let m = TrainModel::load(&weights, opts, &Device::Cpu).unwrap();
    let ex = &examples()[0];
    let ours = m.forward(&[ex], None).unwrap().ce.to_scalar::<f32>().unwrap();
    let runner = pesc_runner::Runner::load(&weights, pesc_runner::ComputeDType::F32, &Device::Cpu).unwrap();
    let logits = runner.forward(&ex.input_ids, &mut pesc_runner::Cache::default()).unwrap().logits.to_vec2::<f32>().unwrap();
    let mut sum = 0.0f64;
    let mut n = 0.0;
    for (row, &label) in logits.iter().zip(&ex.labels[1..]) {
        let Ok(t) = usize::try_from(label) else {
            continue;
        };
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let lse = f64::from(max) + row.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>().ln();
        sum += lse - f64::from(row[t]);
        n += 1.0;
    }
    assert!((f64::from(ours) - sum / n).abs() < 1e-4, "trainer {ours}, runner {}", sum / n);
}

fn train_args(pesc: &Path, data: &Path, out: &Path, steps: &str, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> =
        vec!["train".into(), pesc.into(), "--data".into(), data.into(), "-o".into(), out.into(), "--steps".into(), steps.into()];
    v.extend(["--batch-size", "4", "--lr", "1e-2", "--lora-r", "8", "--seed", "1"].iter().map(Into::into));
    v.extend(extra.iter().map(Into::into));
    v
}

/// Two run folders hold the same metrics and trained tensors, byte for byte.
#[track_caller]
fn assert_same_results(a: &Path, b: &Path) {
    for f in ["metrics.jsonl", "adapter_model.safetensors", "moe_model.safetensors"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f} differs");
    }
}

fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn loss_falls_on_a_learnable_pattern_and_the_run_folder_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let pesc = crafted(dir.path());
    let data = dir.path().join("data.jsonl");
    pattern_data(&data, 32);
    let out = dir.path().join("run");
    assert_code(&run(train_args(&pesc, &data, &out, "60", &[])), 0);
    let m = metrics(&out);
    assert_eq!(m.len(), 60);
    let loss = |i: usize| m[i]["loss"].as_f64().unwrap();
    let late: f64 = (55..60).map(loss).sum::<f64>() / 5.0;
    assert!(late < loss(0) - 0.8, "loss {} -> {late}", loss(0));
    let aux: Vec<f64> = m.iter().map(|x| x["aux_loss"].as_f64().unwrap()).collect();
    let spread = aux.iter().copied().fold(f64::MIN, f64::max) - aux.iter().copied().fold(f64::MAX, f64::min);
    assert!(spread > 1e-4, "the balancing loss does not vary: {aux:?}");
    assert_eq!(m[0]["expert_load"].as_array().unwrap().len(), 2);
    for f in ["adapter_config.json", "adapter_model.safetensors", "moe_model.safetensors", "checkpoint"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    let lora = pesc_io::SafetensorsFile::open(&out.join("adapter_model.safetensors")).unwrap();
    assert!(lora.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").is_some());
    let moe = pesc_io::SafetensorsFile::open(&out.join("moe_model.safetensors")).unwrap();
    assert_eq!(moe.tensors().len(), 2 * (1 + 4 * 2));
}

#[test]
fn a_run_with_gradient_checkpointing_equals_the_plain_run() {
    let dir = tempfile::tempdir().unwrap();
    let pesc = crafted(dir.path());
    let data = dir.path().join("data.jsonl");
    pattern_data(&data, 8);
    let (plain, ckpt) = (dir.path().join("plain"), dir.path().join("ckpt"));
    assert_code(&run(train_args(&pesc, &data, &plain, "5", &["--grad-accum", "2"])), 0);
    assert_code(&run(train_args(&pesc, &data, &ckpt, "5", &["--grad-accum", "2", "--gradient-checkpointing"])), 0);
    // The layers are recomputed with the same operations in the same order: the same bits.
    assert_same_results(&plain, &ckpt);
}

#[test]
fn a_resumed_run_equals_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let pesc = crafted(dir.path());
    let data = dir.path().join("data.jsonl");
    pattern_data(&data, 10);
    let (whole, half) = (dir.path().join("whole"), dir.path().join("half"));
    let extra = ["--grad-accum", "2", "--save-every", "3"];
    assert_code(&run(train_args(&pesc, &data, &whole, "6", &extra)), 0);
    // Stop after 3 steps (a run of 3 is the prefix of a run of 6 only with the same --steps: warmup depends on it).
    let mut partial = train_args(&pesc, &data, &half, "6", &extra);
    partial.extend(["--stop-after".into(), "3".into()]);
    assert_code(&run(&partial), 0);
    assert_eq!(metrics(&half).len(), 3);
    // As a crash between setting the previous checkpoint aside and renaming the new one in leaves it.
    std::fs::rename(half.join("checkpoint"), pesc_io::set_aside_path(&half.join("checkpoint"))).unwrap();
    let mut resumed = train_args(&pesc, &data, &half, "6", &extra);
    resumed.extend(["--resume".into(), half.as_os_str().into()]);
    assert_code(&run(&resumed), 0);
    assert_same_results(&whole, &half);
}

#[test]
fn a_damaged_checkpoint_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pesc = crafted(dir.path());
    let data = dir.path().join("data.jsonl");
    pattern_data(&data, 8);
    let out = dir.path().join("run");
    let mut args = train_args(&pesc, &data, &out, "4", &[]);
    args.extend(["--stop-after".into(), "2".into()]);
    assert_code(&run(&args), 0);
    let ckpt = out.join("checkpoint");
    assert_code(&run(["verify-manifest".as_ref(), ckpt.as_os_str()]), 0);
    let resume = || {
        let mut a = train_args(&pesc, &data, &out, "4", &[]);
        a.extend(["--resume".into(), out.as_os_str().into()]);
        run(&a)
    };
    // A changed byte: the manifest's hash catches it.
    let params = ckpt.join("params.safetensors");
    let good = std::fs::read(&params).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&params, &bad).unwrap();
    let refused = |o: std::process::Output, needles: &[&str]| {
        assert_code(&o, 2);
        let err = stderr(&o);
        assert!(needles.iter().all(|n| err.contains(n)) && !err.contains("panicked"), "{err}");
    };
    refused(resume(), &["params.safetensors", "SHA-256"]);
    // Without the manifest, the validating reader refuses a malformed file.
    std::fs::remove_file(ckpt.join("pesc-manifest.json")).unwrap();
    bad.extend_from_slice(b"trailing");
    std::fs::write(&params, &bad).unwrap();
    refused(resume(), &["params.safetensors", "trailing bytes"]);
}

#[test]
fn text_records_use_the_chat_template_and_truncation_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let pesc = dir.path().join("pesc");
    let o = run([
        "craft".as_ref(),
        fixture("llama-chat").as_os_str(),
        "-o".as_ref(),
        pesc.as_os_str(),
        "--experts".as_ref(),
        "4".as_ref(),
        "--top-k".as_ref(),
        "2".as_ref(),
        "--adapter-dim".as_ref(),
        "8".as_ref(),
    ]);
    assert_code(&o, 0);
    let data = dir.path().join("data.jsonl");
    let long = "word ".repeat(400);
    std::fs::write(
        &data,
        format!(
            "{}\n{}\n{}\n{}\n",
            r#"{"conversation": [{"input": "hi", "output": "hello there"}], "instruction": "be kind"}"#,
            r#"{"instruction": "add", "input": "2 2", "output": "4"}"#,
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}"#,
            serde_json::json!({ "instruction": "x", "output": long })
        ),
    )
    .unwrap();
    for template in ["chat", "reference"] {
        let out = dir.path().join(format!("run-{template}"));
        let o = run(train_args(&pesc, &data, &out, "2", &["--template", template, "--seq-len", "160"]));
        assert_code(&o, 0);
        assert!(stderr(&o).contains("1 truncated to --seq-len 160"), "{}", stderr(&o));
    }
}

#[test]
fn bad_input_is_refused_with_its_line_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pesc = crafted(dir.path());
    let cases: &[(&str, &[&str])] = &[
        ("[{\"input_ids\": [1, 2]}]\n", &["line 1", "JSONL"]),
        (
            "{\"input_ids\": [1, 2, 3]}\n{\"prompt\": \"x\", \"completion\": \"y\"}\n",
            &["line 2", "unknown record format", "completion, prompt"],
        ),
        ("{\"input_ids\": [1, 2, 3], \"labels\": [-100, -100, -100]}\n", &["line 1", "no response tokens"]),
        ("{\"input_ids\": [1, 2, 3], \"labels\": [-100, 5]}\n", &["line 1", "`labels` has 2 entries"]),
        ("{\"input_ids\": [1, 99999]}\n", &["line 1", "vocabulary size 320"]),
        ("{\"instruction\": \"a\", \"output\": \"b\"}\n", &["line 1", "tokenizer"]),
        ("{\"input_ids\": [1, 2]}\nnot json\n", &["line 2", "not a JSON record"]),
        ("", &["holds no records"]),
    ];
    for (i, (text, needles)) in cases.iter().enumerate() {
        let data = dir.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&data, text).unwrap();
        let out = dir.path().join(format!("run{i}"));
        assert_rejects(&run(train_args(&pesc, &data, &out, "1", &[])), needles);
        assert!(!out.exists(), "case {i} left {}", out.display());
    }
    // A dense model trains LoRA alone (the baseline), so not without LoRA; Mixtral not at all.
    let data = dir.path().join("ok.jsonl");
    pattern_data(&data, 2);
    let no_lora: Vec<std::ffi::OsString> = train_args(&fixture("llama-gqa"), &data, &dir.path().join("dense"), "1", &[])
        .into_iter()
        .map(|a| if a == "8" { "0".into() } else { a })
        .collect();
    assert_rejects(&run(no_lora), &["dense model", "--lora-r is 0"]);
    let mixtral = dir.path().join("mixtral");
    assert_code(
        &run([
            "upcycle".as_ref(),
            fixture("llama-gqa").as_os_str(),
            "-o".as_ref(),
            mixtral.as_os_str(),
            "--experts".as_ref(),
            "2".as_ref(),
            "--top-k".as_ref(),
            "1".as_ref(),
        ]),
        0,
    );
    assert_rejects(&run(train_args(&mixtral, &data, &dir.path().join("m"), "1", &[])), &["Mixtral model"]);
    assert_rejects(&run(train_args(&pesc, &data, &dir.path().join("t"), "1", &["--lora-targets", "q,x"])), &["--lora-targets", "`x`"]);
    if !cfg!(feature = "cuda") {
        let out = dir.path().join("gpu");
        assert_rejects(&run(train_args(&pesc, &data, &out, "1", &["--device", "cuda"])), &["built without CUDA", "--features cuda"]);
        assert!(!out.exists());
    }
}

#[test]
fn a_nan_loss_stops_with_a_checkpoint_of_the_step_before() {
    let dir = tempfile::tempdir().unwrap();
    let pesc = crafted(dir.path());
    let data = dir.path().join("data.jsonl");
    pattern_data(&data, 8);
    let out = dir.path().join("run");
    // Step 1 moves every trainable value by about 1e30: step 2's forward pass overflows.
    let args = train_args(&pesc, &data, &out, "10", &["--warmup-ratio", "0"])
        .into_iter()
        .map(|a| if a == "1e-2" { "1e30".into() } else { a })
        .collect::<Vec<_>>();
    let o = run(args);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("error: the loss is NaN at step 2; stopped (checkpoint of step 1"), "{}", stderr(&o));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("checkpoint/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 1);
    assert_eq!(metrics(&out).len(), 1, "only the finite step is logged");
    assert!(!out.join("adapter_model.safetensors").exists(), "no results from a failed run");
}

#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes_like_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let pesc = crafted(dir.path());
    let data = dir.path().join("data.jsonl");
    pattern_data(&data, 8);
    let out = dir.path().join("run");
    // Far more steps than run before the signal arrives.
    let child = std::process::Command::new(crate::common::bin())
        .args(train_args(&pesc, &data, &out, "100000", &[]))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |m| m.lines().count()) < 3 {
        assert!(started.elapsed().as_secs() < 120, "no steps logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert_code(&o, 130);
    let err = stderr(&o);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("checkpoint/state.json")).unwrap()).unwrap();
    let step = state["step"].as_u64().unwrap();
    assert!(err.contains(&format!("interrupted after step {step}")), "{err}");
    assert_eq!(metrics(&out).len() as u64, step, "the checkpoint holds the last logged step");
    // Resumed to step + 2, the run equals one that ran straight to step + 2.
    let until = (step + 2).to_string();
    let mut resumed = train_args(&pesc, &data, &out, "100000", &["--stop-after", &until]);
    resumed.extend(["--resume".into(), out.as_os_str().into()]);
    assert_code(&run(&resumed), 0);
    let straight = dir.path().join("straight");
    assert_code(&run(train_args(&pesc, &data, &straight, "100000", &["--stop-after", &until])), 0);
    assert_same_results(&out, &straight);
}

#[test]
fn route_stats_counts_every_assignment_per_source_and_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let model = crafted(tmp.path());
    let data = tmp.path().join("pattern.jsonl");
    pattern_data(&data, 6);
    // A second file whose records name their own source.
    let tagged = tmp.path().join("tagged.jsonl");
    std::fs::write(&tagged, "{\"input_ids\": [1, 2, 3, 4, 5], \"source\": \"math\"}\n{\"input_ids\": [9, 8, 7], \"source\": \"code\"}\n")
        .unwrap();
    let svg = tmp.path().join("routes.svg");
    let args = |extra: &[&str]| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> =
            vec!["route-stats".into(), model.clone().into(), "--data".into(), data.clone().into(), "--data".into(), tagged.clone().into()];
        v.extend(extra.iter().map(Into::into));
        v
    };
    let o = run(args(&["--json", "--svg", svg.to_str().unwrap()]));
    assert_code(&o, 0);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sources = r["sources"].as_object().unwrap();
    assert_eq!(sources.keys().collect::<Vec<_>>(), ["code", "math", "pattern"]);
    for (name, tokens) in [("pattern", 6 * 11), ("math", 5), ("code", 3)] {
        let s = &sources[name];
        assert_eq!(s["tokens"], tokens, "{name}");
        for (layer, row) in s["counts"].as_array().unwrap().iter().enumerate() {
            let sum: u64 = row.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
            assert_eq!(sum, 2 * tokens, "{name} layer {layer}: every token goes to top-2 experts");
        }
    }
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") && picture.matches("<rect").count() == 3 * 2 * 4, "3 sources x 2 layers x 4 experts");
    // The SVG is not replaced without --force; a dense model has no routes.
    assert_rejects(&run(args(&["--svg", svg.to_str().unwrap()])), &["routes.svg", "exists"]);
    let o = run(["route-stats".as_ref(), fixture("llama-gqa").as_os_str(), "--data".as_ref(), data.as_os_str()]);
    assert_rejects(&o, &["dense model", "PESC or Mixtral"]);
}

#[test]
fn a_dense_model_trains_lora_alone_and_merges_back() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pattern.jsonl");
    pattern_data(&data, 8);
    let out = tmp.path().join("run");
    let held = tmp.path().join("held.jsonl");
    pattern_data(&held, 4);
    assert_code(&run(train_args(&fixture("llama-gqa"), &data, &out, "10", &["--eval-data", held.to_str().unwrap()])), 0);
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["records"], 4);
    assert!(eval["loss_after"].as_f64().unwrap() < eval["loss_before"].as_f64().unwrap(), "{eval}");
    assert!(out.join("adapter_model.safetensors").is_file());
    assert!(!out.join("moe_model.safetensors").exists(), "a dense run has no routers or adapters");
    let m = metrics(&out);
    assert!(m.iter().all(|r| r["aux_loss"].as_f64() == Some(0.0)), "no balancing loss without routers");
    assert!(m.last().unwrap()["loss"].as_f64().unwrap() < m[0]["loss"].as_f64().unwrap());
    let merged = tmp.path().join("merged");
    assert_code(&run(["merge-lora".as_ref(), fixture("llama-gqa").as_os_str(), out.as_os_str(), "-o".as_ref(), merged.as_os_str()]), 0);
    let o = run(["verify".as_ref(), merged.as_os_str(), "--against".as_ref(), fixture("llama-gqa").as_os_str()]);
    assert_code(&o, 1);
}

#[test]
fn an_nf4_base_trains_on_dequantized_nf4_weights_and_merges_onto_them() {
    let tmp = tempfile::tempdir().unwrap();
    let pesc = crafted(tmp.path());
    let data = tmp.path().join("pattern.jsonl");
    pattern_data(&data, 8);
    let (a, b) = (tmp.path().join("run-16bit"), tmp.path().join("run-nf4"));
    assert_code(&run(train_args(&pesc, &data, &a, "3", &[])), 0);
    assert_code(&run(train_args(&pesc, &data, &b, "3", &["--base", "nf4"])), 0);
    let first_loss = |r: &Path| metrics(r)[0]["loss"].as_f64().unwrap();
    // Same data and seed: only the rounded base differs, so the losses do.
    assert_ne!(first_loss(&a), first_loss(&b));
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["load_in_4bit"], true, "{config}");
    let plain: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("adapter_config.json")).unwrap()).unwrap();
    assert!(plain.get("quantization_config").is_none());
    // An NF4 folder of the same model trains exactly like --base nf4 on its 16-bit source.
    let nf4 = tmp.path().join("pesc-nf4");
    assert_code(&run(["quantize".as_ref(), pesc.as_os_str(), "--to".as_ref(), "nf4".as_ref(), "-o".as_ref(), nf4.as_os_str()]), 0);
    let c = tmp.path().join("run-nf4-folder");
    assert_code(&run(train_args(&nf4, &data, &c, "3", &[])), 0);
    assert_eq!(first_loss(&b), first_loss(&c));
    // merge-lora takes the recorded base: onto dequant(NF4(W)) by default.
    let merged = tmp.path().join("merged");
    let o = run(["merge-lora".as_ref(), pesc.as_os_str(), b.as_os_str(), "-o".as_ref(), merged.as_os_str()]);
    assert_code(&o, 0);
    assert!(stderr(&o).contains("dequantized-nf4") || crate::common::stdout(&o).contains("dequantized-nf4"), "{}", stderr(&o));
}
