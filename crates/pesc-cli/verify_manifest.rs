//! `pesc-convert verify-manifest DIR`.

use crate::cli::VerifyManifestArgs;
use crate::output;
use crate::CheckFailed;
use anyhow::Result;

pub fn run(args: &VerifyManifestArgs) -> Result<()> {
    let check = pesc_io::verify_manifest(&args.dir)?;
    if let Some((file, problem)) = check.failure {
        return Err(CheckFailed(format!("`{}`: `{file}` {problem}", args.dir.display())).into());
    }
    output::data(&format!("ok: {} files match {}\n", check.verified.len(), pesc_io::MANIFEST))
}
