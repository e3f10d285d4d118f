//! The training loop and the run folder.
//!
//! Step `s` takes micro-batches `s*G .. s*G+G`; micro-batch `m` holds the
//! examples at positions `m*B .. m*B+B` of the endless sequence of epochs,
//! each a seeded permutation of the data. Dropout is keyed by seed, step and
//! micro-batch. So a run resumed from a checkpoint (trainable tensors, AdamW
//! moments, step) computes exactly what the uninterrupted run computes.

use crate::model::{accumulate, scalar};
use crate::optim::{clip_grad_norm, lr_at, AdamW};
use crate::{Example, Result, TrainError, TrainModel};
use candle_core::{DType, Tensor, Var};
use pesc_io::{OutputDir, RunRecord, SafetensorsFile, Sink, StagedFile, TensorSpec};
use pesc_tensor::SplitMix64;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Per-step metrics, one JSON line each.
pub const METRICS: &str = "metrics.jsonl";
/// PEFT's adapter config.
pub const LORA_CONFIG: &str = "adapter_config.json";
/// PEFT's adapter weights.
pub const LORA_WEIGHTS: &str = "adapter_model.safetensors";
/// Trained routers and adapters under their model names (the reference's `moe_model.bin`, as safetensors).
pub const MOE_WEIGHTS: &str = "moe_model.safetensors";
/// The checkpoint folder inside a run.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// A run folder: new, or the one a resumed run continues.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    created: bool,
}

impl RunDir {
    /// Creates the run folder `path`, or opens it when `resume` names the same
    /// folder (the run continues in place). A new run refuses an existing path.
    pub fn open(path: &Path, resume: Option<&Path>) -> Result<Self> {
        let same = resume.is_some_and(|r| std::fs::canonicalize(r).ok() == std::fs::canonicalize(path).ok());
        if same {
            return Ok(RunDir { path: path.into(), created: false });
        }
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(TrainError::RunExists { path: path.into() });
        }
        std::fs::create_dir_all(path).map_err(io(path))?;
        Ok(RunDir { path: path.into(), created: true })
    }

    /// The folder.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// After a failed run: removes the folder if this run created it and it
    /// holds no checkpoint (nothing worth resuming).
    pub fn discard_if_empty(&self) {
        if self.created && !self.path.join(CHECKPOINT_DIR).exists() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Optimizer steps in all.
    pub steps: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Share of `steps` spent in linear warmup (rounded up).
    pub warmup_ratio: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Largest global gradient norm.
    pub max_grad_norm: f64,
    /// Seed of the data order and dropout.
    pub seed: u64,
    /// Stored dtype of the trained routers and adapters.
    pub moe_dtype: DType,
    /// `base_model_name_or_path` of the PEFT config.
    pub base_model: String,
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// 1-based step.
    pub step: usize,
    /// Mean cross-entropy over the micro-batches.
    pub loss: f64,
    /// Mean balancing loss (coefficient applied).
    pub aux_loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Tokens processed (padding excluded).
    pub tokens: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Per layer, per expert: share of the routing assignments.
    pub load: Vec<Vec<f64>>,
}

/// A training run writing into its folder.
pub struct Trainer {
    model: TrainModel,
    opt: AdamW,
    data: Vec<Example>,
    opts: RunOptions,
    dir: PathBuf,
    step: usize,
    perm: (u64, Vec<usize>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.into(), source }
}

impl Trainer {
    /// A run of `model` on `data` writing into the existing folder `dir`.
    pub fn new(model: TrainModel, data: Vec<Example>, opts: RunOptions, dir: &Path) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(TrainError::Flag { flag: "--batch-size", problem: "must be at least 1".into() });
        }
        if opts.grad_accum == 0 {
            return Err(TrainError::Flag { flag: "--grad-accum", problem: "must be at least 1".into() });
        }
        if !(opts.lr.is_finite() && opts.lr > 0.0) {
            return Err(TrainError::Flag { flag: "--lr", problem: format!("must be a positive number, not {}", opts.lr) });
        }
        if !(0.0..=1.0).contains(&opts.warmup_ratio) {
            return Err(TrainError::Flag { flag: "--warmup-ratio", problem: format!("must be in [0, 1], not {}", opts.warmup_ratio) });
        }
        if !opts.weight_decay.is_finite() {
            return Err(TrainError::Flag {
                flag: "--weight-decay",
                problem: format!("must be a finite number, not {}", opts.weight_decay),
            });
        }
        if data.is_empty() {
            return Err(TrainError::NoExamples);
        }
        let vars: Vec<&Var> = model.params().iter().map(|(_, v)| v).collect();
        let opt = AdamW::new(&vars, opts.lr, opts.weight_decay)?;
        Ok(Trainer { model, opt, data, opts, dir: dir.into(), step: 0, perm: (u64::MAX, Vec::new()) })
    }

    /// Steps done.
    #[must_use]
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The model being trained.
    #[must_use]
    pub fn model(&self) -> &TrainModel {
        &self.model
    }

    /// Warmup steps: `ceil(ratio * steps)`.
    #[must_use]
    pub fn warmup(&self) -> usize {
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let w = (self.opts.warmup_ratio * self.opts.steps as f64).ceil() as usize;
        w
    }

    /// The example at position `pos` of the endless, per-epoch shuffled sequence.
    fn example_at(&mut self, pos: usize) -> usize {
        let n = self.data.len();
        let epoch = (pos / n) as u64;
        if self.perm.0 != epoch {
            let mut order: Vec<usize> = (0..n).collect();
            let mut g = SplitMix64::keyed(self.opts.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15), "data-order");
            for i in (1..n).rev() {
                order.swap(i, g.below(i + 1));
            }
            self.perm = (epoch, order);
        }
        self.perm.1[pos % n]
    }

    /// One optimizer step; appends its metrics line. A non-finite loss stops
    /// with a checkpoint of the state before the step.
    pub fn train_step(&mut self) -> Result<Metrics> {
        let (b, g) = (self.opts.batch_size, self.opts.grad_accum);
        let lr = lr_at(self.opts.lr, self.step, self.warmup());
        let vars: Vec<Var> = self.model.params().iter().map(|(_, v)| v.clone()).collect();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let (mut ce_sum, mut aux_sum, mut tokens) = (0.0, 0.0, 0);
        let mut load: Vec<Vec<f64>> = Vec::new();
        for micro in 0..g {
            let m = self.step * g + micro;
            let idx: Vec<usize> = (0..b).map(|i| self.example_at(m * b + i)).collect();
            let batch: Vec<&Example> = idx.iter().map(|&i| &self.data[i]).collect();
            let key = self.opts.seed ^ (m as u64 + 1).wrapping_mul(0xff51_afd7_ed55_8ccd);
            #[allow(clippy::cast_precision_loss)]
            let out = self.model.forward_backward(&batch, Some(key), 1.0 / g as f64)?;
            if !out.ce.is_finite() {
                let dir = self.save_checkpoint()?;
                return Err(TrainError::NonFinite { what: "loss", step: self.step + 1, value: out.ce, saved: self.step, dir });
            }
            ce_sum += out.ce;
            aux_sum += out.aux;
            tokens += out.tokens;
            if load.is_empty() {
                load = vec![Vec::new(); out.load.len()];
            }
            for (acc, l) in load.iter_mut().zip(&out.load) {
                if acc.is_empty() {
                    acc.resize(l.len(), 0.0);
                }
                #[allow(clippy::cast_precision_loss)]
                acc.iter_mut().zip(l).for_each(|(a, x)| *a += x / g as f64);
            }
            for (acc, gr) in grads.iter_mut().zip(out.grads) {
                if let Some(gr) = gr {
                    accumulate(acc, gr)?;
                }
            }
        }
        let mut grads: Vec<Tensor> =
            grads.into_iter().zip(&vars).map(|(g, v)| g.map_or_else(|| Ok(v.zeros_like()?), Ok)).collect::<Result<_>>()?;
        let grad_norm = clip_grad_norm(&mut grads, self.opts.max_grad_norm)?;
        if !grad_norm.is_finite() {
            let dir = self.save_checkpoint()?;
            return Err(TrainError::NonFinite { what: "gradient norm", step: self.step + 1, value: grad_norm, saved: self.step, dir });
        }
        self.opt.lr = lr;
        let refs: Vec<&Var> = vars.iter().collect();
        self.opt.step(&refs, &grads)?;
        self.step += 1;
        #[allow(clippy::cast_precision_loss)]
        let metrics = Metrics { step: self.step, loss: ce_sum / g as f64, aux_loss: aux_sum / g as f64, lr, tokens, grad_norm, load };
        let line = json!({
            "step": metrics.step, "loss": metrics.loss, "aux_loss": metrics.aux_loss, "lr": metrics.lr,
            "tokens": metrics.tokens, "grad_norm": metrics.grad_norm, "expert_load": metrics.load,
        });
        let path = self.dir.join(METRICS);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        writeln!(f, "{line}").map_err(io(&path))?;
        Ok(metrics)
    }

    /// Writes the checkpoint (trainable tensors, AdamW moments, step) into
    /// `RUN/checkpoint` through `pesc-io`'s staged folder, with its manifest:
    /// the previous checkpoint is replaced only once the new one is complete
    /// (and kept aside as `.checkpoint.pesc-old` in between, which `--resume`
    /// falls back to). `metrics.jsonl` is made durable with it. Returns its folder.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let dir = self.dir.join(CHECKPOINT_DIR);
        let mut params = Vec::new();
        let mut moments = Vec::new();
        for ((name, v), (m, s)) in self.model.params().iter().zip(&self.opt.moments) {
            params.push((name.clone(), v.as_tensor().clone()));
            moments.push((format!("{name}.exp_avg"), m.clone()));
            moments.push((format!("{name}.exp_avg_sq"), s.clone()));
        }
        let state = json!({ "step": self.step, "adam_t": self.opt.t, "fingerprint": self.fingerprint() });
        let mut out = OutputDir::create(&dir, true, &[])?;
        write_tensors(&mut out, PARAMS, &params)?;
        write_tensors(&mut out, OPTIMIZER, &moments)?;
        out.write_file(STATE, &serde_json::to_vec_pretty(&state).unwrap_or_default())?;
        let metrics = self.dir.join(METRICS);
        if metrics.exists() {
            std::fs::File::open(&metrics).and_then(|f| f.sync_all()).map_err(io(&metrics))?;
        }
        let run = RunRecord { command: "train".into(), parameters: state, inputs: BTreeMap::new() };
        Ok(out.commit(&run)?)
    }

    /// The settings a resumed run must share with the run it continues.
    fn fingerprint(&self) -> Value {
        let mo = self.model.options();
        json!({
            "batch_size": self.opts.batch_size, "grad_accum": self.opts.grad_accum, "seed": self.opts.seed,
            "steps": self.opts.steps, "lr": self.opts.lr, "warmup_ratio": self.opts.warmup_ratio,
            "lora_r": mo.lora_r, "lora_alpha": mo.lora_alpha, "aux_loss_coef": mo.aux_loss_coef,
            "lora_targets": mo.lora_targets.iter().map(|t| t.module()).collect::<Vec<_>>(),
            "examples": self.data.len(), "nf4_base": mo.nf4_base,
        })
    }

    /// Continues from the checkpoint in run folder `from` (or the one set aside
    /// while it was being replaced), read through the hardened safetensors
    /// reader after its manifest's hashes are checked; keeps the metrics lines
    /// up to its step.
    pub fn resume(&mut self, from: &Path) -> Result<()> {
        let mut dir = from.join(CHECKPOINT_DIR);
        if !dir.exists() && pesc_io::set_aside_path(&dir).join(STATE).exists() {
            dir = pesc_io::set_aside_path(&dir);
        }
        if dir.join(pesc_io::MANIFEST).exists() {
            if let Some((file, problem)) = pesc_io::verify_manifest(&dir)?.failure {
                return Err(TrainError::Checkpoint { path: dir.join(file), problem });
            }
        }
        let path = dir.join(STATE);
        let bad = |problem: String| TrainError::Checkpoint { path: path.clone(), problem };
        let state = pesc_io::parse_strict(&pesc_io::read_capped(&path, 1 << 20)?).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        if state["fingerprint"] != self.fingerprint() {
            return Err(bad(format!(
                "the checkpoint was made with other settings ({}); resume with the same model, data and flags",
                state["fingerprint"]
            )));
        }
        let step = state["step"].as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| bad("no `step`".into()))?;
        let adam_t = state["adam_t"].as_u64().ok_or_else(|| bad("no `adam_t`".into()))?;
        let params = SafetensorsFile::open(&dir.join(PARAMS))?;
        let moments = SafetensorsFile::open(&dir.join(OPTIMIZER))?;
        for ((name, v), (m, s)) in self.model.params().iter().zip(self.opt.moments.iter_mut()) {
            v.set(&read_tensor(&params, name, v)?)?;
            *m = read_tensor(&moments, &format!("{name}.exp_avg"), v)?;
            *s = read_tensor(&moments, &format!("{name}.exp_avg_sq"), v)?;
        }
        self.opt.t = adam_t;
        self.step = step;
        let src = from.join(METRICS);
        let kept: String = std::fs::read_to_string(&src)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| usize::try_from(s).is_ok_and(|s| s <= step))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        pesc_io::write_file_atomic(&self.dir.join(METRICS), kept.as_bytes(), true)?;
        Ok(())
    }

    /// Writes the PEFT LoRA (`adapter_config.json`, `adapter_model.safetensors`)
    /// and the trained routers and adapters (`moe_model.safetensors`), each
    /// staged and renamed into the run folder.
    pub fn save_outputs(&self) -> Result<()> {
        let mo = self.model.options();
        let (mut lora, mut moe) = (Vec::new(), Vec::new());
        for (name, v) in self.model.params() {
            if name.starts_with("base_model.model.") {
                lora.push((name.clone(), v.as_tensor().to_dtype(DType::F32)?));
            } else {
                moe.push((name.clone(), v.as_tensor().to_dtype(self.opts.moe_dtype)?));
            }
        }
        if mo.lora_r > 0 {
            let mut config = json!({
                "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": self.opts.base_model,
                "r": mo.lora_r, "lora_alpha": mo.lora_alpha, "lora_dropout": 0.0, "bias": "none",
                "target_modules": mo.lora_targets.iter().map(|t| t.module()).collect::<Vec<_>>(),
                "fan_in_fan_out": false, "use_rslora": false, "inference_mode": true, "modules_to_save": null,
            });
            // What merge-lora reads to merge onto dequant(NF4(W)) by default.
            if mo.nf4_base {
                config["quantization_config"] = json!({
                    "quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4",
                    "bnb_4bit_use_double_quant": true,
                });
            }
            pesc_io::write_file_atomic(&self.dir.join(LORA_CONFIG), &serde_json::to_vec_pretty(&config).unwrap_or_default(), true)?;
            let mut file = StagedFile::create(&self.dir.join(LORA_WEIGHTS), true, &[])?;
            write_safetensors_of(&mut file, &lora)?;
            file.commit()?;
        }
        if !moe.is_empty() {
            let mut file = StagedFile::create(&self.dir.join(MOE_WEIGHTS), true, &[])?;
            write_safetensors_of(&mut file, &moe)?;
            file.commit()?;
        }
        Ok(())
    }
}

/// The checkpoint's trainable tensors.
const PARAMS: &str = "params.safetensors";
/// The checkpoint's AdamW moments.
const OPTIMIZER: &str = "optimizer.safetensors";
/// The checkpoint's step, AdamW step and settings fingerprint.
const STATE: &str = "state.json";

/// How a tensor of `dtype` is stored: as itself, or (integer types, which the
/// trainer never saves) as f32.
fn stored_dtype(dtype: DType) -> pesc_tensor::DType {
    match dtype {
        DType::F64 => pesc_tensor::DType::F64,
        DType::BF16 => pesc_tensor::DType::BF16,
        DType::F16 => pesc_tensor::DType::F16,
        _ => pesc_tensor::DType::F32,
    }
}

/// A tensor's bytes, little-endian, in [`stored_dtype`].
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match stored_dtype(t.dtype()) {
        pesc_tensor::DType::F64 => flat.to_vec1::<f64>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        pesc_tensor::DType::BF16 => flat.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        pesc_tensor::DType::F16 => flat.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => flat.to_dtype(DType::F32)?.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
    })
}

/// Streams `tensors` as one safetensors file into `sink`, a tensor at a time.
fn write_safetensors_of(sink: &mut impl Sink, tensors: &[(String, Tensor)]) -> Result<()> {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(name, t)| TensorSpec {
            name: name.clone(),
            dtype: stored_dtype(t.dtype()),
            shape: t.dims().iter().map(|&d| d as u64).collect(),
        })
        .collect();
    let by_name: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let refs: Vec<&TensorSpec> = specs.iter().collect();
    pesc_io::write_safetensors::<_, TrainError>(
        sink,
        &refs,
        &mut |spec, sink| {
            let t = by_name
                .get(spec.name.as_str())
                .copied()
                .ok_or_else(|| TrainError::Checkpoint { path: PathBuf::from(&spec.name), problem: "is not a tensor of this run".into() })?;
            Ok(sink.write_bytes(&tensor_bytes(t)?)?)
        },
        &mut |_, _| {},
    )
}

/// Writes `tensors` as the file `name` of `out`.
fn write_tensors(out: &mut OutputDir, name: &str, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut file = out.create_file(name)?;
    write_safetensors_of(&mut file, tensors)?;
    file.finish()?;
    Ok(())
}

/// Tensor `name` of the checkpoint file `f`, shaped and typed like `like`.
fn read_tensor(f: &SafetensorsFile, name: &str, like: &Tensor) -> Result<Tensor> {
    let bad = |problem: String| TrainError::Checkpoint { path: f.path().into(), problem };
    let t = f.tensor(name).ok_or_else(|| bad(format!("lacks `{name}`")))?;
    let shape: Vec<usize> = t.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    if shape != like.dims() {
        return Err(bad(format!("`{name}` has shape {shape:?}, the model needs {:?}", like.dims())));
    }
    let bytes = f.read(t)?;
    let values = match t.dtype {
        pesc_tensor::DType::F64 => Tensor::from_vec(
            bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect::<Vec<_>>(),
            shape,
            like.device(),
        )?,
        dtype => {
            let v = pesc_tensor::to_f32(dtype, &bytes).ok_or_else(|| bad(format!("`{name}` has dtype {dtype}, not a float type")))?;
            Tensor::from_vec(v, shape, like.device())?
        }
    };
    Ok(values.to_dtype(like.dtype())?)
}

/// Held-out loss: the mean cross-entropy over every response token of
/// `examples` (dropout off, no balancing loss), in batches of `batch_size`.
pub fn evaluate(model: &TrainModel, examples: &[Example], batch_size: usize) -> Result<(f64, usize)> {
    let (mut sum, mut targets) = (0.0, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch: Vec<&Example> = chunk.iter().collect();
        let out = model.forward(&batch, None)?;
        #[allow(clippy::cast_precision_loss)]
        let weight = out.targets as f64;
        sum += scalar(&out.ce)? * weight;
        targets += out.targets;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok((sum / targets.max(1) as f64, targets))
}
