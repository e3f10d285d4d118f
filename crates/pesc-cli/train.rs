//! `pesc-convert train PESC --data FILE.jsonl -o RUN --steps N`.

use crate::cli::{BaseArg, TemplateArg, TrainArgs};
use crate::output;
use anyhow::{bail, Context, Result};
use candle_core::DType;
use indicatif::{ProgressBar, ProgressStyle};
use pesc_hf::TextModel;
use pesc_model::Weights;
use pesc_train::{Dataset, Projection, RunDir, RunOptions, Template, Tokenizing, TrainModel, TrainOptions, Trainer};

/// The tokenizer and prompt template a model's data files are read with.
pub(crate) struct DataSetup {
    text: Option<TextModel>,
    template: Template,
    bos: Option<u32>,
    eos: Option<u32>,
    vocab: u64,
}

impl DataSetup {
    pub(crate) fn new(model: &Weights, template: TemplateArg) -> Result<Self> {
        let cfg = model.config();
        let text = if model.has_tokenizer() { Some(model.text()?) } else { None };
        let template = match template {
            TemplateArg::Chat if text.as_ref().is_some_and(TextModel::has_chat_template) => Template::Chat,
            TemplateArg::Chat | TemplateArg::Reference => Template::Reference,
        };
        let id = |key: &str| cfg.raw.get(key).and_then(serde_json::Value::as_u64).and_then(|v| u32::try_from(v).ok());
        let eos = id("eos_token_id").or_else(|| text.as_ref().and_then(|t| t.eos_ids().first().copied()));
        Ok(DataSetup { text, template, bos: id("bos_token_id"), eos, vocab: cfg.vocab_size })
    }

    pub(crate) fn tokenizing(&self, seq_len: usize) -> Result<Tokenizing<'_>> {
        Ok(Tokenizing {
            text: self.text.as_ref(),
            template: self.template,
            bos: self.bos,
            eos: self.eos,
            vocab: usize::try_from(self.vocab)?,
            seq_len,
        })
    }
}

pub fn run(a: &TrainArgs) -> Result<()> {
    crate::stop_after_step_on_interrupt();
    let device = a.device.device()?;
    let targets = a
        .lora_targets
        .split(',')
        .map(|t| Projection::parse(t).with_context(|| format!("--lora-targets: `{t}` is not one of q, k, v, o, gate, up, down")))
        .collect::<Result<Vec<_>>>()?;
    if a.save_every == 0 {
        bail!("--save-every must be at least 1");
    }
    let model = Weights::open(&a.model)?;
    let cfg = model.config();
    // Before the data is read: a model the trainer refuses.
    pesc_train::trainable(cfg, a.lora_r)?;
    let setup = DataSetup::new(&model, a.template)?;
    let tk = setup.tokenizing(a.seq_len)?;
    let data = Dataset::load(&a.data, &tk)?;
    let eval = a.eval_data.as_ref().map(|p| Dataset::load(p, &tk)).transpose()?;
    output::note(&format!(
        "{} records from `{}`{}",
        data.examples.len(),
        a.data.display(),
        if data.truncated > 0 { format!("; {} truncated to --seq-len {}", data.truncated, a.seq_len) } else { String::new() }
    ));
    let moe_dtype = match cfg.raw.get("moe_dtype").and_then(serde_json::Value::as_str) {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    };
    let opts = TrainOptions {
        lora_r: a.lora_r,
        lora_alpha: a.lora_alpha,
        lora_targets: targets,
        adapter_dropout: a.adapter_dropout,
        aux_loss_coef: a.aux_loss_coef,
        seed: a.seed,
        dtype: DType::F32,
        nf4_base: a.base == BaseArg::Nf4 || matches!(model.source(), pesc_model::Source::Folder(m) if m.quantization.is_some()),
        gradient_checkpointing: a.gradient_checkpointing,
    };
    if !(a.aux_loss_coef.is_finite() && a.aux_loss_coef >= 0.0) {
        bail!("--aux-loss-coef must be a finite number >= 0");
    }
    let run_opts = RunOptions {
        steps: a.steps,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        lr: a.lr,
        warmup_ratio: a.warmup_ratio,
        weight_decay: a.weight_decay,
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        moe_dtype,
        base_model: a.model.display().to_string(),
    };
    let run_dir = RunDir::open(&a.output, a.resume.as_deref())?;
    let result = (|| -> Result<()> {
        let train = TrainModel::load(&model, opts, &device)?;
        let before = match &eval {
            Some(set) if a.resume.is_none() => Some(pesc_train::evaluate(&train, &set.examples, a.batch_size)?),
            _ => None,
        };
        let mut trainer = Trainer::new(train, data.examples, run_opts, run_dir.path())?;
        train_loop(a, &mut trainer)?;
        match &eval {
            Some(set) => write_eval(a, &trainer, &set.examples, before),
            None => Ok(()),
        }
    })();
    if result.is_err() {
        run_dir.discard_if_empty();
    }
    result
}

/// Writes `RUN/eval.json`: the held-out loss after training (and before, unless resumed).
fn write_eval(a: &TrainArgs, trainer: &Trainer, examples: &[pesc_train::Example], before: Option<(f64, usize)>) -> Result<()> {
    let (after, tokens) = pesc_train::evaluate(trainer.model(), examples, a.batch_size)?;
    let report = serde_json::json!({
        "data": a.eval_data.as_ref().map(|p| p.display().to_string()),
        "records": examples.len(),
        "response_tokens": tokens,
        "loss_before": before.map(|b| b.0),
        "loss_after": after,
        "step": trainer.step_count(),
    });
    let path = a.output.join("eval.json");
    pesc_io::write_file_atomic(&path, format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes(), true)?;
    let was = before.map_or_else(String::new, |b| format!(" (before training {:.4})", b.0));
    output::note(&format!("held-out loss {after:.4}{was} over {tokens} response tokens; wrote `{}`", path.display()));
    Ok(())
}

fn train_loop(a: &TrainArgs, trainer: &mut Trainer) -> Result<()> {
    if let Some(from) = &a.resume {
        trainer.resume(from)?;
        output::note(&format!("resumed from step {} of `{}`", trainer.step_count(), from.display()));
    }
    let bar = ProgressBar::new(a.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} steps, {msg}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_position(trainer.step_count() as u64);
    let started = std::time::Instant::now();
    let mut tokens = 0usize;
    let mut last = None;
    let stop = a.stop_after.map_or(a.steps, |s| s.min(a.steps));
    while trainer.step_count() < stop {
        let m = trainer.train_step().inspect_err(|_| bar.abandon())?;
        tokens += m.tokens;
        #[allow(clippy::cast_precision_loss)]
        let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.4}", m.loss));
        bar.set_prefix(format!("{rate:.0} tok/s"));
        bar.set_position(m.step as u64);
        if m.step % a.save_every == 0 {
            trainer.save_checkpoint()?;
        }
        if crate::stop_requested() {
            let dir = trainer.save_checkpoint()?;
            bar.abandon();
            output::note(&format!(
                "interrupted after step {}; checkpoint saved in `{}`; continue with --resume {}",
                m.step,
                dir.display(),
                a.output.display()
            ));
            #[allow(clippy::exit)]
            std::process::exit(130);
        }
        last = Some((m, rate));
    }
    bar.finish_and_clear();
    trainer.save_checkpoint()?;
    trainer.save_outputs()?;
    if let Some((m, rate)) = last {
        output::note(&format!(
            "step {}: loss {:.4}, aux {:.5}, {rate:.0} tokens/s; wrote `{}`",
            m.step,
            m.loss,
            m.aux_loss,
            a.output.display()
        ));
    } else {
        output::note(&format!("no steps to run; wrote the adapters of step {} to `{}`", trainer.step_count(), a.output.display()));
    }
    Ok(())
}
