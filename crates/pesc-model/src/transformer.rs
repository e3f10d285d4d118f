//! The decoder: embeddings, pre-norm attention and FFN blocks (dense, PESC or
//! Mixtral), final norm and LM head.

use crate::rope;
use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor, D};
use pesc_arch::{ExpertNaming, Model, ModelConfig, Moe};

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

struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.w.t()?)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
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
    lm_head: Tensor,
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
    model: &'a Model,
    dtype: DType,
    device: &'a Device,
}

impl Loader<'_> {
    /// Loads the tensor this tool calls `name` (PESC naming variants resolved).
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let stored = self.model.stored_name(name);
        let shape = self.model.shape_of(&stored).ok_or_else(|| {
            ModelError::Input(format!("`{}`: tensor `{stored}` is missing", self.model.dir.display()))
        })?;
        // Float tensors converted, NF4 weights dequantized.
        let values = self.model.read_f32(&stored)?;
        let shape: Vec<usize> = shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
        Ok(Tensor::from_vec(values, shape, self.device)?.to_dtype(self.dtype)?)
    }

    fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        Ok(Linear {
            w: self.tensor(&format!("{prefix}.weight"))?,
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
    /// Loads every weight of `model`, converted to `dtype`, onto `device`.
    pub fn load(model: &Model, dtype: ComputeDType, device: &Device) -> Result<Self> {
        let cfg: &ModelConfig = &model.config;
        let ld = Loader { model, dtype: dtype.candle(), device };
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
        let lm_head = if cfg.tie_word_embeddings && model.weights.get("lm_head.weight").is_none() {
            embed.clone()
        } else {
            ld.tensor("lm_head.weight")?
        };
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
        let mask = self.mask(start, t)?;
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
        let logits = x.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?;
        Ok(Forward { logits, routes })
    }

    /// Additive mask `[T, S]`: 0 where query `start + i` may see key `j`, -inf elsewhere.
    fn mask(&self, start: usize, t: usize) -> Result<Tensor> {
        let s = start + t;
        let mut m = vec![0f32; t * s];
        for i in 0..t {
            let q = start + i;
            for j in 0..s {
                let outside_window = self.window.is_some_and(|w| q - j.min(q) >= w);
                if j > q || outside_window {
                    m[i * s + j] = f32::NEG_INFINITY;
                }
            }
        }
        Ok(Tensor::from_vec(m, (t, s), &self.device)?)
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

/// RMSNorm computed in f32, scaled by `w` in the compute dtype (as transformers).
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(w)?)
}

/// Softmax over the last dimension, max-subtracted.
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
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
