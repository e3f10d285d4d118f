//! The comparison of a candidate model with a reference on the same token
//! sequences: the largest absolute logit difference, the mean KL divergence
//! of the candidate's next-token distribution from the reference's, top-1
//! agreement, and for MoE candidates the share of tokens each expert receives
//! per layer.

use pesc_runner::{ModelError, Runner};

/// Where the largest difference was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Worst {
    /// Index of the sequence.
    pub sequence: usize,
    /// Position within it.
    pub position: usize,
    /// Vocabulary index of the logit.
    pub token: usize,
}

/// The comparison of two models.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Largest `|candidate - reference|` over every logit.
    pub max_abs_diff: f32,
    /// Mean over positions of `KL(reference || candidate)` of the softmax distributions.
    pub mean_kl: f64,
    /// Share of positions whose argmax agrees.
    pub top1_agreement: f64,
    /// Positions compared.
    pub tokens: usize,
    /// Where `max_abs_diff` occurs.
    pub worst: Worst,
    /// For an MoE candidate: per layer, tokens routed to each expert.
    pub expert_load: Vec<Vec<u64>>,
}

/// Largest logits of one model held at a time: sequences are compared in
/// groups whose logits take at most this many bytes (each layer is read once
/// per group).
const GROUP_LOGIT_BYTES: usize = 256 << 20;

/// `sequences` split into consecutive groups whose logits (`tokens × vocab`
/// f32) stay under [`GROUP_LOGIT_BYTES`]; a group holds at least one sequence.
fn groups(sequences: &[Vec<u32>], vocab: usize) -> Vec<&[Vec<u32>]> {
    let per_token = vocab.max(1) * 4;
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, s) in sequences.iter().enumerate() {
        let b = s.len() * per_token;
        if i > start && bytes + b > GROUP_LOGIT_BYTES {
            out.push(&sequences[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += b;
    }
    if start < sequences.len() {
        out.push(&sequences[start..]);
    }
    out
}

/// Runs both models on every sequence (each from an empty cache, all of a
/// group through a layer before the next) and compares: the reference's
/// logits first, then the candidate's, so a streamed pair never holds more
/// than one layer of either.
pub fn compare(candidate: &Runner, reference: &Runner, sequences: &[Vec<u32>]) -> Result<Comparison, ModelError> {
    let mut c = Comparison {
        max_abs_diff: 0.0,
        mean_kl: 0.0,
        top1_agreement: 0.0,
        tokens: 0,
        worst: Worst { sequence: 0, position: 0, token: 0 },
        expert_load: Vec::new(),
    };
    let (mut kl_sum, mut agree) = (0.0f64, 0usize);
    let mut first = 0;
    for group in groups(sequences, reference.vocab_size()) {
        let refs = reference.forward_batch(group)?;
        let cands = candidate.forward_batch(group)?;
        for (si, (cand, refr)) in (first..).zip(cands.iter().zip(&refs)) {
            let (a, b) = (cand.logits.to_vec2::<f32>()?, refr.logits.to_vec2::<f32>()?);
            for (pos, (x, y)) in a.iter().zip(&b).enumerate() {
                for (tok, (p, q)) in x.iter().zip(y).enumerate() {
                    let d = (p - q).abs();
                    if d > c.max_abs_diff || d.is_nan() {
                        c.max_abs_diff = if d.is_nan() { f32::INFINITY } else { d };
                        c.worst = Worst { sequence: si, position: pos, token: tok };
                    }
                }
                kl_sum += kl(y, x);
                agree += usize::from(argmax(x) == argmax(y));
                c.tokens += 1;
            }
            for (l, layer) in cand.routes.iter().enumerate() {
                if c.expert_load.len() <= l {
                    c.expert_load.push(vec![0; candidate.num_experts()]);
                }
                for &e in layer.iter().flatten() {
                    c.expert_load[l][e] += 1;
                }
            }
        }
        first += group.len();
    }
    #[allow(clippy::cast_precision_loss)]
    if c.tokens > 0 {
        c.mean_kl = kl_sum / c.tokens as f64;
        c.top1_agreement = agree as f64 / c.tokens as f64;
    }
    Ok(c)
}

fn argmax(x: &[f32]) -> usize {
    x.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = x.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>().ln() + f64::from(max);
    x.iter().map(|&v| f64::from(v) - lse).collect()
}

/// `KL(p || q)` of the softmax distributions of logits `p` and `q`, in nats.
#[must_use]
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

/// Whether `model` is a PESC model whose adapters' up projections are all
/// zero (a fresh craft), so that it must equal its dense base exactly.
pub fn has_zero_adapters(model: &pesc_runner::Weights) -> Result<bool, ModelError> {
    let pesc_hf::Moe::Pesc(p) = &model.config().moe else { return Ok(false) };
    for l in 0..model.config().num_layers {
        for j in 0..p.num_experts {
            let (values, _) = model.read_f32(&pesc_hf::ExpertNaming::Camelidae.adapter(l, j, "up"))?;
            if values.iter().any(|v| *v != 0.0) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// `count` token sequences of `len` ids below `vocab`, the same on every run:
/// the built-in inputs when a model has no tokenizer.
#[must_use]
pub fn builtin_sequences(vocab: usize, count: usize, len: usize) -> Vec<Vec<u32>> {
    let mut rng = pesc_tensor::SplitMix64(0x5045_5343); // "PESC"
    (0..count).map(|_| (0..len).map(|_| u32::try_from(rng.next_u64() % vocab.max(1) as u64).unwrap_or(0)).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_bound_the_logits_and_keep_every_sequence() {
        let seqs: Vec<Vec<u32>> = (0..10).map(|i| vec![0; 100 + i]).collect();
        // 100 tokens of a 256 Ki vocabulary take 100 MiB: two sequences a group.
        let g = groups(&seqs, 256 << 10);
        assert_eq!(g.iter().map(|g| g.len()).collect::<Vec<_>>(), [2, 2, 2, 2, 2]);
        assert_eq!(groups(&seqs, 10).len(), 1);
        // A sequence larger than the bound is a group of its own.
        assert_eq!(groups(&[vec![0; 1 << 20]], 1 << 10).len(), 1);
        assert!(groups(&[], 10).is_empty());
    }

    #[test]
    fn kl_is_zero_for_equal_and_positive_otherwise() {
        assert!(kl(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
        // Shifting all logits does not change the distribution.
        assert!(kl(&[1.0, 2.0, 3.0], &[11.0, 12.0, 13.0]).abs() < 1e-12);
        let d = kl(&[0.0, 0.0], &[0.0, 1.0]);
        // p = (1/2, 1/2), q = (1/(1+e), e/(1+e)).
        let e = std::f64::consts::E;
        let want = 0.5 * (0.5f64 / (1.0 / (1.0 + e))).ln() + 0.5 * (0.5f64 / (e / (1.0 + e))).ln();
        assert!((d - want).abs() < 1e-9, "{d} vs {want}");
    }
}
