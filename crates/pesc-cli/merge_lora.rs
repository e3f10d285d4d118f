//! `pesc-convert merge-lora BASE ADAPTER -o OUT [--onto ...] [--dtype ...]`.

use crate::cli::{MergeLoraArgs, OntoArg};
use crate::craft::shown;
use crate::output;
use crate::publish::{self, Folder};
use anyhow::Result;
use pesc_craft::{Merge, MergeRequest, Onto, ReportRow};
use pesc_hf::Model;
use pesc_io::Input;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub fn run(a: &MergeLoraArgs) -> Result<()> {
    crate::stop_cleanly_on_interrupt();
    let model = Model::open(&a.base)?;
    let req = MergeRequest {
        onto: a.onto.map(|o| match o {
            OntoArg::DequantizedNf4 => Onto::DequantizedNf4,
            OntoArg::Original => Onto::Original,
        }),
        blocksize: a.blocksize,
        no_double_quant: a.no_double_quant,
        dtype: a.dtype.store(),
    };
    let merge = Merge::plan(&model, &a.adapter, req)?;
    for w in model.weights.warnings().iter().chain(&merge.warnings) {
        output::warn(w);
    }
    output::note(&format!("merging onto {} ({})", merge.onto.name(), merge.onto_reason));
    let parameters = json!({
        "onto": merge.onto.name(), "onto_reason": merge.onto_reason, "dtype": a.dtype.name(),
        "nf4_blocksize": merge.nf4.blocksize, "nf4_double_quant": merge.nf4.double_quant, "shard_size": a.out.shard_size,
    });
    let mut command = format!(
        "pesc-convert merge-lora {} {} -o {} --onto {} --dtype {}",
        shown(&a.base),
        shown(&a.adapter),
        shown(&a.out.output),
        merge.onto.name(),
        a.dtype.name()
    );
    if let Some(b) = a.blocksize {
        let _ = write!(command, " --blocksize {b}");
    }
    if a.no_double_quant {
        command.push_str(" --no-double-quant");
    }
    let _ = write!(command, " --shard-size {}{}", a.out.shard_size, if a.out.force { " --force" } else { "" });
    let card = pesc_craft::card::merge_card(&model, &merge, &shown(&a.adapter), &command);
    let mut inputs = vec![pesc_hf::output::model_input(&model, "model")];
    inputs.push(Input { role: "adapter".into(), root: a.adapter.clone(), files: merge.input_files() });
    let folder = Folder { command: "merge-lora", parameters, inputs, card: Some(card), aux_from: Some(&model.dir) };
    let rows = publish::write(&a.out, folder, |dir, bar| merge.write(&model, dir, a.out.shard_size, bar))?;
    output::data(&report_table(&merge, &rows))?;
    Ok(())
}

/// Sums over one layer's LoRA weights.
#[derive(Default)]
struct LayerSums {
    weights: usize,
    numel: f64,
    delta_sq: f64,
    /// Over the weights NF4 quantizes only.
    quantized_numel: f64,
    quantized_delta_sq: f64,
    nf4_sq: f64,
}

/// Per layer: RMS of the merged deltas against RMS of NF4's rounding of the same weights.
fn report_table(merge: &Merge, rows: &[ReportRow]) -> String {
    let mut layers: BTreeMap<Option<u64>, LayerSums> = BTreeMap::new();
    for r in rows {
        #[allow(clippy::cast_precision_loss)]
        let n = r.numel as f64;
        let e = layers.entry(r.layer).or_default();
        e.weights += 1;
        e.numel += n;
        e.delta_sq += r.delta_rms * r.delta_rms * n;
        if let Some(q) = r.nf4_error_rms {
            e.quantized_numel += n;
            e.quantized_delta_sq += r.delta_rms * r.delta_rms * n;
            e.nf4_sq += q * q * n;
        }
    }
    let mut s = format!("merged onto {} ({} LoRA weights, {} replaced whole)\n", merge.onto.name(), rows.len(), merge.replaced().count());
    s.push_str("layer  weights  delta_rms    nf4_err_rms  nf4_err/delta\n");
    for (layer, e) in &layers {
        let name = layer.map_or_else(|| "-".to_owned(), |l| l.to_string());
        let delta = (e.delta_sq / e.numel.max(1.0)).sqrt();
        let (q, ratio) = if e.quantized_numel > 0.0 {
            let q = (e.nf4_sq / e.quantized_numel).sqrt();
            let dq = (e.quantized_delta_sq / e.quantized_numel).sqrt();
            (format!("{q:.4e}"), if dq > 0.0 { format!("{:.2}", q / dq) } else { "-".into() })
        } else {
            ("-".into(), "-".into())
        };
        let _ = writeln!(s, "{name:<6} {:<8} {delta:<12.4e} {q:<12} {ratio}", e.weights);
    }
    s
}
