//! `pesc-convert verify CANDIDATE --against REFERENCE`.

use crate::cli::VerifyArgs;
use crate::{output, CheckFailed};
use anyhow::{bail, Result};
use pesc_model::{Runner, Weights};
use serde_json::json;

pub fn run(a: &VerifyArgs) -> Result<()> {
    for dir in [&a.candidate, &a.against] {
        if dir.join(pesc_io::SHA256SUMS).is_file() {
            if let Some((file, problem)) = pesc_io::check_sha256sums(dir)? {
                return Err(CheckFailed(format!("`{}`: `{file}` {problem}", dir.display())).into());
            }
        }
    }
    let cand = Weights::open(&a.candidate)?;
    let refr = Weights::open(&a.against)?;
    let (cv, rv) = (cand.config().vocab_size, refr.config().vocab_size);
    if cv != rv {
        bail!("the candidate's vocabulary ({cv} tokens) differs from the reference's ({rv}); they cannot be compared");
    }
    if cand.has_tokenizer() && refr.has_tokenizer() && !cand.text()?.same_vocabulary(&refr.text()?) {
        bail!("the candidate's tokenizer maps tokens to other ids than the reference's; they cannot be compared");
    }
    let sequences = inputs(a, &refr)?;
    let exact = pesc_verify::has_zero_adapters(&cand)? && matches!(refr.config().moe, pesc_arch::Moe::Dense) && same_storage(&cand, &refr);
    let device = a.device.device()?;
    let c =
        pesc_verify::compare(&Runner::load(&cand, a.dtype.dtype(), &device)?, &Runner::load(&refr, a.dtype.dtype(), &device)?, &sequences)?;
    let (max_abs, max_kl) = if exact { (0.0, 0.0) } else { (a.max_abs_diff, a.max_kl) };
    let pass = c.max_abs_diff <= max_abs && c.mean_kl <= max_kl;
    let report = json!({
        "candidate": cand.kind(),
        "reference": refr.kind(),
        "tokens_compared": c.tokens,
        "sequences": sequences.len(),
        "max_abs_diff": c.max_abs_diff,
        "mean_kl": c.mean_kl,
        "top1_agreement": c.top1_agreement,
        "exact": c.max_abs_diff == 0.0,
        "exact_required": exact,
        "tolerance": {"max_abs_diff": max_abs, "max_kl": max_kl},
        "worst": {"sequence": c.worst.sequence, "position": c.worst.position, "token": c.worst.token},
        "expert_load": c.expert_load,
        "pass": pass,
    });
    if a.json {
        output::data(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        let mut t = format!(
            "candidate        {} `{}`\nreference        {} `{}`\ntokens compared  {} in {} sequences\nmax_abs_diff     {}{}\nmean_kl          {:.3e}\ntop1_agreement   {:.4}\n",
            cand.kind(),
            a.candidate.display(),
            refr.kind(),
            a.against.display(),
            c.tokens,
            sequences.len(),
            c.max_abs_diff,
            if c.max_abs_diff == 0.0 { " (exact)" } else { "" },
            c.mean_kl,
            c.top1_agreement
        );
        for (l, load) in c.expert_load.iter().enumerate() {
            let total: u64 = load.iter().sum::<u64>().max(1);
            #[allow(clippy::cast_precision_loss)]
            let shares: Vec<String> = load.iter().map(|n| format!("{:.2}", *n as f64 / total as f64)).collect();
            t.push_str(&format!("expert load L{l:<3} {}\n", shares.join(" ")));
        }
        output::data(&t)?;
    }
    if !pass {
        let why = if exact {
            "a PESC model whose adapters are all zero must equal its dense reference exactly".to_owned()
        } else {
            format!("tolerance: max_abs_diff {max_abs}, mean_kl {max_kl}")
        };
        return Err(CheckFailed(format!(
            "candidate differs from reference: max_abs_diff {} at sequence {}, position {}, logit of token {}; mean_kl {:.3e} ({why})",
            c.max_abs_diff, c.worst.sequence, c.worst.position, c.worst.token, c.mean_kl
        ))
        .into());
    }
    Ok(())
}

/// Whether the reference's tensors are stored alike in the candidate (two
/// folders, or two GGUF files with the same type for every tensor of the
/// reference), so that a PESC model with zero adapters must equal it exactly.
fn same_storage(cand: &Weights, refr: &Weights) -> bool {
    match (cand, refr) {
        (Weights::Folder(_), Weights::Folder(_)) => true,
        (Weights::Gguf(c), Weights::Gguf(r)) => r.tensors().all(|(name, _)| c.stored(name).map(|t| t.ty) == r.stored(name).map(|t| t.ty)),
        _ => false,
    }
}

/// Prompts covering general text, arithmetic and code, as the paper's domains.
const BUILTIN_PROMPTS: [&str; 4] = [
    "The capital of France is Paris, and the capital of Japan is",
    "Question: what is 17 * 23? Answer: 17 * 23 =",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Write a short poem about the sea.",
];

/// The sequences to compare: `--token-ids`, `--prompts`, or the built-in set.
fn inputs(a: &VerifyArgs, reference: &Weights) -> Result<Vec<Vec<u32>>> {
    if !a.token_ids.is_empty() {
        return Ok(a.token_ids.iter().map(|t| t.0.clone()).collect());
    }
    let has_tokenizer = reference.has_tokenizer();
    let prompts: Vec<String> = match &a.prompts {
        Some(path) => {
            let bytes = pesc_io::read_capped(path, 16 << 20)?;
            let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("`{}` is not UTF-8 text", path.display()))?;
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if let Some(i) = lines.iter().position(|l| l.trim().is_empty()) {
                bail!("`{}`: line {} is an empty prompt", path.display(), i + 1);
            }
            if lines.is_empty() {
                bail!("`{}` holds no prompts", path.display());
            }
            lines
        }
        None if has_tokenizer => BUILTIN_PROMPTS.iter().map(|s| (*s).to_owned()).collect(),
        None => return Ok(pesc_verify::builtin_sequences(usize::try_from(reference.config().vocab_size).unwrap_or(0), 4, 24)),
    };
    let text = reference.text()?;
    prompts.iter().map(|p| Ok(text.encode(p)?)).collect()
}
