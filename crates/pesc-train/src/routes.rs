//! Routing analysis (`route-stats`): per layer, the share of each data
//! source's expert assignments that each expert receives (the paper's
//! Figure 4), as a table, JSON and an SVG heat map.

use crate::{Example, Result, TrainError};
use pesc_runner::Runner;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Examples run together.
const BATCH: usize = 16;

/// Expert assignment counts per source, layer and expert.
#[derive(Debug, Clone)]
pub struct RouteStats {
    /// Experts per layer.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Per source: tokens seen and `counts[layer][expert]`.
    pub sources: BTreeMap<String, (u64, Vec<Vec<u64>>)>,
}

impl RouteStats {
    /// Runs every `(source, example)` through `runner`, 16 examples
    /// per padded batch (a streamed model reads each layer once a batch), and
    /// counts where their tokens were routed.
    pub fn collect(runner: &Runner, experts: usize, top_k: usize, examples: &[(String, &Example)]) -> Result<Self> {
        let mut sources: BTreeMap<String, (u64, Vec<Vec<u64>>)> = BTreeMap::new();
        for chunk in examples.chunks(BATCH) {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|(_, ex)| ex.input_ids.clone()).collect();
            for ((source, ex), out) in chunk.iter().zip(runner.forward_batch(&ids)?) {
                if out.routes.is_empty() {
                    return Err(TrainError::NotMoe);
                }
                let entry = sources.entry(source.clone()).or_insert_with(|| (0, vec![vec![0; experts]; out.routes.len()]));
                entry.0 += ex.input_ids.len() as u64;
                for (layer, tokens) in out.routes.iter().enumerate() {
                    for e in tokens.iter().flatten() {
                        if let Some(c) = entry.1.get_mut(layer).and_then(|l| l.get_mut(*e)) {
                            *c += 1;
                        }
                    }
                }
            }
        }
        Ok(RouteStats { experts, top_k, sources })
    }

    /// `share[layer][expert]` of one source's assignments (each row sums to 1).
    #[must_use]
    pub fn shares(counts: &[Vec<u64>]) -> Vec<Vec<f64>> {
        counts
            .iter()
            .map(|row| {
                let total = row.iter().sum::<u64>().max(1);
                #[allow(clippy::cast_precision_loss)]
                row.iter().map(|&c| c as f64 / total as f64).collect()
            })
            .collect()
    }

    /// A text table: one block per source, one row per layer.
    #[must_use]
    pub fn table(&self) -> String {
        let mut t = String::new();
        for (source, (tokens, counts)) in &self.sources {
            let _ = writeln!(t, "source `{source}`: {tokens} tokens, top-{} of {} experts", self.top_k, self.experts);
            let head: Vec<String> = (0..self.experts).map(|e| format!("{:>6}", format!("e{e}"))).collect();
            let _ = writeln!(t, "layer {}", head.join(""));
            for (l, row) in Self::shares(counts).iter().enumerate() {
                let cells: Vec<String> = row.iter().map(|s| format!("{s:>6.3}")).collect();
                let _ = writeln!(t, "{l:>5} {}", cells.join(""));
            }
        }
        t
    }

    /// The counts and shares as JSON.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let sources: serde_json::Map<String, Value> = self
            .sources
            .iter()
            .map(|(s, (tokens, counts))| (s.clone(), json!({"tokens": tokens, "counts": counts, "shares": Self::shares(counts)})))
            .collect();
        json!({"experts": self.experts, "top_k": self.top_k, "sources": sources})
    }

    /// An SVG heat map per source (rows: layers, columns: experts; darker is
    /// a larger share, the uniform share 1/experts in the middle of the scale).
    #[must_use]
    pub fn svg(&self) -> String {
        const CELL: usize = 18;
        const PAD: usize = 40;
        let layers = self.sources.values().map(|(_, c)| c.len()).max().unwrap_or(0);
        let panel_w = self.experts * CELL + PAD;
        let (w, h) = (PAD + self.sources.len() * panel_w, 2 * PAD + layers * CELL);
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"10\">\n"
        );
        #[allow(clippy::cast_precision_loss)]
        let uniform = 1.0 / self.experts.max(1) as f64;
        for (p, (source, (_, counts))) in self.sources.iter().enumerate() {
            let x0 = PAD + p * panel_w;
            let _ = writeln!(s, "<text x=\"{x0}\" y=\"{}\">{}</text>", PAD - 22, escape(source));
            for e in 0..self.experts {
                let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{e}</text>", x0 + e * CELL + CELL / 2, PAD - 6);
            }
            for (l, row) in Self::shares(counts).iter().enumerate() {
                let y = PAD + l * CELL;
                if p == 0 {
                    let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{l}</text>", PAD - 6, y + CELL - 5);
                }
                for (e, share) in row.iter().enumerate() {
                    // 0 -> white, the uniform share -> mid blue, twice it or more -> dark blue.
                    let t = (share / (2.0 * uniform)).clamp(0.0, 1.0);
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let (r, g) = ((255.0 * (1.0 - t)) as u8, (255.0 - 175.0 * t) as u8);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{}\" y=\"{y}\" width=\"{CELL}\" height=\"{CELL}\" fill=\"rgb({r},{g},255)\"><title>layer {l}, expert {e}: {share:.3}</title></rect>",
                        x0 + e * CELL
                    );
                }
            }
        }
        let _ = writeln!(s, "<text x=\"{PAD}\" y=\"{}\">rows: layers; columns: experts; share of top-{} assignments (white 0, mid-blue uniform 1/{})</text>", h - 12, self.top_k, self.experts);
        s.push_str("</svg>\n");
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_one_per_layer_and_svg_escapes_names() {
        let counts = vec![vec![3, 1, 0, 0], vec![1, 1, 1, 1]];
        let shares = RouteStats::shares(&counts);
        assert_eq!(shares[0], [0.75, 0.25, 0.0, 0.0]);
        assert!(shares.iter().all(|r| (r.iter().sum::<f64>() - 1.0).abs() < 1e-12));
        let stats = RouteStats { experts: 4, top_k: 2, sources: BTreeMap::from([("a<b".to_owned(), (4, counts))]) };
        let svg = stats.svg();
        assert!(svg.contains("a&lt;b") && svg.matches("<rect").count() == 8, "{svg}");
        assert!(stats.table().contains("0.750"));
    }
}
