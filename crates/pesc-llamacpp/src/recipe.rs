//! `llama-quantize`'s per-tensor recipe: the file types `quantize --to`
//! writes, the type each tensor gets (without an importance matrix), and
//! gguf-py's size label.

use crate::names::{tensor_map, Category};
use pesc_gguf::GgmlType;
use pesc_hf::{ModelConfig, Moe};
use std::collections::BTreeMap;

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

/// Every tensor of the GGUF file of `config` as `opts` make it, in the order
/// `llama-quantize` writes them (its loader's `weight_name_comparer`: the
/// tensors outside the blocks by name, then block by block, by name within a
/// block), with its type and ggml dimensions.
#[must_use]
pub fn plan(config: &ModelConfig, opts: ExportOptions) -> Vec<PlannedTensor> {
    // llama.cpp's MoE tensors are Mixtral's; a PESC model's adapters are extra tensors.
    let n_expert = if matches!(config.moe, Moe::Mixtral { .. }) { config.moe.num_experts() } else { 0 };
    let shape = Shape {
        n_layers: config.num_layers,
        tied: config.tie_word_embeddings,
        n_expert,
        is_70b: n_expert != 8 && config.num_layers == 80 && config.num_heads != config.num_kv_heads,
    };
    let hf_shapes: BTreeMap<String, Vec<u64>> = config.expected_tensors().unwrap_or_default().into_iter().collect();
    let mut tensors: Vec<PlannedTensor> = tensor_map(config)
        .into_iter()
        .map(|m| {
            // ggml dimensions: the Hugging Face shape reversed, then the expert count.
            let mut ne: Vec<u64> = hf_shapes.get(&m.hf[0]).map(|s| s.iter().rev().copied().collect()).unwrap_or_default();
            if m.stacked {
                ne.push(m.hf.len() as u64);
            }
            let (ty, fallback_from) = tensor_type(opts.to, opts.pure, m.category, m.layer, &ne, &shape);
            PlannedTensor { name: m.gguf, sources: m.hf, ty, ne, permute_heads: m.permute_heads, fallback_from }
        })
        .collect();
    tensors.sort_by(|a, b| crate::names::loader_order(&a.name).cmp(&crate::names::loader_order(&b.name)));
    tensors
}

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
    if ne.len() < 2 || matches!(category, Category::Norm | Category::Bias | Category::Router) {
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
}
