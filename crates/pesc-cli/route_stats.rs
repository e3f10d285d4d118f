//! `pesc-convert route-stats MODEL --data FILE.jsonl [--data ...] [--svg OUT.svg] [--json]`.

use crate::cli::RouteStatsArgs;
use crate::output;
use crate::train::DataSetup;
use anyhow::{bail, Result};
use pesc_hf::Moe;
use pesc_runner::{ComputeDType, Runner, Weights};
use pesc_train::{Dataset, RouteStats};

pub fn run(a: &RouteStatsArgs) -> Result<()> {
    let model = Weights::open(&a.model)?;
    let (experts, top_k) = match &model.config().moe {
        Moe::Pesc(p) => (p.num_experts, p.top_k),
        Moe::Mixtral { num_experts, top_k } => (*num_experts, *top_k),
        Moe::Dense => bail!("`{}` is a dense model ({}); route-stats needs a PESC or Mixtral model", a.model.display(), model.kind()),
    };
    if let Some(svg) = &a.svg {
        if svg.exists() && !a.force {
            bail!("`{}` exists; pass --force to replace it", svg.display());
        }
    }
    let setup = DataSetup::new(&model, a.template)?;
    let tk = setup.tokenizing(a.seq_len)?;
    let sets = a.data.iter().map(|p| Ok((p, Dataset::load(p, &tk)?))).collect::<Result<Vec<_>>>()?;
    let mut examples = Vec::new();
    for (path, set) in &sets {
        let stem = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        examples.extend(set.examples.iter().map(|e| (e.source.clone().unwrap_or_else(|| stem.clone()), e)));
        if set.truncated > 0 {
            output::note(&format!("`{}`: {} records cut to --seq-len {}", path.display(), set.truncated, a.seq_len));
        }
    }
    let runner = Runner::fit(&model, ComputeDType::F32, &a.device.device()?, None)?;
    let stats = RouteStats::collect(&runner, usize::try_from(experts)?, usize::try_from(top_k)?, &examples)?;
    if a.json {
        output::data(&format!("{}\n", serde_json::to_string_pretty(&stats.to_json())?))?;
    } else {
        output::data(&stats.table())?;
    }
    if let Some(svg) = &a.svg {
        pesc_io::write_file_atomic(svg, stats.svg().as_bytes(), a.force)?;
        output::note(&format!("wrote `{}`", svg.display()));
    }
    Ok(())
}
