//! `import-gguf`: a llama.cpp GGUF file (architecture `llama`, dense) to a
//! Hugging Face folder: tensors dequantized exactly to f32 (or rounded to
//! `--dtype`), llama.cpp's q/k row permutation undone, `config.json` and
//! `generation_config.json` from the metadata, and `tokenizer.json` /
//! `tokenizer_config.json` (with the chat template) from `tokenizer.ggml.*`.

use crate::folder::{emit_values, write_config};
use crate::gguf_tokenizer::{hf_tokenizer, GgufVocab};
use crate::CraftError;
use pesc_gguf::{GgufFile, Metadata};
use pesc_io::{write_weights, OutputDir, TensorSpec};
use pesc_tensor::DType;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Architectures `import-gguf` understands.
const SUPPORTED: [&str; 1] = ["llama"];

fn meta_err(file: &GgufFile, e: pesc_gguf::MetadataError) -> CraftError {
    CraftError::Gguf(file.metadata_error(e))
}

/// The sizes `import-gguf` reads from the metadata.
struct Hparams {
    layers: u64,
    hidden: u64,
    ffn: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    vocab: u64,
    context: Option<u64>,
    eps: f32,
    theta: f32,
    rope_scaling: Value,
}

fn hparams(file: &GgufFile, arch: &str, vocab_from_tokens: Option<u64>, embed_rows: u64) -> Result<Hparams, CraftError> {
    let md = file.metadata();
    let k = |name: &str| format!("{arch}.{name}");
    let u = |name: &str| -> Result<Option<u64>, CraftError> {
        match md.get(&k(name)) {
            None => Ok(None),
            Some(pesc_gguf::Value::U32(v)) => Ok(Some(u64::from(*v))),
            Some(pesc_gguf::Value::U64(v)) => Ok(Some(*v)),
            Some(pesc_gguf::Value::I32(v)) if *v >= 0 => Ok(Some(u64::from(v.unsigned_abs()))),
            Some(other) => Err(CraftError::Invalid(format!(
                "`{}`: key `{}` is {}, expected an unsigned integer",
                file.path().display(),
                k(name),
                other.type_name()
            ))),
        }
    };
    let need = |name: &str| -> Result<u64, CraftError> {
        u(name)?.filter(|v| *v > 0).ok_or_else(|| {
            CraftError::Invalid(format!("`{}`: key `{}` is missing or zero", file.path().display(), k(name)))
        })
    };
    let (hidden, heads) = (need("embedding_length")?, need("attention.head_count")?);
    let kv_heads = u("attention.head_count_kv")?.unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(CraftError::Invalid(format!("`{}`: `{}` {kv_heads} does not divide the head count {heads}", file.path().display(), k("attention.head_count_kv"))));
    }
    let head_dim = u("attention.key_length")?.or(u("rope.dimension_count")?).unwrap_or(hidden / heads);
    let f = |name: &str| md.opt_f32(&k(name)).map_err(|e| meta_err(file, e));
    let rope_scaling = match md.opt_str(&k("rope.scaling.type")).map_err(|e| meta_err(file, e))? {
        None | Some("none") => Value::Null,
        Some("linear") => json!({"type": "linear", "rope_type": "linear", "factor": f("rope.scaling.factor")?.unwrap_or(1.0)}),
        Some(other) => return Err(CraftError::Invalid(format!("`{}`: rope scaling `{other}` is not supported for import", file.path().display()))),
    };
    Ok(Hparams {
        layers: need("block_count")?,
        hidden,
        ffn: need("feed_forward_length")?,
        heads,
        kv_heads,
        head_dim,
        vocab: u("vocab_size")?.or(vocab_from_tokens).unwrap_or(embed_rows),
        context: u("context_length")?,
        eps: f("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        theta: f("rope.freq_base")?.unwrap_or(10_000.0),
        rope_scaling,
    })
}

/// GGUF tensor name -> Hugging Face name, for the dense `llama` layout.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    layer.parse::<u64>().ok()?;
    let hf = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's rotary row permutation of a q or k weight (`rows` ×
/// `cols`, row-major) with `heads` heads: GGUF row `h*d + 2i + t` holds
/// Hugging Face row `h*d + t*d/2 + i`.
fn unpermute(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for t in 0..2 {
                let src = (h * d + 2 * i + t) * cols;
                let dst = (h * d + t * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

fn vocab(file: &GgufFile, context: Option<u64>) -> Result<Option<GgufVocab>, CraftError> {
    let md: &Metadata = file.metadata();
    let Some(model) = md.opt_str("tokenizer.ggml.model").map_err(|e| meta_err(file, e))? else { return Ok(None) };
    // llama.cpp's placeholder for a model without a vocabulary.
    if matches!(model, "none" | "no_vocab") {
        return Ok(None);
    }
    let strings = |key: &str| -> Result<Vec<String>, CraftError> {
        if !md.contains(key) {
            return Ok(Vec::new());
        }
        Ok(md.get_str_array(key).map_err(|e| meta_err(file, e))?.iter().map(str::to_owned).collect())
    };
    let id = |key: &str| -> Result<Option<u32>, CraftError> { md.opt_u32(key).map_err(|e| meta_err(file, e)) };
    let token_types = if md.contains("tokenizer.ggml.token_type") {
        md.get_i32_array("tokenizer.ggml.token_type").map_err(|e| meta_err(file, e))?.to_vec()
    } else {
        Vec::new()
    };
    Ok(Some(GgufVocab {
        model: model.to_owned(),
        pre: md.opt_str("tokenizer.ggml.pre").map_err(|e| meta_err(file, e))?.map(str::to_owned),
        tokens: strings("tokenizer.ggml.tokens")?,
        token_types,
        merges: strings("tokenizer.ggml.merges")?,
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        add_bos: md.opt_bool("tokenizer.ggml.add_bos_token").map_err(|e| meta_err(file, e))?.unwrap_or(false),
        chat_template: md.opt_str("tokenizer.chat_template").map_err(|e| meta_err(file, e))?.map(str::to_owned),
        context_length: context,
    }))
}

/// A GGUF file checked for import: everything that can be wrong with it has
/// been found before any output exists.
pub struct Import<'a> {
    file: &'a GgufFile,
    hp: Hparams,
    config: serde_json::Map<String, Value>,
    generation: Value,
    tokenizer: Option<(Value, Value)>,
    sources: BTreeMap<String, &'a pesc_gguf::TensorInfo>,
}

impl<'a> Import<'a> {
    /// Checks the architecture, metadata, tokenizer and every tensor's name
    /// and shape against the config the metadata implies.
    pub fn prepare(file: &'a GgufFile, dtype: DType) -> Result<Self, CraftError> {
        let path = file.path().display().to_string();
        let arch = file.get_str("general.architecture").map_err(CraftError::Gguf)?.to_owned();
        if !SUPPORTED.contains(&arch.as_str()) {
            return Err(CraftError::Invalid(format!(
                "`{path}`: GGUF architecture `{arch}` is not supported for import (supported: {})",
                SUPPORTED.join(", ")
            )));
        }
        if file.metadata().opt_u32(&format!("{arch}.expert_count")).map_err(|e| meta_err(file, e))?.unwrap_or(0) > 0 {
            return Err(CraftError::Invalid(format!(
                "`{path}`: `{arch}.expert_count` is set: importing mixture-of-experts GGUF files is not supported yet"
            )));
        }
        let mut sources = BTreeMap::new();
        for t in file.tensors() {
            let name = hf_name(&t.name)
                .ok_or_else(|| CraftError::Invalid(format!("`{path}`: tensor `{}` is not part of a dense `{arch}` model", t.name)))?;
            sources.insert(name, t);
        }
        let embed = file
            .tensor("token_embd.weight")
            .ok_or_else(|| CraftError::Invalid(format!("`{path}`: tensor `token_embd.weight` is missing")))?;
        let embed_rows = embed.ne.get(1).copied().unwrap_or(0);
        let tokens = if file.metadata().contains("tokenizer.ggml.tokens") {
            Some(file.metadata().get_str_array("tokenizer.ggml.tokens").map_err(|e| meta_err(file, e))?.len() as u64)
        } else {
            None
        };
        let hp = hparams(file, &arch, tokens, embed_rows)?;
        let vocab = vocab(file, hp.context)?;
        let tokenizer = match &vocab {
            Some(v) => Some(hf_tokenizer(v).map_err(|e| CraftError::Invalid(format!("`{path}`: {e}")))?),
            None => None,
        };
        let id = |f: fn(&GgufVocab) -> Option<u32>| vocab.as_ref().and_then(f);
        let config = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hp.hidden,
            "intermediate_size": hp.ffn,
            "num_hidden_layers": hp.layers,
            "num_attention_heads": hp.heads,
            "num_key_value_heads": hp.kv_heads,
            "head_dim": hp.head_dim,
            "vocab_size": hp.vocab,
            "max_position_embeddings": hp.context.unwrap_or(2048),
            "rms_norm_eps": shortest(hp.eps),
            "rope_theta": shortest(hp.theta),
            "rope_scaling": hp.rope_scaling,
            "tie_word_embeddings": file.tensor("output.weight").is_none(),
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": id(|v| v.bos),
            "eos_token_id": id(|v| v.eos),
            "pad_token_id": id(|v| v.pad),
            "torch_dtype": crate::StoreDType::torch_name(dtype),
        });
        let Value::Object(config) = config else { unreachable!("a JSON object literal") };
        // The tensors must be exactly those the config implies, with its shapes.
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        let parsed = pesc_arch::ModelConfig::parse(std::path::Path::new("config.json"), &bytes)
            .map_err(|e| CraftError::Invalid(format!("`{path}`: the metadata describes an invalid model: {e}")))?;
        let expected: BTreeMap<String, Vec<u64>> = parsed.expected_tensors()?.into_iter().collect();
        for (name, t) in &sources {
            let shape: Vec<u64> = t.ne.iter().rev().copied().collect();
            match expected.get(name) {
                Some(want) if *want == shape => {}
                Some(want) => {
                    return Err(CraftError::Invalid(format!(
                        "`{path}`: tensor `{}` has shape {} but the `{arch}.*` metadata ({}) implies {}",
                        t.name,
                        pesc_tensor::shape_str(&shape),
                        parsed.sizes(),
                        pesc_tensor::shape_str(want)
                    )))
                }
                None => {
                    return Err(CraftError::Invalid(format!(
                        "`{path}`: tensor `{}` does not belong to a model with {} layers (`{arch}.block_count`)",
                        t.name, hp.layers
                    )))
                }
            }
        }
        if let Some(missing) = expected.keys().find(|n| !sources.contains_key(*n)) {
            return Err(CraftError::Invalid(format!(
                "`{path}`: the `{arch}.*` metadata implies tensor `{missing}`, which the file lacks"
            )));
        }
        let mut generation = serde_json::Map::new();
        for (key, v) in [("bos_token_id", id(|v| v.bos)), ("eos_token_id", id(|v| v.eos)), ("pad_token_id", id(|v| v.pad))] {
            if let Some(v) = v {
                generation.insert(key.into(), json!(v));
            }
        }
        Ok(Import { file, hp, config, generation: Value::Object(generation), tokenizer, sources })
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
        let specs: Vec<TensorSpec> = self
            .sources
            .iter()
            .map(|(name, t)| TensorSpec { name: name.clone(), dtype, shape: t.ne.iter().rev().copied().collect() })
            .collect();
        let (q_heads, kv_heads) = (usize::try_from(self.hp.heads).unwrap_or(1), usize::try_from(self.hp.kv_heads).unwrap_or(1));
        let file = self.file;
        write_weights::<CraftError>(
            out,
            specs,
            shard_size,
            &mut |spec, w| {
                let t = self.sources[&spec.name];
                let n = usize::try_from(t.n_elements()).unwrap_or(0);
                let values = pesc_quant::dequantize(t.ty, &file.read(t).map_err(CraftError::Gguf)?, n)
                    .map_err(|e| CraftError::Invalid(format!("`{}`: tensor `{}`: {e}", file.path().display(), t.name)))?;
                let rows = usize::try_from(spec.shape[0]).unwrap_or(0);
                let cols = n / rows.max(1);
                let values = if spec.name.ends_with("q_proj.weight") {
                    unpermute(&values, rows, cols, q_heads)
                } else if spec.name.ends_with("k_proj.weight") {
                    unpermute(&values, rows, cols, kv_heads)
                } else {
                    values
                };
                emit_values(spec.dtype, &values, w)
            },
            progress,
        )
    }
}

/// An f32 metadata value as the shortest decimal that reads back as it
/// (1e-5, not 9.999999747378752e-6).
fn shortest(x: f32) -> Value {
    x.to_string().parse::<f64>().map_or(Value::Null, |v| json!(v))
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        let (rows, cols, heads) = (24, 3, 3);
        #[allow(clippy::cast_precision_loss)]
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let p = crate::export::permute_rows(&w, rows, cols, heads);
        assert_ne!(p, w);
        // Head 0, rows of the first half land on even rows.
        assert_eq!(&p[cols..2 * cols], &w[4 * cols..5 * cols]);
        assert_eq!(unpermute(&p, rows, cols, heads), w);
    }

    #[test]
    fn names_map_both_ways_for_the_dense_layout() {
        assert_eq!(hf_name("blk.12.attn_q.weight").as_deref(), Some("model.layers.12.self_attn.q_proj.weight"));
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("blk.0.ffn_gate_exps.weight"), None);
    }
}
