//! `pesc-convert reshard MODEL -o OUT [--shard-size S] [--dtype D]`.

use crate::cli::ReshardArgs;
use crate::publish;
use crate::publish::Folder;
use anyhow::Result;
use pesc_hf::Model;
use serde_json::json;

pub fn run(args: &ReshardArgs) -> Result<()> {
    crate::stop_cleanly_on_interrupt();
    let model = Model::open(&args.model)?;
    let parameters = json!({"dtype": args.dtype.name(), "shard_size": args.out.shard_size});
    publish::write(&args.out, Folder::from_model(&model, "reshard", parameters, None), |out, bar| {
        pesc_craft::reshard(&model, out, args.dtype.store(), args.out.shard_size, bar)
    })
}
