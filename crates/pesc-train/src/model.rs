//! The differentiable PESC forward: the runner's computation (`pesc-model`'s
//! transformer) on candle autograd, with the base frozen and the adapters,
//! routers and LoRA matrices trainable.

use crate::frozen::{matmul_t, FrozenWeight};
use crate::rng::{uniform, SplitMix64};
use crate::{Example, Result, TrainError};
use candle_core::{DType, Device, Tensor, Var, D};
use pesc_arch::{ExpertNaming, ModelConfig, Moe, PescParams};
use pesc_model::ops::{causal_mask, rms_norm, softmax_last};
use pesc_model::{rope, StoredNf4, Weights};
use std::sync::Arc;

/// A base linear layer LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraTarget {
    /// `self_attn.q_proj`.
    Q,
    /// `self_attn.k_proj`.
    K,
    /// `self_attn.v_proj`.
    V,
    /// `self_attn.o_proj`.
    O,
    /// `mlp.gate_proj` (the shared FFN).
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

impl LoraTarget {
    /// All targets, the default.
    pub const ALL: [LoraTarget; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    /// PEFT's module name (`q_proj`, ...).
    #[must_use]
    pub fn module(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// Parses `q`, `q_proj`, `gate`, `gate_proj`, ...
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        Self::ALL.into_iter().find(|t| t.module() == s || t.module().trim_end_matches("_proj") == s)
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Q | Self::K | Self::V | Self::O => "self_attn",
            Self::Gate | Self::Up | Self::Down => "mlp",
        }
    }
}

/// What is trained and how.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// LoRA rank (0: no LoRA).
    pub lora_r: usize,
    /// LoRA alpha; the delta is scaled by `alpha / r`.
    pub lora_alpha: f64,
    /// The base linears that get LoRA.
    pub lora_targets: Vec<LoraTarget>,
    /// Dropout on the adapter input while training.
    pub adapter_dropout: f64,
    /// Coefficient of the balancing loss.
    pub aux_loss_coef: f64,
    /// Seed of the LoRA initialisation and of dropout.
    pub seed: u64,
    /// Compute dtype: F32, or F64 for gradient checks.
    pub dtype: DType,
    /// QLoRA: the frozen q/k/v/o/gate/up/down weights are dequant(NF4(W))
    /// (bitsandbytes' NF4, blocksize 64, double quantization), what a 4-bit
    /// base computes with. Weights of an NF4 folder are that already.
    pub nf4_base: bool,
    /// Keep only each layer's input during the forward pass and recompute the layer in the
    /// backward pass: activation memory of one layer instead of all, for one more forward.
    pub gradient_checkpointing: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            lora_r: 64,
            lora_alpha: 16.0,
            lora_targets: LoraTarget::ALL.to_vec(),
            adapter_dropout: 0.1,
            aux_loss_coef: 0.01,
            seed: 0,
            dtype: DType::F32,
            nf4_base: false,
            gradient_checkpointing: false,
        }
    }
}

/// A frozen base matrix `[out, in]`, its bias, and LoRA `A [r, in]`, `B [out, r]`.
struct Linear {
    w: FrozenWeight,
    b: Option<Tensor>,
    lora: Option<(Var, Var)>,
    scale: f64,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = matmul_t(x, &self.w)?;
        if let Some((a, b)) = &self.lora {
            y = (y + (x.matmul(&a.as_tensor().t()?)?.matmul(&b.as_tensor().t()?)? * self.scale)?)?;
        }
        if let Some(bias) = &self.b {
            y = y.broadcast_add(bias)?;
        }
        Ok(y)
    }
}

struct Adapter {
    down: Var,
    up: Var,
}

struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// PESC only (a dense model trains LoRA alone).
    router: Option<Var>,
    experts: Vec<Adapter>,
}

impl Layer {
    /// The dense SwiGLU FFN, `down(silu(gate(h)) * up(h))`.
    fn ffn(&self, h: &Tensor) -> Result<Tensor> {
        self.down.forward(&(self.gate.forward(h)?.silu()? * self.up.forward(h)?)?)
    }
}

/// A PESC model prepared for training.
pub struct TrainModel {
    layers: Vec<Layer>,
    embed: Tensor,
    norm: Tensor,
    lm_head: FrozenWeight,
    inv_freq: Vec<f32>,
    eps: f64,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    vocab: usize,
    top_k: usize,
    scaling: f64,
    /// Trainable tensors in a fixed order, by their saved names.
    params: Vec<(String, Var)>,
    opts: TrainOptions,
    device: Device,
}

/// What one forward pass on a batch returns.
pub struct Output {
    /// Mean cross-entropy over the response tokens (scalar).
    pub ce: Tensor,
    /// The balancing loss, coefficient applied, summed over layers (scalar).
    pub aux: Tensor,
    /// Per layer, per expert: the share of (token, slot) assignments it received.
    pub load: Vec<Vec<f64>>,
    /// Response tokens the loss covers.
    pub targets: usize,
    /// Tokens in the batch (padding excluded).
    pub tokens: usize,
}

/// One micro-batch's losses and the gradients of `scale * (ce + aux)`.
pub struct Step {
    /// Mean cross-entropy over the response tokens.
    pub ce: f64,
    /// The balancing loss, coefficient applied.
    pub aux: f64,
    /// Per layer, per expert: the share of (token, slot) assignments it received.
    pub load: Vec<Vec<f64>>,
    /// Tokens in the batch (padding excluded).
    pub tokens: usize,
    /// One gradient per parameter, in [`TrainModel::params`] order (`None`: not reached).
    pub grads: Vec<Option<Tensor>>,
}

/// A batch laid out for the forward pass.
struct Prepared {
    b: usize,
    t: usize,
    ids: Tensor,
    valid: Tensor,
    tokens: usize,
    rows: Tensor,
    targets: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

/// The PESC settings of a model the trainer takes: a PESC model, or a dense one when LoRA is
/// trained (the baseline, `None`); Mixtral models and dense ones without LoRA are refused.
pub fn trainable(cfg: &ModelConfig, lora_r: usize) -> Result<Option<&PescParams>> {
    match &cfg.moe {
        Moe::Pesc(p) => Ok(Some(p)),
        Moe::Dense if lora_r > 0 => Ok(None),
        Moe::Dense => Err(TrainError::Invalid(format!(
            "`{}` is a dense model: only LoRA can be trained on it, and --lora-r is 0",
            cfg.path.display()
        ))),
        Moe::Mixtral { .. } => Err(TrainError::Invalid(format!(
            "`{}` is a Mixtral model; train takes a PESC model (or a dense one for a LoRA-only baseline)",
            cfg.path.display()
        ))),
    }
}

/// Adds `g` to the running sum `acc`.
pub(crate) fn accumulate(acc: &mut Option<Tensor>, g: Tensor) -> Result<()> {
    *acc = Some(match acc.take() {
        Some(a) => (a + g)?,
        None => g,
    });
    Ok(())
}

/// A one-element tensor's value.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// PEFT's name of LoRA matrix `which` (`A` or `B`) of `module` (`model.layers.0.self_attn.q_proj`).
#[must_use]
pub fn lora_name(module: &str, which: &str) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

impl TrainModel {
    /// Loads the PESC model of `weights` (or a dense one, for a LoRA-only
    /// baseline): base tensors frozen, adapters and routers trainable from
    /// their stored values, LoRA `A` drawn like PEFT's
    /// `kaiming_uniform_(a = sqrt(5))` (`U(-1/sqrt(in), 1/sqrt(in))`, seeded by name), `B` zero.
    pub fn load(weights: &Weights, opts: TrainOptions, device: &Device) -> Result<Self> {
        let cfg = weights.config();
        let pesc = trainable(cfg, opts.lora_r)?;
        if !matches!(opts.dtype, DType::F32 | DType::F64) {
            return Err(TrainError::Invalid("the trainer computes in f32 (or f64)".into()));
        }
        if opts.lora_r > 0 && !(opts.lora_alpha.is_finite() && opts.lora_alpha > 0.0) {
            return Err(TrainError::Invalid(format!("--lora-alpha must be a positive number, not {}", opts.lora_alpha)));
        }
        if !(0.0..1.0).contains(&opts.adapter_dropout) {
            return Err(TrainError::Invalid("the adapter dropout must be in [0, 1)".into()));
        }
        let dtype = opts.dtype;
        let tensor = |name: &str| -> Result<Tensor> {
            let (values, shape) = weights.read_f32(name)?;
            Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
        };
        let mut params: Vec<(String, Var)> = Vec::new();
        #[allow(clippy::cast_precision_loss)]
        let scale = if opts.lora_r > 0 { opts.lora_alpha / opts.lora_r as f64 } else { 0.0 };
        let linear = |p: &str, target: LoraTarget, bias: bool, params: &mut Vec<(String, Var)>| -> Result<Linear> {
            let module = format!("{p}.{}.{}", target.prefix(), target.module());
            let name = format!("{module}.weight");
            // QLoRA: an NF4 folder's codes as stored, or (--base nf4) the weight quantized here.
            let stored = match weights.read_nf4(&name)? {
                Some(s) => Some(s),
                None if opts.nf4_base => {
                    let (values, shape) = weights.read_f32(&name)?;
                    let codes = pesc_quant::nf4::quantize(&values, pesc_quant::nf4::Nf4Options::default())
                        .map_err(|e| TrainError::Invalid(format!("tensor `{name}`: {e}")))?;
                    Some(StoredNf4 { codes, dtype: pesc_tensor::DType::F32, shape })
                }
                None => None,
            };
            let w = if let Some(s) = stored {
                let [o, i] = s.shape[..] else {
                    return Err(TrainError::Invalid(format!("tensor `{name}` has shape {:?}, not a matrix", s.shape)));
                };
                FrozenWeight::Nf4 { codes: Arc::new(s.codes), original: s.dtype, shape: (o, i), dtype, device: device.clone() }
            } else {
                FrozenWeight::Tensor(tensor(&name)?)
            };
            let b = if bias { Some(tensor(&format!("{module}.bias"))?) } else { None };
            let lora = if opts.lora_r > 0 && opts.lora_targets.contains(&target) {
                let (out, inp) = w.dims()?;
                let (an, bn) = (lora_name(&module, "A"), lora_name(&module, "B"));
                #[allow(clippy::cast_precision_loss)]
                let bound = 1.0 / (inp as f64).sqrt();
                let a = Var::from_tensor(
                    &Tensor::from_vec(uniform(opts.seed, &an, opts.lora_r * inp, bound), (opts.lora_r, inp), device)?.to_dtype(dtype)?,
                )?;
                let bv = Var::zeros((out, opts.lora_r), dtype, device)?;
                params.push((an, a.clone()));
                params.push((bn, bv.clone()));
                Some((a, bv))
            } else {
                None
            };
            Ok(Linear { w, b, lora, scale })
        };
        let mut layers = Vec::new();
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let q = linear(&p, LoraTarget::Q, cfg.qkv_bias, &mut params)?;
            let k = linear(&p, LoraTarget::K, cfg.qkv_bias, &mut params)?;
            let v = linear(&p, LoraTarget::V, cfg.qkv_bias, &mut params)?;
            let o = linear(&p, LoraTarget::O, cfg.o_bias, &mut params)?;
            let gate = linear(&p, LoraTarget::Gate, cfg.mlp_bias, &mut params)?;
            let up = linear(&p, LoraTarget::Up, cfg.mlp_bias, &mut params)?;
            let down = linear(&p, LoraTarget::Down, cfg.mlp_bias, &mut params)?;
            let mut router = None;
            let mut experts = Vec::new();
            if pesc.is_some() {
                let rname = format!("{p}.mlp.moe_adapter.router.weight");
                let r = Var::from_tensor(&tensor(&rname)?)?;
                params.push((rname, r.clone()));
                router = Some(r);
            }
            for j in 0..pesc.map_or(0, |p| p.num_experts) {
                let (dn, un) = (ExpertNaming::Camelidae.adapter(l, j, "down"), ExpertNaming::Camelidae.adapter(l, j, "up"));
                let down = Var::from_tensor(&tensor(&dn)?)?;
                let up = Var::from_tensor(&tensor(&un)?)?;
                params.push((dn, down.clone()));
                params.push((un, up.clone()));
                experts.push(Adapter { down, up });
            }
            layers.push(Layer {
                input_norm: tensor(&format!("{p}.input_layernorm.weight"))?,
                post_norm: tensor(&format!("{p}.post_attention_layernorm.weight"))?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
                router,
                experts,
            });
        }
        let embed = tensor("model.embed_tokens.weight")?;
        let lm_head = FrozenWeight::Tensor(if cfg.tie_word_embeddings && !weights.has("lm_head.weight") {
            embed.clone()
        } else {
            tensor("lm_head.weight")?
        });
        Ok(TrainModel {
            layers,
            embed,
            norm: tensor("model.norm.weight")?,
            lm_head,
            inv_freq: rope::inv_freq(cfg)?,
            eps: cfg.rms_norm_eps,
            num_heads: usize_of(cfg.num_heads),
            num_kv_heads: usize_of(cfg.num_kv_heads),
            head_dim: usize_of(cfg.head_dim),
            window: cfg.sliding_window.map(usize_of),
            vocab: usize_of(cfg.vocab_size),
            top_k: pesc.map_or(0, |p| usize_of(p.top_k)),
            scaling: pesc.map_or(0.0, |p| p.scaling),
            params,
            opts,
            device: device.clone(),
        })
    }

    /// The trainable tensors, by saved name (PEFT names for LoRA, model names for the rest).
    #[must_use]
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The options the model was loaded with.
    #[must_use]
    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    /// Vocabulary size.
    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Runs `batch` (right-padded to its longest example). With `dropout_key`
    /// (training), the adapter input is dropped out, seeded by the key.
    pub fn forward(&self, batch: &[&Example], dropout_key: Option<u64>) -> Result<Output> {
        let p = self.prepare(batch)?;
        let mut x = self.embed.index_select(&p.ids, 0)?;
        let mut aux = Tensor::zeros((), self.opts.dtype, &self.device)?;
        let mut load = Vec::new();
        for li in 0..self.layers.len() {
            let (next, routed) = self.layer(li, &x, &p, dropout_key)?;
            if let Some((layer_aux, shares)) = routed {
                aux = (aux + layer_aux)?;
                load.push(shares);
            }
            x = next;
        }
        let ce = self.head(&x, &p)?;
        let aux = (aux * self.opts.aux_loss_coef)?;
        Ok(Output { ce, aux, load, targets: p.targets.dim(0)?, tokens: p.tokens })
    }

    /// The forward pass and the gradients of `scale * (ce + aux)`; with gradient checkpointing,
    /// layer by layer from the top, each recomputed from its saved input.
    pub fn forward_backward(&self, batch: &[&Example], dropout_key: Option<u64>, scale: f64) -> Result<Step> {
        if !self.opts.gradient_checkpointing {
            let out = self.forward(batch, dropout_key)?;
            let store = ((&out.ce + &out.aux)? * scale)?.backward()?;
            let grads = self.params.iter().map(|(_, v)| store.get(v.as_tensor()).cloned()).collect();
            return Ok(Step { ce: scalar(&out.ce)?, aux: scalar(&out.aux)?, load: out.load, tokens: out.tokens, grads });
        }
        let p = self.prepare(batch)?;
        let mut inputs = vec![self.embed.index_select(&p.ids, 0)?];
        let (mut aux, mut load) = (Tensor::zeros((), self.opts.dtype, &self.device)?, Vec::new());
        for li in 0..self.layers.len() {
            let (next, routed) = self.layer(li, &inputs[li], &p, dropout_key)?;
            if let Some((layer_aux, shares)) = routed {
                aux = (aux + layer_aux.detach())?;
                load.push(shares);
            }
            inputs.push(next.detach());
        }
        let aux = scalar(&(aux * self.opts.aux_loss_coef)?)?;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let mut collect = |store: &candle_core::backprop::GradStore| -> Result<()> {
            for (g, (_, v)) in grads.iter_mut().zip(&self.params) {
                if let Some(new) = store.get(v.as_tensor()) {
                    accumulate(g, new.clone())?;
                }
            }
            Ok(())
        };
        let top = Var::from_tensor(inputs.last().ok_or_else(|| TrainError::Invalid("a model without layers".into()))?)?;
        let ce = self.head(top.as_tensor(), &p)?;
        let store = (&ce * scale)?.backward()?;
        collect(&store)?;
        let mut upstream = store.get(top.as_tensor()).cloned();
        for li in (0..self.layers.len()).rev() {
            let input = Var::from_tensor(&inputs[li])?;
            let (out, routed) = self.layer(li, input.as_tensor(), &p, dropout_key)?;
            // <out, dL/dout> (constant) and the layer's own balancing loss: their gradients are
            // this layer's share of the whole loss's.
            let mut objective = match upstream.take() {
                Some(grad_out) => (out * grad_out)?.sum_all()?,
                None => Tensor::zeros((), self.opts.dtype, &self.device)?,
            };
            if let Some((layer_aux, _)) = routed {
                objective = (objective + (layer_aux * (self.opts.aux_loss_coef * scale))?)?;
            }
            let store = objective.backward()?;
            collect(&store)?;
            upstream = store.get(input.as_tensor()).cloned();
        }
        Ok(Step { ce: scalar(&ce)?, aux, load, tokens: p.tokens, grads })
    }

    /// Checks `batch` and lays it out: ids, the non-padding rows, the rows with a target.
    fn prepare(&self, batch: &[&Example]) -> Result<Prepared> {
        let (b, t) = (batch.len(), batch.iter().map(|e| e.input_ids.len()).max().unwrap_or(0));
        if b == 0 || t == 0 {
            return Err(TrainError::Invalid("an empty batch".into()));
        }
        let mut ids = vec![0u32; b * t];
        let mut valid = Vec::new();
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (i, e) in batch.iter().enumerate() {
            for (j, &id) in e.input_ids.iter().enumerate() {
                if id as usize >= self.vocab {
                    return Err(TrainError::Invalid(format!("token id {id} is outside the vocabulary (size {})", self.vocab)));
                }
                ids[i * t + j] = id;
                valid.push(u32_of(i * t + j));
                if let Some(&next) = e.labels.get(j + 1) {
                    if let Ok(target) = u32::try_from(next) {
                        rows.push(u32_of(i * t + j));
                        targets.push(target);
                    }
                }
            }
        }
        if targets.is_empty() {
            return Err(TrainError::Invalid("the batch has no response tokens".into()));
        }
        let dev = &self.device;
        let (cos, sin) = rope::tables(&self.inv_freq, 0, t, self.opts.dtype, dev)?;
        let (tokens, m) = (valid.len(), targets.len());
        Ok(Prepared {
            b,
            t,
            ids: Tensor::from_vec(ids, b * t, dev)?,
            valid: Tensor::from_vec(valid, tokens, dev)?,
            tokens,
            rows: Tensor::from_vec(rows, m, dev)?,
            targets: Tensor::from_vec(targets, (m, 1), dev)?,
            cos,
            sin,
            mask: causal_mask(0, t, self.window, dev)?.to_dtype(self.opts.dtype)?,
        })
    }

    /// Layer `li` on the residual stream `x`: the new stream and, for a PESC layer, its balancing
    /// loss (without the coefficient) and expert shares.
    #[allow(clippy::type_complexity)]
    fn layer(&self, li: usize, x: &Tensor, p: &Prepared, dropout_key: Option<u64>) -> Result<(Tensor, Option<(Tensor, Vec<f64>)>)> {
        let layer = &self.layers[li];
        let h = rms_norm(x, &layer.input_norm, self.eps)?;
        let a = self.attention(layer, &h, p.b, p.t, &p.cos, &p.sin, &p.mask)?;
        let x = (x + a)?;
        let h = rms_norm(&x, &layer.post_norm, self.eps)?;
        let key = dropout_key.map(|k| k ^ (li as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (y, routed) = match &layer.router {
            Some(router) => {
                let (y, layer_aux, shares) = self.pesc(layer, router, &h, &p.valid, key)?;
                (y, Some((layer_aux, shares)))
            }
            None => (layer.ffn(&h)?, None),
        };
        Ok(((x + y)?, routed))
    }

    /// Mean cross-entropy of the final stream `x` at the target rows.
    fn head(&self, x: &Tensor, p: &Prepared) -> Result<Tensor> {
        let x = rms_norm(&x.index_select(&p.rows, 0)?, &self.norm, self.eps)?;
        let logits = matmul_t(&x, &self.lm_head)?;
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?;
        let picked = logits.gather(&p.targets, 1)?;
        Ok((lse - picked)?.mean_all()?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(&self, layer: &Layer, h: &Tensor, b: usize, t: usize, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads =
            |x: Tensor, n: usize| -> Result<Tensor> { Ok(x.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?.reshape((b * n, t, d))?) };
        let q = rope::apply(&heads(layer.q.forward(h)?, nh)?, cos, sin)?;
        let k = rope::apply(&heads(layer.k.forward(h)?, nkv)?, cos, sin)?;
        let v = heads(layer.v.forward(h)?, nkv)?;
        let rep = nh / nkv;
        let expand = |x: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(x);
            }
            Ok(x.reshape((b, nkv, 1, t, d))?.broadcast_as((b, nkv, rep, t, d))?.contiguous()?.reshape((b * nh, t, d))?)
        };
        let (k, v) = (expand(k)?, expand(v)?);
        #[allow(clippy::cast_precision_loss)]
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let probs = softmax_last(&scores)?;
        let out = probs.matmul(&v)?.reshape((b, nh, t, d))?.transpose(1, 2)?.reshape((b * t, nh * d))?;
        layer.o.forward(&out)
    }

    /// The PESC FFN of §4.3 on `h` `[N, H]`; returns the output, the layer's
    /// balancing loss (without the coefficient) and the expert shares over `valid` rows.
    fn pesc(
        &self,
        layer: &Layer,
        router: &Var,
        h: &Tensor,
        valid: &Tensor,
        dropout_key: Option<u64>,
    ) -> Result<(Tensor, Tensor, Vec<f64>)> {
        let f = layer.ffn(h)?;
        let logits = h.matmul(&router.as_tensor().t()?)?;
        let (n, e) = logits.dims2()?;
        let k = self.top_k;
        // Top-k chosen on the values, without gradient (lower index first on ties, as the runner).
        let values = logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let chosen: Vec<Vec<usize>> = values
            .iter()
            .map(|r| {
                let mut order: Vec<usize> = (0..e).collect();
                order.sort_by(|&a, &b| r[b].total_cmp(&r[a]).then(a.cmp(&b)));
                order.truncate(k);
                order
            })
            .collect();
        let idx: Vec<u32> = chosen.iter().flatten().map(|&j| u32_of(j)).collect();
        let idx = Tensor::from_vec(idx, (n, k), &self.device)?;
        let w = softmax_last(&logits.gather(&idx, 1)?)?.flatten_all()?;
        let mut acc = f.zeros_like()?;
        for (j, ad) in layer.experts.iter().enumerate() {
            let (rows, slots): (Vec<u32>, Vec<u32>) = chosen
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.iter().position(|&x| x == j).map(|s| (u32_of(i), u32_of(i * k + s))))
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let m = rows.len();
            let rows = Tensor::from_vec(rows, m, &self.device)?;
            let wj = w.index_select(&Tensor::from_vec(slots, m, &self.device)?, 0)?.unsqueeze(1)?;
            let mut xj = f.index_select(&rows, 0)?;
            if let Some(key) = dropout_key.filter(|_| self.opts.adapter_dropout > 0.0) {
                xj = xj.broadcast_mul(&self.dropout_mask(key ^ (j as u64).wrapping_mul(0xd1b5_4a32_d192_ed03), xj.dims())?)?;
            }
            let out = xj.matmul(&ad.down.as_tensor().t()?)?.gelu_erf()?.matmul(&ad.up.as_tensor().t()?)?;
            acc = acc.index_add(&rows, &out.broadcast_mul(&wj)?, 0)?;
        }
        let y = (f + (acc * self.scaling)?)?;
        // Switch balancing loss n * sum_i f_i p_i over the non-padding tokens:
        // f_i = share of the top-k assignments that went to expert i (sums to 1),
        // p_i = mean router probability over all experts (carries the gradient).
        let valid_rows = valid.to_vec1::<u32>()?;
        let mut counts = vec![0f64; e];
        for &r in &valid_rows {
            for &j in &chosen[r as usize] {
                counts[j] += 1.0;
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let total = (valid_rows.len() * k) as f64;
        let shares: Vec<f64> = counts.iter().map(|c| c / total).collect();
        let p = softmax_last(&logits.index_select(valid, 0)?)?.mean(0)?;
        let fvec = Tensor::from_vec(shares.clone(), e, &self.device)?.to_dtype(self.opts.dtype)?;
        #[allow(clippy::cast_precision_loss)]
        let aux = ((p * fvec)?.sum_all()? * e as f64)?;
        Ok((y, aux, shares))
    }

    /// Inverted-dropout mask: 0 with probability p, else 1/(1-p).
    fn dropout_mask(&self, key: u64, dims: &[usize]) -> Result<Tensor> {
        let p = self.opts.adapter_dropout;
        let mut g = SplitMix64::keyed(key, "adapter-dropout");
        let keep = 1.0 / (1.0 - p);
        let count = dims.iter().product();
        let m: Vec<f64> = (0..count).map(|_| if g.unit() < p { 0.0 } else { keep }).collect();
        Ok(Tensor::from_vec(m, dims, &self.device)?.to_dtype(self.opts.dtype)?)
    }
}

fn u32_of(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
