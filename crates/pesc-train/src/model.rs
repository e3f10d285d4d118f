//! The model being trained: the shared [`Transformer`] with its base
//! projections frozen (input-only gradient; NF4 codes dequantized at each use
//! for QLoRA), LoRA pairs on the targeted projections, and the PESC routers
//! and adapters trainable. This module adds what training needs and the
//! runner does not: padded batches, adapter dropout, the balancing loss, the
//! cross-entropy and gradient checkpointing.

use crate::{Example, Result, TrainError};
use candle_core::{DType, Device, Tensor, Var, D};
use pesc_hf::{ModelConfig, Moe, PescParams};
use pesc_model::ops::softmax_last;
use pesc_model::{LoadOptions, Lora, Nf4Policy, Pass, Projection, Role, Routing, Transformer, Weights};
use pesc_tensor::SplitMix64;

/// What is trained and how.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// LoRA rank (0: no LoRA).
    pub lora_r: usize,
    /// LoRA alpha; the delta is scaled by `alpha / r`.
    pub lora_alpha: f64,
    /// The base linears that get LoRA.
    pub lora_targets: Vec<Projection>,
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
            lora_targets: Projection::ALL.to_vec(),
            adapter_dropout: 0.1,
            aux_loss_coef: 0.01,
            seed: 0,
            dtype: DType::F32,
            nf4_base: false,
            gradient_checkpointing: false,
        }
    }
}

/// A PESC model prepared for training.
pub struct TrainModel {
    model: Transformer,
    /// Trainable tensors in a fixed order, by their saved names.
    params: Vec<(String, Var)>,
    opts: TrainOptions,
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
    ids: Vec<u32>,
    valid: Tensor,
    tokens: usize,
    rows: Tensor,
    targets: Tensor,
    pass: Pass,
}

/// The PESC settings of a model the trainer takes: a PESC model, or a dense one when LoRA is
/// trained (the baseline, `None`); Mixtral models and dense ones without LoRA are refused.
pub fn trainable(cfg: &ModelConfig, lora_r: usize) -> Result<Option<&PescParams>> {
    match &cfg.moe {
        Moe::Pesc(p) => Ok(Some(p)),
        Moe::Dense if lora_r > 0 => Ok(None),
        Moe::Dense => Err(TrainError::NothingToTrain { path: cfg.path.clone() }),
        Moe::Mixtral { .. } => Err(TrainError::Mixtral { path: cfg.path.clone() }),
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
        trainable(cfg, opts.lora_r)?;
        if !matches!(opts.dtype, DType::F32 | DType::F64) {
            return Err(TrainError::ComputeDType { dtype: opts.dtype });
        }
        if opts.lora_r > 0 && !(opts.lora_alpha.is_finite() && opts.lora_alpha > 0.0) {
            return Err(TrainError::Flag { flag: "--lora-alpha", problem: format!("must be a positive number, not {}", opts.lora_alpha) });
        }
        if !(0.0..1.0).contains(&opts.adapter_dropout) {
            return Err(TrainError::Flag { flag: "--adapter-dropout", problem: "must be in [0, 1)".into() });
        }
        // Block-quantized GGUF weights are dequantized: the frozen matmul passes gradients through.
        let nf4 = if opts.nf4_base { Nf4Policy::QuantizeProjections } else { Nf4Policy::AtUse };
        let mut model =
            Transformer::load(weights, LoadOptions { dtype: opts.dtype, keep_blocks: false, nf4, head_chunk_rows: None }, device)?;
        #[allow(clippy::cast_precision_loss)]
        let scale = if opts.lora_r > 0 { opts.lora_alpha / opts.lora_r as f64 } else { 0.0 };
        let mut params: Vec<(String, Var)> = Vec::new();
        for (site, linear) in model.linears_mut() {
            match site.role {
                Role::Projection(p) if opts.lora_r > 0 && opts.lora_targets.contains(&p) => {
                    let (out, inp) = linear.dims()?;
                    let (an, bn) = (lora_name(&site.module, "A"), lora_name(&site.module, "B"));
                    let a = pesc_tensor::kaiming_uniform(opts.seed, &an, inp as u64, opts.lora_r * inp);
                    let a = Var::from_tensor(&Tensor::from_vec(a, (opts.lora_r, inp), device)?.to_dtype(opts.dtype)?)?;
                    let b = Var::zeros((out, opts.lora_r), opts.dtype, device)?;
                    params.push((an, a.clone()));
                    params.push((bn, b.clone()));
                    linear.set_lora(Lora { a, b, scale });
                }
                Role::Router | Role::Adapter { .. } => params.push((format!("{}.weight", site.module), linear.make_trainable()?)),
                _ => {}
            }
        }
        Ok(TrainModel { model, params, opts })
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
        self.model.vocab_size()
    }

    /// Runs `batch` (right-padded to its longest example). With `dropout_key`
    /// (training), the adapter input is dropped out, seeded by the key.
    pub fn forward(&self, batch: &[&Example], dropout_key: Option<u64>) -> Result<Output> {
        let p = self.prepare(batch)?;
        let mut x = self.model.embed(&p.ids)?;
        let mut aux = Tensor::zeros((), self.opts.dtype, self.model.device())?;
        let mut load = Vec::new();
        for li in 0..self.model.num_layers() {
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
        let mut inputs = vec![self.model.embed(&p.ids)?];
        let (mut aux, mut load) = (Tensor::zeros((), self.opts.dtype, self.model.device())?, Vec::new());
        for li in 0..self.model.num_layers() {
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
        // `inputs` holds the embeddings and each layer's output: never empty.
        let top = Var::from_tensor(&inputs[inputs.len() - 1])?;
        let ce = self.head(top.as_tensor(), &p)?;
        let store = (&ce * scale)?.backward()?;
        collect(&store)?;
        let mut upstream = store.get(top.as_tensor()).cloned();
        for li in (0..self.model.num_layers()).rev() {
            let input = Var::from_tensor(&inputs[li])?;
            let (out, routed) = self.layer(li, input.as_tensor(), &p, dropout_key)?;
            // <out, dL/dout> (constant) and the layer's own balancing loss: their gradients are
            // this layer's share of the whole loss's.
            let mut objective = match upstream.take() {
                Some(grad_out) => (out * grad_out)?.sum_all()?,
                None => Tensor::zeros((), self.opts.dtype, self.model.device())?,
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
            return Err(TrainError::EmptyBatch);
        }
        let mut ids = vec![0u32; b * t];
        let mut valid = Vec::new();
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (i, e) in batch.iter().enumerate() {
            self.model.check_tokens(&e.input_ids)?;
            for (j, &id) in e.input_ids.iter().enumerate() {
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
            return Err(TrainError::NoResponseTokens);
        }
        let dev = self.model.device();
        let (tokens, m) = (valid.len(), targets.len());
        Ok(Prepared {
            ids,
            valid: Tensor::from_vec(valid, tokens, dev)?,
            tokens,
            rows: Tensor::from_vec(rows, m, dev)?,
            targets: Tensor::from_vec(targets, (m, 1), dev)?,
            pass: self.model.pass(b, t, 0)?,
        })
    }

    /// Layer `li` on the residual stream `x`: the new stream and, for a PESC layer, its balancing
    /// loss (without the coefficient) and expert shares. With `dropout_key` the adapters'
    /// input is dropped out.
    #[allow(clippy::type_complexity)]
    fn layer(&self, li: usize, x: &Tensor, p: &Prepared, dropout_key: Option<u64>) -> Result<(Tensor, Option<(Tensor, Vec<f64>)>)> {
        let key = dropout_key.filter(|_| self.opts.adapter_dropout > 0.0).map(|k| k ^ (li as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let dropout = |j: usize, rows: &Tensor| -> pesc_model::Result<Tensor> {
            let key = key.unwrap_or(0) ^ (j as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
            Ok(rows.broadcast_mul(&self.dropout_mask(key, rows.dims())?)?)
        };
        let hook: Option<&pesc_model::AdapterInput<'_>> = if key.is_some() { Some(&dropout) } else { None };
        let (y, routing) = self.model.layer(li, x, &p.pass, None, hook)?;
        Ok((y, routing.map(|r| self.balancing(&r, &p.valid)).transpose()?))
    }

    /// Mean cross-entropy of the final stream `x` at the target rows.
    fn head(&self, x: &Tensor, p: &Prepared) -> Result<Tensor> {
        let logits = self.model.logits(&x.index_select(&p.rows, 0)?)?;
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?;
        let picked = logits.gather(&p.targets, 1)?;
        Ok((lse - picked)?.mean_all()?)
    }

    /// The Switch balancing loss `n * sum_i f_i p_i` of one layer's routing over the
    /// non-padding rows `valid` (without the coefficient), and the expert shares `f_i`:
    /// `f_i` = share of the top-k assignments that went to expert `i` (sums to 1),
    /// `p_i` = mean router probability over all experts (carries the gradient).
    fn balancing(&self, routing: &Routing, valid: &Tensor) -> Result<(Tensor, Vec<f64>)> {
        let (_, e) = routing.logits.dims2()?;
        let k = routing.chosen.first().map_or(0, Vec::len);
        let valid_rows = valid.to_vec1::<u32>()?;
        let mut counts = vec![0f64; e];
        for &r in &valid_rows {
            for &j in &routing.chosen[r as usize] {
                counts[j] += 1.0;
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let total = (valid_rows.len() * k) as f64;
        let shares: Vec<f64> = counts.iter().map(|c| c / total).collect();
        let p = softmax_last(&routing.logits.index_select(valid, 0)?)?.mean(0)?;
        let fvec = Tensor::from_vec(shares.clone(), e, self.model.device())?.to_dtype(self.opts.dtype)?;
        #[allow(clippy::cast_precision_loss)]
        let aux = ((p * fvec)?.sum_all()? * e as f64)?;
        Ok((aux, shares))
    }

    /// Inverted-dropout mask: 0 with probability p, else 1/(1-p).
    fn dropout_mask(&self, key: u64, dims: &[usize]) -> candle_core::Result<Tensor> {
        let p = self.opts.adapter_dropout;
        let mut g = SplitMix64::keyed(key, "adapter-dropout");
        let keep = 1.0 / (1.0 - p);
        let count = dims.iter().product();
        let m: Vec<f64> = (0..count).map(|_| if g.next_f64() < p { 0.0 } else { keep }).collect();
        Tensor::from_vec(m, dims, self.model.device())?.to_dtype(self.opts.dtype)
    }
}

fn u32_of(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
