//! `pesc-convert import-gguf FILE.gguf -o OUT [--dtype f32|bf16|f16]`.

use crate::cli::ImportGgufArgs;
use crate::{output, progress};
use anyhow::Result;
use pesc_arch::GgufModel;
use pesc_craft::Publish;
use pesc_io::OutputDir;
use serde_json::json;
use std::collections::BTreeMap;

pub fn run(a: &ImportGgufArgs) -> Result<()> {
    crate::stop_cleanly_on_interrupt();
    let model = GgufModel::open(&a.gguf)?;
    let import = pesc_craft::Import::prepare(&model, a.dtype.dtype())?;
    let mut out = OutputDir::create(&a.out.output, a.out.force, &[&a.gguf])?;
    let name = a.gguf.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let inputs = BTreeMap::from([("gguf".to_owned(), BTreeMap::from([(name, pesc_io::hash_file(&a.gguf)?)]))]);
    let bar = progress::bytes("importing", 0);
    import.write(&mut out, a.dtype.dtype(), a.out.shard_size, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let publish = Publish {
        command: "import-gguf".into(),
        parameters: json!({"dtype": a.dtype.dtype().as_str(), "shard_size": a.out.shard_size}),
        tool_version: env!("CARGO_PKG_VERSION").into(),
    };
    // Every file comes from the GGUF itself: nothing to copy from beside it.
    let target = publish.finish(out, None, inputs)?;
    output::note(&format!("wrote `{}`", target.display()));
    Ok(())
}
