//! A GGUF file read as a model: the Hugging Face config its metadata implies
//! and, for every Hugging Face tensor name, where its values lie in the file.
//!
//! Three layouts are understood (`docs/format.md` §8): llama.cpp's `llama`
//! (dense, or Mixtral when `llama.expert_count` > 0, with stacked
//! `ffn_{gate,up,down}_exps` experts) and this project's `pesc` (the `llama`
//! layout plus `ffn_adapter_gate_inp` routers and stacked
//! `ffn_adapter_{down,up}_exps` adapters). Every tensor's shape is checked
//! against the config before anything is read; q and k rows are returned in
//! Hugging Face order (llama.cpp's rotary permutation undone).

use crate::config::ModelConfig;
use crate::gguf_tokenizer::{hf_tokenizer, GgufVocab};
use crate::names::{mixtral_expert, mixtral_gate, pesc_router, ExpertNaming};
use crate::ArchError;
use pesc_gguf::{GgmlType, GgufFile, MetadataError, TensorInfo};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// GGUF architectures this tool reads.
pub const GGUF_ARCHITECTURES: [&str; 2] = ["llama", "pesc"];

/// Where a Hugging Face tensor lies in the file.
#[derive(Debug, Clone)]
struct Source {
    /// The GGUF tensor.
    tensor: String,
    /// For stacked experts: which one.
    expert: Option<u64>,
    /// For q and k: the head count of the rotary permutation to undo.
    permute_heads: Option<u64>,
    /// The Hugging Face shape.
    shape: Vec<u64>,
}

/// A tensor's stored bytes in Hugging Face row order.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// The ggml type.
    pub ty: GgmlType,
    /// Hugging Face shape (rows first).
    pub shape: Vec<u64>,
    /// The encoded rows, `shape[0]` of them.
    pub bytes: Vec<u8>,
}

/// A GGUF file whose metadata and tensors agree.
pub struct GgufModel {
    /// The file.
    pub file: GgufFile,
    /// `general.architecture`.
    pub arch: String,
    /// The config the metadata implies, validated.
    pub config: ModelConfig,
    /// That config as `config.json` would hold it.
    pub config_json: Map<String, Value>,
    /// The vocabulary, unless the file has none.
    pub vocab: Option<GgufVocab>,
    sources: BTreeMap<String, Source>,
}

fn invalid(path: &Path, problem: impl Into<String>) -> ArchError {
    ArchError::Gguf { path: path.to_path_buf(), problem: problem.into() }
}

fn meta(file: &GgufFile, e: MetadataError) -> ArchError {
    ArchError::from(file.metadata_error(e))
}

/// The hyperparameters read from `{arch}.*`.
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
    experts: u64,
    experts_used: u64,
}

fn hparams(file: &GgufFile, arch: &str, vocab_from_tokens: Option<u64>, embed_rows: u64) -> Result<Hparams, ArchError> {
    let md = file.metadata();
    let path = file.path();
    let k = |name: &str| format!("{arch}.{name}");
    let u = |name: &str| -> Result<Option<u64>, ArchError> {
        match md.get(&k(name)) {
            None => Ok(None),
            Some(pesc_gguf::Value::U32(v)) => Ok(Some(u64::from(*v))),
            Some(pesc_gguf::Value::U64(v)) => Ok(Some(*v)),
            Some(pesc_gguf::Value::I32(v)) if *v >= 0 => Ok(Some(u64::from(v.unsigned_abs()))),
            Some(other) => Err(invalid(path, format!("key `{}` is {}, expected an unsigned integer", k(name), other.type_name()))),
        }
    };
    let need = |name: &str| -> Result<u64, ArchError> {
        u(name)?.filter(|v| *v > 0).ok_or_else(|| invalid(path, format!("key `{}` is missing or zero", k(name))))
    };
    let (hidden, heads) = (need("embedding_length")?, need("attention.head_count")?);
    let kv_heads = u("attention.head_count_kv")?.unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(invalid(path, format!("`{}` {kv_heads} does not divide the head count {heads}", k("attention.head_count_kv"))));
    }
    let head_dim = u("attention.key_length")?.or(u("rope.dimension_count")?).unwrap_or(hidden / heads);
    let f = |name: &str| md.opt_f32(&k(name)).map_err(|e| meta(file, e));
    let rope_scaling = match md.opt_str(&k("rope.scaling.type")).map_err(|e| meta(file, e))? {
        None | Some("none") => Value::Null,
        Some("linear") => json!({"type": "linear", "rope_type": "linear", "factor": f("rope.scaling.factor")?.unwrap_or(1.0)}),
        Some(other) => return Err(invalid(path, format!("rope scaling `{other}` (`{}`) is not supported", k("rope.scaling.type")))),
    };
    let experts = u("expert_count")?.unwrap_or(0);
    let experts_used = u("expert_used_count")?.unwrap_or(0);
    if experts > 0 && (experts_used == 0 || experts_used > experts) {
        return Err(invalid(
            path,
            format!("`{}` {experts_used} must be between 1 and `{}` {experts}", k("expert_used_count"), k("expert_count")),
        ));
    }
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
        experts,
        experts_used,
    })
}

/// The Hugging Face tensors one GGUF tensor holds: `(name, expert)` pairs.
fn hf_names(gguf: &str, arch: &str, experts: u64) -> Option<Vec<(String, Option<u64>)>> {
    let single = |n: String| Some(vec![(n, None)]);
    match gguf {
        "token_embd.weight" => return single("model.embed_tokens.weight".into()),
        "output_norm.weight" => return single("model.norm.weight".into()),
        "output.weight" => return single("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let l = layer.parse::<u64>().ok()?;
    let dense = match tail {
        "attn_norm.weight" => Some("input_layernorm.weight"),
        "ffn_norm.weight" => Some("post_attention_layernorm.weight"),
        "attn_q.weight" => Some("self_attn.q_proj.weight"),
        "attn_k.weight" => Some("self_attn.k_proj.weight"),
        "attn_v.weight" => Some("self_attn.v_proj.weight"),
        "attn_output.weight" => Some("self_attn.o_proj.weight"),
        _ => None,
    };
    if let Some(hf) = dense {
        return single(format!("model.layers.{l}.{hf}"));
    }
    let stacked = |f: &dyn Fn(u64) -> String| Some((0..experts).map(|j| (f(j), Some(j))).collect());
    let mixtral = arch == "llama" && experts > 0;
    match tail {
        "ffn_gate.weight" | "ffn_up.weight" | "ffn_down.weight" if !mixtral => {
            let proj = &tail[4..tail.len() - 7];
            single(crate::names::dense_mlp(l, &format!("{proj}_proj")))
        }
        "ffn_gate_inp.weight" if mixtral => single(mixtral_gate(l)),
        "ffn_gate_exps.weight" if mixtral => stacked(&|j| mixtral_expert(l, j, "w1")),
        "ffn_up_exps.weight" if mixtral => stacked(&|j| mixtral_expert(l, j, "w3")),
        "ffn_down_exps.weight" if mixtral => stacked(&|j| mixtral_expert(l, j, "w2")),
        "ffn_adapter_gate_inp.weight" if arch == "pesc" => single(pesc_router(l)),
        "ffn_adapter_down_exps.weight" if arch == "pesc" => stacked(&|j| ExpertNaming::Camelidae.adapter(l, j, "down")),
        "ffn_adapter_up_exps.weight" if arch == "pesc" => stacked(&|j| ExpertNaming::Camelidae.adapter(l, j, "up")),
        _ => None,
    }
}

fn read_vocab(file: &GgufFile, context: Option<u64>) -> Result<Option<GgufVocab>, ArchError> {
    let md = file.metadata();
    let Some(model) = md.opt_str("tokenizer.ggml.model").map_err(|e| meta(file, e))? else { return Ok(None) };
    // llama.cpp's placeholder for a model without a vocabulary.
    if matches!(model, "none" | "no_vocab") {
        return Ok(None);
    }
    let strings = |key: &str| -> Result<Vec<String>, ArchError> {
        if !md.contains(key) {
            return Ok(Vec::new());
        }
        Ok(md.get_str_array(key).map_err(|e| meta(file, e))?.iter().map(str::to_owned).collect())
    };
    let id = |key: &str| -> Result<Option<u32>, ArchError> { md.opt_u32(key).map_err(|e| meta(file, e)) };
    let token_types = if md.contains("tokenizer.ggml.token_type") {
        md.get_i32_array("tokenizer.ggml.token_type").map_err(|e| meta(file, e))?.to_vec()
    } else {
        Vec::new()
    };
    Ok(Some(GgufVocab {
        model: model.to_owned(),
        pre: md.opt_str("tokenizer.ggml.pre").map_err(|e| meta(file, e))?.map(str::to_owned),
        tokens: strings("tokenizer.ggml.tokens")?,
        token_types,
        merges: strings("tokenizer.ggml.merges")?,
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        add_bos: md.opt_bool("tokenizer.ggml.add_bos_token").map_err(|e| meta(file, e))?.unwrap_or(false),
        chat_template: md.opt_str("tokenizer.chat_template").map_err(|e| meta(file, e))?.map(str::to_owned),
        context_length: context,
    }))
}

/// An f32 metadata value as the shortest decimal that reads back as it
/// (1e-5, not 9.999999747378752e-6).
fn shortest(x: f32) -> Value {
    x.to_string().parse::<f64>().map_or(Value::Null, |v| json!(v))
}

impl GgufModel {
    /// Opens `path` and checks the architecture, metadata, tokenizer and
    /// every tensor's name and shape against the config the metadata implies.
    pub fn open(path: &Path) -> Result<Self, ArchError> {
        let file = GgufFile::open(path).map_err(ArchError::from)?;
        let arch = file.get_str("general.architecture").map_err(ArchError::from)?.to_owned();
        if !GGUF_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(invalid(
                path,
                format!("GGUF architecture `{arch}` is not supported (supported: {})", GGUF_ARCHITECTURES.join(", ")),
            ));
        }
        let embed = file.tensor("token_embd.weight").ok_or_else(|| invalid(path, "tensor `token_embd.weight` is missing"))?;
        let embed_rows = embed.ne.get(1).copied().unwrap_or(0);
        let tokens = if file.metadata().contains("tokenizer.ggml.tokens") {
            Some(file.metadata().get_str_array("tokenizer.ggml.tokens").map_err(|e| meta(&file, e))?.len() as u64)
        } else {
            None
        };
        let hp = hparams(&file, &arch, tokens, embed_rows)?;
        if arch == "pesc" && hp.experts == 0 {
            return Err(invalid(path, "key `pesc.expert_count` is missing or zero"));
        }
        let vocab = read_vocab(&file, hp.context)?;
        let config_json = config_json(&file, &arch, &hp, vocab.as_ref())?;
        let bytes = serde_json::to_vec(&config_json).unwrap_or_default();
        let config = ModelConfig::parse(&path.with_file_name("config.json"), &bytes)
            .map_err(|e| invalid(path, format!("the metadata describes an invalid model: {e}")))?;
        let expected: BTreeMap<String, Vec<u64>> = config.expected_tensors()?.into_iter().collect();
        let kind = if arch == "pesc" {
            "PESC"
        } else if hp.experts > 0 {
            "Mixtral"
        } else {
            "dense"
        };
        let mut sources = BTreeMap::new();
        for t in file.tensors() {
            let names = hf_names(&t.name, &arch, hp.experts)
                .ok_or_else(|| invalid(path, format!("tensor `{}` is not part of a {kind} `{arch}` model", t.name)))?;
            let stacked = names.len() > 1 || names.first().is_some_and(|(_, e)| e.is_some());
            let mut shape = t.shape();
            if stacked {
                if t.ne.len() != 3 || t.ne[2] != hp.experts {
                    return Err(invalid(
                        path,
                        format!(
                            "tensor `{}` has shape {} but stacks `{arch}.expert_count` = {} experts",
                            t.name,
                            pesc_tensor::shape_str(&shape),
                            hp.experts
                        ),
                    ));
                }
                shape.remove(0);
            }
            for (name, expert) in names {
                match expected.get(&name) {
                    Some(want) if *want == shape => {}
                    Some(want) => {
                        return Err(invalid(
                            path,
                            format!(
                                "tensor `{}` has shape {} but the `{arch}.*` metadata ({}) implies {}",
                                t.name,
                                pesc_tensor::shape_str(&shape),
                                config.sizes(),
                                pesc_tensor::shape_str(want)
                            ),
                        ))
                    }
                    None => {
                        return Err(invalid(
                            path,
                            format!("tensor `{}` does not belong to a model with {} layers (`{arch}.block_count`)", t.name, hp.layers),
                        ))
                    }
                }
                let permute_heads = if name.ends_with("q_proj.weight") {
                    Some(hp.heads)
                } else if name.ends_with("k_proj.weight") {
                    Some(hp.kv_heads)
                } else {
                    None
                };
                if let Some(h) = permute_heads {
                    if shape[0] % (2 * h) != 0 {
                        return Err(invalid(
                            path,
                            format!("tensor `{}`: {} rows do not split into {h} heads of rotary pairs", t.name, shape[0]),
                        ));
                    }
                }
                sources.insert(name, Source { tensor: t.name.clone(), expert, permute_heads, shape: shape.clone() });
            }
        }
        if let Some(missing) = expected.keys().find(|n| !sources.contains_key(*n)) {
            return Err(invalid(path, format!("the `{arch}.*` metadata implies tensor `{missing}`, which the file lacks")));
        }
        Ok(GgufModel { file, arch, config, config_json, vocab, sources })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Every Hugging Face tensor with its shape, in name order.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &[u64])> {
        self.sources.iter().map(|(n, s)| (n.as_str(), s.shape.as_slice()))
    }

    /// The GGUF tensor holding `name` and its type.
    #[must_use]
    pub fn stored(&self, name: &str) -> Option<&TensorInfo> {
        self.sources.get(name).and_then(|s| self.file.tensor(&s.tensor))
    }

    /// `tokenizer.json` and `tokenizer_config.json` rebuilt from the metadata.
    pub fn tokenizer_files(&self) -> Result<Option<(Value, Value)>, ArchError> {
        self.vocab.as_ref().map(hf_tokenizer).transpose().map_err(|e| invalid(self.path(), e))
    }

    fn source(&self, name: &str) -> Result<(&Source, &TensorInfo), ArchError> {
        let s = self.sources.get(name).ok_or_else(|| invalid(self.path(), format!("tensor `{name}` is not in the file")))?;
        let t = self.file.tensor(&s.tensor).ok_or_else(|| invalid(self.path(), format!("tensor `{}` is not in the file", s.tensor)))?;
        Ok((s, t))
    }

    /// The stored bytes of `name` (one expert's slice of a stacked tensor),
    /// rows in Hugging Face order.
    pub fn read_raw(&self, name: &str) -> Result<RawTensor, ArchError> {
        let (s, t) = self.source(name)?;
        let rows = s.shape[0];
        let row_bytes =
            t.ty.row_bytes(t.ne[0]).ok_or_else(|| invalid(self.path(), format!("tensor `{}`: rows are not whole blocks", t.name)))?;
        let len = rows * s.shape[1..].iter().product::<u64>() / t.ne[0] * row_bytes;
        let bytes = match s.expert {
            Some(j) => self.file.read_part(t, j * len, len),
            None => self.file.read(t),
        }
        .map_err(ArchError::from)?;
        let bytes = match s.permute_heads {
            Some(heads) => unpermute_rows(
                &bytes,
                usize::try_from(rows).unwrap_or(0),
                usize::try_from(row_bytes).unwrap_or(0),
                usize::try_from(heads).unwrap_or(1),
            ),
            None => bytes,
        };
        Ok(RawTensor { ty: t.ty, shape: s.shape.clone(), bytes })
    }

    /// The values of `name`, dequantized exactly to f32, in Hugging Face
    /// layout.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, ArchError> {
        let raw = self.read_raw(name)?;
        let n = usize::try_from(raw.shape.iter().product::<u64>()).unwrap_or(0);
        pesc_quant::dequantize(raw.ty, &raw.bytes, n).map_err(|e| invalid(self.path(), format!("tensor `{name}`: {e}")))
    }
}

/// The `config.json` the metadata implies.
fn config_json(file: &GgufFile, arch: &str, hp: &Hparams, vocab: Option<&GgufVocab>) -> Result<Map<String, Value>, ArchError> {
    let id = |f: fn(&GgufVocab) -> Option<u32>| vocab.and_then(f);
    let mut c = Map::new();
    let (model_type, architecture) = match (arch, hp.experts) {
        ("pesc", _) => ("camelidae", "PescLlamaForCausalLM"),
        (_, 0) => ("llama", "LlamaForCausalLM"),
        _ => ("mixtral", "MixtralForCausalLM"),
    };
    c.insert("architectures".into(), json!([architecture]));
    c.insert("model_type".into(), json!(model_type));
    for (k, v) in [
        ("hidden_size", json!(hp.hidden)),
        ("intermediate_size", json!(hp.ffn)),
        ("num_hidden_layers", json!(hp.layers)),
        ("num_attention_heads", json!(hp.heads)),
        ("num_key_value_heads", json!(hp.kv_heads)),
        ("head_dim", json!(hp.head_dim)),
        ("vocab_size", json!(hp.vocab)),
        ("max_position_embeddings", json!(hp.context.unwrap_or(2048))),
        ("rms_norm_eps", shortest(hp.eps)),
        ("rope_theta", shortest(hp.theta)),
        ("rope_scaling", hp.rope_scaling.clone()),
        ("tie_word_embeddings", json!(file.tensor("output.weight").is_none())),
        ("hidden_act", json!("silu")),
    ] {
        c.insert(k.into(), v);
    }
    if model_type == "mixtral" {
        c.insert("num_local_experts".into(), json!(hp.experts));
        c.insert("num_experts_per_tok".into(), json!(hp.experts_used));
        c.insert("output_router_logits".into(), json!(false));
        c.insert("router_aux_loss_coef".into(), json!(0.01));
        c.insert("router_jitter_noise".into(), json!(0.0));
        c.insert("sliding_window".into(), Value::Null);
    } else {
        c.insert("attention_bias".into(), json!(false));
        c.insert("mlp_bias".into(), json!(false));
    }
    if arch == "pesc" {
        let md = file.metadata();
        let adapter_dim = md.opt_u32("pesc.adapter_dim").map_err(|e| meta(file, e))?.filter(|&a| a > 0);
        let adapter_dim = adapter_dim.ok_or_else(|| invalid(file.path(), "key `pesc.adapter_dim` is missing or zero"))?;
        let scale = md.opt_f32("pesc.adapter_scale").map_err(|e| meta(file, e))?.unwrap_or(1.0);
        match md.opt_u32("pesc.expert_gating_func").map_err(|e| meta(file, e))? {
            None | Some(1) => {}
            Some(other) => {
                return Err(invalid(
                    file.path(),
                    format!("`pesc.expert_gating_func` {other} is not softmax (1), the only router scoring PESC defines"),
                ))
            }
        }
        c.insert("pesc_base_model_type".into(), json!("llama"));
        c.insert("num_experts".into(), json!(hp.experts));
        c.insert("topk".into(), json!(hp.experts_used));
        c.insert("adapter_dim".into(), json!(adapter_dim));
        c.insert("moe_scaling".into(), shortest(scale));
        c.insert("moe_dtype".into(), json!("float32"));
        c.insert("output_router_logits".into(), json!(false));
    }
    c.insert("bos_token_id".into(), json!(id(|v| v.bos)));
    c.insert("eos_token_id".into(), json!(id(|v| v.eos)));
    c.insert("pad_token_id".into(), json!(id(|v| v.pad)));
    c.insert("torch_dtype".into(), json!("float32"));
    Ok(c)
}

/// Undoes llama.cpp's rotary row permutation on encoded rows (`rows` rows of
/// `row_bytes`, `heads` heads): GGUF row `h*d + 2i + t` holds Hugging Face
/// row `h*d + t*d/2 + i`. Rows are whole blocks, so moving encoded rows is
/// the same as moving values.
#[must_use]
pub fn unpermute_rows(bytes: &[u8], rows: usize, row_bytes: usize, heads: usize) -> Vec<u8> {
    let d = rows / heads.max(1);
    let half = d / 2;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for i in 0..half {
            for t in 0..2 {
                let src = (h * d + 2 * i + t) * row_bytes;
                let dst = (h * d + t * half + i) * row_bytes;
                out[dst..dst + row_bytes].copy_from_slice(&bytes[src..src + row_bytes]);
            }
        }
    }
    out
}

/// Whether `path` names a GGUF file (an existing file ending in `.gguf`).
#[must_use]
pub fn is_gguf_path(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
