//! Choosing each sequence's next token from a step's logits: the one seam between the engine and
//! where sampling runs, parallel to `PagedAttention` for attention. The engine describes every draw
//! (the row, the request's rule, its uniform draw from the request's own seeded RNG, the tokens whose
//! log-probabilities it reports) and gets tokens and those log-probabilities back; the CPU and the
//! CUDA sampler apply the same rule ([`super::sampler::sample_with_uniform`]), so one seed picks one
//! token on either device.

use super::sampler::{sample_with_uniform, LogSoftmax};
use super::SamplingParams;
use candle_core::{Result, Tensor};

/// One token to draw from row `row` of the step's logits.
#[derive(Debug, Clone)]
pub struct Draw {
    pub row: usize,
    pub temperature: f32,
    /// 0: no top-k cut.
    pub top_k: usize,
    /// 1.0: no nucleus cut.
    pub top_p: f32,
    /// In [0, 1); unused by greedy draws.
    pub uniform: f32,
    /// Tokens whose log-probabilities are wanted besides the drawn one (probes that fire).
    pub logprob_tokens: Vec<u32>,
    /// Whether the drawn token's own log-probability is wanted.
    pub logprob_of_draw: bool,
}

/// The drawn token and the log-probabilities asked for (NaN for any other token).
#[derive(Debug, Clone, PartialEq)]
pub struct Drawn {
    pub token: u32,
    pub logprobs: Vec<(u32, f32)>,
}

impl Drawn {
    pub fn logprob(&self, token: u32) -> f32 {
        self.logprobs
            .iter()
            .find(|&&(t, _)| t == token)
            .map_or(f32::NAN, |&(_, lp)| lp)
    }
}

pub trait TokenSampler: Send {
    /// One [`Drawn`] per draw, in order. `logits`: `[rows, vocab]` f32.
    fn sample(&mut self, logits: &Tensor, draws: &[Draw]) -> Result<Vec<Drawn>>;
}

/// The sampler for a model on `device`.
pub fn for_device(device: &candle_core::Device) -> Box<dyn TokenSampler> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return Box::new(crate::cuda::sampler::DeviceSampler);
    }
    let _ = device;
    Box::new(CpuSampler)
}

/// Sampling on the host: the logits come back whole (one copy), each row is sampled by the rule and,
/// where log-probabilities are wanted, normalised once.
pub struct CpuSampler;

impl TokenSampler for CpuSampler {
    fn sample(&mut self, logits: &Tensor, draws: &[Draw]) -> Result<Vec<Drawn>> {
        let rows = logits.to_vec2::<f32>()?;
        draws
            .iter()
            .map(|draw| {
                let Some(row) = rows.get(draw.row) else {
                    candle_core::bail!("draw from row {} of {} logits rows", draw.row, rows.len());
                };
                let token = sample_with_uniform(row, &draw.rule(), draw.uniform);
                let wanted = draw.wanted(token);
                let logprobs = if wanted.is_empty() {
                    Vec::new()
                } else {
                    let norm = LogSoftmax::new(row);
                    wanted
                        .into_iter()
                        .map(|t| (t, norm.logprob(row, t)))
                        .collect()
                };
                Ok(Drawn { token, logprobs })
            })
            .collect()
    }
}

impl Draw {
    /// The request's rule as the samplers read it.
    pub fn rule(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            ..SamplingParams::default()
        }
    }

    /// Tokens whose log-probabilities to report once `token` is drawn.
    pub fn wanted(&self, token: u32) -> Vec<u32> {
        let mut tokens = self.logprob_tokens.clone();
        if self.logprob_of_draw {
            tokens.push(token);
        }
        tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn draw(row: usize, temperature: f32, uniform: f32, probes: &[u32], own: bool) -> Draw {
        Draw {
            row,
            temperature,
            top_k: 0,
            top_p: 1.0,
            uniform,
            logprob_tokens: probes.to_vec(),
            logprob_of_draw: own,
        }
    }

    #[test]
    fn the_cpu_sampler_draws_by_the_rule_and_reports_what_was_asked() {
        let logits = Tensor::new(&[[1.0f32, 2.0, 3.0], [0.0, 0.0, 5.0]], &Device::Cpu).unwrap();
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let drawn = CpuSampler
            .sample(
                &logits,
                &[
                    // Greedy, with its own log-probability and a probe beyond the vocabulary.
                    draw(0, 0.0, 0.0, &[0, 9], true),
                    // T = 1: weights e^-2, e^-1, 1 (total 1.503); u = 0.05 lands in the first.
                    draw(0, 1.0, 0.05, &[], false),
                    // u = 0.5 passes 0.135 + 0.368 and lands in the third.
                    draw(0, 1.0, 0.5, &[], false),
                    draw(1, 0.0, 0.0, &[], false),
                ],
            )
            .unwrap();
        let tokens: Vec<u32> = drawn.iter().map(|d| d.token).collect();
        assert_eq!(tokens, [2, 0, 2, 2]);
        assert!((drawn[0].logprob(2) as f64 - (3.0 - z)).abs() < 1e-6);
        assert!((drawn[0].logprob(0) as f64 - (1.0 - z)).abs() < 1e-6);
        assert_eq!(drawn[0].logprob(9), f32::NEG_INFINITY);
        // Nothing asked, nothing computed: an unreported token reads NaN.
        assert!(drawn[1].logprobs.is_empty() && drawn[1].logprob(0).is_nan());
        assert!(CpuSampler
            .sample(&logits, &[draw(2, 0.0, 0.0, &[], false)])
            .is_err());
    }
}
