//! Arguments (clap derive). Doc comments are the `--help` text.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Craft parameter-efficient mixture-of-experts (PESC) models from dense
/// Llama-family checkpoints, verify them, quantize them and publish them.
///
/// Inputs are never trusted: only safetensors and GGUF are read (pickles are
/// refused, never opened), every length and offset is checked before use, and
/// outputs appear atomically with SHA256SUMS and a manifest.
#[derive(Debug, Parser)]
#[command(name = "pesc-convert", version, max_term_width = 100)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a model folder's or a .safetensors file's architecture, sizes and dtypes.
    Inspect(InspectArgs),
    /// Recompute every hash in DIR/pesc-manifest.json (and SHA256SUMS); exit 1 on the first mismatch.
    VerifyManifest(VerifyManifestArgs),
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A Hugging Face model folder or a `.safetensors` file.
    pub path: PathBuf,
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerifyManifestArgs {
    /// A folder written by pesc-convert.
    pub dir: PathBuf,
}
