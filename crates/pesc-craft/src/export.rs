//! `quantize --to f32|f16|bf16|q8_0|q4_0|q4_1|q4_k|q6_k|q4_k_m`: a
//! Llama-family folder (`llama`, `mistral`; dense, Mixtral or PESC) to one
//! GGUF file, the reverse of [`crate::Import`]. Dense and Mixtral models
//! become llama.cpp's architecture `llama` (Mixtral with `llama.expert_count`
//! and stacked `ffn_*_exps` tensors, as llama.cpp's converter writes them);
//! PESC models become this project's architecture `pesc` (`docs/format.md`
//! §8.1): the `llama` layout plus a router and stacked adapters per layer.
//!
//! The result is what llama.cpp's own pipeline gives:
//! `convert_hf_to_gguf.py --outtype f32` followed, for the quantized types,
//! by `llama-quantize` without an importance matrix (the copies vendored in
//! llama-cpp-python 0.3.36, llama.cpp `0c1e57098`). `scripts/llama-cpp-check.sh`
//! runs both on SmolLM2: the converter's f32 and q8_0 files hold the same
//! metadata (but `general.name`, which the converter title-cases) and the same
//! tensor bytes, and `llama_model_quantize` of our f32 file gives our
//! quantized files' tensors byte for byte, in the same order.
//!
//! - **Metadata** in the converter's order and types: `general.architecture`,
//!   `general.type`, `general.name` (the folder's name), `general.size_label`,
//!   the `llama.*` hyperparameters, `general.file_type`, `llama.vocab_size`,
//!   `llama.rope.dimension_count`, `general.quantization_version` (the
//!   converter writes it for every file type), then `tokenizer.*` (see
//!   [`crate::gguf_vocab`]). `llama.attention.key_length` and `value_length`
//!   are written when `config.json` sets `head_dim`, as the converter does.
//! - **Tensors** under llama.cpp's names, in the order `llama-quantize`
//!   writes them (its loader's `weight_name_comparer`: the tensors outside
//!   the blocks by name, then block by block, by name within a block; the
//!   converter keeps the checkpoint's order instead). q and k rows are
//!   permuted for llama.cpp's adjacent-pair rotary layout ([`permute_rows`])
//!   before anything is rounded. A tied `lm_head` is not written (llama.cpp
//!   falls back to `token_embd`).
//! - **Types** ([`plan_tensors`]): 1-D tensors and norms are F32 always. For
//!   f32/f16/bf16 every other tensor is that type; the rest follow
//!   `llama-quantize`'s per-tensor rules and its shape fallback.
//!
//! The file is written once, streaming one tensor at a time, into a
//! temporary file beside the target that is fsynced and renamed into place:
//! a failed or interrupted run leaves nothing at the target. The bytes depend
//! only on the input and the options (quantization splits a tensor at row
//! boundaries across threads; each row's encoding is independent).

use crate::gguf_vocab::{gguf_vocab, VocabKind};
use crate::CraftError;
use pesc_arch::{Family, Model, ModelConfig, Moe, RopeScaling};
use pesc_gguf::{GgmlType, GgufWriter, Metadata, TensorSpec, Value};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// `GGML_QNT_VERSION`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// llama.cpp's `LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX` (`{arch}.expert_gating_func`).
pub const EXPERT_GATING_SOFTMAX: u32 = 1;

/// A GGUF file type `quantize --to` can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum GgufType {
    /// Every weight F32 (`ALL_F32`).
    F32,
    /// Weights F16 (`MOSTLY_F16`).
    F16,
    /// Weights BF16 (`MOSTLY_BF16`).
    BF16,
    /// Weights Q8_0 (`MOSTLY_Q8_0`).
    Q8_0,
    /// Weights Q4_0, output Q6_K (`MOSTLY_Q4_0`).
    Q4_0,
    /// Weights Q4_1, output Q6_K (`MOSTLY_Q4_1`).
    Q4_1,
    /// llama-quantize's Q4_K_S recipe (`MOSTLY_Q4_K_S`).
    Q4_K,
    /// Weights Q6_K (`MOSTLY_Q6_K`).
    Q6_K,
    /// llama-quantize's Q4_K_M recipe (`MOSTLY_Q4_K_M`).
    Q4_K_M,
}

impl GgufType {
    /// Every type, in the order `--help` lists them.
    pub const ALL: [GgufType; 9] = [
        GgufType::F32,
        GgufType::F16,
        GgufType::BF16,
        GgufType::Q8_0,
        GgufType::Q4_0,
        GgufType::Q4_1,
        GgufType::Q4_K,
        GgufType::Q6_K,
        GgufType::Q4_K_M,
    ];

    /// The `--to` spelling.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            GgufType::F32 => "f32",
            GgufType::F16 => "f16",
            GgufType::BF16 => "bf16",
            GgufType::Q8_0 => "q8_0",
            GgufType::Q4_0 => "q4_0",
            GgufType::Q4_1 => "q4_1",
            GgufType::Q4_K => "q4_k",
            GgufType::Q6_K => "q6_k",
            GgufType::Q4_K_M => "q4_k_m",
        }
    }

    /// The type named `s` (`--to` spelling).
    #[must_use]
    pub fn parse(s: &str) -> Option<GgufType> {
        GgufType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// `general.file_type` (`llama_ftype` / gguf-py `LlamaFileType`).
    #[must_use]
    pub fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q4_0 => 2,
            GgufType::Q4_1 => 3,
            GgufType::Q8_0 => 7,
            GgufType::Q4_K => 14,
            GgufType::Q4_K_M => 15,
            GgufType::Q6_K => 18,
            GgufType::BF16 => 32,
        }
    }

    /// llama.cpp's name of the file type (`MOSTLY_Q4_K_M` ...).
    #[must_use]
    pub fn ftype_name(self) -> &'static str {
        match self {
            GgufType::F32 => "ALL_F32",
            GgufType::F16 => "MOSTLY_F16",
            GgufType::BF16 => "MOSTLY_BF16",
            GgufType::Q8_0 => "MOSTLY_Q8_0",
            GgufType::Q4_0 => "MOSTLY_Q4_0",
            GgufType::Q4_1 => "MOSTLY_Q4_1",
            GgufType::Q4_K => "MOSTLY_Q4_K_S",
            GgufType::Q6_K => "MOSTLY_Q6_K",
            GgufType::Q4_K_M => "MOSTLY_Q4_K_M",
        }
    }

    /// The tensor type of the file type (`llama_ftype_get_default_type`).
    #[must_use]
    pub fn default_type(self) -> GgmlType {
        match self {
            GgufType::F32 => GgmlType::F32,
            GgufType::F16 => GgmlType::F16,
            GgufType::BF16 => GgmlType::BF16,
            GgufType::Q8_0 => GgmlType::Q8_0,
            GgufType::Q4_0 => GgmlType::Q4_0,
            GgufType::Q4_1 => GgmlType::Q4_1,
            GgufType::Q4_K | GgufType::Q4_K_M => GgmlType::Q4_K,
            GgufType::Q6_K => GgmlType::Q6_K,
        }
    }

    /// Whether the default type is a block quantization (the mix rules and
    /// shape fallback apply only then, as in `llama_tensor_get_type`).
    #[must_use]
    pub fn is_quantized(self) -> bool {
        self.default_type().block_size() > 1
    }
}

/// Options of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    /// The file type.
    pub to: GgufType,
    /// `llama-quantize --pure`: every quantizable tensor gets the default
    /// type (only the shape fallback still applies), no per-tensor recipe.
    pub pure: bool,
}

/// The role of a tensor in `llama-quantize`'s rules (`tensor_get_category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    Output,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
    Norm,
    /// A Mixtral or PESC router: F32 always (llama.cpp never quantizes `ffn_gate_inp`).
    Router,
    /// PESC adapters: kept 16-bit in quantized files.
    Adapter,
}

/// One tensor of the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Its GGUF name.
    pub name: String,
    /// The Hugging Face tensors it comes from: one, or the experts stacked
    /// along the outermost dimension in expert order.
    pub sources: Vec<String>,
    /// Its ggml type.
    pub ty: GgmlType,
    /// Dimensions in ggml order (`ne[0]` is the row length).
    pub ne: Vec<u64>,
    /// For q and k: the head count its rows are permuted with.
    pub permute_heads: Option<u64>,
    /// The type the rules chose when the shape forced another (`ty`).
    pub fallback_from: Option<GgmlType>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// The tensors, in file order.
    pub tensors: Vec<PlannedTensor>,
    /// The vocabulary written.
    pub vocab: VocabKind,
    /// Things the user should know (ignored config settings).
    pub warnings: Vec<String>,
}

impl ExportSummary {
    /// `(type name, count)` in ggml id order.
    #[must_use]
    pub fn type_counts(&self) -> Vec<(GgmlType, usize)> {
        let mut m: BTreeMap<u32, (GgmlType, usize)> = BTreeMap::new();
        for t in &self.tensors {
            m.entry(t.ty.id()).or_insert((t.ty, 0)).1 += 1;
        }
        m.into_values().collect()
    }
}

fn invalid(model: &Path, what: impl std::fmt::Display) -> CraftError {
    CraftError::Invalid(format!("`{}`: {what}", model.display()))
}

/// Checks that `config` is a model this export handles; returns warnings
/// about settings llama.cpp's `llama` architecture ignores.
pub fn check_exportable(config: &ModelConfig) -> Result<Vec<String>, CraftError> {
    let dir = config.path.parent().unwrap_or(Path::new("."));
    if config.family == Family::Qwen2 {
        let what = if matches!(config.moe, Moe::Pesc(_)) { "a PESC model on a qwen2 base" } else { "a qwen2 model" };
        return Err(invalid(dir, format!("is {what}; GGUF export supports llama and mistral models only (qwen2, llama.cpp architecture `qwen2`, is not implemented yet)")));
    }
    if config.qkv_bias || config.o_bias || config.mlp_bias {
        return Err(invalid(dir, "has attention or MLP biases (`attention_bias`/`mlp_bias`), which GGUF export does not support yet"));
    }
    match &config.rope_scaling {
        RopeScaling::None | RopeScaling::Linear { .. } => {}
        RopeScaling::Llama3 { .. } => {
            return Err(invalid(
                dir,
                "uses llama3 rope scaling, which GGUF export does not support yet (llama.cpp needs a `rope_freqs.weight` tensor)",
            ))
        }
        RopeScaling::Other { rope_type } => {
            return Err(invalid(dir, format!("uses rope scaling `{rope_type}`, which GGUF export does not support")))
        }
    }
    if config.head_dim.checked_rem(2) != Some(0) {
        return Err(invalid(dir, format!("head_dim {} is odd; llama.cpp's rotary layout needs an even head size", config.head_dim)));
    }
    let mut warnings = Vec::new();
    if let Some(w) = config.sliding_window {
        warnings.push(format!(
            "config.json sets sliding_window {w}; llama.cpp's `llama` architecture attends to the whole context (as its converter, which drops the setting)"
        ));
    }
    Ok(warnings)
}

/// GGUF name -> Hugging Face name, category and permutation heads, for one layer tensor.
const LAYER_TENSORS: [(&str, &str, Category); 9] = [
    ("attn_norm.weight", "input_layernorm.weight", Category::Norm),
    ("ffn_norm.weight", "post_attention_layernorm.weight", Category::Norm),
    ("attn_q.weight", "self_attn.q_proj.weight", Category::AttnQ),
    ("attn_k.weight", "self_attn.k_proj.weight", Category::AttnK),
    ("attn_v.weight", "self_attn.v_proj.weight", Category::AttnV),
    ("attn_output.weight", "self_attn.o_proj.weight", Category::AttnOutput),
    ("ffn_gate.weight", "mlp.gate_proj.weight", Category::FfnGate),
    ("ffn_up.weight", "mlp.up_proj.weight", Category::FfnUp),
    ("ffn_down.weight", "mlp.down_proj.weight", Category::FfnDown),
];

/// llama-quantize's `use_more_bits`: the first and last eighth of the layers
/// and every third layer in between.
fn use_more_bits(layer: u64, n_layers: u64) -> bool {
    let (i, n) = (i128::from(layer), i128::from(n_layers));
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The shape fallback (`tensor_type_fallback`): when the row length `ne0` is
/// not whole blocks of `ty`, Q4_K becomes Q5_0, Q5_K Q5_1 and Q6_K Q8_0 (the
/// 32-element types keep their type), and F16 when even that does not fit.
#[must_use]
pub fn shape_fallback(ty: GgmlType, ne0: u64) -> GgmlType {
    let whole = |t: GgmlType| ne0.checked_rem(t.block_size()) == Some(0);
    if whole(ty) {
        return ty;
    }
    let next = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if whole(next) {
        next
    } else {
        GgmlType::F16
    }
}

/// The model facts the type rules read.
struct Shape {
    n_layers: u64,
    tied: bool,
    /// llama.cpp's `n_expert`: the Mixtral expert count, 0 for dense and PESC
    /// models (whose backbone the rules treat as dense).
    n_expert: u64,
    /// llama.cpp's `LLM_TYPE_70B` for arch `llama`: 80 layers, grouped-query
    /// attention and not 8 experts.
    is_70b: bool,
}

/// The type of one tensor, as `llama_tensor_get_type` chooses it without an
/// importance matrix, and the type before the shape fallback when that
/// changed it.
///
/// Not quantized (F32): 1-D tensors, norms and routers. PESC adapters are
/// F32 in f32 files, BF16 in bf16 files and F16 otherwise. For f32/f16/bf16
/// every other tensor has the file's type. For the quantized file types,
/// unless `pure`, the recipe first adjusts the default type:
///
/// - `output.weight`, and `token_embd.weight` when the embeddings are tied:
///   Q8_0 when the row length is not whole blocks of the default type,
///   otherwise Q6_K unless the default is Q8_0. (An untied `token_embd`
///   keeps the default.)
/// - `attn_v`: Q4_K_M gives Q6_K to the layers `use_more_bits` picks (the
///   first and last eighth of the layers and every third one between,
///   counting from n/8); Q4_K_S gives Q5_K to the first four layers. In a
///   70B model a resulting Q4_K or Q3_K becomes Q5_K. With 8 experts, Q8_0.
/// - `attn_k`: Q8_0 with 8 experts.
/// - `attn_output`: Q5_K with 8 experts for Q4_K_S and Q4_K_M.
/// - `ffn_down` (and `ffn_down_exps`): Q4_K_M gives Q6_K to the
///   `use_more_bits` layers; Q4_K_S gives Q5_K to the first eighth.
/// - q, gate and up keep the default for these types.
///
/// Then, pure or not, [`shape_fallback`].
fn tensor_type(to: GgufType, pure: bool, category: Category, layer: u64, ne: &[u64], shape: &Shape) -> (GgmlType, Option<GgmlType>) {
    if ne.len() < 2 || matches!(category, Category::Norm | Category::Router) {
        return (GgmlType::F32, None);
    }
    if category == Category::Adapter {
        let ty = match to {
            GgufType::F32 => GgmlType::F32,
            GgufType::BF16 => GgmlType::BF16,
            _ => GgmlType::F16,
        };
        return (ty, None);
    }
    let default = to.default_type();
    if !to.is_quantized() {
        return (default, None);
    }
    let ne0 = ne[0];
    let mut ty = default;
    if !pure {
        let k_s = to == GgufType::Q4_K;
        let k_m = to == GgufType::Q4_K_M;
        let eight = shape.n_expert == 8;
        match category {
            Category::Output | Category::TokenEmbd if category == Category::Output || shape.tied => {
                if ne0.checked_rem(default.block_size()) != Some(0) {
                    ty = GgmlType::Q8_0;
                } else if default != GgmlType::Q8_0 {
                    ty = GgmlType::Q6_K;
                }
            }
            Category::AttnV => {
                if k_m && use_more_bits(layer, shape.n_layers) {
                    ty = GgmlType::Q6_K;
                } else if k_s && layer < 4 {
                    ty = GgmlType::Q5_K;
                }
                if shape.is_70b && matches!(ty, GgmlType::Q3_K | GgmlType::Q4_K) {
                    ty = GgmlType::Q5_K;
                }
                if eight {
                    ty = GgmlType::Q8_0;
                }
            }
            Category::AttnK if eight => ty = GgmlType::Q8_0,
            Category::AttnOutput if eight && (k_s || k_m) => ty = GgmlType::Q5_K,
            Category::FfnDown => {
                if k_m && use_more_bits(layer, shape.n_layers) {
                    ty = GgmlType::Q6_K;
                } else if k_s && layer < shape.n_layers / 8 {
                    ty = GgmlType::Q5_K;
                }
            }
            _ => {}
        }
    }
    let fell = shape_fallback(ty, ne0);
    (fell, (fell != ty).then_some(ty))
}

/// Sort key of llama.cpp's `weight_name_comparer`: block number (-1 outside
/// the blocks), then name.
fn loader_order(name: &str) -> (i64, &str) {
    let layer = name.strip_prefix("blk.").and_then(|r| r.split_once('.')).and_then(|(l, _)| l.parse::<i64>().ok()).unwrap_or(-1);
    (layer, name)
}

/// The GGUF architecture of an export: `llama` for dense and Mixtral models,
/// `pesc` for PESC models.
#[must_use]
pub fn gguf_architecture(config: &ModelConfig) -> &'static str {
    match config.moe {
        Moe::Pesc(_) => "pesc",
        Moe::Dense | Moe::Mixtral { .. } => "llama",
    }
}

/// Every tensor the export writes, in file order, with its type.
pub fn plan_tensors(config: &ModelConfig, opts: ExportOptions) -> Result<Vec<PlannedTensor>, CraftError> {
    check_exportable(config)?;
    let (h, i, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let (q, kv) = (config.q_dim(), config.kv_dim());
    let n_expert = match config.moe {
        Moe::Mixtral { num_experts, .. } => num_experts,
        Moe::Dense | Moe::Pesc(_) => 0,
    };
    let shape = Shape {
        n_layers: config.num_layers,
        tied: config.tie_word_embeddings,
        n_expert,
        is_70b: n_expert != 8 && config.num_layers == 80 && config.num_heads != config.num_kv_heads,
    };
    // (gguf name, hf names, category, layer, ggml ne, permute heads)
    type Row = (String, Vec<String>, Category, u64, Vec<u64>, Option<u64>);
    let one = |s: &str| vec![s.to_owned()];
    let mut raw: Vec<Row> = vec![
        ("token_embd.weight".into(), one("model.embed_tokens.weight"), Category::TokenEmbd, 0, vec![h, v], None),
        ("output_norm.weight".into(), one("model.norm.weight"), Category::Norm, 0, vec![h], None),
    ];
    if !config.tie_word_embeddings {
        raw.push(("output.weight".into(), one("lm_head.weight"), Category::Output, 0, vec![h, v], None));
    }
    for l in 0..config.num_layers {
        for (g, hf, cat) in LAYER_TENSORS {
            let (ne, permute) = match cat {
                Category::Norm => (vec![h], None),
                Category::AttnQ => (vec![h, q], Some(config.num_heads)),
                Category::AttnK => (vec![h, kv], Some(config.num_kv_heads)),
                Category::AttnV => (vec![h, kv], None),
                Category::AttnOutput => (vec![q, h], None),
                Category::FfnGate | Category::FfnUp => (vec![h, i], None),
                _ => (vec![i, h], None),
            };
            let is_ffn = matches!(cat, Category::FfnGate | Category::FfnUp | Category::FfnDown);
            if let (true, Moe::Mixtral { num_experts, .. }) = (is_ffn, &config.moe) {
                // w1 = gate, w2 = down, w3 = up, stacked: ne gains the expert count.
                let (stem, w) = match cat {
                    Category::FfnGate => ("ffn_gate_exps.weight", "w1"),
                    Category::FfnUp => ("ffn_up_exps.weight", "w3"),
                    _ => ("ffn_down_exps.weight", "w2"),
                };
                let sources = (0..*num_experts).map(|j| pesc_arch::mixtral_expert(l, j, w)).collect();
                let mut ne = ne;
                ne.push(*num_experts);
                raw.push((format!("blk.{l}.{stem}"), sources, cat, l, ne, None));
                continue;
            }
            raw.push((format!("blk.{l}.{g}"), vec![format!("model.layers.{l}.{hf}")], cat, l, ne, permute));
        }
        match &config.moe {
            Moe::Mixtral { num_experts, .. } => {
                raw.push((
                    format!("blk.{l}.ffn_gate_inp.weight"),
                    vec![pesc_arch::mixtral_gate(l)],
                    Category::Router,
                    l,
                    vec![h, *num_experts],
                    None,
                ));
            }
            Moe::Pesc(p) => {
                let n = pesc_arch::ExpertNaming::Camelidae;
                let (e, a) = (p.num_experts, p.adapter_dim);
                raw.push((
                    format!("blk.{l}.ffn_adapter_gate_inp.weight"),
                    vec![pesc_arch::pesc_router(l)],
                    Category::Router,
                    l,
                    vec![h, e],
                    None,
                ));
                let down = (0..e).map(|j| n.adapter(l, j, "down")).collect();
                raw.push((format!("blk.{l}.ffn_adapter_down_exps.weight"), down, Category::Adapter, l, vec![h, a, e], None));
                let up = (0..e).map(|j| n.adapter(l, j, "up")).collect();
                raw.push((format!("blk.{l}.ffn_adapter_up_exps.weight"), up, Category::Adapter, l, vec![a, h, e], None));
            }
            Moe::Dense => {}
        }
    }
    raw.sort_by(|a, b| loader_order(&a.0).cmp(&loader_order(&b.0)));
    Ok(raw
        .into_iter()
        .map(|(name, sources, cat, layer, ne, permute_heads)| {
            let (ty, fallback_from) = tensor_type(opts.to, opts.pure, cat, layer, &ne, &shape);
            PlannedTensor { name, sources, ty, ne, permute_heads, fallback_from }
        })
        .collect())
}

/// llama.cpp's converter permutation of a q or k weight (`rows` × `cols`,
/// row-major, `heads` heads of `rows / heads` rows): within each head, the
/// Hugging Face row `t * d/2 + i` (first or second half, `t` = 0 or 1) moves
/// to row `2i + t`, so rotary pairs become adjacent rows. The inverse of
/// `import-gguf`'s un-permutation.
#[must_use]
pub fn permute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads.max(1);
    let half = d / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for t in 0..2 {
            for i in 0..half {
                let src = (h * d + t * half + i) * cols;
                let dst = (h * d + 2 * i + t) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

fn u32_of(dir: &Path, key: &str, v: u64) -> Result<Value, CraftError> {
    u32::try_from(v).map(Value::U32).map_err(|_| invalid(dir, format!("`{key}` = {v} does not fit the GGUF UINT32 field")))
}

/// `f64` config values are stored as FLOAT32, rounded to nearest as gguf-py's `struct.pack('f')` does.
#[allow(clippy::cast_possible_truncation)]
fn f32_of(v: f64) -> Value {
    Value::F32(v as f32)
}

/// gguf-py's `size_label`: the parameter count in K, M, B or T with at
/// least two significant digits (`95K`, `135M`, `1.2B`); for a model with
/// stacked expert tensors (`_exps.` in the name) `{experts}x{shared + one
/// expert's parameters}` (`8x7.2M`).
#[must_use]
pub fn size_label(tensors: &[PlannedTensor]) -> String {
    let (mut total, mut shared, mut expert, mut expert_sum, mut n_expert_tensors) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for t in tensors {
        let size: u64 = t.ne.iter().product();
        total += size;
        match t.ne.get(2) {
            Some(&count) if t.name.contains("_exps.") && count > 0 => {
                expert += size / count;
                expert_sum += count;
                n_expert_tensors += 1;
            }
            _ => shared += size,
        }
    }
    match expert_sum.checked_div(n_expert_tensors) {
        Some(count) => format!("{count}x{}", rounded_count(shared + expert)),
        None => rounded_count(total),
    }
}

/// gguf-py's `model_weight_count_rounded_notation` with two digits.
fn rounded_count(params: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let n = params as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    // Python's len(str(round(x)).lstrip('0')): the digits of the rounded value, none for 0.
    let rounded = scaled.round_ties_even();
    let digits = if rounded < 1.0 { 0 } else { format!("{rounded:.0}").len() };
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// The metadata of the export of `model`, in the converter's order.
pub fn export_metadata(model: &Model, opts: ExportOptions) -> Result<(Metadata, VocabKind), CraftError> {
    let c = &model.config;
    let dir = &model.dir;
    let arch = gguf_architecture(c);
    let name =
        fs::canonicalize(dir).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "model".into());
    let mut md = Metadata::new();
    let mut push = |key: &str, value: Value| md.push(key, value).map_err(|e| invalid(dir, format!("metadata: {e}")));
    let k = |name: &str| format!("{arch}.{name}");
    push("general.architecture", arch.into())?;
    push("general.type", "model".into())?;
    push("general.name", name.into())?;
    push("general.size_label", size_label(&plan_tensors(c, opts)?).into())?;
    push(&k("block_count"), u32_of(dir, "num_hidden_layers", c.num_layers)?)?;
    if let Some(ctx) = c.max_position_embeddings {
        push(&k("context_length"), u32_of(dir, "max_position_embeddings", ctx)?)?;
    }
    push(&k("embedding_length"), u32_of(dir, "hidden_size", c.hidden_size)?)?;
    push(&k("feed_forward_length"), u32_of(dir, "intermediate_size", c.intermediate_size)?)?;
    push(&k("attention.head_count"), u32_of(dir, "num_attention_heads", c.num_heads)?)?;
    push(&k("attention.head_count_kv"), u32_of(dir, "num_key_value_heads", c.num_kv_heads)?)?;
    if let RopeScaling::Linear { factor } = c.rope_scaling {
        push(&k("rope.scaling.type"), "linear".into())?;
        push(&k("rope.scaling.factor"), f32_of(factor))?;
    }
    push(&k("rope.freq_base"), f32_of(c.rope_theta))?;
    push(&k("attention.layer_norm_rms_epsilon"), f32_of(c.rms_norm_eps))?;
    match &c.moe {
        Moe::Mixtral { num_experts, top_k } => {
            push(&k("expert_count"), u32_of(dir, "num_local_experts", *num_experts)?)?;
            push(&k("expert_used_count"), u32_of(dir, "num_experts_per_tok", *top_k)?)?;
        }
        Moe::Pesc(p) => {
            push(&k("expert_count"), u32_of(dir, "num_experts", p.num_experts)?)?;
            push(&k("expert_used_count"), u32_of(dir, "topk", p.top_k)?)?;
            push(&k("expert_gating_func"), Value::U32(EXPERT_GATING_SOFTMAX))?;
            push(&k("adapter_dim"), u32_of(dir, "adapter_dim", p.adapter_dim)?)?;
            push(&k("adapter_scale"), f32_of(p.scaling))?;
        }
        Moe::Dense => {}
    }
    if c.raw.get("head_dim").is_some_and(|v| !v.is_null()) {
        push(&k("attention.key_length"), u32_of(dir, "head_dim", c.head_dim)?)?;
        push(&k("attention.value_length"), u32_of(dir, "head_dim", c.head_dim)?)?;
    }
    push("general.file_type", Value::U32(opts.to.file_type()))?;
    push(&k("vocab_size"), u32_of(dir, "vocab_size", c.vocab_size)?)?;
    push(&k("rope.dimension_count"), u32_of(dir, "head_dim", c.head_dim)?)?;
    push("general.quantization_version", Value::U32(QUANTIZATION_VERSION))?;
    let (vocab, kind) = gguf_vocab(dir, c)?;
    for (k, v) in vocab {
        push(&k, v)?;
    }
    Ok((md, kind))
}

/// Encodes `values` (rows of `row_len`) as `ty`, splitting the rows across
/// threads; the bytes do not depend on the split.
fn encode(ty: GgmlType, values: &[f32], row_len: usize, tensor: &str) -> Result<Vec<u8>, CraftError> {
    let fail = |e: pesc_quant::QuantError| CraftError::Invalid(format!("tensor `{tensor}`: {e}"));
    let row_bytes = ty
        .row_bytes(row_len as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| CraftError::Invalid(format!("tensor `{tensor}`: rows of {row_len} are not whole {ty} blocks")))?;
    let rows = values.len() / row_len.max(1);
    let mut out = vec![0u8; rows * row_bytes];
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(16).min(rows.max(1));
    if threads <= 1 || values.len() < 1 << 16 {
        pesc_quant::quantize_into(ty, values, &mut out).map_err(fail)?;
        return Ok(out);
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        let jobs: Vec<_> = values
            .chunks(per * row_len)
            .zip(out.chunks_mut(per * row_bytes))
            .map(|(src, dst)| s.spawn(move || pesc_quant::quantize_into(ty, src, dst)))
            .collect();
        for j in jobs {
            match j.join() {
                Ok(r) => r.map_err(fail)?,
                Err(_) => return Err(CraftError::Invalid(format!("tensor `{tensor}`: a quantization thread panicked"))),
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// The temporary file beside the target; removed on drop unless kept.
struct Staged {
    path: PathBuf,
    keep: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Checks the target: not a symlink or folder, absent unless `force`, not
/// one of the model's own files, with an existing parent. Returns the parent.
fn check_target(target: &Path, force: bool, model: &Model) -> Result<(PathBuf, String), CraftError> {
    let bad = |problem: &str| CraftError::Io(pesc_io::Error::OutputPath { path: target.into(), problem: problem.into() });
    let name = target.file_name().ok_or_else(|| bad("has no file name"))?.to_string_lossy().into_owned();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(bad("has no existing parent folder"));
    }
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => return Err(bad("is a symlink; refusing to write through it")),
        Ok(m) if m.is_dir() => return Err(bad("is a folder; give a file name such as model.gguf")),
        Ok(_) if !force => return Err(CraftError::Io(pesc_io::Error::OutputExists { path: target.into() })),
        Ok(_) => {
            let existing = fs::canonicalize(target).map_err(|e| pesc_io::Error::Io { path: target.into(), source: e })?;
            let mut inputs = model.weights.files();
            inputs.push(model.dir.join("config.json"));
            inputs.extend(crate::AUX_FILES.iter().map(|f| model.dir.join(f)));
            if inputs.iter().filter_map(|p| fs::canonicalize(p).ok()).any(|p| p == existing) {
                return Err(bad("is one of the model's own files; write the GGUF elsewhere"));
            }
        }
        Err(_) => {}
    }
    Ok((parent, name))
}

/// Writes the GGUF export of `model` to `target` (atomically; an existing
/// file is replaced only with `force`), reporting `(done, total)` input
/// bytes to `progress`.
pub fn export_gguf(
    model: &Model,
    opts: ExportOptions,
    target: &Path,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExportSummary, CraftError> {
    let warnings = check_exportable(&model.config)?;
    let plan = plan_tensors(&model.config, opts)?;
    let (metadata, vocab) = export_metadata(model, opts)?;
    let (parent, name) = check_target(target, force, model)?;
    for t in &plan {
        for src in &t.sources {
            if model.weights.get(&model.stored_name(src)).is_none() {
                return Err(invalid(&model.dir, format!("tensor `{}` is missing", model.stored_name(src))));
            }
        }
    }
    let total: u64 = plan.iter().flat_map(|t| &t.sources).filter_map(|s| model.weights.get(&model.stored_name(s))).map(|t| t.nbytes).sum();

    pesc_io::remove_stale_staging(&parent, &name);
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let staged = Staged { path: parent.join(format!(".{name}.pesc-staging-{}-{nonce:08x}", std::process::id())), keep: false };
    let io_err = |path: &Path, e: std::io::Error| CraftError::Io(pesc_io::Error::Io { path: path.into(), source: e });
    let gguf_err = |e: pesc_gguf::GgufError| match e {
        pesc_gguf::GgufError::Write(io) => io_err(target, io),
        other => CraftError::Gguf(other),
    };
    let file = OpenOptions::new().write(true).create_new(true).open(&staged.path).map_err(|e| io_err(&staged.path, e))?;
    let specs: Vec<TensorSpec> = plan.iter().map(|t| TensorSpec::new(t.name.clone(), t.ty, &t.ne)).collect();
    let mut w = GgufWriter::new(BufWriter::with_capacity(1 << 20, file), &metadata, &specs).map_err(gguf_err)?;
    let mut done = 0u64;
    progress(0, total);
    for t in &plan {
        if pesc_io::interrupted() {
            return Err(CraftError::Io(pesc_io::Error::Interrupted));
        }
        let cols = usize::try_from(t.ne[0]).unwrap_or(usize::MAX);
        let mut bytes = Vec::new();
        // Stacked experts: each expert's rows are whole blocks, so encoding
        // expert by expert and concatenating equals encoding the stack.
        for src in &t.sources {
            let stored = model.stored_name(src);
            let info = model.weights.get(&stored).ok_or_else(|| invalid(&model.dir, format!("tensor `{stored}` is missing")))?;
            let values = pesc_tensor::to_f32(info.dtype, &model.weights.read(&stored)?)
                .ok_or_else(|| invalid(&model.dir, format!("tensor `{stored}` has dtype {}, not a float type", info.dtype)))?;
            let rows = values.len() / cols.max(1);
            let values = match t.permute_heads {
                Some(heads) => permute_rows(&values, rows, cols, usize::try_from(heads).unwrap_or(1)),
                None => values,
            };
            bytes.extend_from_slice(&encode(t.ty, &values, cols, &stored)?);
            done += info.nbytes;
        }
        w.write_tensor(&t.name, &bytes).map_err(gguf_err)?;
        progress(done, total);
    }
    let out = w.finish().map_err(gguf_err)?;
    let file = out.into_inner().map_err(|e| io_err(&staged.path, e.into_error()))?;
    file.sync_all().map_err(|e| io_err(&staged.path, e))?;
    let bytes = file.metadata().map_err(|e| io_err(&staged.path, e))?.len();
    drop(file);
    if pesc_io::interrupted() {
        return Err(CraftError::Io(pesc_io::Error::Interrupted));
    }
    // Re-check right before the rename: the target may have appeared meanwhile.
    if !force && fs::symlink_metadata(target).is_ok() {
        return Err(CraftError::Io(pesc_io::Error::OutputExists { path: target.into() }));
    }
    fs::rename(&staged.path, target).map_err(|e| io_err(target, e))?;
    let mut staged = staged;
    staged.keep = true;
    File::open(&parent).and_then(|d| d.sync_all()).map_err(|e| io_err(&parent, e))?;
    Ok(ExportSummary { path: target.to_path_buf(), bytes, tensors: plan, vocab, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_matches_llama_quantize() {
        // 30 layers (SmolLM2): n/8 = 3, 7n/8 = 26; every third from 3 + 2.
        let picked: Vec<u64> = (0..30).filter(|&l| use_more_bits(l, 30)).collect();
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        let eight: Vec<u64> = (0..8).filter(|&l| use_more_bits(l, 8)).collect();
        assert_eq!(eight, [0, 3, 6, 7]);
        let two: Vec<u64> = (0..2).filter(|&l| use_more_bits(l, 2)).collect();
        assert_eq!(two, [1], "n/8 = 0 and 7n/8 = 1: layer 0 is in neither end, (0 - 0) % 3 != 2");
    }

    #[test]
    fn size_labels_match_gguf_py() {
        assert_eq!(rounded_count(94_528), "95K");
        assert_eq!(rounded_count(134_515_008), "135M");
        assert_eq!(rounded_count(1_235_814_400), "1.2B");
        assert_eq!(rounded_count(8_030_261_248), "8.0B");
        assert_eq!(rounded_count(400), "0.40K");
        assert_eq!(rounded_count(70_553_706_496), "71B");
        let t = |name: &str, ne: &[u64]| PlannedTensor {
            name: name.into(),
            sources: vec![],
            ty: GgmlType::F32,
            ne: ne.to_vec(),
            permute_heads: None,
            fallback_from: None,
        };
        // Mixtral-8x7B's shapes: 1.6B shared, 3 x 4096 x 14336 per expert and layer.
        let mut mixtral = vec![t("token_embd.weight", &[4096, 32000]), t("output.weight", &[4096, 32000])];
        for l in 0..32 {
            mixtral.push(t(&format!("blk.{l}.attn_q.weight"), &[4096, 4096 * 3]));
            for w in ["gate", "up", "down"] {
                mixtral.push(t(&format!("blk.{l}.ffn_{w}_exps.weight"), &[4096, 14336, 8]));
            }
        }
        assert_eq!(size_label(&mixtral), "8x7.5B");
    }

    #[test]
    fn shape_fallback_follows_the_table() {
        assert_eq!(shape_fallback(GgmlType::Q4_K, 576), GgmlType::Q5_0);
        assert_eq!(shape_fallback(GgmlType::Q6_K, 576), GgmlType::Q8_0);
        assert_eq!(shape_fallback(GgmlType::Q5_K, 576), GgmlType::Q5_1);
        assert_eq!(shape_fallback(GgmlType::Q4_K, 512), GgmlType::Q4_K);
        assert_eq!(shape_fallback(GgmlType::Q8_0, 48), GgmlType::F16);
        assert_eq!(shape_fallback(GgmlType::Q4_K, 48), GgmlType::F16);
        assert_eq!(shape_fallback(GgmlType::Q4_0, 64), GgmlType::Q4_0);
    }

    #[test]
    fn loader_order_sorts_blocks_numerically() {
        let mut names = vec![
            "blk.10.attn_q.weight",
            "token_embd.weight",
            "blk.2.ffn_up.weight",
            "output.weight",
            "blk.2.attn_k.weight",
            "output_norm.weight",
        ];
        names.sort_by(|a, b| loader_order(a).cmp(&loader_order(b)));
        assert_eq!(
            names,
            [
                "output.weight",
                "output_norm.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_q.weight"
            ]
        );
    }

    #[test]
    fn permute_pairs_rotary_rows() {
        // One head of 4 rows, 1 column: HF [a0 a1 | b0 b1] -> GGUF [a0 b0 a1 b1].
        assert_eq!(permute_rows(&[0.0, 1.0, 2.0, 3.0], 4, 1, 1), [0.0, 2.0, 1.0, 3.0]);
        // Two heads.
        let w: Vec<f32> = (0..8u8).map(f32::from).collect();
        assert_eq!(permute_rows(&w, 8, 1, 2), [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }
}
