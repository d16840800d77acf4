//! Token selection from one row of logits: greedy, temperature, top-k, top-p; and log-probabilities.

use super::request::SamplingParams;
use rand::rngs::StdRng;
use rand::Rng;

/// log-softmax normaliser of a logits row, computed once per step and shared by every log-prob query.
pub struct LogSoftmax {
    max: f32,
    log_sum: f32,
}

impl LogSoftmax {
    pub fn new(logits: &[f32]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        Self {
            max,
            log_sum: sum.ln() as f32,
        }
    }

    /// Log-probability of `token` under the model's (temperature 1) distribution.
    pub fn logprob(&self, logits: &[f32], token: u32) -> f32 {
        logits
            .get(token as usize)
            .map(|&l| l - self.max - self.log_sum)
            .unwrap_or(f32::NEG_INFINITY)
    }
}

/// Index of the largest logit; the lowest index wins ties so greedy decoding is deterministic.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> u32 {
    if params.temperature <= 0.0 || params.top_k == 1 {
        return argmax(logits);
    }
    let inv_t = 1.0 / params.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Unnormalised probabilities; candidates narrowed by top-k, then by top-p.
    let weight = |l: f32| ((l - max) * inv_t).exp();
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, weight(l)))
        .collect();
    let by_weight_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if params.top_k > 0 && params.top_k < candidates.len() {
        candidates.select_nth_unstable_by(params.top_k - 1, by_weight_desc);
        candidates.truncate(params.top_k);
    }
    if params.top_p < 1.0 {
        let total: f32 = candidates.iter().map(|c| c.1).sum();
        let target = params.top_p.max(0.0) * total;
        // Sorting a 152k-entry row every step is wasteful: sort a growing head until it holds the mass.
        let mut head = 64.min(candidates.len());
        loop {
            if head < candidates.len() {
                candidates.select_nth_unstable_by(head - 1, by_weight_desc);
            }
            let mut sorted: Vec<(u32, f32)> = candidates[..head].to_vec();
            sorted.sort_unstable_by(by_weight_desc);
            let mut acc = 0.0;
            let mut keep = sorted.len();
            for (i, c) in sorted.iter().enumerate() {
                acc += c.1;
                if acc >= target {
                    keep = i + 1;
                    break;
                }
            }
            if acc >= target || head == candidates.len() {
                sorted.truncate(keep);
                candidates = sorted;
                break;
            }
            head = (head * 4).min(candidates.len());
        }
    }
    let total: f32 = candidates.iter().map(|c| c.1).sum();
    let mut r = rng.random::<f32>() * total;
    for &(id, w) in &candidates {
        if r < w {
            return id;
        }
        r -= w;
    }
    candidates.last().map(|c| c.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn logprobs_match_hand_computed_values() {
        let logits = [1.0f32, 2.0, 3.0];
        let ls = LogSoftmax::new(&logits);
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((ls.logprob(&logits, 2) as f64 - (3.0 - z)).abs() < 1e-6);
        assert!((ls.logprob(&logits, 0) as f64 - (1.0 - z)).abs() < 1e-6);
        assert_eq!(ls.logprob(&logits, 9), f32::NEG_INFINITY);
    }

    #[test]
    fn greedy_takes_first_maximum() {
        assert_eq!(argmax(&[0.0, 5.0, 5.0, 1.0]), 1);
        let p = SamplingParams::default();
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(sample(&[0.0, 5.0, 5.0, 1.0], &p, &mut rng), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits: Vec<f32> = (0..1000).map(|i| (i as f32) * 0.01).collect();
        let mut rng = StdRng::seed_from_u64(7);
        let k = SamplingParams {
            temperature: 1.0,
            top_k: 3,
            ..SamplingParams::default()
        };
        for _ in 0..200 {
            assert!(sample(&logits, &k, &mut rng) >= 997);
        }
        // Two dominant tokens hold ~all the mass: top_p 0.5 keeps only the largest.
        let mut peaked = vec![0.0f32; 500];
        peaked[10] = 30.0;
        peaked[20] = 29.0;
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..SamplingParams::default()
        };
        for _ in 0..200 {
            assert_eq!(sample(&peaked, &p, &mut rng), 10);
        }
        let p9 = SamplingParams {
            top_p: 0.9,
            ..p.clone()
        };
        let seen: std::collections::HashSet<u32> =
            (0..400).map(|_| sample(&peaked, &p9, &mut rng)).collect();
        assert_eq!(seen, [10, 20].into_iter().collect());
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 113) as f32 * 0.05)
            .collect();
        let p = SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            ..SamplingParams::default()
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| sample(&logits, &p, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
