//! `verify`'s whole check and its verdict.

use crate::compare::{builtin_sequences, compare, has_zero_adapters, Comparison};
use candle_core::Device;
use pesc_model::Source;
use pesc_runner::{ComputeDType, ModelError, Runner, Weights};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Prompts covering general text, arithmetic and code, as the paper's domains.
pub const BUILTIN_PROMPTS: [&str; 4] = [
    "The capital of France is Paris, and the capital of Japan is",
    "Question: what is 17 * 23? Answer: 17 * 23 =",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Write a short poem about the sea.",
];

/// Largest prompt file read.
const MAX_PROMPTS_BYTES: u64 = 16 << 20;

/// What the two models are run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inputs {
    /// These token sequences.
    TokenIds(Vec<Vec<u32>>),
    /// One prompt per line of this file, tokenized by the reference.
    Prompts(PathBuf),
    /// [`BUILTIN_PROMPTS`] when the reference has a tokenizer, else seeded token sequences.
    Builtin,
}

/// How strict the gate is and where it computes.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Largest `|candidate - reference|` over every logit, when exactness is not required.
    pub max_abs_diff: f32,
    /// Largest mean KL divergence, when exactness is not required.
    pub max_kl: f64,
    /// Compute dtype of both runners.
    pub dtype: ComputeDType,
    /// Where both run.
    pub device: Device,
    /// The memory the runners may use (default: what is available). A layer
    /// that needs more is refused before any compute.
    pub max_memory: Option<u64>,
}

/// What can stop the gate before a verdict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A file does not match its folder's `SHA256SUMS`: a failed check, not bad input.
    #[error("`{dir}`: `{file}` {problem}")]
    Checksum {
        /// The folder.
        dir: PathBuf,
        /// The file.
        file: String,
        /// How it differs.
        problem: String,
    },
    /// The vocabularies differ in size.
    #[error("the candidate's vocabulary ({candidate} tokens) differs from the reference's ({reference}); they cannot be compared")]
    VocabularySize {
        /// The candidate's.
        candidate: u64,
        /// The reference's.
        reference: u64,
    },
    /// The tokenizers map tokens to different ids.
    #[error("the candidate's tokenizer maps tokens to other ids than the reference's; they cannot be compared")]
    TokenizerMismatch,
    /// The prompt file is not UTF-8.
    #[error("`{path}` is not UTF-8 text")]
    PromptsNotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// The prompt file has an empty line.
    #[error("`{path}`: line {line} is an empty prompt")]
    EmptyPrompt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The prompt file is empty.
    #[error("`{path}` holds no prompts")]
    NoPrompts {
        /// The file.
        path: PathBuf,
    },
    /// From reading the files.
    #[error(transparent)]
    Io(Box<pesc_io::Error>),
    /// From loading or running a model.
    #[error(transparent)]
    Model(Box<ModelError>),
}

impl From<pesc_io::Error> for VerifyError {
    fn from(e: pesc_io::Error) -> Self {
        VerifyError::Io(Box::new(e))
    }
}

impl From<ModelError> for VerifyError {
    fn from(e: ModelError) -> Self {
        VerifyError::Model(Box::new(e))
    }
}

impl From<pesc_hf::HfError> for VerifyError {
    fn from(e: pesc_hf::HfError) -> Self {
        VerifyError::Model(Box::new(e.into()))
    }
}

impl From<candle_core::Error> for VerifyError {
    fn from(e: candle_core::Error) -> Self {
        VerifyError::Model(Box::new(e.into()))
    }
}

/// The gate's outcome.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The candidate's kind (`PESC llama`, `llama (GGUF Q8_0)` ...).
    pub candidate: String,
    /// The reference's kind.
    pub reference: String,
    /// Sequences compared.
    pub sequences: usize,
    /// The comparison.
    pub comparison: Comparison,
    /// Whether exactness was required: a PESC candidate with all-zero adapters
    /// against a dense reference stored alike.
    pub exact_required: bool,
    /// The tolerances applied: `(max_abs_diff, max_kl)`, zero when exactness is required.
    pub tolerance: (f32, f64),
    /// Wall time of running both models, in seconds.
    pub seconds: f64,
    /// This process's peak resident memory, in bytes.
    pub peak_rss: Option<u64>,
}

impl Verdict {
    /// Whether the candidate passes.
    #[must_use]
    pub fn pass(&self) -> bool {
        self.comparison.max_abs_diff <= self.tolerance.0 && self.comparison.mean_kl <= self.tolerance.1
    }

    /// The report `verify --json` prints.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let c = &self.comparison;
        json!({
            "candidate": self.candidate,
            "reference": self.reference,
            "tokens_compared": c.tokens,
            "sequences": self.sequences,
            "max_abs_diff": c.max_abs_diff,
            "mean_kl": c.mean_kl,
            "top1_agreement": c.top1_agreement,
            "exact": c.max_abs_diff == 0.0,
            "exact_required": self.exact_required,
            "tolerance": {"max_abs_diff": self.tolerance.0, "max_kl": self.tolerance.1},
            "worst": {"sequence": c.worst.sequence, "position": c.worst.position, "token": c.worst.token},
            "expert_load": c.expert_load,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second(),
            "peak_rss_bytes": self.peak_rss,
            "pass": self.pass(),
        })
    }

    /// Tokens run per second, both models counted.
    #[must_use]
    pub fn tokens_per_second(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let tokens = 2.0 * self.comparison.tokens as f64;
        tokens / self.seconds.max(1e-9)
    }

    /// Why the candidate fails, naming the worst logit; `None` when it passes.
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        if self.pass() {
            return None;
        }
        let c = &self.comparison;
        let why = if self.exact_required {
            "a PESC model whose adapters are all zero must equal its dense reference exactly".to_owned()
        } else {
            format!("tolerance: max_abs_diff {}, mean_kl {}", self.tolerance.0, self.tolerance.1)
        };
        Some(format!(
            "candidate differs from reference: max_abs_diff {} at sequence {}, position {}, logit of token {}; mean_kl {:.3e} ({why})",
            c.max_abs_diff, c.worst.sequence, c.worst.position, c.worst.token, c.mean_kl
        ))
    }
}

/// Whether the reference's tensors are stored alike in the candidate (two
/// folders, or two GGUF files with the same type for every tensor of the
/// reference), so that a PESC model with zero adapters must equal it exactly.
fn same_storage(cand: &Weights, refr: &Weights) -> bool {
    match (cand.source(), refr.source()) {
        (Source::Folder(_), Source::Folder(_)) => true,
        (Source::Gguf(c), Source::Gguf(r)) => r.tensors().all(|(name, _)| c.stored(name).map(|t| t.ty) == r.stored(name).map(|t| t.ty)),
        _ => false,
    }
}

/// The sequences to compare.
fn sequences(inputs: &Inputs, reference: &Weights) -> Result<Vec<Vec<u32>>, VerifyError> {
    let prompts: Vec<String> = match inputs {
        Inputs::TokenIds(ids) => return Ok(ids.clone()),
        Inputs::Prompts(path) => {
            let bytes = pesc_io::read_capped(path, MAX_PROMPTS_BYTES)?;
            let text = String::from_utf8(bytes).map_err(|_| VerifyError::PromptsNotUtf8 { path: path.clone() })?;
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if let Some(i) = lines.iter().position(|l| l.trim().is_empty()) {
                return Err(VerifyError::EmptyPrompt { path: path.clone(), line: i + 1 });
            }
            if lines.is_empty() {
                return Err(VerifyError::NoPrompts { path: path.clone() });
            }
            lines
        }
        Inputs::Builtin if reference.has_tokenizer() => BUILTIN_PROMPTS.iter().map(|s| (*s).to_owned()).collect(),
        Inputs::Builtin => return Ok(builtin_sequences(usize::try_from(reference.config().vocab_size).unwrap_or(0), 4, 24)),
    };
    let text = reference.text()?;
    Ok(prompts.iter().map(|p| text.encode(p)).collect::<Result<_, _>>()?)
}

/// Runs the gate: `SHA256SUMS` of either folder checked first, the
/// vocabularies compared, both models run on `inputs`, and the verdict.
pub fn gate(candidate: &Path, reference: &Path, inputs: &Inputs, g: &Gate) -> Result<Verdict, VerifyError> {
    for dir in [candidate, reference] {
        if dir.join(pesc_io::SHA256SUMS).is_file() {
            if let Some((file, problem)) = pesc_io::check_sha256sums(dir)? {
                return Err(VerifyError::Checksum { dir: dir.into(), file, problem });
            }
        }
    }
    let cand = Weights::open(candidate)?;
    let refr = Weights::open(reference)?;
    let (cv, rv) = (cand.config().vocab_size, refr.config().vocab_size);
    if cv != rv {
        return Err(VerifyError::VocabularySize { candidate: cv, reference: rv });
    }
    if cand.has_tokenizer() && refr.has_tokenizer() && !cand.text()?.same_vocabulary(&refr.text()?) {
        return Err(VerifyError::TokenizerMismatch);
    }
    let sequences = sequences(inputs, &refr)?;
    let exact_required = has_zero_adapters(&cand)? && matches!(refr.config().moe, pesc_hf::Moe::Dense) && same_storage(&cand, &refr);
    // Both streamed: every layer is checked to fit before anything runs, and
    // only one layer of one model is in memory at a time.
    let started = std::time::Instant::now();
    let reference = Runner::stream(&refr, g.dtype, &g.device, g.max_memory)?;
    let candidate = Runner::stream(&cand, g.dtype, &g.device, g.max_memory)?;
    let comparison = compare(&candidate, &reference, &sequences)?;
    Ok(Verdict {
        candidate: cand.kind(),
        reference: refr.kind(),
        sequences: sequences.len(),
        comparison,
        exact_required,
        tolerance: if exact_required { (0.0, 0.0) } else { (g.max_abs_diff, g.max_kl) },
        seconds: started.elapsed().as_secs_f64(),
        peak_rss: pesc_runner::memory::peak_rss(),
    })
}
