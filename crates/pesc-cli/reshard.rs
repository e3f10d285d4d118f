//! `pesc-convert reshard MODEL -o OUT [--shard-size S] [--dtype D]`.

use crate::cli::ReshardArgs;
use crate::publish;
use anyhow::Result;
use pesc_arch::Model;
use serde_json::json;

pub fn run(args: &ReshardArgs) -> Result<()> {
    crate::stop_cleanly_on_interrupt();
    let model = Model::open(&args.model)?;
    let parameters = json!({"dtype": args.dtype.name(), "shard_size": args.out.shard_size});
    publish::write(&model, &args.out, "reshard", parameters, None, &mut |m, out, bar| {
        pesc_craft::reshard(m, out, args.dtype.store(), args.out.shard_size, bar)
    })
}
