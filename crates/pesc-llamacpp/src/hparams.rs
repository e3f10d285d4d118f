//! The `{arch}.*` hyperparameter keys, both ways: written from a
//! `config.json` as llama.cpp's converter writes them ([`write()`]), and read
//! back into the `config.json` they imply ([`Hparams::read`],
//! [`Hparams::config_json`]). Each key is spelled once, in [`key`].

use crate::recipe::{size_label, ExportOptions, QUANTIZATION_VERSION};
use crate::LlamaCppError;
use pesc_gguf::{GgufFile, Metadata, MetadataError, Value};
use pesc_hf::{Family, Model, ModelConfig, Moe, RopeScaling};
use serde_json::{json, Map, Value as Json};

/// The hyperparameter keys, after `{arch}.`.
pub mod key {
    /// Decoder layers.
    pub const BLOCK_COUNT: &str = "block_count";
    /// Training context.
    pub const CONTEXT_LENGTH: &str = "context_length";
    /// Hidden size.
    pub const EMBEDDING_LENGTH: &str = "embedding_length";
    /// FFN width.
    pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
    /// Attention heads.
    pub const HEAD_COUNT: &str = "attention.head_count";
    /// Key/value heads.
    pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
    /// Per-head key width.
    pub const KEY_LENGTH: &str = "attention.key_length";
    /// Per-head value width.
    pub const VALUE_LENGTH: &str = "attention.value_length";
    /// RMSNorm epsilon.
    pub const RMS_EPS: &str = "attention.layer_norm_rms_epsilon";
    /// RoPE base.
    pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
    /// Rotated dimensions per head.
    pub const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";
    /// RoPE scaling kind.
    pub const ROPE_SCALING_TYPE: &str = "rope.scaling.type";
    /// RoPE scaling factor.
    pub const ROPE_SCALING_FACTOR: &str = "rope.scaling.factor";
    /// Vocabulary size.
    pub const VOCAB_SIZE: &str = "vocab_size";
    /// Experts per layer.
    pub const EXPERT_COUNT: &str = "expert_count";
    /// Experts per token.
    pub const EXPERT_USED_COUNT: &str = "expert_used_count";
    /// Router scoring (llama.cpp's `LLAMA_EXPERT_GATING_FUNC_TYPE_*`).
    pub const EXPERT_GATING_FUNC: &str = "expert_gating_func";
    /// PESC adapter width (`pesc` only).
    pub const ADAPTER_DIM: &str = "adapter_dim";
    /// PESC adapter scale, `moe_scaling` (`pesc` only).
    pub const ADAPTER_SCALE: &str = "adapter_scale";
    /// The base a PESC model was crafted from, when it is not laid out as
    /// `llama` (`pesc` only; the one value is `qwen2`).
    pub const BASE_ARCHITECTURE: &str = "base_architecture";
}

/// llama.cpp's `LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX`.
pub const EXPERT_GATING_SOFTMAX: u32 = 1;

/// The hyperparameters of a GGUF file.
pub struct Hparams {
    /// `general.architecture`.
    pub arch: String,
    /// Decoder layers.
    pub layers: u64,
    hidden: u64,
    ffn: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    head_dim: u64,
    vocab: u64,
    /// Training context.
    pub context: Option<u64>,
    eps: f32,
    theta: f32,
    rope_scaling: Json,
    /// Experts per layer (0: dense).
    pub experts: u64,
    experts_used: u64,
    /// PESC: adapter width and scale.
    pesc: Option<(u32, f32)>,
    /// Whether the blocks are Qwen2's (`qwen2`, or `pesc` over a `qwen2` base).
    qwen2: bool,
}

fn meta(file: &GgufFile, e: MetadataError) -> LlamaCppError {
    LlamaCppError::from(file.metadata_error(e))
}

/// An f32 metadata value as the shortest decimal that reads back as it
/// (1e-5, not 9.999999747378752e-6).
fn shortest(x: f32) -> Json {
    x.to_string().parse::<f64>().map_or(Json::Null, |v| json!(v))
}

impl Hparams {
    /// Reads `{arch}.*` (`vocab_from_tokens`: the token count of
    /// `tokenizer.ggml.tokens`; `embed_rows`: `token_embd`'s, the fallbacks
    /// for the vocabulary size).
    pub fn read(file: &GgufFile, arch: &str, vocab_from_tokens: Option<u64>, embed_rows: u64) -> Result<Self, LlamaCppError> {
        let md = file.metadata();
        let path = file.path();
        let k = |name: &str| format!("{arch}.{name}");
        let bad = |name: &str, problem: String| LlamaCppError::Key { path: path.into(), key: k(name), problem };
        let u = |name: &str| -> Result<Option<u64>, LlamaCppError> {
            match md.get(&k(name)) {
                None => Ok(None),
                Some(Value::U32(v)) => Ok(Some(u64::from(*v))),
                Some(Value::U64(v)) => Ok(Some(*v)),
                Some(Value::I32(v)) if *v >= 0 => Ok(Some(u64::from(v.unsigned_abs()))),
                Some(other) => Err(bad(name, format!("is {}, expected an unsigned integer", other.type_name()))),
            }
        };
        let need = |name: &str| -> Result<u64, LlamaCppError> {
            u(name)?.filter(|v| *v > 0).ok_or_else(|| bad(name, "is missing or zero".into()))
        };
        let (hidden, heads) = (need(key::EMBEDDING_LENGTH)?, need(key::HEAD_COUNT)?);
        let kv_heads = u(key::HEAD_COUNT_KV)?.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(bad(key::HEAD_COUNT_KV, format!("{kv_heads} does not divide the head count {heads}")));
        }
        let head_dim = match (u(key::KEY_LENGTH)?, u(key::ROPE_DIMENSION_COUNT)?) {
            (Some(d), _) => (key::KEY_LENGTH, d),
            (None, Some(d)) => (key::ROPE_DIMENSION_COUNT, d),
            (None, None) => (key::EMBEDDING_LENGTH, hidden / heads),
        };
        if head_dim.1 % 2 != 0 {
            return Err(bad(head_dim.0, format!("implies a head size of {}, which is odd; rotary embeddings rotate pairs", head_dim.1)));
        }
        let f = |name: &str| md.opt_f32(&k(name)).map_err(|e| meta(file, e));
        let rope_scaling = match md.opt_str(&k(key::ROPE_SCALING_TYPE)).map_err(|e| meta(file, e))? {
            None | Some("none") => Json::Null,
            Some("linear") => json!({"type": "linear", "rope_type": "linear", "factor": f(key::ROPE_SCALING_FACTOR)?.unwrap_or(1.0)}),
            Some(other) => return Err(bad(key::ROPE_SCALING_TYPE, format!("`{other}` is not supported"))),
        };
        let experts = u(key::EXPERT_COUNT)?.unwrap_or(0);
        let experts_used = u(key::EXPERT_USED_COUNT)?.unwrap_or(0);
        if experts > 0 && (experts_used == 0 || experts_used > experts) {
            return Err(bad(key::EXPERT_USED_COUNT, format!("{experts_used} must be between 1 and `{}` {experts}", k(key::EXPERT_COUNT))));
        }
        let qwen2 = match arch {
            "qwen2" => true,
            "pesc" => match md.opt_str(&k(key::BASE_ARCHITECTURE)).map_err(|e| meta(file, e))? {
                None | Some("llama") => false,
                Some("qwen2") => true,
                Some(other) => return Err(bad(key::BASE_ARCHITECTURE, format!("`{other}` is not a base this tool knows (llama, qwen2)"))),
            },
            _ => false,
        };
        if arch == "qwen2" && experts > 0 {
            return Err(bad(key::EXPERT_COUNT, format!("is {experts}; llama.cpp's `qwen2` architecture has no experts")));
        }
        let pesc = if arch == "pesc" {
            if experts == 0 {
                return Err(bad(key::EXPERT_COUNT, "is missing or zero".into()));
            }
            let adapter_dim = md.opt_u32(&k(key::ADAPTER_DIM)).map_err(|e| meta(file, e))?.filter(|&a| a > 0);
            let adapter_dim = adapter_dim.ok_or_else(|| bad(key::ADAPTER_DIM, "is missing or zero".into()))?;
            let scale = f(key::ADAPTER_SCALE)?.unwrap_or(1.0);
            match md.opt_u32(&k(key::EXPERT_GATING_FUNC)).map_err(|e| meta(file, e))? {
                None | Some(EXPERT_GATING_SOFTMAX) => {}
                Some(other) => {
                    return Err(bad(key::EXPERT_GATING_FUNC, format!("{other} is not softmax (1), the only router scoring PESC defines")))
                }
            }
            Some((adapter_dim, scale))
        } else {
            None
        };
        Ok(Hparams {
            arch: arch.into(),
            layers: need(key::BLOCK_COUNT)?,
            hidden,
            ffn: need(key::FEED_FORWARD_LENGTH)?,
            heads,
            kv_heads,
            head_dim: head_dim.1,
            vocab: u(key::VOCAB_SIZE)?.or(vocab_from_tokens).unwrap_or(embed_rows),
            context: u(key::CONTEXT_LENGTH)?,
            eps: f(key::RMS_EPS)?.unwrap_or(1e-5),
            theta: f(key::ROPE_FREQ_BASE)?.unwrap_or(10_000.0),
            rope_scaling,
            experts,
            experts_used,
            pesc,
            qwen2,
        })
    }

    /// The model kind, for messages: `dense`, `Mixtral` or `PESC`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match (self.pesc.is_some(), self.experts) {
            (true, _) => "PESC",
            (false, 0) => "dense",
            _ => "Mixtral",
        }
    }

    /// The `config.json` these hyperparameters imply (`tied`: the file has no
    /// `output.weight`; `ids`: the vocabulary's bos, eos and pad ids).
    #[must_use]
    pub fn config_json(&self, tied: bool, ids: [Option<u32>; 3]) -> Map<String, Json> {
        let mut c = Map::new();
        let (model_type, architecture) = match (self.pesc.is_some(), self.experts, self.qwen2) {
            (true, _, true) => ("qwen2idae", "PescQwen2ForCausalLM"),
            (true, _, false) => ("camelidae", "PescLlamaForCausalLM"),
            (false, 0, true) => ("qwen2", "Qwen2ForCausalLM"),
            (false, 0, false) => ("llama", "LlamaForCausalLM"),
            _ => ("mixtral", "MixtralForCausalLM"),
        };
        c.insert("architectures".into(), json!([architecture]));
        c.insert("model_type".into(), json!(model_type));
        for (k, v) in [
            ("hidden_size", json!(self.hidden)),
            ("intermediate_size", json!(self.ffn)),
            ("num_hidden_layers", json!(self.layers)),
            ("num_attention_heads", json!(self.heads)),
            ("num_key_value_heads", json!(self.kv_heads)),
            ("head_dim", json!(self.head_dim)),
            ("vocab_size", json!(self.vocab)),
            ("max_position_embeddings", json!(self.context.unwrap_or(2048))),
            ("rms_norm_eps", shortest(self.eps)),
            ("rope_theta", shortest(self.theta)),
            ("rope_scaling", self.rope_scaling.clone()),
            ("tie_word_embeddings", json!(tied)),
            ("hidden_act", json!("silu")),
        ] {
            c.insert(k.into(), v);
        }
        if model_type == "mixtral" {
            c.insert("num_local_experts".into(), json!(self.experts));
            c.insert("num_experts_per_tok".into(), json!(self.experts_used));
            c.insert("output_router_logits".into(), json!(false));
            c.insert("router_aux_loss_coef".into(), json!(0.01));
            c.insert("router_jitter_noise".into(), json!(0.0));
            c.insert("sliding_window".into(), Json::Null);
        } else if self.qwen2 {
            c.insert("use_sliding_window".into(), json!(false));
        } else {
            c.insert("attention_bias".into(), json!(false));
            c.insert("mlp_bias".into(), json!(false));
        }
        if let Some((adapter_dim, scale)) = self.pesc {
            c.insert("pesc_base_model_type".into(), json!(if self.qwen2 { "qwen2" } else { "llama" }));
            c.insert("num_experts".into(), json!(self.experts));
            c.insert("topk".into(), json!(self.experts_used));
            c.insert("adapter_dim".into(), json!(adapter_dim));
            c.insert("moe_scaling".into(), shortest(scale));
            c.insert("moe_dtype".into(), json!("float32"));
            c.insert("output_router_logits".into(), json!(false));
        }
        let [bos, eos, pad] = ids;
        c.insert("bos_token_id".into(), json!(bos));
        c.insert("eos_token_id".into(), json!(eos));
        c.insert("pad_token_id".into(), json!(pad));
        c.insert("torch_dtype".into(), json!("float32"));
        c
    }
}

/// `f64` config values are stored as FLOAT32, rounded to nearest as gguf-py's `struct.pack('f')` does.
#[allow(clippy::cast_possible_truncation)]
fn f32_of(v: f64) -> Value {
    Value::F32(v as f32)
}

/// The general and hyperparameter metadata of the export of `model`, in the
/// converter's order: `general.architecture`, `general.type`, `general.name`
/// (the folder's name), `general.size_label`, the `{arch}.*` keys,
/// `general.file_type`, `{arch}.vocab_size`, `{arch}.rope.dimension_count`,
/// `general.quantization_version` (the converter writes it for every file
/// type). `attention.key_length` and `value_length` are written when
/// `config.json` sets `head_dim` or transformers' config class adds it (dense
/// Llama and Mistral), as the converter, which reads configs through
/// transformers, does.
pub fn write(model: &Model, opts: ExportOptions, md: &mut Metadata) -> Result<(), LlamaCppError> {
    let c: &ModelConfig = &model.config;
    let dir = &model.dir;
    let arch = crate::names::architecture(c);
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let u32_of = |key: &'static str, value: u64| -> Result<Value, LlamaCppError> {
        u32::try_from(value).map(Value::U32).map_err(|_| LlamaCppError::U32Field { path: dir.clone(), key, value })
    };
    let mut push = |key: &str, value: Value| md.push(key, value).map_err(LlamaCppError::MetadataEntry);
    let k = |name: &str| format!("{arch}.{name}");
    push("general.architecture", arch.into())?;
    push("general.type", "model".into())?;
    push("general.name", name.into())?;
    push("general.size_label", size_label(&crate::recipe::plan(c, opts)).into())?;
    push(&k(key::BLOCK_COUNT), u32_of("num_hidden_layers", c.num_layers)?)?;
    if let Some(ctx) = c.max_position_embeddings {
        push(&k(key::CONTEXT_LENGTH), u32_of("max_position_embeddings", ctx)?)?;
    }
    push(&k(key::EMBEDDING_LENGTH), u32_of("hidden_size", c.hidden_size)?)?;
    push(&k(key::FEED_FORWARD_LENGTH), u32_of("intermediate_size", c.intermediate_size)?)?;
    push(&k(key::HEAD_COUNT), u32_of("num_attention_heads", c.num_heads)?)?;
    push(&k(key::HEAD_COUNT_KV), u32_of("num_key_value_heads", c.num_kv_heads)?)?;
    if let RopeScaling::Linear { factor } = c.rope_scaling {
        push(&k(key::ROPE_SCALING_TYPE), "linear".into())?;
        push(&k(key::ROPE_SCALING_FACTOR), f32_of(factor))?;
    }
    push(&k(key::ROPE_FREQ_BASE), f32_of(c.rope_theta))?;
    push(&k(key::RMS_EPS), f32_of(c.rms_norm_eps))?;
    match &c.moe {
        Moe::Mixtral { num_experts, top_k } => {
            push(&k(key::EXPERT_COUNT), u32_of("num_local_experts", *num_experts)?)?;
            push(&k(key::EXPERT_USED_COUNT), u32_of("num_experts_per_tok", *top_k)?)?;
        }
        Moe::Pesc(p) => {
            push(&k(key::EXPERT_COUNT), u32_of("num_experts", p.num_experts)?)?;
            push(&k(key::EXPERT_USED_COUNT), u32_of("topk", p.top_k)?)?;
            push(&k(key::EXPERT_GATING_FUNC), Value::U32(EXPERT_GATING_SOFTMAX))?;
            push(&k(key::ADAPTER_DIM), u32_of("adapter_dim", p.adapter_dim)?)?;
            push(&k(key::ADAPTER_SCALE), f32_of(p.scaling))?;
            if c.family == Family::Qwen2 {
                push(&k(key::BASE_ARCHITECTURE), "qwen2".into())?;
            }
        }
        Moe::Dense => {}
    }
    // The converter reads the config through transformers, whose Llama and Mistral configs always carry `head_dim`.
    let has_head_dim = c.raw.get("head_dim").is_some_and(|v| !v.is_null())
        || (matches!(c.moe, Moe::Dense) && matches!(c.family, Family::Llama | Family::Mistral));
    if has_head_dim {
        push(&k(key::KEY_LENGTH), u32_of("head_dim", c.head_dim)?)?;
        push(&k(key::VALUE_LENGTH), u32_of("head_dim", c.head_dim)?)?;
    }
    push("general.file_type", Value::U32(opts.to.file_type()))?;
    // The converter's Qwen2 model writes neither (llama.cpp takes them from the vocabulary and the head size).
    if arch != "qwen2" {
        push(&k(key::VOCAB_SIZE), u32_of("vocab_size", c.vocab_size)?)?;
        push(&k(key::ROPE_DIMENSION_COUNT), u32_of("head_dim", c.head_dim)?)?;
    }
    push("general.quantization_version", Value::U32(QUANTIZATION_VERSION))?;
    Ok(())
}
