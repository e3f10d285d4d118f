//! `pesc-convert logits MODEL|FILE.gguf --token-ids 1,2,3 -o FILE.safetensors`.

use crate::cli::LogitsArgs;
use crate::output;
use anyhow::Result;
use pesc_runner::{Runner, Weights};
use pesc_tensor::DType;

pub fn run(a: &LogitsArgs) -> Result<()> {
    let model = Weights::open(&a.model)?;
    let runner = Runner::stream(&model, a.dtype.dtype(), &a.device.device()?, a.max_memory)?;
    let out = runner.forward_batch(std::slice::from_ref(&a.token_ids.0))?.remove(0);
    let (t, v) = out.logits.dims2()?;
    let values: Vec<f32> = out.logits.flatten_all()?.to_vec1()?;
    let bytes = pesc_tensor::from_f32(DType::F32, &values).unwrap_or_default();
    let shape = [t as u64, v as u64];
    let mut file = Vec::with_capacity(bytes.len() + 128);
    pesc_io::safetensors::write_all(&mut file, &[("logits", DType::F32, &shape, &bytes)], &Default::default())?;
    pesc_io::write_file_atomic(&a.output, &file, a.force)?;
    output::note(&format!("wrote `{}`: logits [{t}, {v}]", a.output.display()));
    Ok(())
}
