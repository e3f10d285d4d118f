//! `pesc-convert quantize MODEL --to TYPE -o FILE.gguf [--force] [--pure]`.

use crate::cli::QuantizeArgs;
use crate::{output, progress};
use anyhow::Result;
use pesc_arch::Model;
use pesc_craft::ExportOptions;

pub fn run(a: &QuantizeArgs) -> Result<()> {
    crate::stop_cleanly_on_interrupt();
    let model = Model::open(&a.model)?;
    for w in model.weights.warnings() {
        output::warn(w);
    }
    let opts = ExportOptions { to: a.to.gguf(), pure: a.pure };
    let bar = progress::bytes("quantize", 0);
    let summary = pesc_craft::export_gguf(&model, opts, &a.output, a.force, &mut |done, total| {
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
        pesc_craft::VocabKind::None => "no tokenizer (tokenizer.ggml.model = none)".to_owned(),
        pesc_craft::VocabKind::Bpe { pre, tokens } => format!("{} tokens, pre-tokenizer `{pre}`", output::thousands(*tokens as u64)),
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
