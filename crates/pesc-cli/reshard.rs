//! `pesc-convert reshard MODEL -o OUT [--shard-size S] [--dtype D]`.

use crate::cli::ReshardArgs;
use crate::{output, progress};
use anyhow::Result;
use pesc_arch::Model;
use pesc_craft::{input_digests, Publish};
use pesc_io::OutputDir;
use serde_json::json;
use std::collections::BTreeMap;

pub fn run(args: &ReshardArgs) -> Result<()> {
    crate::stop_cleanly_on_interrupt();
    let model = Model::open(&args.model)?;
    for w in model.weights.warnings() {
        output::warn(w);
    }
    let mut out = OutputDir::create(&args.out.output, args.out.force, &[&args.model])?;
    let inputs = BTreeMap::from([("model".to_owned(), input_digests(&model)?)]);
    let bar = progress::bytes("writing", model.weights.total_bytes());
    pesc_craft::reshard(&model, &mut out, args.dtype.store(), args.out.shard_size, &mut |done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    let publish = Publish {
        command: "reshard".into(),
        parameters: json!({"dtype": args.dtype.name(), "shard_size": args.out.shard_size}),
        tool_version: env!("CARGO_PKG_VERSION").into(),
    };
    let target = publish.finish(out, &args.model, &[], inputs)?;
    output::note(&format!("wrote `{}`", target.display()));
    Ok(())
}
