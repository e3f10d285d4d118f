//! A model folder published from the command line: the publication its
//! arguments describe, with a progress bar. `pesc_hf::output::publish_folder`
//! does the work (staging, hashing the inputs, card, manifest, rename).

use crate::cli::OutputArgs;
use crate::{output, progress};
use anyhow::Result;
use pesc_hf::output::{publish_folder, FolderPublication};
use pesc_io::{Input, OutputDir, Publication};
use std::path::Path;

/// What a folder command publishes besides its tensors.
pub struct Folder<'a> {
    /// The subcommand.
    pub command: &'a str,
    /// Its canonical parameters.
    pub parameters: serde_json::Value,
    /// The inputs hashed into the manifest.
    pub inputs: Vec<Input>,
    /// The model card.
    pub card: Option<String>,
    /// The folder whose tokenizer and generation files are copied along.
    pub aux_from: Option<&'a Path>,
}

/// Publishes `f` at `out.output`, `write` filling it while a bar shows its progress.
pub fn write<T, E>(
    out: &OutputArgs,
    f: Folder<'_>,
    write: impl FnOnce(&mut OutputDir, &mut dyn FnMut(u64, u64)) -> Result<T, E>,
) -> Result<T>
where
    E: From<pesc_hf::HfError> + From<pesc_io::Error> + std::error::Error + Send + Sync + 'static,
{
    let bar = progress::bytes(f.command, 0);
    let p = FolderPublication {
        publication: Publication { target: &out.output, force: out.force, command: f.command, parameters: f.parameters, inputs: f.inputs },
        card: f.card,
        aux_from: f.aux_from,
    };
    let (target, value) = publish_folder(p, |dir| {
        write(dir, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
    })?;
    bar.finish_and_clear();
    output::note(&format!("wrote `{}`", target.display()));
    Ok(value)
}

impl<'a> Folder<'a> {
    /// A folder made from the model folder `model` alone (its tokenizer files
    /// copied along); prints the model's warnings.
    pub fn from_model(model: &'a pesc_hf::Model, command: &'a str, parameters: serde_json::Value, card: Option<String>) -> Self {
        for w in model.weights.warnings() {
            output::warn(w);
        }
        Folder { command, parameters, inputs: vec![pesc_hf::output::model_input(model, "model")], card, aux_from: Some(&model.dir) }
    }
}
