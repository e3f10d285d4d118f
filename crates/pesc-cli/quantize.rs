//! `pesc-convert quantize MODEL --to TYPE -o FILE.gguf [--force] [--pure]`
//! and `quantize MODEL --to nf4 -o DIR [--blocksize N] [--no-double-quant] [--force]`.

use crate::cli::{OutputArgs, QuantizeArgs};
use crate::{output, progress, publish};
use anyhow::{bail, Result};
use pesc_hf::Model;
use pesc_llamacpp::ExportOptions;
use pesc_quant::nf4::Nf4Options;
use serde_json::json;

pub fn run(a: &QuantizeArgs) -> Result<()> {
    crate::stop_cleanly_on_interrupt();
    let Some(to) = a.to.gguf() else { return run_nf4(a) };
    if a.blocksize.is_some() || a.no_double_quant {
        bail!("--blocksize and --no-double-quant apply only to --to nf4");
    }
    let model = Model::open(&a.model)?;
    for w in model.weights.warnings() {
        output::warn(w);
    }
    let opts = ExportOptions { to, pure: a.pure };
    let bar = progress::bytes("quantize", 0);
    let summary = pesc_llamacpp::export_gguf(&model, opts, &a.output, a.force, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    for w in &summary.warnings {
        output::warn(w);
    }
    let counts: Vec<String> = summary.type_counts().iter().map(|(t, n)| format!("{n} {t}")).collect();
    let fallbacks = summary.tensors.iter().filter(|t| t.fallback_from.is_some()).count();
    let vocab = match &summary.vocab {
        pesc_llamacpp::VocabKind::None => "no tokenizer (tokenizer.ggml.model = none)".to_owned(),
        pesc_llamacpp::VocabKind::Bpe { pre, tokens } => format!("{} tokens, pre-tokenizer `{pre}`", output::thousands(*tokens as u64)),
        pesc_llamacpp::VocabKind::Spm { source, tokens } => {
            format!("{} tokens, SentencePiece from {source}", output::thousands(*tokens as u64))
        }
    };
    let fell = if fallbacks > 0 { format!("; {fallbacks} by shape fallback") } else { String::new() };
    output::note(&format!(
        "wrote `{}` ({}, {}): {} tensors ({}{fell}); {vocab}",
        summary.path.display(),
        opts.to.ftype_name(),
        output::human_bytes(summary.bytes),
        summary.tensors.len(),
        counts.join(", "),
    ));
    Ok(())
}

fn run_nf4(a: &QuantizeArgs) -> Result<()> {
    if a.pure {
        bail!("--pure applies only to the GGUF types, not --to nf4");
    }
    let opts = Nf4Options { blocksize: a.blocksize.unwrap_or(Nf4Options::default().blocksize), double_quant: !a.no_double_quant };
    let model = Model::open(&a.model)?;
    pesc_craft::validate_nf4(&model, opts)?;
    let out = OutputArgs { output: a.output.clone(), force: a.force, shard_size: pesc_io::DEFAULT_SHARD_SIZE };
    let parameters = json!({"to": "nf4", "blocksize": opts.blocksize, "double_quant": opts.double_quant});
    publish::write(&out, publish::Folder::from_model(&model, "quantize", parameters, None), |dir, bar| {
        pesc_craft::quantize_nf4(&model, dir, opts, out.shard_size, bar)
    })?;
    output::note(&format!(
        "quantized {} linear weights to NF4 (blocksize {}, double quant {})",
        pesc_craft::nf4_targets(&model).len(),
        opts.blocksize,
        if opts.double_quant { "on" } else { "off" }
    ));
    Ok(())
}
