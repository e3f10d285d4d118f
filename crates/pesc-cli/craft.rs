//! `pesc-convert craft` and `pesc-convert upcycle`.

use crate::cli::{CraftArgs, UpcycleArgs};
use crate::publish::Folder;
use crate::{output, publish};
use anyhow::Result;
use pesc_craft::{CraftParams, UpcycleParams};
use pesc_hf::Model;
use serde_json::json;

/// A path as the model card quotes it: its last component, so that the card
/// (and the folder's bytes) do not depend on where the folders live.
pub(crate) fn shown(path: &std::path::Path) -> String {
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
    let card = pesc_craft::card::craft_card(&model, &p, &command);
    let (total, active) = pesc_craft::card::craft_counts(&model, &p);
    publish::write(&a.out, Folder::from_model(&model, "craft", parameters, Some(card)), |out, bar| {
        pesc_craft::craft(&model, out, &p, a.out.shard_size, bar)
    })?;
    output::note(&format!(
        "crafted {} experts (top-{}, adapter_dim {}) on {} layers: {} parameters, {} active per token",
        p.experts,
        p.top_k,
        p.adapter_dim,
        model.config.num_layers,
        pesc_hf::thousands(total),
        pesc_hf::thousands(active)
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
    let card = pesc_craft::card::upcycle_card(&model, &p, &command);
    let (total, active) = pesc_craft::card::upcycle_counts(&model, &p);
    publish::write(&a.out, Folder::from_model(&model, "upcycle", parameters, Some(card)), |out, bar| {
        pesc_craft::upcycle(&model, out, &p, a.out.shard_size, bar)
    })?;
    output::note(&format!(
        "upcycled to {} experts (top-{}) on {} layers: {} parameters, {} active per token",
        p.experts,
        p.top_k,
        model.config.num_layers,
        pesc_hf::thousands(total),
        pesc_hf::thousands(active)
    ));
    Ok(())
}
