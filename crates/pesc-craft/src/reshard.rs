//! `reshard`: the same tensors, re-sharded and optionally re-typed.

use crate::CraftError;
use pesc_hf::output::{set_config_dtype, write_config};
use pesc_hf::Model;
use pesc_hf::StoreDType;
use pesc_io::{write_weights, OutputDir, TensorSpec};

/// Writes every tensor of `model` into `out` with the given dtype policy and
/// shard size, plus its `config.json` (dtype updated when it changes).
pub fn reshard(
    model: &Model,
    out: &mut OutputDir,
    dtype: StoreDType,
    shard_size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), CraftError> {
    let specs: Vec<TensorSpec> = model
        .weights
        .tensors()
        .filter(|t| !t.name.ends_with(".rotary_emb.inv_freq"))
        .map(|t| TensorSpec { name: t.name.clone(), dtype: dtype.of(t.dtype), shape: t.shape.clone() })
        .collect();
    let mut config = model.config.raw.clone();
    if let StoreDType::To(d) = dtype {
        set_config_dtype(&mut config, d);
    }
    write_config(out, &config)?;
    write_weights::<CraftError>(out, specs, shard_size, &mut |spec, w| Ok(model.write_tensor(&spec.name, spec.dtype, w)?), progress)
}
