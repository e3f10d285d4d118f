//! Checkpoint transformations. Each reads a validated [`pesc_arch::Model`],
//! streams its output tensor by tensor into a staged [`pesc_io::OutputDir`]
//! and leaves publishing (manifest, rename) to [`Publish`].
//!
//! - [`reshard`]: the same model, re-sharded and optionally re-typed.

mod folder;
mod reshard;

pub use folder::{input_digests, Publish, StoreDType, AUX_FILES};
pub use reshard::reshard;

/// Errors of a transformation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CraftError {
    /// From reading or writing files.
    #[error(transparent)]
    Io(#[from] pesc_io::Error),
    /// From the model's config or tensors.
    #[error(transparent)]
    Arch(#[from] pesc_arch::ArchError),
    /// A request that cannot be carried out on this input.
    #[error("{0}")]
    Invalid(String),
}
