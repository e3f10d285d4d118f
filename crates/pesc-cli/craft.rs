//! `pesc-convert craft` and `pesc-convert upcycle`.

use crate::cli::{CraftArgs, UpcycleArgs};
use crate::{output, progress};
use anyhow::Result;
use pesc_arch::Model;
use pesc_craft::{CraftParams, Publish, UpcycleParams};
use pesc_io::OutputDir;
use serde_json::json;
use std::collections::BTreeMap;

/// A path as the model card quotes it: its last component, so that the card
/// (and the folder's bytes) do not depend on where the folders live.
fn shown(path: &std::path::Path) -> String {
    let name = std::fs::canonicalize(path).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let name = name.or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_default();
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+@".contains(c)) {
        name
    } else {
        format!("'{}'", name.replace('\'', r"'\''"))
    }
}

pub fn run_craft(a: &CraftArgs) -> Result<()> {
    crate::stop_cleanly_on_interrupt();
    let model = Model::open(&a.dense)?;
    let p = CraftParams {
        experts: a.experts,
        top_k: a.top_k,
        adapter_dim: a.adapter_dim,
        scaling: a.scaling,
        seed: a.seed,
        dtype: a.dtype.store(),
        force: a.out.force,
    };
    pesc_craft::validate(&model, &p)?;
    let parameters = json!({
        "experts": p.experts, "top_k": p.top_k, "adapter_dim": p.adapter_dim, "scaling": p.scaling,
        "seed": p.seed, "dtype": a.dtype.name(), "shard_size": a.out.shard_size,
    });
    let command = format!(
        "pesc-convert craft {} -o {} --experts {} --top-k {} --adapter-dim {} --scaling {} --seed {} --dtype {} --shard-size {}{}",
        shown(&a.dense),
        shown(&a.out.output),
        p.experts,
        p.top_k,
        p.adapter_dim,
        p.scaling,
        p.seed,
        a.dtype.name(),
        a.out.shard_size,
        if a.out.force { " --force" } else { "" }
    );
    let card = pesc_craft::craft_card(&model, &p, &command);
    let (total, active) = pesc_craft::craft_counts(&model, &p);
    write(&model, a.out.output.as_path(), a.out.force, "craft", parameters, &card, &mut |m, out, bar| {
        pesc_craft::craft(m, out, &p, a.out.shard_size, bar)
    })?;
    output::note(&format!(
        "crafted {} experts (top-{}, adapter_dim {}) on {} layers: {} parameters, {} active per token",
        p.experts,
        p.top_k,
        p.adapter_dim,
        model.config.num_layers,
        pesc_craft::thousands(total),
        pesc_craft::thousands(active)
    ));
    Ok(())
}

pub fn run_upcycle(a: &UpcycleArgs) -> Result<()> {
    crate::stop_cleanly_on_interrupt();
    let model = Model::open(&a.dense)?;
    let p = UpcycleParams { experts: a.experts, top_k: a.top_k, seed: a.seed, dtype: a.dtype.store() };
    pesc_craft::validate_upcycle(&model, &p)?;
    let parameters = json!({
        "experts": p.experts, "top_k": p.top_k, "seed": p.seed, "dtype": a.dtype.name(), "shard_size": a.out.shard_size,
    });
    let command = format!(
        "pesc-convert upcycle {} -o {} --experts {} --top-k {} --seed {} --dtype {} --shard-size {}",
        shown(&a.dense),
        shown(&a.out.output),
        p.experts,
        p.top_k,
        p.seed,
        a.dtype.name(),
        a.out.shard_size
    );
    let card = pesc_craft::upcycle_card(&model, &p, &command);
    let (total, active) = pesc_craft::upcycle_counts(&model, &p);
    write(&model, a.out.output.as_path(), a.out.force, "upcycle", parameters, &card, &mut |m, out, bar| {
        pesc_craft::upcycle(m, out, &p, a.out.shard_size, bar)
    })?;
    output::note(&format!(
        "upcycled to {} experts (top-{}) on {} layers: {} parameters, {} active per token",
        p.experts,
        p.top_k,
        model.config.num_layers,
        pesc_craft::thousands(total),
        pesc_craft::thousands(active)
    ));
    Ok(())
}

type Transform<'a> = dyn FnMut(&Model, &mut OutputDir, &mut dyn FnMut(u64, u64)) -> Result<(), pesc_craft::CraftError> + 'a;

/// Stages OUT, runs the transformation with a progress bar, adds the model
/// card, and publishes with the manifest.
fn write(
    model: &Model,
    target: &std::path::Path,
    force: bool,
    command: &str,
    parameters: serde_json::Value,
    card: &str,
    transform: &mut Transform<'_>,
) -> Result<()> {
    for w in model.weights.warnings() {
        output::warn(w);
    }
    let mut out = OutputDir::create(target, force, &[&model.dir])?;
    let inputs = BTreeMap::from([("model".to_owned(), pesc_craft::input_digests(model)?)]);
    let bar = progress::bytes(command, 0);
    transform(model, &mut out, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    out.write_file("README.md", card.as_bytes())?;
    let publish = Publish { command: command.into(), parameters, tool_version: env!("CARGO_PKG_VERSION").into() };
    let target = publish.finish(out, &model.dir, &[], inputs)?;
    output::note(&format!("wrote `{}`", target.display()));
    Ok(())
}
