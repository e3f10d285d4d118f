//! `config.json` of the Llama family, validated.

use crate::HfError;
use crate::{MAX_EXPERTS, MAX_LAYERS};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The dense architecture a model is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama` (TinyLlama, Llama 2/3, Yi, SmolLM2): optional attention and MLP biases.
    Llama,
    /// `mistral`: no biases.
    Mistral,
    /// `qwen2`: biases on q, k and v.
    Qwen2,
}

impl Family {
    /// The transformers `model_type`.
    #[must_use]
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }

    /// The transformers causal-LM class.
    #[must_use]
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    fn from_model_type(s: &str) -> Option<Family> {
        match s {
            "llama" => Some(Family::Llama),
            "mistral" => Some(Family::Mistral),
            "qwen2" => Some(Family::Qwen2),
            _ => None,
        }
    }
}

/// Rotary position embedding scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear {
        /// The factor.
        factor: f64,
    },
    /// Llama 3's frequency-dependent scaling.
    Llama3 {
        /// Overall factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Context length the base model was trained with.
        original_max_position_embeddings: f64,
    },
    /// Another scheme, kept verbatim (the runner refuses it).
    Other {
        /// Its `rope_type`.
        rope_type: String,
    },
}

/// PESC settings from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct PescParams {
    /// Experts per layer (`num_experts`).
    pub num_experts: u64,
    /// Experts used per token (`topk`).
    pub top_k: u64,
    /// Adapter bottleneck width (`adapter_dim`).
    pub adapter_dim: u64,
    /// Scale of the adapter branch (`moe_scaling`).
    pub scaling: f64,
}

/// Whether and how the FFN is a mixture of experts.
#[derive(Debug, Clone, PartialEq)]
pub enum Moe {
    /// A dense model.
    Dense,
    /// PESC: a shared FFN plus per-expert adapters and a router.
    Pesc(PescParams),
    /// Mixtral: `num_local_experts` full FFN copies, `num_experts_per_tok` used.
    Mixtral {
        /// Experts per layer.
        num_experts: u64,
        /// Experts used per token.
        top_k: u64,
    },
}

impl Moe {
    /// Experts per layer; 0 for a dense model.
    #[must_use]
    pub fn num_experts(&self) -> u64 {
        match self {
            Moe::Dense => 0,
            Moe::Pesc(p) => p.num_experts,
            Moe::Mixtral { num_experts, .. } => *num_experts,
        }
    }
}

/// A validated `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// Dense family the layers follow.
    pub family: Family,
    /// `model_type` as written.
    pub model_type: String,
    /// `architectures` as written.
    pub architectures: Vec<String>,
    /// Hidden size.
    pub hidden_size: u64,
    /// FFN width.
    pub intermediate_size: u64,
    /// Decoder layers.
    pub num_layers: u64,
    /// Attention heads.
    pub num_heads: u64,
    /// Key/value heads (GQA).
    pub num_kv_heads: u64,
    /// Per-head width.
    pub head_dim: u64,
    /// Vocabulary size.
    pub vocab_size: u64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q, k, v.
    pub qkv_bias: bool,
    /// Bias on o.
    pub o_bias: bool,
    /// Biases on the FFN projections.
    pub mlp_bias: bool,
    /// `max_position_embeddings`, if given.
    pub max_position_embeddings: Option<u64>,
    /// Attention window, when the config enables one (mistral/mixtral `sliding_window`,
    /// qwen2 only with `use_sliding_window`).
    pub sliding_window: Option<u64>,
    /// `dtype` / `torch_dtype`, if given.
    pub dtype: Option<String>,
    /// The MoE layout.
    pub moe: Moe,
    /// The JSON as read, in its original key order.
    pub raw: Map<String, Value>,
}

/// Largest config.json read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

impl ModelConfig {
    /// Reads and validates `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, HfError> {
        let path = dir.join("config.json");
        pesc_io::confined(dir, &path)?;
        let bytes = pesc_io::read_capped(&path, MAX_CONFIG_BYTES)?;
        Self::parse(&path, &bytes)
    }

    /// Validates config JSON `bytes` read from `path`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, HfError> {
        let value =
            pesc_io::parse_strict(bytes).map_err(|e| HfError::from(pesc_io::Error::Json { path: path.into(), message: e.to_string() }))?;
        let Value::Object(raw) = value else {
            return Err(HfError::Config { path: path.into(), key: "<root>".into(), problem: "is not a JSON object".into() });
        };
        let r = Reader { path, raw: &raw };
        let model_type = r.string("model_type")?.ok_or_else(|| r.err("model_type", "is missing".into()))?;
        let architectures = match raw.get("architectures") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or("").to_owned()).collect(),
            Some(_) => return Err(r.err("architectures", "is not a list".into())),
        };
        let is_pesc = raw.contains_key("adapter_dim") || raw.contains_key("num_experts") && model_type != "mixtral";
        let family = match (model_type.as_str(), r.string("pesc_base_model_type")?) {
            (_, Some(base)) => Family::from_model_type(&base)
                .ok_or_else(|| r.err("pesc_base_model_type", format!("names `{base}`, not llama, mistral or qwen2")))?,
            ("camelidae", None) => Family::Llama,
            ("qwen2idae", None) => Family::Qwen2,
            ("sparsetral" | "mixtral", None) => Family::Mistral,
            (t, None) => Family::from_model_type(t).ok_or_else(|| HfError::Unsupported {
                path: path.into(),
                model_type: t.to_owned(),
                architectures: architectures.join(", "),
            })?,
        };
        let hidden_size = r.positive("hidden_size")?;
        let num_heads = r.positive("num_attention_heads")?;
        let num_kv_heads = r.opt_positive("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads % num_kv_heads != 0 {
            return Err(r.err("num_key_value_heads", format!("{num_kv_heads} does not divide num_attention_heads {num_heads}")));
        }
        let head_dim = match r.opt_positive("head_dim")? {
            Some(d) if d % 2 != 0 => {
                return Err(r.err("head_dim", format!("{d} is odd; rotary embeddings rotate pairs of dimensions, so the head size must be even")))
            }
            Some(d) => d,
            None if hidden_size % num_heads == 0 && (hidden_size / num_heads) % 2 == 0 => hidden_size / num_heads,
            None if hidden_size % num_heads == 0 => {
                return Err(r.err(
                    "num_attention_heads",
                    format!(
                        "{num_heads} heads of hidden_size {hidden_size} make a head size of {}, which is odd; rotary embeddings rotate pairs of dimensions",
                        hidden_size / num_heads
                    ),
                ))
            }
            None => return Err(r.err("num_attention_heads", format!("{num_heads} does not divide hidden_size {hidden_size}"))),
        };
        let num_layers = r.positive("num_hidden_layers")?;
        if num_layers > MAX_LAYERS {
            return Err(r.err("num_hidden_layers", format!("{num_layers} is above the limit of {MAX_LAYERS}")));
        }
        let (rope_theta, rope_scaling) = r.rope()?;
        let bias = r.bool("attention_bias")?.unwrap_or(false);
        let moe = if model_type == "mixtral" {
            let n = r.positive("num_local_experts")?;
            let k = r.positive("num_experts_per_tok")?;
            check_experts(&r, "num_local_experts", n, "num_experts_per_tok", k)?;
            Moe::Mixtral { num_experts: n, top_k: k }
        } else if is_pesc {
            let n = r.positive("num_experts")?;
            let k = r.positive("topk")?;
            check_experts(&r, "num_experts", n, "topk", k)?;
            let scaling = r.float("moe_scaling")?.unwrap_or(1.0);
            if !scaling.is_finite() {
                return Err(r.err("moe_scaling", "is not finite".into()));
            }
            Moe::Pesc(PescParams { num_experts: n, top_k: k, adapter_dim: r.positive("adapter_dim")?, scaling })
        } else {
            Moe::Dense
        };
        let dtype = match r.string("dtype")? {
            Some(d) => Some(d),
            None => r.string("torch_dtype")?,
        };
        let cfg = ModelConfig {
            path: path.into(),
            family,
            architectures,
            hidden_size,
            intermediate_size: r.positive("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: r.positive("vocab_size")?,
            rms_norm_eps: r.float("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: r.bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias: family == Family::Qwen2 || (family == Family::Llama && bias),
            o_bias: family == Family::Llama && bias,
            mlp_bias: family == Family::Llama && r.bool("mlp_bias")?.unwrap_or(false),
            max_position_embeddings: r.opt_positive("max_position_embeddings")?,
            sliding_window: match family {
                Family::Qwen2 if r.bool("use_sliding_window")? != Some(true) => None,
                Family::Llama => None,
                _ => r.opt_positive("sliding_window")?,
            },
            dtype,
            moe,
            model_type,
            raw: raw.clone(),
        };
        // Every shape the config implies must be representable.
        cfg.expected_tensors()?;
        Ok(cfg)
    }

    /// q projection rows (`num_attention_heads × head_dim`).
    #[must_use]
    pub fn q_dim(&self) -> u64 {
        self.num_heads * self.head_dim
    }

    /// k/v projection rows (`num_key_value_heads × head_dim`).
    #[must_use]
    pub fn kv_dim(&self) -> u64 {
        self.num_kv_heads * self.head_dim
    }

    /// Every tensor this config implies, with its shape, in name order. With
    /// tied embeddings `lm_head.weight` is absent (a checkpoint may still hold it).
    pub fn expected_tensors(&self) -> Result<Vec<(String, Vec<u64>)>, HfError> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let overflow = |what: &str| HfError::Config {
            path: self.path.clone(),
            key: what.into(),
            problem: "implies a tensor shape that overflows".into(),
        };
        let q = self.num_heads.checked_mul(self.head_dim).ok_or_else(|| overflow("head_dim"))?;
        let kv = self.num_kv_heads.checked_mul(self.head_dim).ok_or_else(|| overflow("head_dim"))?;
        for (key, dims) in [("vocab_size", [v, h]), ("intermediate_size", [i, h]), ("head_dim", [q, h])] {
            if dims[0].checked_mul(dims[1]).and_then(|n| n.checked_mul(8)).is_none() {
                return Err(overflow(key));
            }
        }
        let mut out = vec![("model.embed_tokens.weight".to_owned(), vec![v, h]), ("model.norm.weight".to_owned(), vec![h])];
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".into(), vec![v, h]));
        }
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}.");
            out.push((format!("{p}input_layernorm.weight"), vec![h]));
            out.push((format!("{p}post_attention_layernorm.weight"), vec![h]));
            for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                out.push((format!("{p}self_attn.{name}.weight"), vec![rows, h]));
                if self.qkv_bias {
                    out.push((format!("{p}self_attn.{name}.bias"), vec![rows]));
                }
            }
            out.push((format!("{p}self_attn.o_proj.weight"), vec![h, q]));
            if self.o_bias {
                out.push((format!("{p}self_attn.o_proj.bias"), vec![h]));
            }
            match &self.moe {
                Moe::Mixtral { num_experts, .. } => {
                    out.push((crate::names::mixtral_gate(l), vec![*num_experts, h]));
                    for j in 0..*num_experts {
                        out.push((crate::names::mixtral_expert(l, j, "w1"), vec![i, h]));
                        out.push((crate::names::mixtral_expert(l, j, "w2"), vec![h, i]));
                        out.push((crate::names::mixtral_expert(l, j, "w3"), vec![i, h]));
                    }
                }
                Moe::Dense | Moe::Pesc(_) => {
                    for (name, shape) in [("gate_proj", vec![i, h]), ("up_proj", vec![i, h]), ("down_proj", vec![h, i])] {
                        out.push((crate::names::dense_mlp(l, name), shape));
                        if self.mlp_bias {
                            out.push((format!("{p}mlp.{name}.bias"), vec![if name == "down_proj" { h } else { i }]));
                        }
                    }
                }
            }
            if let Moe::Pesc(pp) = &self.moe {
                out.push((crate::names::pesc_router(l), vec![pp.num_experts, h]));
                for j in 0..pp.num_experts {
                    let n = crate::ExpertNaming::Camelidae;
                    out.push((n.adapter(l, j, "down"), vec![pp.adapter_dim, h]));
                    out.push((n.adapter(l, j, "up"), vec![h, pp.adapter_dim]));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// A one-line summary of the sizes, for error messages.
    #[must_use]
    pub fn sizes(&self) -> String {
        format!(
            "hidden_size {}, intermediate_size {}, num_attention_heads {}, num_key_value_heads {}, head_dim {}, vocab_size {}",
            self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim, self.vocab_size
        )
    }
}

fn check_experts(r: &Reader<'_>, nk: &str, n: u64, kk: &str, k: u64) -> Result<(), HfError> {
    if n > MAX_EXPERTS {
        return Err(r.err(nk, format!("{n} is above the limit of {MAX_EXPERTS}")));
    }
    if k > n {
        return Err(r.err(kk, format!("{k} is larger than {nk} {n}")));
    }
    Ok(())
}

struct Reader<'a> {
    path: &'a Path,
    raw: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn err(&self, key: &str, problem: String) -> HfError {
        HfError::Config { path: self.path.into(), key: key.into(), problem }
    }

    fn present(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    fn opt_positive(&self, key: &str) -> Result<Option<u64>, HfError> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(self.err(key, format!("must be a positive integer, found {v}"))),
            },
        }
    }

    fn positive(&self, key: &str) -> Result<u64, HfError> {
        self.opt_positive(key)?.ok_or_else(|| self.err(key, "is missing".into()))
    }

    fn float(&self, key: &str) -> Result<Option<f64>, HfError> {
        float_of(self.present(key)).map_err(|v| self.err(key, format!("must be a number, found {v}")))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, HfError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("must be true or false, found {v}"))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, HfError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(key, format!("must be a string, found {v}"))),
        }
    }

    /// `rope_parameters` (transformers 5) or top-level `rope_theta` and `rope_scaling`.
    fn rope(&self) -> Result<(f64, RopeScaling), HfError> {
        let (key, params) = match self.present("rope_parameters") {
            Some(p) => ("rope_parameters", Some(p)),
            None => ("rope_scaling", self.present("rope_scaling")),
        };
        let theta_in_params = params.and_then(|p| p.get("rope_theta")).filter(|v| !v.is_null());
        let theta = match theta_in_params {
            Some(v) => float_of(Some(v)).map_err(|v| self.err(&format!("{key}.rope_theta"), format!("must be a number, found {v}")))?,
            None => self.float("rope_theta")?,
        }
        .unwrap_or(10_000.0);
        if !(theta.is_finite() && theta > 0.0) {
            return Err(self.err("rope_theta", format!("must be a positive number, found {theta}")));
        }
        let Some(p) = params else { return Ok((theta, RopeScaling::None)) };
        let Value::Object(p) = p else { return Err(self.err(key, "must be an object or null".into())) };
        let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
        let num = |field: &str| -> Result<f64, HfError> {
            match float_of(p.get(field)) {
                Ok(Some(x)) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(self.err(&format!("{key}.{field}"), "must be a positive number".into())),
            }
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: num("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            other => RopeScaling::Other { rope_type: other.to_owned() },
        };
        Ok((theta, scaling))
    }
}

fn float_of(v: Option<&Value>) -> Result<Option<f64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| n.to_string()),
        Some(other) => Err(other.to_string()),
    }
}
