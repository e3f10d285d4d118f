//! `import-gguf`: a GGUF file ([`GgufModel`]: llama.cpp's `llama`, dense or
//! Mixtral, or this project's `pesc`) to a Hugging Face folder: tensors dequantized exactly to f32 (or rounded to
//! `--dtype`), llama.cpp's q/k row permutation undone, `config.json` and
//! `generation_config.json` from the metadata, and `tokenizer.json` /
//! `tokenizer_config.json` (with the chat template) from `tokenizer.ggml.*`.

use crate::folder::{emit_values, write_config};
use crate::CraftError;
use pesc_arch::GgufModel;
use pesc_io::{write_weights, OutputDir, TensorSpec};
use pesc_tensor::DType;
use serde_json::{json, Value};

/// A GGUF file checked for import: everything that can be wrong with it has
/// been found before any output exists.
pub struct Import<'a> {
    model: &'a GgufModel,
    config: serde_json::Map<String, Value>,
    generation: Value,
    tokenizer: Option<(Value, Value)>,
}

impl<'a> Import<'a> {
    /// Builds the files of the folder (the tensors are read by [`Import::write`]).
    pub fn prepare(model: &'a GgufModel, dtype: DType) -> Result<Self, CraftError> {
        let mut config = model.config_json.clone();
        config.insert("torch_dtype".into(), json!(crate::StoreDType::torch_name(dtype)));
        if config.contains_key("moe_dtype") {
            config.insert("moe_dtype".into(), json!(crate::StoreDType::torch_name(dtype)));
        }
        let tokenizer = model.tokenizer_files()?;
        let mut generation = serde_json::Map::new();
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
                generation.insert(key.into(), v.clone());
            }
        }
        Ok(Import { model, config, generation: Value::Object(generation), tokenizer })
    }

    /// Writes the folder into `out`: config, generation config, tokenizer
    /// files and the weights stored as `dtype`.
    pub fn write(&self, out: &mut OutputDir, dtype: DType, shard_size: u64, progress: &mut dyn FnMut(u64, u64)) -> Result<(), CraftError> {
        write_config(out, &self.config)?;
        out.write_file("generation_config.json", &pretty(&self.generation))?;
        if let Some((tokenizer, tokenizer_config)) = &self.tokenizer {
            out.write_file("tokenizer.json", &pretty(tokenizer))?;
            out.write_file("tokenizer_config.json", &pretty(tokenizer_config))?;
        }
        let specs: Vec<TensorSpec> =
            self.model.tensors().map(|(name, shape)| TensorSpec { name: name.to_owned(), dtype, shape: shape.to_vec() }).collect();
        write_weights::<CraftError>(
            out,
            specs,
            shard_size,
            &mut |spec, w| emit_values(spec.dtype, &self.model.read_f32(&spec.name)?, w),
            progress,
        )
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

#[cfg(test)]
mod tests {
    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        let (rows, cols, heads) = (24, 3, 3);
        #[allow(clippy::cast_precision_loss)]
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let p = crate::export::permute_rows(&w, rows, cols, heads);
        assert_ne!(p, w);
        // Head 0, rows of the first half land on even rows.
        assert_eq!(&p[cols..2 * cols], &w[4 * cols..5 * cols]);
        let bytes: Vec<u8> = p.iter().flat_map(|x| x.to_le_bytes()).collect();
        let back = pesc_arch::unpermute_rows(&bytes, rows, cols * 4, heads);
        let back: Vec<f32> = back.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(back, w);
    }
}
