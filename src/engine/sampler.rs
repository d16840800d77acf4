//! Token selection from one row of logits: greedy, temperature, top-k, top-p; and log-probabilities.

use super::request::SamplingParams;

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

pub fn is_greedy(params: &SamplingParams) -> bool {
    params.temperature <= 0.0 || params.top_k == 1
}

/// The sampling rule, the same in meaning as the CUDA kernel's (kernels/sampling.cu): weights
/// `exp((l - max) / T)`; top-k keeps logits at or above the k-th largest logit, and top-p keeps logits
/// at or above the one where the descending cumulative weight first reaches `top_p` of the kept
/// weight (ties at either threshold are kept, as in Hugging Face's warpers); the token is found by
/// walking the kept weights in index order until `u * total` is passed. Thresholds instead of sorted candidate
/// lists are what lets the GPU do this without sorting a 152k-entry row.
pub fn sample_with_uniform(logits: &[f32], params: &SamplingParams, u: f32) -> u32 {
    if is_greedy(params) {
        return argmax(logits);
    }
    let inv_t = 1.0 / params.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weight = |l: f32| ((l - max) * inv_t).exp();
    let mut floor = f32::NEG_INFINITY;
    if params.top_k > 0 && params.top_k < logits.len() {
        let mut sorted = logits.to_vec();
        let (_, kth, _) = sorted.select_nth_unstable_by(params.top_k - 1, |a, b| b.total_cmp(a));
        floor = *kth;
    }
    if params.top_p < 1.0 {
        floor = floor.max(top_p_floor(logits, floor, params.top_p.max(0.0), weight));
    }
    let total: f32 = logits
        .iter()
        .filter(|&&l| l >= floor)
        .map(|&l| weight(l))
        .sum();
    let r = u * total;
    let mut acc = 0.0f32;
    let mut last_kept = argmax(logits);
    for (i, &l) in logits.iter().enumerate() {
        // A token of zero weight (-inf, or underflowed) is never drawn, even when rounding lets r
        // run past the last kept token's end.
        let w = weight(l);
        if l < floor || w == 0.0 {
            continue;
        }
        acc += w;
        last_kept = i as u32;
        if r < acc {
            return i as u32;
        }
    }
    last_kept
}

/// The smallest logit that top-p keeps among logits >= `floor`.
fn top_p_floor(logits: &[f32], floor: f32, top_p: f32, weight: impl Fn(f32) -> f32) -> f32 {
    let mut kept: Vec<f32> = logits.iter().copied().filter(|&l| l >= floor).collect();
    let target = top_p * kept.iter().map(|&l| weight(l)).sum::<f32>();
    let desc = |a: &f32, b: &f32| b.total_cmp(a);
    // Sorting a 152k-entry row every step is wasteful: sort a growing head until it holds the mass.
    let mut head = 64.min(kept.len());
    loop {
        if head < kept.len() {
            kept.select_nth_unstable_by(head - 1, desc);
        }
        kept[..head].sort_unstable_by(desc);
        let mut acc = 0.0f32;
        for &l in &kept[..head] {
            acc += weight(l);
            if acc >= target {
                return l;
            }
        }
        if head == kept.len() {
            // Rounding left the sum a hair under the target: keep everything.
            return kept.last().copied().unwrap_or(floor);
        }
        head = (head * 4).min(kept.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn logprobs_match_hand_computed_values() {
        let logits = [1.0f32, 2.0, 3.0];
        let ls = LogSoftmax::new(&logits);
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((ls.logprob(&logits, 2) as f64 - (3.0 - z)).abs() < 1e-6);
        assert!((ls.logprob(&logits, 0) as f64 - (1.0 - z)).abs() < 1e-6);
        assert_eq!(ls.logprob(&logits, 9), f32::NEG_INFINITY);
    }

    /// One draw the way the engine makes it: the request's RNG gives the uniform.
    fn sample(logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> u32 {
        sample_with_uniform(logits, params, rng.random())
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
    fn a_draw_past_the_mass_takes_the_last_token_with_weight_never_a_masked_one() {
        let t1 = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        // u = 1 stands for the rounding that lets u * total reach the total (found in the device
        // sampler's emulation): the walk runs past the end and must not land on the -inf tail.
        let masked = [0.5f32, 1.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        assert_eq!(sample_with_uniform(&masked, &t1, 1.0), 1);
        assert_eq!(sample_with_uniform(&masked, &t1, 0.0), 0);
    }

    #[test]
    fn thresholds_keep_ties_and_walk_in_index_order() {
        // Logits 3, 1, 3, 2 at temperature 1: top-k 1-of-ties keeps both 3s.
        let logits = [3.0f32, 1.0, 3.0, 2.0];
        let k1 = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            ..SamplingParams::default()
        };
        // Kept weights (index order) 1, 1 -> u below 0.5 picks index 0, above picks index 2.
        assert_eq!(sample_with_uniform(&logits, &k1, 0.49), 0);
        assert_eq!(sample_with_uniform(&logits, &k1, 0.51), 2);
        // top-p: weights e^0, e^-2, e^0, e^-1 (total 2.5032); 0.5 of it is reached by the first 3,
        // whose tie is kept, so the draw is between indices 0 and 2 again.
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..SamplingParams::default()
        };
        assert_eq!(sample_with_uniform(&logits, &p, 0.99), 2);
        // No cut: weights 1, e^-2, 1, e^-1 over total 2.5032; r = 0.45 * 2.5032 = 1.126 falls in index 1's
        // or index 2's span: 1 + e^-2 = 1.135 > 1.126, so index 1.
        let all = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        assert_eq!(sample_with_uniform(&logits, &all, 0.45), 1);
        assert_eq!(sample_with_uniform(&logits, &all, 0.46), 2);
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

    /// The rule written the slow, obvious way: sort everything.
    fn sort_reference(logits: &[f32], p: &SamplingParams, u: f32) -> u32 {
        if is_greedy(p) {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weight = |l: f32| ((l - max) / p.temperature).exp();
        let mut desc = logits.to_vec();
        desc.sort_by(|a, b| b.total_cmp(a));
        let mut floor = f32::NEG_INFINITY;
        if p.top_k > 0 && p.top_k < logits.len() {
            floor = desc[p.top_k - 1];
        }
        if p.top_p < 1.0 {
            let kept: Vec<f32> = desc.iter().copied().filter(|&l| l >= floor).collect();
            let target = p.top_p.max(0.0)
                * logits
                    .iter()
                    .filter(|&&l| l >= floor)
                    .map(|&l| weight(l))
                    .sum::<f32>();
            let mut acc = 0.0;
            let mut crossing = *kept.last().unwrap();
            for &l in &kept {
                acc += weight(l);
                if acc >= target {
                    crossing = l;
                    break;
                }
            }
            floor = floor.max(crossing);
        }
        let total: f32 = logits
            .iter()
            .filter(|&&l| l >= floor)
            .map(|&l| weight(l))
            .sum();
        let mut acc = 0.0;
        let mut last = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l >= floor {
                acc += weight(l);
                last = i as u32;
                if u * total < acc {
                    return i as u32;
                }
            }
        }
        last
    }

    proptest::proptest! {
        #[test]
        fn thresholds_match_the_sorting_reference(
            // Small integer logits make ties at both thresholds common.
            logits in proptest::collection::vec(-6i32..6, 1..300),
            temperature in 0.3f32..2.0,
            top_k in 0usize..20,
            top_p in 0.0f32..1.2,
            u in 0.0f32..1.0,
        ) {
            let logits: Vec<f32> = logits.into_iter().map(|l| l as f32 * 0.5).collect();
            let p = SamplingParams { temperature, top_k, top_p: top_p.min(1.0), ..SamplingParams::default() };
            proptest::prop_assert_eq!(
                sample_with_uniform(&logits, &p, u),
                sort_reference(&logits, &p, u)
            );
        }
    }
}
