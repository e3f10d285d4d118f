//! The decoder, defined once for the runner and the trainer: embeddings,
//! pre-norm attention (grouped-query, q/k/v/o biases, RoPE with its scaling
//! variants, sliding window) and FFN blocks (dense SwiGLU, PESC residual
//! routing, Mixtral), the final norm and the LM head.
//!
//! A pass runs `b` sequences of `t` tokens, rows `[b * t, hidden]`. The
//! runner passes one sequence at a time with its KV cache; the trainer passes
//! padded batches, hooks dropout into the adapters' input and turns some
//! linear layers trainable ([`Transformer::linears_mut`]).

use crate::linear::{Blocks, Linear, Nf4Weight, Weight};
use crate::ops::{causal_mask, rms_norm, softmax_last};
use crate::{rope, ModelError, Result, Weights};
use candle_core::{DType, Device, Tensor};
use pesc_hf::{ExpertNaming, Moe};
use std::sync::Arc;

/// One of the seven frozen projections of a decoder layer (the ones LoRA adapts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Projection {
    /// `self_attn.q_proj`.
    Q,
    /// `self_attn.k_proj`.
    K,
    /// `self_attn.v_proj`.
    V,
    /// `self_attn.o_proj`.
    O,
    /// `mlp.gate_proj` (the dense or shared FFN).
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

impl Projection {
    /// All seven, in layer order.
    pub const ALL: [Projection; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    /// The module name (`q_proj`, ...), as PEFT's `target_modules` names it.
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
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        Self::ALL.into_iter().find(|t| t.module() == s || t.module().trim_end_matches("_proj") == s)
    }

    /// The module path within layer `layer` (`model.layers.3.self_attn.q_proj`).
    #[must_use]
    pub fn path(self, layer: u64) -> String {
        let block = match self {
            Self::Q | Self::K | Self::V | Self::O => "self_attn",
            Self::Gate | Self::Up | Self::Down => "mlp",
        };
        format!("model.layers.{layer}.{block}.{}", self.module())
    }
}

/// What a linear layer is in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A frozen base projection.
    Projection(Projection),
    /// A PESC router.
    Router,
    /// A PESC adapter's down (`up: false`) or up projection of expert `expert`.
    Adapter {
        /// The expert.
        expert: u64,
        /// Whether it is the up projection.
        up: bool,
    },
    /// A Mixtral router or expert projection.
    Mixtral,
    /// The LM head.
    LmHead,
}

/// A linear layer's place: its role and module name (its weight is `{module}.weight`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The role.
    pub role: Role,
    /// The module name.
    pub module: String,
}

/// How NF4 weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nf4Policy {
    /// An NF4 folder's weights dequantized once, when loading.
    Dequantize,
    /// An NF4 folder's weights kept as codes and dequantized at each use.
    AtUse,
    /// As `AtUse`, and every other model's frozen projections quantized to NF4
    /// when loading (bitsandbytes' default blocksize 64 and double quantization):
    /// QLoRA's frozen base.
    QuantizeProjections,
}

/// How a model is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The compute dtype: F32 or BF16 (runner), F32 or F64 (trainer).
    pub dtype: DType,
    /// Keep GGUF block-quantized matrices as stored (they then get no gradient);
    /// otherwise they are dequantized to the compute dtype.
    pub keep_blocks: bool,
    /// How NF4 weights are held.
    pub nf4: Nf4Policy,
    /// Vocabulary rows of the LM head multiplied at a time (`None`: all at
    /// once). A streamed model reads the head chunk by chunk; a resident one
    /// computes the same chunks, so both give the same bits.
    pub head_chunk_rows: Option<usize>,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    /// `down(silu(gate(h)) * up(h))`.
    fn forward(&self, h: &Tensor) -> Result<Tensor> {
        self.forward_in(h, h.dim(0)?)
    }

    /// [`Mlp::forward`] of an expert's share `h` of a batch of `tokens` rows.
    fn forward_in(&self, h: &Tensor, tokens: usize) -> Result<Tensor> {
        self.down.forward_in(&(self.gate.forward_in(h, tokens)?.silu()? * self.up.forward_in(h, tokens)?)?, tokens)
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

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

/// One decoder layer's weights.
pub struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    attn: Attention,
    ffn: Ffn,
}

/// Keys and values of the positions seen so far in one layer, `[heads, positions, head_dim]` each.
pub type LayerCache = Option<(Tensor, Tensor)>;

/// A hook on the rows an adapter reads: `(expert, rows) -> rows` (the trainer's dropout).
pub type AdapterInput<'a> = dyn Fn(usize, &Tensor) -> Result<Tensor> + 'a;

/// The routing of one MoE layer for the rows of a pass.
pub struct Routing {
    /// Router logits, `[rows, experts]`, in the compute dtype (with gradient when the router trains).
    pub logits: Tensor,
    /// Per row, the `k` experts with the largest logits, largest first (lower index first on ties).
    pub chosen: Vec<Vec<usize>>,
    /// Softmax over each row's chosen logits, `[rows * k]` in `chosen`'s order.
    weights: Tensor,
}

impl Routing {
    fn top_k(logits: Tensor, k: usize) -> Result<Self> {
        let values = logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let chosen: Vec<Vec<usize>> = values
            .iter()
            .map(|r| {
                let mut order: Vec<usize> = (0..r.len()).collect();
                order.sort_by(|&a, &b| r[b].total_cmp(&r[a]).then(a.cmp(&b)));
                order.truncate(k);
                order
            })
            .collect();
        let idx: Vec<u32> = chosen.iter().flatten().map(|&j| u32_of(j)).collect();
        let idx = Tensor::from_vec(idx, (chosen.len(), k), logits.device())?;
        let dtype = logits.dtype();
        let weights = softmax_last(&logits.gather(&idx, 1)?.to_dtype(wide(dtype))?)?.to_dtype(dtype)?.flatten_all()?;
        Ok(Routing { logits, chosen, weights })
    }

    /// `sum over each row's chosen experts j of w_j * f(j, row)`, for `n` experts, as
    /// a tensor shaped like `x`: each expert runs once, on the rows routed to it.
    fn mix(&self, x: &Tensor, n: usize, f: &dyn Fn(usize, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let mut acc = x.zeros_like()?;
        let k = self.chosen.first().map_or(0, Vec::len);
        for j in 0..n {
            let (rows, slots): (Vec<u32>, Vec<u32>) = self
                .chosen
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.iter().position(|&e| e == j).map(|s| (u32_of(i), u32_of(i * k + s))))
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let m = rows.len();
            let rows = Tensor::from_vec(rows, m, x.device())?;
            let w = self.weights.index_select(&Tensor::from_vec(slots, m, x.device())?, 0)?.unsqueeze(1)?;
            let out = f(j, &x.index_select(&rows, 0)?)?.broadcast_mul(&w)?;
            acc = acc.index_add(&rows, &out, 0)?;
        }
        Ok(acc)
    }
}

/// The sites of layer `l`'s dense or shared FFN.
fn shared_ffn_sites<'a>(l: u64, mlp: &'a mut Mlp, out: &mut Vec<(Site, &'a mut Linear)>) {
    let Mlp { gate, up, down } = mlp;
    for (p, lin) in [(Projection::Gate, gate), (Projection::Up, up), (Projection::Down, down)] {
        out.push((Site { role: Role::Projection(p), module: p.path(l) }, lin));
    }
}

/// The rotary tables and the causal mask of one pass.
pub struct Pass {
    b: usize,
    t: usize,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

/// The weights a resident model holds; a streamed one reads them as it goes.
struct Resident {
    embed: Tensor,
    layers: Vec<Layer>,
    /// The LM head, one linear layer per chunk of vocabulary rows.
    head: Vec<Linear>,
}

/// A decoder layer, held by a resident model or read for one use by a streamed one.
pub enum LayerRef<'a> {
    /// A resident model's layer.
    Resident(&'a Layer),
    /// A layer read for this use; dropped after it.
    Loaded(Box<Layer>),
}

impl std::ops::Deref for LayerRef<'_> {
    type Target = Layer;
    fn deref(&self) -> &Layer {
        match self {
            LayerRef::Resident(l) => l,
            LayerRef::Loaded(l) => l,
        }
    }
}

/// A decoder-only Llama-family model (dense, PESC or Mixtral): resident
/// ([`Transformer::load`], every weight in memory) or streamed
/// ([`Transformer::open`], each layer, the embedding rows and the LM head's
/// chunks read when used and released after, so memory is bounded by about
/// one layer whatever the depth). Both compute the same bits.
pub struct Transformer {
    weights: Weights,
    opts: LoadOptions,
    resident: Option<Resident>,
    norm: Tensor,
    inv_freq: Vec<f32>,
    eps: f64,
    num_layers: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    hidden: usize,
    window: Option<usize>,
    vocab: usize,
    device: Device,
}

/// f32 for the softmax and the norms, unless the model computes in f64.
fn wide(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

fn u32_of(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The block-quantized matrix `name` read as `raw`.
fn blocks(name: &str, raw: &pesc_llamacpp::RawTensor, device: &Device) -> Result<Blocks> {
    let dim = |i: usize| raw.shape.get(i).map_or(1, |&d| usize_of(d));
    Blocks::new(name, raw.ty, &raw.bytes, (dim(0), dim(1)), device)
}

struct Loader<'a> {
    weights: &'a Weights,
    opts: LoadOptions,
    device: &'a Device,
}

impl Loader<'_> {
    /// The tensor this tool calls `name` (PESC naming variants resolved), in the compute dtype.
    fn tensor(&self, name: &str) -> Result<Tensor> {
        self.weights.read_tensor(name, self.opts.dtype, self.device)
    }

    /// Weight matrix `name` as stored when it is block-quantized and blocks are kept.
    fn blocks(&self, name: &str) -> Result<Option<Weight>> {
        if !self.opts.keep_blocks {
            return Ok(None);
        }
        let Some(raw) = self.weights.quantized(name)? else { return Ok(None) };
        Ok(Some(Weight::Quantized(blocks(name, &raw, self.device)?)))
    }

    /// Weight matrix `name`; `projection` marks the frozen base projections.
    fn weight(&self, name: &str, projection: bool) -> Result<Weight> {
        if let Some(w) = self.blocks(name)? {
            return Ok(w);
        }
        if self.opts.nf4 != Nf4Policy::Dequantize {
            let stored = match self.weights.read_nf4(name)? {
                Some(s) => Some(s),
                None if projection && self.opts.nf4 == Nf4Policy::QuantizeProjections => {
                    let (values, shape) = self.weights.read_f32(name)?;
                    let codes = pesc_quant::nf4::quantize(&values, pesc_quant::nf4::Nf4Options::default())
                        .map_err(|source| ModelError::Nf4 { tensor: name.into(), source })?;
                    Some(crate::StoredNf4 { codes, dtype: pesc_tensor::DType::F32, shape })
                }
                None => None,
            };
            if let Some(s) = stored {
                let [out, inp] = s.shape[..] else {
                    return Err(ModelError::NotAMatrix { tensor: name.into(), shape: s.shape });
                };
                return Ok(Weight::Nf4(Nf4Weight {
                    codes: Arc::new(s.codes),
                    original: s.dtype,
                    shape: (out, inp),
                    dtype: self.opts.dtype,
                    device: self.device.clone(),
                }));
            }
        }
        Ok(Weight::Frozen(self.tensor(name)?))
    }

    fn linear(&self, module: &str, bias: bool, projection: bool) -> Result<Linear> {
        let bias = if bias { Some(self.tensor(&format!("{module}.bias"))?) } else { None };
        Ok(Linear::new(self.weight(&format!("{module}.weight"), projection)?, bias))
    }

    fn mlp(&self, gate: &str, up: &str, down: &str, bias: bool, projection: bool) -> Result<Mlp> {
        Ok(Mlp {
            gate: self.linear(gate, bias, projection)?,
            up: self.linear(up, bias, projection)?,
            down: self.linear(down, bias, projection)?,
        })
    }
    /// Layer `l`'s weights.
    fn layer(&self, l: u64) -> Result<Layer> {
        let cfg = self.weights.config();
        let proj = |p: Projection, bias: bool| self.linear(&p.path(l), bias, true);
        let shared = || -> Result<Mlp> {
            Ok(Mlp {
                gate: proj(Projection::Gate, cfg.mlp_bias)?,
                up: proj(Projection::Up, cfg.mlp_bias)?,
                down: proj(Projection::Down, cfg.mlp_bias)?,
            })
        };
        let p = format!("model.layers.{l}");
        let ffn = match &cfg.moe {
            Moe::Dense => Ffn::Dense(shared()?),
            Moe::Pesc(pp) => Ffn::Pesc {
                mlp: shared()?,
                router: self.linear(&format!("{p}.mlp.moe_adapter.router"), false, false)?,
                experts: (0..pp.num_experts)
                    .map(|j| {
                        let module = |which: &str| ExpertNaming::Camelidae.adapter(l, j, which).trim_end_matches(".weight").to_owned();
                        Ok(Adapter { down: self.linear(&module("down"), false, false)?, up: self.linear(&module("up"), false, false)? })
                    })
                    .collect::<Result<_>>()?,
                top_k: usize_of(pp.top_k),
                scaling: pp.scaling,
            },
            Moe::Mixtral { num_experts, top_k } => Ffn::Mixtral {
                gate: self.linear(&format!("{p}.block_sparse_moe.gate"), false, false)?,
                experts: (0..*num_experts)
                    .map(|j| {
                        let e = format!("{p}.block_sparse_moe.experts.{j}");
                        self.mlp(&format!("{e}.w1"), &format!("{e}.w3"), &format!("{e}.w2"), false, false)
                    })
                    .collect::<Result<_>>()?,
                top_k: usize_of(*top_k),
            },
        };
        Ok(Layer {
            input_norm: self.tensor(&format!("{p}.input_layernorm.weight"))?,
            post_norm: self.tensor(&format!("{p}.post_attention_layernorm.weight"))?,
            attn: Attention {
                q: proj(Projection::Q, cfg.qkv_bias)?,
                k: proj(Projection::K, cfg.qkv_bias)?,
                v: proj(Projection::V, cfg.qkv_bias)?,
                o: proj(Projection::O, cfg.o_bias)?,
            },
            ffn,
        })
    }

    /// The tensor the LM head multiplies by: `lm_head.weight`, or the
    /// embeddings when they are tied.
    fn head_name(&self) -> &'static str {
        if self.weights.config().tie_word_embeddings && !self.weights.has("lm_head.weight") {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        }
    }

    /// The LM head's rows `rows`: quantized as stored when they are (as llama.cpp uses them).
    fn head_chunk(&self, rows: std::ops::Range<usize>) -> Result<Linear> {
        let name = self.head_name();
        let range = rows.start as u64..rows.end as u64;
        if self.opts.keep_blocks {
            if let Some(raw) = self.weights.quantized_rows(name, range.clone())? {
                return Ok(Linear::new(Weight::Quantized(blocks(name, &raw, self.device)?), None));
            }
        }
        let values = self.weights.read_rows_f32(name, range)?;
        let cols = values.len() / rows.len().max(1);
        let t = Tensor::from_vec(values, (rows.len(), cols), self.device)?.to_dtype(self.opts.dtype)?;
        Ok(Linear::new(Weight::Frozen(t), None))
    }
}

impl Transformer {
    /// Loads every weight of `weights` onto `device` as `opts` says.
    pub fn load(weights: &Weights, opts: LoadOptions, device: &Device) -> Result<Self> {
        let mut model = Self::open(weights, opts, device)?;
        let ld = model.loader();
        let layers = (0..model.num_layers as u64).map(|l| ld.layer(l)).collect::<Result<Vec<_>>>()?;
        let embed = ld.tensor("model.embed_tokens.weight")?;
        let tied_values = ld.head_name() == "model.embed_tokens.weight" && ld.blocks("model.embed_tokens.weight")?.is_none();
        let head = if opts.head_chunk_rows.is_none() && tied_values {
            // Tied and held as values, in one chunk: the embedding matrix itself, shared.
            vec![Linear::new(Weight::Frozen(embed.clone()), None)]
        } else {
            model.head_chunks().into_iter().map(|rows| ld.head_chunk(rows)).collect::<Result<_>>()?
        };
        model.resident = Some(Resident { embed, layers, head });
        Ok(model)
    }

    /// Opens `weights` to be computed layer by layer: only the final norm is
    /// read now; each layer, the embedding rows of the tokens and each chunk
    /// of the LM head are read when used and released after.
    pub fn open(weights: &Weights, opts: LoadOptions, device: &Device) -> Result<Self> {
        let cfg = weights.config();
        let mut model = Transformer {
            weights: weights.clone(),
            opts,
            resident: None,
            norm: Tensor::zeros(1, opts.dtype, device)?,
            inv_freq: rope::inv_freq(cfg)?,
            eps: cfg.rms_norm_eps,
            num_layers: usize_of(cfg.num_layers),
            num_heads: usize_of(cfg.num_heads),
            num_kv_heads: usize_of(cfg.num_kv_heads),
            head_dim: usize_of(cfg.head_dim),
            hidden: usize_of(cfg.hidden_size),
            window: cfg.sliding_window.map(usize_of),
            vocab: usize_of(cfg.vocab_size),
            device: device.clone(),
        };
        model.norm = model.loader().tensor("model.norm.weight")?;
        Ok(model)
    }

    fn loader(&self) -> Loader<'_> {
        Loader { weights: &self.weights, opts: self.opts, device: &self.device }
    }

    /// The LM head's chunks of vocabulary rows.
    fn head_chunks(&self) -> Vec<std::ops::Range<usize>> {
        let step = self.opts.head_chunk_rows.unwrap_or(self.vocab).max(1);
        (0..self.vocab).step_by(step).map(|s| s..(s + step).min(self.vocab)).collect()
    }

    /// Whether every weight is in memory.
    #[must_use]
    pub fn is_resident(&self) -> bool {
        self.resident.is_some()
    }

    /// Bytes layer `l` takes in memory once read, in the compute dtype (GGUF
    /// block types as stored), plus its largest block-quantized matrix in f32,
    /// which a prefill holds while multiplying by it.
    #[must_use]
    pub fn layer_bytes(&self, l: u64) -> u64 {
        let (stored, transient) = self.layer_parts(l);
        stored.saturating_add(transient)
    }

    /// Layer `l`'s bytes once read, and its largest block-quantized matrix in f32.
    fn layer_parts(&self, l: u64) -> (u64, u64) {
        let prefix = format!("model.layers.{l}.");
        let size = self.opts.dtype.size_in_bytes() as u64;
        let tensors = self.weights.config().expected_tensors().unwrap_or_default();
        let names = || tensors.iter().filter(|(n, _)| n.starts_with(&prefix)).map(|(n, _)| n);
        let stored = names().map(|n| self.weights.resident_bytes(n, size)).fold(0, u64::saturating_add);
        (stored, names().map(|n| self.weights.dequantized_bytes(n)).max().unwrap_or(0))
    }

    /// Bytes of the LM head's largest chunk once read (and, block-quantized, dequantized for a prefill).
    #[must_use]
    pub fn head_chunk_bytes(&self) -> u64 {
        let rows = self.head_chunks().first().map_or(0, ExactSizeIterator::len) as u64;
        let head = self.loader().head_name();
        let whole = self.weights.resident_bytes(head, self.opts.dtype.size_in_bytes() as u64);
        whole.saturating_add(self.weights.dequantized_bytes(head)) / (self.vocab as u64).max(1) * rows
    }

    /// Bytes every weight takes in memory once read (what [`Transformer::load`] holds).
    #[must_use]
    pub fn resident_bytes(&self) -> u64 {
        let size = self.opts.dtype.size_in_bytes() as u64;
        let (stored, transient) = (0..self.num_layers as u64)
            .map(|l| self.layer_parts(l))
            .fold((0u64, 0u64), |(s, t), (ls, lt)| (s.saturating_add(ls), t.max(lt)));
        let head = self.weights.resident_bytes(self.loader().head_name(), size);
        let embed = self.weights.resident_bytes("model.embed_tokens.weight", size);
        stored.saturating_add(transient).saturating_add(head).saturating_add(embed)
    }

    /// Vocabulary size.
    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The model's configuration.
    #[must_use]
    pub fn config(&self) -> &pesc_hf::ModelConfig {
        self.weights.config()
    }

    /// Decoder layers.
    #[must_use]
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// The compute dtype.
    #[must_use]
    pub fn dtype(&self) -> DType {
        self.opts.dtype
    }

    /// Where the weights live.
    #[must_use]
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every linear layer of a resident model with its place, in a fixed
    /// order: per layer q, k, v, o, the FFN's gate, up and down, then the
    /// router and each expert's adapter down and up (PESC) or the router and
    /// the experts (Mixtral); the LM head's chunks last. Empty for a streamed model.
    pub fn linears_mut(&mut self) -> Vec<(Site, &mut Linear)> {
        let mut out = Vec::new();
        let Some(res) = &mut self.resident else { return out };
        for (l, layer) in (0u64..).zip(&mut res.layers) {
            let Attention { q, k, v, o } = &mut layer.attn;
            for (p, lin) in [(Projection::Q, q), (Projection::K, k), (Projection::V, v), (Projection::O, o)] {
                out.push((Site { role: Role::Projection(p), module: p.path(l) }, lin));
            }
            match &mut layer.ffn {
                Ffn::Dense(mlp) => shared_ffn_sites(l, mlp, &mut out),
                Ffn::Pesc { mlp, router, experts, .. } => {
                    shared_ffn_sites(l, mlp, &mut out);
                    out.push((Site { role: Role::Router, module: format!("model.layers.{l}.mlp.moe_adapter.router") }, router));
                    for (j, a) in (0u64..).zip(experts.iter_mut()) {
                        let module = |which: &str| ExpertNaming::Camelidae.adapter(l, j, which).trim_end_matches(".weight").to_owned();
                        out.push((Site { role: Role::Adapter { expert: j, up: false }, module: module("down") }, &mut a.down));
                        out.push((Site { role: Role::Adapter { expert: j, up: true }, module: module("up") }, &mut a.up));
                    }
                }
                Ffn::Mixtral { gate, experts, .. } => {
                    out.push((Site { role: Role::Mixtral, module: format!("model.layers.{l}.block_sparse_moe.gate") }, gate));
                    for (j, e) in experts.iter_mut().enumerate() {
                        let Mlp { gate, up, down } = e;
                        for (w, lin) in [("w1", gate), ("w3", up), ("w2", down)] {
                            out.push((
                                Site { role: Role::Mixtral, module: format!("model.layers.{l}.block_sparse_moe.experts.{j}.{w}") },
                                lin,
                            ));
                        }
                    }
                }
            }
        }
        for head in &mut res.head {
            out.push((Site { role: Role::LmHead, module: "lm_head".into() }, head));
        }
        out
    }

    /// Refuses token ids outside the vocabulary.
    pub fn check_tokens(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&t| t as usize >= self.vocab) {
            Some(&id) => Err(ModelError::TokenOutOfVocabulary { id, vocab: self.vocab }),
            None => Ok(()),
        }
    }

    /// The embeddings of `ids` (checked): `[ids, hidden]`. A streamed model
    /// reads the rows of the distinct ids only.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let at = |ids: Vec<u32>| {
            let n = ids.len();
            Tensor::from_vec(ids, n, &self.device)
        };
        if let Some(res) = &self.resident {
            return Ok(res.embed.index_select(&at(ids.to_vec())?, 0)?);
        }
        let mut distinct: Vec<u32> = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let mut rows = Vec::with_capacity(distinct.len() * self.hidden);
        for &id in &distinct {
            rows.extend(self.weights.read_rows_f32("model.embed_tokens.weight", u64::from(id)..u64::from(id) + 1)?);
        }
        let table = Tensor::from_vec(rows, (distinct.len(), self.hidden), &self.device)?.to_dtype(self.opts.dtype)?;
        let positions: Vec<u32> = ids.iter().map(|id| u32_of(distinct.binary_search(id).unwrap_or(0))).collect();
        Ok(table.index_select(&at(positions)?, 0)?)
    }

    /// The rotary tables and mask for `b` sequences of `t` tokens at positions `start..start + t`.
    pub fn pass(&self, b: usize, t: usize, start: usize) -> Result<Pass> {
        let (cos, sin) = rope::tables(&self.inv_freq, start, t, self.opts.dtype, &self.device)?;
        let mask = causal_mask(start, t, self.window, &self.device)?.to_dtype(wide(self.opts.dtype))?;
        Ok(Pass { b, t, cos, sin, mask })
    }

    /// Layer `li`: the resident one, or read now.
    pub fn load_layer(&self, li: usize) -> Result<LayerRef<'_>> {
        match &self.resident {
            Some(res) => Ok(LayerRef::Resident(&res.layers[li])),
            None => Ok(LayerRef::Loaded(Box::new(self.loader().layer(li as u64)?))),
        }
    }

    /// Layer `li` on the residual stream `x` (`[b * t, hidden]`); see [`Transformer::apply`].
    pub fn layer(
        &self,
        li: usize,
        x: &Tensor,
        pass: &Pass,
        cache: Option<&mut LayerCache>,
        adapter_input: Option<&AdapterInput<'_>>,
    ) -> Result<(Tensor, Option<Routing>)> {
        let layer = self.load_layer(li)?;
        self.apply(&layer, x, pass, cache, adapter_input)
    }

    /// `layer` on the residual stream `x` (`[b * t, hidden]`): the new stream
    /// and, for an MoE layer, its routing. `cache` (one sequence) holds the keys and
    /// values of earlier positions and is extended; `adapter_input` transforms the
    /// rows each PESC adapter reads.
    pub fn apply(
        &self,
        layer: &Layer,
        x: &Tensor,
        pass: &Pass,
        cache: Option<&mut LayerCache>,
        adapter_input: Option<&AdapterInput<'_>>,
    ) -> Result<(Tensor, Option<Routing>)> {
        let h = rms_norm(x, &layer.input_norm, self.eps)?;
        let a = self.attention(&layer.attn, &h, pass, cache)?;
        let x = (x + a)?;
        let h = rms_norm(&x, &layer.post_norm, self.eps)?;
        let tokens = h.dim(0)?;
        let (y, routing) = match &layer.ffn {
            Ffn::Dense(mlp) => (mlp.forward(&h)?, None),
            Ffn::Pesc { mlp, router, experts, top_k, scaling } => {
                let f = mlp.forward(&h)?;
                let routing = Routing::top_k(router.forward(&h)?, *top_k)?;
                let adapted = routing.mix(&f, experts.len(), &|j, rows| {
                    let a = &experts[j];
                    let input = match adapter_input {
                        Some(hook) => hook(j, rows)?,
                        None => rows.clone(),
                    };
                    a.up.forward_in(&a.down.forward_in(&input, tokens)?.gelu_erf()?, tokens)
                })?;
                // Residual form: with zero adapters `adapted` is exactly 0 and y == f.
                ((f + (adapted * *scaling)?)?, Some(routing))
            }
            Ffn::Mixtral { gate, experts, top_k } => {
                let routing = Routing::top_k(gate.forward(&h)?, *top_k)?;
                (routing.mix(&h, experts.len(), &|j, rows| experts[j].forward_in(rows, tokens))?, Some(routing))
            }
        };
        Ok(((x + y)?, routing))
    }

    /// The final norm and the LM head on the rows `x`: logits `[rows, vocab]`
    /// in the compute dtype. A streamed model reads the head chunk by chunk.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = rms_norm(x, &self.norm, self.eps)?;
        let mut parts = Vec::new();
        for (c, rows) in self.head_chunks().into_iter().enumerate() {
            parts.push(match &self.resident {
                Some(res) => res.head[c].forward(&x)?,
                None => self.loader().head_chunk(rows)?.forward(&x)?,
            });
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 1)? })
    }

    fn attention(&self, attn: &Attention, h: &Tensor, pass: &Pass, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (b, t) = (pass.b, pass.t);
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads =
            |x: Tensor, n: usize| -> Result<Tensor> { Ok(x.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?.reshape((b * n, t, d))?) };
        let q = rope::apply(&heads(attn.q.forward(h)?, nh)?, &pass.cos, &pass.sin)?;
        let k = rope::apply(&heads(attn.k.forward(h)?, nkv)?, &pass.cos, &pass.sin)?;
        let v = heads(attn.v.forward(h)?, nkv)?;
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let s = k.dim(1)?;
        let rep = nh / nkv;
        let expand = |x: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(x);
            }
            Ok(x.reshape((b, nkv, 1, s, d))?.broadcast_as((b, nkv, rep, s, d))?.contiguous()?.reshape((b * nh, s, d))?)
        };
        let (k, v) = (expand(k)?, expand(v)?);
        #[allow(clippy::cast_precision_loss)]
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(wide(self.opts.dtype))?.broadcast_add(&pass.mask)?;
        let probs = softmax_last(&scores)?.to_dtype(self.opts.dtype)?;
        let out = probs.matmul(&v)?.reshape((b, nh, t, d))?.transpose(1, 2)?.reshape((b * t, nh * d))?;
        attn.o.forward(&out)
    }
}
