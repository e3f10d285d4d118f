//! `pesc-convert import-gguf FILE.gguf -o OUT [--dtype f32|bf16|f16]`.

use crate::cli::ImportGgufArgs;
use crate::publish::{self, Folder};
use anyhow::Result;
use pesc_io::Input;
use pesc_llamacpp::{GgufModel, Import};
use serde_json::json;

pub fn run(a: &ImportGgufArgs) -> Result<()> {
    crate::stop_cleanly_on_interrupt();
    let model = GgufModel::open(&a.gguf)?;
    let import = Import::prepare(&model, a.dtype.dtype())?;
    let folder = Folder {
        command: "import-gguf",
        parameters: json!({"dtype": a.dtype.dtype().as_str(), "shard_size": a.out.shard_size}),
        inputs: vec![Input { role: "gguf".into(), root: a.gguf.clone(), files: vec![a.gguf.clone()] }],
        card: None,
        // Every file comes from the GGUF itself: nothing to copy from beside it.
        aux_from: None,
    };
    publish::write(&a.out, folder, |out, bar| import.write(out, a.dtype.dtype(), a.out.shard_size, bar))
}
