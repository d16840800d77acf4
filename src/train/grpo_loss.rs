//! GRPO's objective, exactly as RM-R1 README §6 writes it (veRL's `core_algos`): group-normalised
//! advantages, the clipped importance-ratio surrogate, and the k3 ("low-variance") KL estimate to
//! the reference model, averaged over every completion token of the optimizer mini-batch.
//!
//! Each token's loss depends on the policy only through that token's log-probability `x`, so the
//! gradient is `Σ ∂ℓ/∂x · ∇x`. The derivative `∂ℓ/∂x` is computed here in f64 from the clamps and
//! the min as written (no reliance on how candle differentiates `clamp` or `minimum` at their
//! edges), and the trainer backpropagates `Σ (∂ℓ/∂x)·x` through the model.

use super::grad_step::TokenLoss;
use candle_core::{DType, Result, Tensor};
use std::cell::RefCell;

/// Added to the group's standard deviation (upstream's epsilon).
pub const ADVANTAGE_EPS: f64 = 1e-6;
/// Log-ratio clamp before exponentiation, for both the importance ratio and the KL term.
const LOG_RATIO_CLAMP: f64 = 20.0;
/// The k3 estimate is clamped to ±10.
const KL_CLAMP: f64 = 10.0;

/// `(r − mean) / (std + 1e-6)` within one prompt's group, std unbiased (n − 1). A group of one
/// keeps its reward as the advantage (veRL: mean 0, std 1 for singletons).
pub fn group_advantages(rewards: &[f64]) -> Vec<f64> {
    let n = rewards.len();
    if n <= 1 {
        return rewards.to_vec();
    }
    let mean = rewards.iter().sum::<f64>() / n as f64;
    let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    rewards
        .iter()
        .map(|r| (r - mean) / (std + ADVANTAGE_EPS))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoLossConfig {
    /// The ratio is clipped to `[1 − clip_low, 1 + clip_high]`.
    pub clip_low: f64,
    pub clip_high: f64,
    /// Weight of the k3 term; 0 = no KL.
    pub kl_coef: f64,
}

/// One token's loss terms at log-probability `x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenTerms {
    /// `−min(ρA, clip(ρ)A)`.
    pub policy_loss: f64,
    /// k3 (0 without a reference).
    pub kl: f64,
    /// `policy_loss + kl_coef · kl`.
    pub loss: f64,
    /// `∂loss/∂x`.
    pub dloss_dx: f64,
    /// The clipped branch was the active one (veRL's `pg_clipfrac`).
    pub clipped: bool,
    pub ratio: f64,
}

/// Loss and derivative of one token: `x` = log π_θ, `old` = log π_old, `reference` = log π_ref (when
/// there is a KL term), `advantage` = the sample's advantage.
pub fn token_terms(
    x: f64,
    old: f64,
    reference: Option<f64>,
    advantage: f64,
    config: &GrpoLossConfig,
) -> TokenTerms {
    let log_ratio = x - old;
    let log_ratio_c = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
    let ratio = log_ratio_c.exp();
    let dratio_dx = if log_ratio.abs() < LOG_RATIO_CLAMP {
        ratio
    } else {
        0.0
    };
    let clipped_ratio = ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high);
    let unclipped_loss = -advantage * ratio;
    let clipped_loss = -advantage * clipped_ratio;
    // −min(ρA, clip(ρ)A) = max(−ρA, −clip(ρ)A). When the clipped term wins strictly, ρ is outside
    // the clip range, where clip(ρ) is constant: no gradient.
    let clipped = clipped_loss > unclipped_loss;
    let (policy_loss, dpolicy_dx) = if clipped {
        (clipped_loss, 0.0)
    } else {
        (unclipped_loss, -advantage * dratio_dx)
    };

    let (kl, dkl_dx) = match reference {
        Some(r) if config.kl_coef > 0.0 => {
            let delta = r - x;
            let delta_c = delta.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
            let k = delta_c.exp() - delta_c - 1.0;
            let kl = k.clamp(-KL_CLAMP, KL_CLAMP);
            // dk/dx = (e^δ − 1)·dδ/dx with dδ/dx = −1 inside the clamps.
            let inside = delta.abs() < LOG_RATIO_CLAMP && k.abs() < KL_CLAMP;
            let d = if inside { -(delta_c.exp() - 1.0) } else { 0.0 };
            (kl, d)
        }
        _ => (0.0, 0.0),
    };
    TokenTerms {
        policy_loss,
        kl,
        loss: policy_loss + config.kl_coef * kl,
        dloss_dx: dpolicy_dx + config.kl_coef * dkl_dx,
        clipped,
        ratio,
    }
}

/// Sums of one mini-batch's token terms, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    pub tokens: usize,
    pub loss: f64,
    pub policy_loss: f64,
    pub kl: f64,
    pub clipped: usize,
    pub ratio: f64,
}

impl LossStats {
    pub fn add(&mut self, other: &LossStats) {
        self.tokens += other.tokens;
        self.loss += other.loss;
        self.policy_loss += other.policy_loss;
        self.kl += other.kl;
        self.clipped += other.clipped;
        self.ratio += other.ratio;
    }
}

/// One sample's GRPO loss for the trainer: its rows' old and reference log-probs, its advantage,
/// and `weight` = 1 / (completion tokens in the mini-batch) for the token mean.
pub struct GrpoLoss<'a> {
    pub config: GrpoLossConfig,
    pub advantage: f64,
    pub old: &'a [f32],
    pub reference: Option<&'a [f32]>,
    pub weight: f64,
    pub temperature: f64,
    /// Unweighted sums over the tokens seen so far.
    pub stats: RefCell<LossStats>,
}

impl TokenLoss for GrpoLoss<'_> {
    fn chunk_loss(&self, start: usize, log_probs: &Tensor) -> Result<Tensor> {
        let xs = log_probs.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut coefficients = Vec::with_capacity(xs.len());
        let (mut value, mut linear) = (0.0, 0.0);
        let mut stats = self.stats.borrow_mut();
        for (i, &x) in xs.iter().enumerate() {
            let row = start + i;
            let t = token_terms(
                x as f64,
                self.old[row] as f64,
                self.reference.map(|r| r[row] as f64),
                self.advantage,
                &self.config,
            );
            let c = self.weight * t.dloss_dx;
            coefficients.push(c as f32);
            value += self.weight * t.loss;
            linear += c * x as f64;
            stats.tokens += 1;
            stats.loss += t.loss;
            stats.policy_loss += t.policy_loss;
            stats.kl += t.kl;
            stats.clipped += t.clipped as usize;
            stats.ratio += t.ratio;
        }
        let c = Tensor::from_vec(coefficients, xs.len(), log_probs.device())?;
        // Gradient Σ c·∇x; value the true weighted loss.
        (log_probs * c)?.sum_all()?.affine(1.0, value - linear)
    }

    fn temperature(&self) -> f64 {
        self.temperature
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: GrpoLossConfig = GrpoLossConfig {
        clip_low: 0.2,
        clip_high: 0.2,
        kl_coef: 0.001,
    };

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    #[test]
    fn advantages_are_normalised_with_the_unbiased_std() {
        // rewards 1, −1, −1, 1: mean 0, unbiased var = 4/3.
        let a = group_advantages(&[1.0, -1.0, -1.0, 1.0]);
        let s = (4.0f64 / 3.0).sqrt() + 1e-6;
        for (got, want) in a.iter().zip([1.0 / s, -1.0 / s, -1.0 / s, 1.0 / s]) {
            close(*got, want, 1e-12);
        }
        // 1, 1, −1: mean 1/3, deviations 2/3, 2/3, −4/3, var = (4/9+4/9+16/9)/2 = 4/3.
        let a = group_advantages(&[1.0, 1.0, -1.0]);
        close(a[0], (2.0 / 3.0) / s, 1e-12);
        close(a[2], (-4.0 / 3.0) / s, 1e-12);
        // All equal: zero advantage for everyone (no signal, and no division blow-up).
        assert_eq!(group_advantages(&[-1.0; 7]), vec![0.0; 7]);
        assert_eq!(group_advantages(&[1.0; 2]), vec![0.0; 2]);
    }

    #[test]
    fn inside_the_clip_range_the_loss_is_minus_ratio_times_advantage() {
        // x − old = ln 1.1: ρ = 1.1, A = 2 → −2.2; d/dx = −A·ρ = −2.2.
        let t = token_terms(1.1f64.ln() - 1.0, -1.0, None, 2.0, &CFG);
        close(t.ratio, 1.1, 1e-12);
        close(t.policy_loss, -2.2, 1e-12);
        close(t.dloss_dx, -2.2, 1e-12);
        assert!(!t.clipped);
        assert_eq!(t.kl, 0.0);
    }

    #[test]
    fn ratios_beyond_the_clip_range_stop_the_gradient_only_on_the_side_that_helps() {
        // ρ = 1.5, A > 0: min(1.5A, 1.2A) = 1.2A → clipped, loss −1.2A, no gradient.
        let t = token_terms(1.5f64.ln(), 0.0, None, 1.0, &CFG);
        close(t.policy_loss, -1.2, 1e-12);
        assert_eq!(t.dloss_dx, 0.0);
        assert!(t.clipped);
        // ρ = 1.5, A < 0: min(−1.5, −1.2)·… = ρA = −1.5·(−1) → loss 1.5, unclipped, gradient −A·ρ.
        let t = token_terms(1.5f64.ln(), 0.0, None, -1.0, &CFG);
        close(t.policy_loss, 1.5, 1e-12);
        close(t.dloss_dx, 1.5, 1e-12);
        assert!(!t.clipped);
        // ρ = 0.5, A < 0: min(−0.5·… ) → clip(ρ)=0.8: ρA = 0.5, 0.8A = 0.8 → min is −0.8 → loss 0.8.
        let t = token_terms(0.5f64.ln(), 0.0, None, -1.0, &CFG);
        close(t.policy_loss, 0.8, 1e-12);
        assert_eq!(t.dloss_dx, 0.0);
        assert!(t.clipped);
        // ρ = 0.5, A > 0: ρA = 0.5 < 0.8 → unclipped, loss −0.5, gradient −A·ρ = −0.5.
        let t = token_terms(0.5f64.ln(), 0.0, None, 1.0, &CFG);
        close(t.policy_loss, -0.5, 1e-12);
        close(t.dloss_dx, -0.5, 1e-12);
        assert!(!t.clipped);
        // Zero advantage: no policy loss, no policy gradient, whatever the ratio.
        let t = token_terms(3.0, 0.0, None, 0.0, &CFG);
        assert_eq!((t.policy_loss, t.dloss_dx), (0.0, 0.0));
    }

    #[test]
    fn the_k3_term_matches_hand_computed_values_and_its_derivative() {
        // x = −1, ref = −1.5: δ = −0.5, k3 = e^−0.5 + 0.5 − 1 = 0.10653066; dk/dx = −(e^δ − 1).
        let t = token_terms(-1.0, -1.0, Some(-1.5), 0.0, &CFG);
        close(t.kl, 0.106_530_659_712_633_4, 1e-12);
        close(t.loss, 0.001 * 0.106_530_659_712_633_4, 1e-15);
        close(t.dloss_dx, -0.001 * ((-0.5f64).exp() - 1.0), 1e-15);
        // Equal to the reference: zero KL, zero KL gradient.
        let t = token_terms(-2.0, -2.0, Some(-2.0), 0.0, &CFG);
        assert_eq!((t.kl, t.dloss_dx), (0.0, 0.0));
        // Far from the reference: k3 clamped at 10 and its gradient cut.
        let t = token_terms(-30.0, -30.0, Some(-1.0), 0.0, &CFG);
        assert_eq!(t.kl, 10.0);
        assert_eq!(t.dloss_dx, 0.0);
    }

    #[test]
    fn derivatives_agree_with_finite_differences_away_from_the_kinks() {
        let h = 1e-6;
        for &(x, old, r, a) in &[
            (-1.0, -1.05, -0.9, 1.3),
            (-2.0, -1.9, -2.5, -0.7),
            (-0.3, -0.2, -0.1, 0.4),
            (-1.0, -1.4, -1.2, 2.0),
            (-1.0, -0.4, -1.2, -2.0),
        ] {
            let f = |x: f64| token_terms(x, old, Some(r), a, &CFG).loss;
            let numeric = (f(x + h) - f(x - h)) / (2.0 * h);
            let analytic = token_terms(x, old, Some(r), a, &CFG).dloss_dx;
            close(analytic, numeric, 1e-6);
        }
    }
}
