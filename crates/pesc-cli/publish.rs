//! What every folder-writing command shares: stage the output, run the
//! transformation with a progress bar while the inputs are hashed on another
//! thread, add the model card, and publish with the manifest.

use crate::cli::OutputArgs;
use crate::{output, progress};
use anyhow::Result;
use pesc_arch::Model;
use pesc_craft::Publish;
use pesc_io::OutputDir;
use std::collections::BTreeMap;

/// A transformation writing into the staged folder, reporting (done, total) bytes.
pub type Transform<'a> = dyn FnMut(&Model, &mut OutputDir, &mut dyn FnMut(u64, u64)) -> Result<(), pesc_craft::CraftError> + 'a;

/// Writes `model` transformed into `out.output` and publishes it.
pub fn write(
    model: &Model,
    out: &OutputArgs,
    command: &str,
    parameters: serde_json::Value,
    card: Option<&str>,
    transform: &mut Transform<'_>,
) -> Result<()> {
    for w in model.weights.warnings() {
        output::warn(w);
    }
    let mut dir = OutputDir::create(&out.output, out.force, &[&model.dir])?;
    let bar = progress::bytes(command, 0);
    // Hashing the inputs reads them once more: do it beside the writing.
    let digests = std::thread::scope(|s| -> Result<_> {
        let hashing = s.spawn(|| pesc_craft::input_digests(model));
        transform(model, &mut dir, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })?;
        hashing.join().map_err(|_| anyhow::anyhow!("hashing the inputs failed"))?.map_err(anyhow::Error::from)
    })?;
    bar.finish_and_clear();
    if let Some(card) = card {
        dir.write_file("README.md", card.as_bytes())?;
    }
    let publish = Publish { command: command.into(), parameters, tool_version: env!("CARGO_PKG_VERSION").into() };
    let inputs = BTreeMap::from([("model".to_owned(), digests)]);
    let target = publish.finish(dir, Some(&model.dir), inputs)?;
    output::note(&format!("wrote `{}`", target.display()));
    Ok(())
}
