//! Next-token choice: greedy, or seeded temperature and top-p sampling.

use pesc_tensor::SplitMix64;

/// Picks tokens from logits.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: SplitMix64,
}

impl Sampler {
    /// `temperature` 0 is greedy (argmax, lowest id on ties); otherwise
    /// softmax(logits / temperature) restricted to the smallest set of most
    /// likely tokens whose mass reaches `top_p`, sampled with a SplitMix64
    /// stream seeded by `seed`.
    #[must_use]
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        Sampler { temperature, top_p, rng: SplitMix64(seed) }
    }

    /// The next token.
    #[allow(clippy::cast_possible_truncation)]
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let argmax =
            || logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32;
        if self.temperature <= 0.0 || logits.is_empty() {
            return argmax();
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(usize, f64)> =
            logits.iter().enumerate().map(|(i, &v)| (i, f64::from((v - max) / self.temperature).exp())).collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut kept = 0.0;
        let mut n = 0;
        for p in &probs {
            kept += p.1;
            n += 1;
            if kept >= f64::from(self.top_p) * total {
                break;
            }
        }
        let mut r = self.rng.next_f64() * kept;
        for p in &probs[..n] {
            r -= p.1;
            if r < 0.0 {
                return p.0 as u32;
            }
        }
        probs[n - 1].0 as u32
    }
}

/// Generates up to `max_new` tokens after `prompt`, stopping after any of
/// `stop`; `on_token` sees each new token as it is chosen. Returns them all.
pub fn generate(
    runner: &crate::Runner,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    on_token: &mut dyn FnMut(u32) -> crate::Result<()>,
) -> crate::Result<Vec<u32>> {
    let mut cache = crate::Cache::default();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    while out.len() < max_new {
        let logits = runner.forward(&input, &mut cache)?.logits;
        let last = logits.get(logits.dim(0)? - 1)?.to_vec1::<f32>()?;
        let next = sampler.pick(&last);
        out.push(next);
        on_token(next)?;
        if stop.contains(&next) {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(Sampler::new(0.0, 1.0, 0).pick(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_p_excludes_the_tail_and_the_seed_repeats() {
        let logits = [5.0, 4.9, -10.0, -10.0];
        let mut s = Sampler::new(1.0, 0.9, 42);
        let picks: Vec<u32> = (0..200).map(|_| s.pick(&logits)).collect();
        assert!(picks.iter().all(|&t| t < 2), "tail token sampled");
        assert!(picks.contains(&0) && picks.contains(&1));
        let mut again = Sampler::new(1.0, 0.9, 42);
        assert_eq!(picks, (0..200).map(|_| again.pick(&logits)).collect::<Vec<_>>());
    }
}
