//! Arguments (clap derive). Doc comments are the `--help` text.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Craft parameter-efficient mixture-of-experts (PESC) models from dense
/// Llama-family checkpoints, verify them, quantize them and publish them.
///
/// Inputs are never trusted: only safetensors and GGUF are read (pickles are
/// refused, never opened), every length and offset is checked before use, and
/// outputs appear atomically with SHA256SUMS and a manifest.
#[derive(Debug, Parser)]
#[command(name = "pesc-convert", version, max_term_width = 100)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a model folder's, a .safetensors or a .gguf file's architecture, sizes and dtypes.
    Inspect(InspectArgs),
    /// Turn a dense model into a PESC mixture of experts: shared FFN, router, zero-initialised adapters.
    Craft(CraftArgs),
    /// Turn a dense model into a Mixtral-format MoE whose experts are copies of the dense FFN.
    Upcycle(UpcycleArgs),
    /// Compute logits for token ids and save them as a safetensors file (tensor `logits`, [T, vocab], f32).
    Logits(LogitsArgs),
    /// Check that CANDIDATE computes what REFERENCE computes: exit 0 within tolerance, 1 beyond it.
    Verify(VerifyArgs),
    /// Answer a prompt: applies the chat template, streams the reply to stdout.
    Run(RunArgs),
    /// Convert a llama.cpp GGUF file into a Hugging Face folder (dequantized, with tokenizer files).
    ImportGguf(ImportGgufArgs),
    /// Rewrite a model folder with new shards and/or dtype, adding SHA256SUMS and a manifest.
    Reshard(ReshardArgs),
    /// Recompute every hash in DIR/pesc-manifest.json (and SHA256SUMS); exit 1 on the first mismatch.
    VerifyManifest(VerifyManifestArgs),
    /// Quantize a model: to one GGUF file (dense and Mixtral as llama.cpp's `llama`, PESC as `pesc`) or to an NF4 folder.
    Quantize(QuantizeArgs),
    /// Merge a PEFT LoRA adapter (and trained PESC tensors beside it) into a base model folder.
    MergeLora(MergeLoraArgs),
    /// Train a PESC model's adapters and routers with LoRA on the frozen base, or LoRA alone on a dense model (a run folder merge-lora takes).
    Train(TrainArgs),
    /// Show where a PESC or Mixtral model routes the tokens of each data source, per layer (table, JSON, SVG).
    RouteStats(RouteStatsArgs),
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A Hugging Face model folder, a `.safetensors` or a `.gguf` file.
    pub path: PathBuf,
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerifyManifestArgs {
    /// A folder written by pesc-convert.
    pub dir: PathBuf,
}

/// Where and how an output folder is written.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Output folder; must not exist (staged beside it and renamed into place).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Replace OUT if it exists (atomically, once the new folder is complete); for craft, also allow an adapter wider than the hidden size.
    #[arg(long)]
    pub force: bool,
    /// Largest shard, e.g. 5GB, 500MB, 2GiB.
    #[arg(long, default_value = "5GB", value_parser = parse_shard_size)]
    pub shard_size: u64,
}

fn parse_memory(s: &str) -> Result<u64, String> {
    pesc_io::parse_size(s).ok_or_else(|| format!("`{s}` is not a size such as 2GB, 500MB or 8GiB"))
}

fn parse_shard_size(s: &str) -> Result<u64, String> {
    pesc_io::parse_size(s).ok_or_else(|| format!("`{s}` is not a size such as 5GB, 500MB or 2GiB"))
}

/// Stored dtype of the output tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// Each tensor keeps its dtype; bytes are copied unchanged.
    Keep,
    /// 32-bit float.
    F32,
    /// bfloat16 (rounded to nearest even).
    Bf16,
    /// IEEE half (rounded to nearest even).
    F16,
}

impl DTypeArg {
    pub fn store(self) -> pesc_hf::StoreDType {
        use pesc_tensor::DType;
        match self {
            DTypeArg::Keep => pesc_hf::StoreDType::Keep,
            DTypeArg::F32 => pesc_hf::StoreDType::To(DType::F32),
            DTypeArg::Bf16 => pesc_hf::StoreDType::To(DType::BF16),
            DTypeArg::F16 => pesc_hf::StoreDType::To(DType::F16),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DTypeArg::Keep => "keep",
            DTypeArg::F32 => "f32",
            DTypeArg::Bf16 => "bf16",
            DTypeArg::F16 => "f16",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ReshardArgs {
    /// A Hugging Face model folder.
    pub model: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Stored dtype of the output tensors.
    #[arg(long, value_enum, default_value_t = DTypeArg::Keep)]
    pub dtype: DTypeArg,
}

#[derive(Debug, clap::Args)]
pub struct CraftArgs {
    /// A dense Hugging Face model folder (llama, mistral or qwen2).
    pub dense: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Experts per layer.
    #[arg(long)]
    pub experts: u64,
    /// Experts used per token.
    #[arg(long)]
    pub top_k: u64,
    /// Width of each expert's bottleneck adapter.
    #[arg(long)]
    pub adapter_dim: u64,
    /// Scale of the adapter branch (`moe_scaling`).
    #[arg(long, default_value_t = pesc_craft::DEFAULT_SCALING)]
    pub scaling: f64,
    /// Seed of the router and adapter initialisation (same seed, same bytes on every machine).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stored dtype of the output tensors.
    #[arg(long, value_enum, default_value_t = DTypeArg::Keep)]
    pub dtype: DTypeArg,
}

#[derive(Debug, clap::Args)]
pub struct UpcycleArgs {
    /// A dense Hugging Face model folder (llama or mistral, without biases).
    pub dense: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Experts per layer.
    #[arg(long)]
    pub experts: u64,
    /// Experts used per token.
    #[arg(long)]
    pub top_k: u64,
    /// Seed of the router initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stored dtype of the output tensors.
    #[arg(long, value_enum, default_value_t = DTypeArg::Keep)]
    pub dtype: DTypeArg,
}

/// Where the runner computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The CPU (all cores).
    Cpu,
    /// The first NVIDIA GPU (needs a build with `--features cuda`).
    Cuda,
}

impl DeviceArg {
    pub fn device(self) -> anyhow::Result<candle_core::Device> {
        match self {
            DeviceArg::Cpu => Ok(candle_core::Device::Cpu),
            DeviceArg::Cuda if cfg!(feature = "cuda") => Ok(candle_core::Device::new_cuda(0)?),
            DeviceArg::Cuda => {
                anyhow::bail!("this pesc-convert was built without CUDA; rebuild with `cargo build --release --features cuda`")
            }
        }
    }
}

/// Compute precision of the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ComputeArg {
    /// 32-bit float.
    F32,
    /// bfloat16 (norms and softmax in f32).
    Bf16,
}

impl ComputeArg {
    pub fn dtype(self) -> pesc_runner::ComputeDType {
        match self {
            ComputeArg::F32 => pesc_runner::ComputeDType::F32,
            ComputeArg::Bf16 => pesc_runner::ComputeDType::BF16,
        }
    }
}

/// A comma-separated list of token ids.
#[derive(Debug, Clone)]
pub struct TokenIds(pub Vec<u32>);

fn parse_ids(s: &str) -> Result<TokenIds, String> {
    let ids: Result<Vec<u32>, _> = s.split(',').map(|t| t.trim().parse::<u32>()).collect();
    match ids {
        Ok(v) if !v.is_empty() => Ok(TokenIds(v)),
        _ => Err(format!("`{s}` is not a comma-separated list of token ids")),
    }
}

#[derive(Debug, clap::Args)]
pub struct LogitsArgs {
    /// A model folder or a `.gguf` file.
    pub model: PathBuf,
    /// Token ids, e.g. 1,2,3.
    #[arg(long, value_parser = parse_ids)]
    pub token_ids: TokenIds,
    /// Output `.safetensors` file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Compute precision.
    #[arg(long, value_enum, default_value_t = ComputeArg::F32)]
    pub dtype: ComputeArg,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Memory the runner may use, e.g. 2GB (default: what is available); a layer that needs more is refused before any compute.
    #[arg(long, value_parser = parse_memory)]
    pub max_memory: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The model under test.
    pub candidate: PathBuf,
    /// The model it must match.
    #[arg(long)]
    pub against: PathBuf,
    /// Token-id sequences to run, e.g. `1,2,3` (repeat the flag for several).
    #[arg(long, value_parser = parse_ids, conflicts_with = "prompts")]
    pub token_ids: Vec<TokenIds>,
    /// A text file of prompts, one per line, tokenized with the reference's tokenizer.
    /// Default: a built-in set of prompts (or of token sequences when there is no tokenizer).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Largest allowed absolute logit difference.
    #[arg(long, default_value_t = 1e-4)]
    pub max_abs_diff: f32,
    /// Largest allowed mean KL(reference || candidate), in nats.
    #[arg(long, default_value_t = 1e-6)]
    pub max_kl: f64,
    /// Compute precision (both models).
    #[arg(long, value_enum, default_value_t = ComputeArg::F32)]
    pub dtype: ComputeArg,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Memory the runner may use, e.g. 2GB (default: what is available); a layer that needs more is refused before any compute.
    #[arg(long, value_parser = parse_memory)]
    pub max_memory: Option<u64>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn arguments_are_consistent() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A model folder (with `tokenizer.json` or a SentencePiece `tokenizer.model`) or a GGUF file.
    pub model: PathBuf,
    /// The user's message.
    #[arg(long, required_unless_present = "token_ids")]
    pub prompt: Option<String>,
    /// Token ids to continue instead of a prompt (a model without a tokenizer); the new ids are printed.
    #[arg(long, value_parser = parse_ids, conflicts_with_all = ["prompt", "system", "raw"])]
    pub token_ids: Option<TokenIds>,
    /// A system message (otherwise the template's default, if any).
    #[arg(long)]
    pub system: Option<String>,
    /// Feed the prompt as plain text, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute precision.
    #[arg(long, value_enum, default_value_t = ComputeArg::F32)]
    pub dtype: ComputeArg,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Memory the runner may use, e.g. 2GB (default: what is available); a layer that needs more is refused before any compute.
    #[arg(long, value_parser = parse_memory)]
    pub max_memory: Option<u64>,
}

/// Stored dtype of imported tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FloatArg {
    /// 32-bit float: holds every dequantized value exactly.
    F32,
    /// bfloat16 (rounded to nearest even).
    Bf16,
    /// IEEE half (rounded to nearest even).
    F16,
}

impl FloatArg {
    pub fn dtype(self) -> pesc_tensor::DType {
        match self {
            FloatArg::F32 => pesc_tensor::DType::F32,
            FloatArg::Bf16 => pesc_tensor::DType::BF16,
            FloatArg::F16 => pesc_tensor::DType::F16,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ImportGgufArgs {
    /// A GGUF file (architecture `llama`).
    pub gguf: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Stored dtype of the tensors.
    #[arg(long, value_enum, default_value_t = FloatArg::F32)]
    pub dtype: FloatArg,
}

/// `quantize --to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[allow(non_camel_case_types)]
pub enum QuantizeTo {
    /// bitsandbytes NF4 (QLoRA), written as a transformers folder: linear layers NF4, the rest as stored.
    Nf4,
    /// Every weight f32 (llama.cpp file type ALL_F32).
    F32,
    /// Weights f16 (MOSTLY_F16).
    F16,
    /// Weights bf16 (MOSTLY_BF16).
    Bf16,
    /// Weights Q8_0 (MOSTLY_Q8_0).
    #[value(name = "q8_0")]
    Q8_0,
    /// Weights Q4_0, output Q6_K, as llama-quantize Q4_0 (MOSTLY_Q4_0).
    #[value(name = "q4_0")]
    Q4_0,
    /// Weights Q4_1, output Q6_K, as llama-quantize Q4_1 (MOSTLY_Q4_1).
    #[value(name = "q4_1")]
    Q4_1,
    /// llama-quantize's Q4_K_S mix: Q4_K, Q5_K for attn_v in the first 4 layers and ffn_down in the first eighth, output Q6_K (MOSTLY_Q4_K_S).
    #[value(name = "q4_k")]
    Q4_K,
    /// Weights Q6_K, as llama-quantize Q6_K (MOSTLY_Q6_K).
    #[value(name = "q6_k")]
    Q6_K,
    /// llama-quantize's Q4_K_M mix: Q4_K, Q6_K for output and for attn_v/ffn_down in about half the layers (MOSTLY_Q4_K_M).
    #[value(name = "q4_k_m")]
    Q4_K_M,
}

impl QuantizeTo {
    /// The GGUF type, or `None` for the folder format NF4.
    pub fn gguf(self) -> Option<pesc_llamacpp::GgufType> {
        use pesc_llamacpp::GgufType;
        Some(match self {
            QuantizeTo::Nf4 => return None,
            QuantizeTo::F32 => GgufType::F32,
            QuantizeTo::F16 => GgufType::F16,
            QuantizeTo::Bf16 => GgufType::BF16,
            QuantizeTo::Q8_0 => GgufType::Q8_0,
            QuantizeTo::Q4_0 => GgufType::Q4_0,
            QuantizeTo::Q4_1 => GgufType::Q4_1,
            QuantizeTo::Q4_K => GgufType::Q4_K,
            QuantizeTo::Q6_K => GgufType::Q6_K,
            QuantizeTo::Q4_K_M => GgufType::Q4_K_M,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// A dense Hugging Face model folder (llama or mistral).
    pub model: PathBuf,
    /// Output type. The quantized types follow llama-quantize's per-tensor rules and shape fallbacks; norms stay f32.
    #[arg(long, value_enum)]
    pub to: QuantizeTo,
    /// Output `.gguf` file (an output folder for nf4); must not exist unless --force (staged beside it, then renamed into place).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// One type for every quantized tensor, without llama-quantize's per-tensor recipe (its --pure); shape fallbacks still apply.
    #[arg(long)]
    pub pure: bool,
    /// nf4 only: elements per absmax block, a power of two from 32 to 4096 [default: 64].
    #[arg(long, value_name = "N")]
    pub blocksize: Option<usize>,
    /// nf4 only: store the absmax as f32 instead of quantizing it again (bnb_4bit_use_double_quant false).
    #[arg(long)]
    pub no_double_quant: bool,
}

/// `merge-lora --onto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OntoArg {
    /// Add each delta to dequant(NF4(W)), what a QLoRA adapter was trained against.
    DequantizedNf4,
    /// Add each delta to the base weight as stored.
    Original,
}

#[derive(Debug, clap::Args)]
pub struct MergeLoraArgs {
    /// The base model folder the adapter was trained on (dense or PESC).
    pub base: PathBuf,
    /// A PEFT adapter folder (adapter_config.json, adapter_model.safetensors, optional moe_model.safetensors).
    pub adapter: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
    /// What the deltas are added to. Default: dequantized-nf4 when the adapter records a 4-bit base, else original.
    #[arg(long, value_enum)]
    pub onto: Option<OntoArg>,
    /// Stored dtype of the output tensors (keep: the base's).
    #[arg(long, value_enum, default_value_t = DTypeArg::Keep)]
    pub dtype: DTypeArg,
    /// NF4 block size (a power of two from 32 to 4096; default 64, as bitsandbytes).
    #[arg(long)]
    pub blocksize: Option<usize>,
    /// NF4 without double quantization of the block scales (default: as the adapter records, else on).
    #[arg(long)]
    pub no_double_quant: bool,
}

/// `train --base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BaseArg {
    /// The weights as stored.
    #[value(name = "16bit")]
    Bit16,
    /// bitsandbytes NF4 (blocksize 64, double quantization), dequantized.
    Nf4,
}

/// `train --template`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TemplateArg {
    /// The model's chat template (the reference one when the model has none).
    Chat,
    /// The reference implementation's `### System / ### Human / ### Assistant` prompt.
    Reference,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// A PESC model folder (made by `craft`), or a dense one to train a LoRA-only baseline.
    pub model: PathBuf,
    /// Training data, JSONL: reference `conversation`, Alpaca, chat `messages` or `input_ids` records.
    #[arg(long)]
    pub data: PathBuf,
    /// The run folder: metrics.jsonl, the PEFT LoRA, moe_model.safetensors, checkpoint/. Must not exist unless it is the --resume run.
    #[arg(short = 'o', long = "output", value_name = "RUN")]
    pub output: PathBuf,
    /// Optimizer steps (0 writes the initial adapters).
    #[arg(long)]
    pub steps: usize,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Longest sequence in tokens; longer records are truncated (and counted).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Peak learning rate (AdamW, constant after warmup).
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Share of the steps spent in linear warmup.
    #[arg(long, default_value_t = 0.03)]
    pub warmup_ratio: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Largest global gradient norm.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// LoRA rank (0: train only the adapters and routers).
    #[arg(long, default_value_t = 64)]
    pub lora_r: usize,
    /// LoRA alpha (the delta is scaled by alpha / r).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Base linears that get LoRA, comma-separated.
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    pub lora_targets: String,
    /// Dropout on the adapter input while training.
    #[arg(long, default_value_t = 0.1)]
    pub adapter_dropout: f64,
    /// Coefficient of the Switch balancing loss.
    #[arg(long, default_value_t = 0.01)]
    pub aux_loss_coef: f64,
    /// Prompt template of text records.
    #[arg(long, value_enum, default_value_t = TemplateArg::Chat)]
    pub template: TemplateArg,
    /// Seed of the LoRA initialisation, the data order and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Save a checkpoint every N steps (and always at the end).
    #[arg(long, default_value_t = 100)]
    pub save_every: usize,
    /// Stop after this many steps with a checkpoint, as an interruption would (the schedule still follows --steps).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Continue the run in this folder from its checkpoint (same model, data and flags).
    #[arg(long, value_name = "RUN")]
    pub resume: Option<PathBuf>,
    /// The frozen base linears: as stored (`16bit`), or dequant(NF4(W)) as QLoRA trains (`nf4`; implied
    /// for an NF4 folder). The run's adapter_config.json records it for merge-lora.
    #[arg(long, value_enum, default_value_t = BaseArg::Bit16)]
    pub base: BaseArg,
    /// Held-out data (same formats): its loss before and after training goes to RUN/eval.json.
    #[arg(long, value_name = "FILE.jsonl")]
    pub eval_data: Option<PathBuf>,
    /// Keep only each layer's input in the forward pass and recompute the layer in the backward
    /// pass: far less activation memory for about one more forward pass.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Where to train (f32 on either).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
}

#[derive(Debug, clap::Args)]
pub struct RouteStatsArgs {
    /// A PESC or Mixtral model: a folder or a `.gguf` file.
    pub model: PathBuf,
    /// Data, JSONL (the formats `train` reads); repeat for several. A record's `source` names its
    /// source, else the file's name does.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Write the heat map here (one panel per source).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Replace the SVG file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print the counts and shares as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Longest sequence; longer records are cut.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Prompt template of text records.
    #[arg(long, value_enum, default_value_t = TemplateArg::Chat)]
    pub template: TemplateArg,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
}
