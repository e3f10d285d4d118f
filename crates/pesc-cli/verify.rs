//! `pesc-convert verify CANDIDATE --against REFERENCE`: `pesc_verify::gate`
//! decides; this prints its report and picks the exit code.

use crate::cli::VerifyArgs;
use crate::{output, CheckFailed};
use anyhow::Result;
use pesc_verify::{Gate, Inputs, VerifyError};
use std::fmt::Write as _;

pub fn run(a: &VerifyArgs) -> Result<()> {
    let inputs = match (&a.prompts, a.token_ids.is_empty()) {
        (_, false) => Inputs::TokenIds(a.token_ids.iter().map(|t| t.0.clone()).collect()),
        (Some(p), true) => Inputs::Prompts(p.clone()),
        (None, true) => Inputs::Builtin,
    };
    let gate = Gate {
        max_abs_diff: a.max_abs_diff,
        max_kl: a.max_kl,
        dtype: a.dtype.dtype(),
        device: a.device.device()?,
        max_memory: a.max_memory,
    };
    let v = match pesc_verify::gate(&a.candidate, &a.against, &inputs, &gate) {
        Ok(v) => v,
        // A checksum mismatch is a failed check (exit 1), not bad input.
        Err(e @ VerifyError::Checksum { .. }) => return Err(CheckFailed(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    if a.json {
        output::data(&format!("{}\n", serde_json::to_string_pretty(&v.to_json())?))?;
    } else {
        let c = &v.comparison;
        let mut t = format!(
            "candidate        {} `{}`\nreference        {} `{}`\ntokens compared  {} in {} sequences\nmax_abs_diff     {}{}\nmean_kl          {:.3e}\ntop1_agreement   {:.4}\n",
            v.candidate,
            a.candidate.display(),
            v.reference,
            a.against.display(),
            c.tokens,
            v.sequences,
            c.max_abs_diff,
            if c.max_abs_diff == 0.0 { " (exact)" } else { "" },
            c.mean_kl,
            c.top1_agreement
        );
        let _ = writeln!(
            t,
            "speed            {:.1} tokens/s (both models, {:.2} s){}",
            v.tokens_per_second(),
            v.seconds,
            v.peak_rss.map_or_else(String::new, |b| format!(", peak memory {}", crate::output::human_bytes(b)))
        );
        for (l, load) in c.expert_load.iter().enumerate() {
            let total: u64 = load.iter().sum::<u64>().max(1);
            #[allow(clippy::cast_precision_loss)]
            let shares: Vec<String> = load.iter().map(|n| format!("{:.2}", *n as f64 / total as f64)).collect();
            let _ = writeln!(t, "expert load L{l:<3} {}", shares.join(" "));
        }
        output::data(&t)?;
    }
    match v.failure() {
        Some(why) => Err(CheckFailed(why).into()),
        None => Ok(()),
    }
}
