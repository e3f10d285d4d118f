//! The streaming sharded safetensors writer.
//!
//! The caller declares every tensor (name, dtype, shape) up front, so shard
//! boundaries and headers are known before any data is written; then it
//! produces each tensor's bytes in turn, straight into the output file. Peak
//! memory is whatever the producer holds for one tensor.

use crate::error::{Error, Result};
use crate::publish::{OutputDir, Sink};
use crate::safetensors::encode_header;
use pesc_tensor::{DType, Overflow};
use serde_json::json;
use std::collections::BTreeMap;

/// Default `--shard-size`: 5 GB, as transformers' `save_pretrained`.
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// A tensor to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Its name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<u64>,
}

impl TensorSpec {
    /// Byte size.
    pub fn nbytes(&self) -> Result<u64, Overflow> {
        self.dtype.nbytes(&self.shape)
    }
}

/// Parses a shard size such as `5GB`, `500MB`, `2GiB` or `1000000`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&v| v > 0)
}

/// Groups tensors (sorted by name) into shards of at most `shard_size` bytes;
/// a tensor larger than that gets a shard of its own.
fn plan_shards(out: &std::path::Path, specs: &[TensorSpec], shard_size: u64) -> Result<Vec<Vec<usize>>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current = 0u64;
    for (i, s) in specs.iter().enumerate() {
        let n = s.nbytes().map_err(|e| overflow(out, &e, s))?;
        match shards.last_mut() {
            Some(last) if !last.is_empty() && current.saturating_add(n) <= shard_size => {
                last.push(i);
                current += n;
            }
            _ => {
                shards.push(vec![i]);
                current = n;
            }
        }
    }
    Ok(shards)
}

fn overflow(path: &std::path::Path, e: &Overflow, s: &TensorSpec) -> Error {
    Error::Overflow { path: path.into(), tensor: s.name.clone(), shape: pesc_tensor::shape_str(&e.shape), dtype: e.dtype }
}

/// Streams one safetensors file into `sink`: the header of `specs` (laid out
/// by decreasing element size, then name, so every tensor is aligned to its
/// element size; `{"format": "pt"}` metadata), then each tensor's bytes from
/// `produce`, called once per tensor in file order, which must write exactly
/// the tensor's bytes. `done` gets each tensor's size once it is written.
pub fn write_safetensors<S: Sink, E: From<Error>>(
    sink: &mut S,
    specs: &[&TensorSpec],
    produce: &mut dyn FnMut(&TensorSpec, &mut S) -> Result<(), E>,
    done: &mut dyn FnMut(&TensorSpec, u64),
) -> Result<(), E> {
    let mut order = specs.to_vec();
    order.sort_by(|a, b| b.dtype.size().cmp(&a.dtype.size()).then_with(|| a.name.cmp(&b.name)));
    let sizes: Vec<u64> = order.iter().map(|s| s.nbytes().unwrap_or(0)).collect();
    let layout: Vec<_> = order.iter().zip(&sizes).map(|(s, &b)| (s.name.as_str(), s.dtype, s.shape.as_slice(), b)).collect();
    let metadata = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
    sink.write_bytes(&encode_header(&layout, &metadata))?;
    for (spec, &size) in order.iter().zip(&sizes) {
        let before = sink.written();
        produce(spec, sink)?;
        let written = sink.written() - before;
        if written != size {
            return Err(Error::ProducedSize { tensor: spec.name.clone(), expected: size, actual: written }.into());
        }
        done(spec, size);
    }
    Ok(())
}

/// Writes `specs` as `model.safetensors`, or as `model-0000i-of-0000N.safetensors`
/// shards plus `model.safetensors.index.json` when they exceed `shard_size`.
///
/// Tensors are assigned to shards in name order and laid out within a shard
/// as [`write_safetensors`] does. `produce` is called once per tensor, in
/// file order, and must write exactly the tensor's bytes. `progress` gets the
/// bytes written so far and the total after each tensor.
pub fn write_weights<E: From<Error>>(
    out: &mut OutputDir,
    mut specs: Vec<TensorSpec>,
    shard_size: u64,
    produce: &mut dyn FnMut(&TensorSpec, &mut crate::OutputFile<'_>) -> Result<(), E>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), E> {
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = specs.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(Error::OutputPath { path: out.target().into(), problem: format!("tensor `{}` produced twice", w[0].name) }.into());
    }
    let shards = plan_shards(out.target(), &specs, shard_size)?;
    let n = shards.len().max(1);
    let mut weight_map = serde_json::Map::new();
    let total: u64 = specs.iter().map(|s| s.nbytes().unwrap_or(0)).sum();
    let mut done = 0u64;
    for (si, members) in shards.iter().enumerate() {
        let file_name = if n == 1 { "model.safetensors".to_owned() } else { format!("model-{:05}-of-{n:05}.safetensors", si + 1) };
        let members: Vec<&TensorSpec> = members.iter().map(|&i| &specs[i]).collect();
        let mut file = out.create_file(&file_name)?;
        write_safetensors(&mut file, &members, produce, &mut |spec, size| {
            done += size;
            progress(done, total);
            weight_map.insert(spec.name.clone(), json!(file_name));
        })?;
        file.finish()?;
    }
    if n > 1 {
        let sorted: BTreeMap<_, _> = weight_map.into_iter().collect();
        let index = json!({"metadata": {"total_size": total}, "weight_map": sorted});
        let mut bytes = serde_json::to_vec_pretty(&index).unwrap_or_default();
        bytes.push(b'\n');
        out.write_file(crate::checkpoint::INDEX_FILE, &bytes)?;
    }
    Ok(())
}

/// Writes f32 `values` stored as `dtype` (rounded to nearest) into `sink`.
pub fn write_values(sink: &mut dyn Sink, dtype: DType, values: &[f32]) -> Result<()> {
    let bytes = pesc_tensor::from_f32(dtype, values).ok_or(Error::NotAFloatType { dtype })?;
    sink.write_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("5GB"), Some(5_000_000_000));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1234"), Some(1234));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("5TB"), None);
        assert_eq!(parse_size("99999999999999999999GB"), None);
    }

    #[test]
    fn shards_are_greedy_and_oversized_tensors_stand_alone() {
        let t = |name: &str, n: u64| TensorSpec { name: name.into(), dtype: DType::U8, shape: vec![n] };
        let specs = vec![t("a", 40), t("b", 40), t("c", 100), t("d", 10)];
        let out = std::path::Path::new("out");
        assert_eq!(plan_shards(out, &specs, 100).unwrap(), vec![vec![0, 1], vec![2], vec![3]]);
        assert_eq!(plan_shards(out, &specs, 1000).unwrap(), vec![vec![0, 1, 2, 3]]);
    }
}
