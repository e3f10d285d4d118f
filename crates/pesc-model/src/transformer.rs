//! The decoder: embeddings, pre-norm attention and FFN blocks (dense, PESC or
//! Mixtral), final norm and LM head.

use crate::ops::{causal_mask, rms_norm, softmax_last};
use crate::rope;
use crate::{ModelError, Result, Weights};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Tensor};
use pesc_arch::{ExpertNaming, ModelConfig, Moe};
use pesc_quant::GgmlType;

/// The dtype the runner computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDType {
    /// 32-bit float (norms and softmax are always computed in f32).
    F32,
    /// bfloat16 weights and activations.
    BF16,
}

impl ComputeDType {
    fn candle(self) -> DType {
        match self {
            ComputeDType::F32 => DType::F32,
            ComputeDType::BF16 => DType::BF16,
        }
    }
}

/// A weight matrix `[out, in]`: dense in the compute dtype, or a GGUF
/// block-quantized one multiplied as stored (ggml's kernels: the input is
/// rounded to 8-bit blocks, as llama.cpp does on CPU).
enum Matrix {
    Dense(Tensor),
    Quantized(QMatMul),
}

struct Linear {
    w: Matrix,
    b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.w {
            Matrix::Dense(w) => x.matmul(&w.t()?)?,
            Matrix::Quantized(q) => q.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?,
        };
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// candle's name of a block type.
fn candle_type(ty: GgmlType) -> Option<GgmlDType> {
    Some(match ty {
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        _ => return None,
    })
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let a = (self.gate.forward(h)?.silu()? * self.up.forward(h)?)?;
        self.down.forward(&a)
    }
}

struct Adapter {
    down: Linear,
    up: Linear,
}

enum Ffn {
    Dense(Mlp),
    Pesc { mlp: Mlp, router: Linear, experts: Vec<Adapter>, top_k: usize, scaling: f64 },
    Mixtral { gate: Linear, experts: Vec<Mlp>, top_k: usize },
}

struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn: Ffn,
}

/// Keys and values of the positions seen so far, per layer.
#[derive(Default)]
pub struct Cache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl Cache {
    /// Positions cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What one forward pass returns.
pub struct Forward {
    /// Logits, `[T, vocab]`, f32.
    pub logits: Tensor,
    /// For MoE models: per layer, per token, the experts it was routed to.
    pub routes: Vec<Vec<Vec<usize>>>,
}

/// A model loaded for inference.
pub struct Runner {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    eps: f64,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    vocab: usize,
    dtype: DType,
    device: Device,
}

struct Loader<'a> {
    weights: &'a Weights,
    dtype: DType,
    device: &'a Device,
}

impl Loader<'_> {
    /// Loads the tensor this tool calls `name` (PESC naming variants resolved) as values.
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let (values, shape) = self.weights.read_f32(name)?;
        Ok(Tensor::from_vec(values, shape, self.device)?.to_dtype(self.dtype)?)
    }

    /// Loads weight matrix `name`, quantized as stored when it is a GGUF block type.
    fn matrix(&self, name: &str) -> Result<Matrix> {
        if let Some(raw) = self.weights.quantized(name)? {
            let ty = candle_type(raw.ty)
                .ok_or_else(|| ModelError::Input(format!("tensor `{name}`: the runner cannot multiply {} weights", raw.ty)))?;
            let dims = raw.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
            return Ok(Matrix::Quantized(QMatMul::from_qtensor(qtensor_from_ggml(ty, &raw.bytes, dims, self.device)?)?));
        }
        Ok(Matrix::Dense(self.tensor(name)?))
    }

    fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        Ok(Linear {
            w: self.matrix(&format!("{prefix}.weight"))?,
            b: if bias { Some(self.tensor(&format!("{prefix}.bias"))?) } else { None },
        })
    }

    fn mlp(&self, gate: &str, up: &str, down: &str, bias: bool) -> Result<Mlp> {
        Ok(Mlp { gate: self.linear(gate, bias)?, up: self.linear(up, bias)?, down: self.linear(down, bias)? })
    }
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl Runner {
    /// Loads every weight of `weights` onto `device`: converted to `dtype`,
    /// except GGUF block-quantized matrices, which stay quantized.
    pub fn load(weights: &Weights, dtype: ComputeDType, device: &Device) -> Result<Self> {
        let cfg: &ModelConfig = weights.config();
        let ld = Loader { weights, dtype: dtype.candle(), device };
        let mut layers = Vec::with_capacity(usize_of(cfg.num_layers));
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let mlp = |ld: &Loader<'_>| {
                ld.mlp(&format!("{p}.mlp.gate_proj"), &format!("{p}.mlp.up_proj"), &format!("{p}.mlp.down_proj"), cfg.mlp_bias)
            };
            let ffn = match &cfg.moe {
                Moe::Dense => Ffn::Dense(mlp(&ld)?),
                Moe::Pesc(pp) => Ffn::Pesc {
                    mlp: mlp(&ld)?,
                    router: ld.linear(&format!("{p}.mlp.moe_adapter.router"), false)?,
                    experts: (0..pp.num_experts)
                        .map(|j| {
                            let n = ExpertNaming::Camelidae;
                            let strip = |s: String| s.trim_end_matches(".weight").to_owned();
                            Ok(Adapter {
                                down: ld.linear(&strip(n.adapter(l, j, "down")), false)?,
                                up: ld.linear(&strip(n.adapter(l, j, "up")), false)?,
                            })
                        })
                        .collect::<Result<_>>()?,
                    top_k: usize_of(pp.top_k),
                    scaling: pp.scaling,
                },
                Moe::Mixtral { num_experts, top_k } => Ffn::Mixtral {
                    gate: ld.linear(&format!("{p}.block_sparse_moe.gate"), false)?,
                    experts: (0..*num_experts)
                        .map(|j| {
                            let e = format!("{p}.block_sparse_moe.experts.{j}");
                            ld.mlp(&format!("{e}.w1"), &format!("{e}.w3"), &format!("{e}.w2"), false)
                        })
                        .collect::<Result<_>>()?,
                    top_k: usize_of(*top_k),
                },
            };
            layers.push(Layer {
                input_norm: ld.tensor(&format!("{p}.input_layernorm.weight"))?,
                post_norm: ld.tensor(&format!("{p}.post_attention_layernorm.weight"))?,
                q: ld.linear(&format!("{p}.self_attn.q_proj"), cfg.qkv_bias)?,
                k: ld.linear(&format!("{p}.self_attn.k_proj"), cfg.qkv_bias)?,
                v: ld.linear(&format!("{p}.self_attn.v_proj"), cfg.qkv_bias)?,
                o: ld.linear(&format!("{p}.self_attn.o_proj"), cfg.o_bias)?,
                ffn,
            });
        }
        let embed = ld.tensor("model.embed_tokens.weight")?;
        // Tied: the embedding matrix, quantized as stored when it is (as llama.cpp uses it).
        let head = if cfg.tie_word_embeddings && !weights.has("lm_head.weight") { "model.embed_tokens" } else { "lm_head" };
        let lm_head = ld.linear(head, false)?;
        Ok(Runner {
            embed,
            layers,
            norm: ld.tensor("model.norm.weight")?,
            lm_head,
            inv_freq: rope::inv_freq(cfg)?,
            eps: cfg.rms_norm_eps,
            num_heads: usize_of(cfg.num_heads),
            num_kv_heads: usize_of(cfg.num_kv_heads),
            head_dim: usize_of(cfg.head_dim),
            window: cfg.sliding_window.map(usize_of),
            vocab: usize_of(cfg.vocab_size),
            dtype: dtype.candle(),
            device: device.clone(),
        })
    }

    /// Vocabulary size.
    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Runs `tokens` at the positions after those in `cache`, extending it.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Forward> {
        if tokens.is_empty() {
            return Err(ModelError::Input("no tokens to run".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary (size {})", self.vocab)));
        }
        let t = tokens.len();
        let start = cache.len;
        if cache.kv.len() != self.layers.len() {
            cache.kv = vec![None; self.layers.len()];
        }
        let ids = Tensor::from_vec(tokens.to_vec(), t, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let (cos, sin) = rope::tables(&self.inv_freq, start, t, self.dtype, &self.device)?;
        let mask = causal_mask(start, t, self.window, &self.device)?;
        let mut routes = Vec::new();
        for (layer, kv) in self.layers.iter().zip(cache.kv.iter_mut()) {
            let h = rms_norm(&x, &layer.input_norm, self.eps)?;
            let a = self.attention(layer, &h, &cos, &sin, &mask, kv)?;
            x = (x + a)?;
            let h = rms_norm(&x, &layer.post_norm, self.eps)?;
            let (y, r) = ffn(&layer.ffn, &h)?;
            if let Some(r) = r {
                routes.push(r);
            }
            x = (x + y)?;
        }
        cache.len += t;
        let x = rms_norm(&x, &self.norm, self.eps)?;
        let logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        Ok(Forward { logits, routes })
    }

    fn attention(
        &self,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        kv: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let t = h.dim(0)?;
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |x: Tensor, n: usize| -> Result<Tensor> { Ok(x.reshape((t, n, d))?.transpose(0, 1)?.contiguous()?) };
        let q = rope::apply(&heads(layer.q.forward(h)?, nh)?, cos, sin)?;
        let k = rope::apply(&heads(layer.k.forward(h)?, nkv)?, cos, sin)?;
        let v = heads(layer.v.forward(h)?, nkv)?;
        let (k, v) = match kv.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
            None => (k, v),
        };
        *kv = Some((k.clone(), v.clone()));
        let s = k.dim(1)?;
        let rep = nh / nkv;
        let expand = |x: &Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(x.clone());
            }
            Ok(x.unsqueeze(1)?.broadcast_as((nkv, rep, s, d))?.reshape((nh, s, d))?)
        };
        let (k, v) = (expand(&k)?, expand(&v)?);
        #[allow(clippy::cast_precision_loss)]
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?.broadcast_add(mask)?;
        let probs = softmax_last(&scores)?.to_dtype(self.dtype)?;
        let out = probs.matmul(&v)?.transpose(0, 1)?.reshape((t, nh * d))?;
        layer.o.forward(&out)
    }
}

/// Per token: the `k` largest router logits (lower index first on ties) and
/// the softmax over those `k` only.
fn route(logits: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut order: Vec<usize> = (0..r.len()).collect();
            order.sort_by(|&a, &b| r[b].total_cmp(&r[a]).then(a.cmp(&b)));
            order.truncate(k);
            let max = r[order[0]];
            let e: Vec<f32> = order.iter().map(|&j| (r[j] - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            order.into_iter().zip(e).map(|(j, v)| (j, v / sum)).collect()
        })
        .collect())
}

/// Runs `f` on the rows of `x` routed to each expert and adds the results,
/// scaled by their routing weights, into a zero tensor shaped like `x`.
fn mix(x: &Tensor, routes: &[Vec<(usize, f32)>], n: usize, f: &dyn Fn(usize, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let mut acc = x.zeros_like()?;
    for j in 0..n {
        let (rows, weights): (Vec<u32>, Vec<f32>) = routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.iter().find(|(e, _)| *e == j).map(|(_, w)| (u32::try_from(i).unwrap_or(u32::MAX), *w)))
            .unzip();
        if rows.is_empty() {
            continue;
        }
        let idx = Tensor::from_vec(rows.clone(), rows.len(), x.device())?;
        let w = Tensor::from_vec(weights, (rows.len(), 1), x.device())?.to_dtype(x.dtype())?;
        let out = f(j, &x.index_select(&idx, 0)?)?.broadcast_mul(&w)?;
        acc = acc.index_add(&idx, &out, 0)?;
    }
    Ok(acc)
}

type Routes = Vec<Vec<usize>>;

fn ffn(ffn: &Ffn, h: &Tensor) -> Result<(Tensor, Option<Routes>)> {
    let names = |r: &[Vec<(usize, f32)>]| r.iter().map(|t| t.iter().map(|(e, _)| *e).collect()).collect();
    match ffn {
        Ffn::Dense(mlp) => Ok((mlp.forward(h)?, None)),
        Ffn::Pesc { mlp, router, experts, top_k, scaling } => {
            let f = mlp.forward(h)?;
            let r = route(&router.forward(h)?, *top_k)?;
            let adapted = mix(&f, &r, experts.len(), &|j, rows| {
                let a = &experts[j];
                a.up.forward(&a.down.forward(rows)?.gelu_erf()?)
            })?;
            // Residual form: with zero adapters `adapted` is exactly 0 and y == f.
            Ok(((f + (adapted * *scaling)?)?, Some(names(&r))))
        }
        Ffn::Mixtral { gate, experts, top_k } => {
            let r = route(&gate.forward(h)?, *top_k)?;
            let y = mix(h, &r, experts.len(), &|j, rows| experts[j].forward(rows))?;
            Ok((y, Some(names(&r))))
        }
    }
}
