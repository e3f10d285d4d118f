//! `import-gguf`: a GGUF file ([`GgufModel`]: llama.cpp's `llama`, dense or
//! Mixtral, or this project's `pesc`) to a Hugging Face folder: tensors
//! dequantized exactly to f32 (or rounded to `--dtype`), llama.cpp's q/k row
//! permutation undone, `config.json` and `generation_config.json` from the
//! metadata, and `tokenizer.json` / `tokenizer_config.json` (with the chat
//! template) from `tokenizer.ggml.*`.

use crate::{GgufModel, LlamaCppError};
use pesc_hf::output::{write_config, write_json};
use pesc_hf::StoreDType;
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
    pub fn prepare(model: &'a GgufModel, dtype: DType) -> Result<Self, LlamaCppError> {
        let mut config = model.config_json.clone();
        config.insert("torch_dtype".into(), json!(StoreDType::torch_name(dtype)));
        if config.contains_key("moe_dtype") {
            config.insert("moe_dtype".into(), json!(StoreDType::torch_name(dtype)));
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
    pub fn write(
        &self,
        out: &mut OutputDir,
        dtype: DType,
        shard_size: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), LlamaCppError> {
        write_config(out, &self.config)?;
        write_json(out, "generation_config.json", &self.generation)?;
        if let Some((tokenizer, tokenizer_config)) = &self.tokenizer {
            write_json(out, "tokenizer.json", tokenizer)?;
            write_json(out, "tokenizer_config.json", tokenizer_config)?;
        }
        let specs: Vec<TensorSpec> =
            self.model.tensors().map(|(name, shape)| TensorSpec { name: name.to_owned(), dtype, shape: shape.to_vec() }).collect();
        write_weights::<LlamaCppError>(
            out,
            specs,
            shard_size,
            &mut |spec, w| Ok(pesc_io::write_values(w, spec.dtype, &self.model.read_f32(&spec.name)?)?),
            progress,
        )
    }
}
