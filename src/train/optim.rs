//! Optimizer side of training: AdamW with savable state, the HF learning-rate schedules, global-norm
//! clipping and gradient accumulation. All arithmetic is tensor ops on the params' own device; the
//! only host syncs are the one scalar of the clip norm.

use super::spec::{OptimizerSpec, Schedule};
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Base learning rate (the schedule scales it; `step` takes the value to use).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl From<&OptimizerSpec> for AdamWConfig {
    fn from(spec: &OptimizerSpec) -> Self {
        Self {
            lr: spec.lr,
            beta1: spec.beta1,
            beta2: spec.beta2,
            eps: spec.eps,
            weight_decay: spec.weight_decay,
        }
    }
}

/// First and second moments of one param, always f32 (bf16 moments lose small updates).
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

const EXP_AVG: &str = ".exp_avg";
const EXP_AVG_SQ: &str = ".exp_avg_sq";

/// `torch.optim.AdamW` (non-amsgrad, non-fused) over named params.
///
/// One step count `t` is shared by all params and advances on every `step` call. torch keeps a
/// count per param; the two agree whenever every param gets a gradient on every step, which is the
/// case for a fixed trainable set. A param with no gradient in a step is left untouched (no decay,
/// no moment update), as in torch.
pub struct AdamW {
    config: AdamWConfig,
    state: HashMap<String, Moments>,
    t: u64,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            state: HashMap::new(),
            t: 0,
        }
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Completed `step` calls: the `t` of the next step's bias correction minus one.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// One update with learning rate `lr` (already scheduled):
    /// `p ← p·(1 − lr·wd)`, `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
    /// `p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)` — torch's operation order.
    /// Gradients may be any float dtype; the update runs in f32 and is written back in the param's
    /// dtype. Params absent from `grads` are skipped.
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.t += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.config;
        let t = self.t as f64;
        let step_size = lr / (1.0 - beta1.powf(t));
        let inv_bias2_sqrt = 1.0 / (1.0 - beta2.powf(t)).sqrt();
        for (name, var) in params {
            let Some(grad) = grads.get(name) else {
                continue;
            };
            if grad.shape() != var.shape() {
                candle_core::bail!(
                    "AdamW: gradient {:?} for {name} {:?}",
                    grad.shape(),
                    var.shape()
                )
            }
            // Detached: the update must not extend any autograd graph through the Var.
            let param = var.as_tensor().detach();
            let g = grad.detach().to_dtype(DType::F32)?;
            let mut p = param.to_dtype(DType::F32)?;
            if weight_decay != 0.0 {
                p = p.affine(1.0 - lr * weight_decay, 0.0)?;
            }
            let (exp_avg, exp_avg_sq) = match self.state.get(name) {
                Some(s) => (
                    (s.exp_avg.affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?,
                    (s.exp_avg_sq.affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?,
                ),
                // Zero moments: β·0 + (1−β)·g.
                None => (
                    g.affine(1.0 - beta1, 0.0)?,
                    g.sqr()?.affine(1.0 - beta2, 0.0)?,
                ),
            };
            let denom = exp_avg_sq.sqrt()?.affine(inv_bias2_sqrt, eps)?;
            let p = (p - (&exp_avg / denom)?.affine(step_size, 0.0)?)?;
            var.set(&p.to_dtype(param.dtype())?)?;
            self.state.insert(
                name.clone(),
                Moments {
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        Ok(())
    }

    /// The moments as `{param}.exp_avg` / `{param}.exp_avg_sq`, sorted by name; save them with
    /// [`step_count`](Self::step_count) and [`from_state`](Self::from_state) resumes bit-exactly.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut names: Vec<&String> = self.state.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|name| {
                let s = &self.state[name];
                [
                    (format!("{name}{EXP_AVG}"), s.exp_avg.clone()),
                    (format!("{name}{EXP_AVG_SQ}"), s.exp_avg_sq.clone()),
                ]
            })
            .collect()
    }

    /// Rebuilds an optimizer from [`state_tensors`](Self::state_tensors) and `step_count`. Tensors
    /// go to f32 on the device they are given on (move them to the params' device first).
    pub fn from_state(config: AdamWConfig, tensors: Vec<(String, Tensor)>, t: u64) -> Result<Self> {
        let mut avg = HashMap::new();
        let mut avg_sq = HashMap::new();
        for (key, tensor) in tensors {
            let tensor = tensor.to_dtype(DType::F32)?;
            if let Some(name) = key.strip_suffix(EXP_AVG_SQ) {
                avg_sq.insert(name.to_string(), tensor);
            } else if let Some(name) = key.strip_suffix(EXP_AVG) {
                avg.insert(name.to_string(), tensor);
            } else {
                candle_core::bail!("AdamW state: unexpected tensor {key}")
            }
        }
        let mut state = HashMap::new();
        for (name, exp_avg) in avg {
            let Some(exp_avg_sq) = avg_sq.remove(&name) else {
                candle_core::bail!("AdamW state: {name}{EXP_AVG_SQ} missing")
            };
            if exp_avg.shape() != exp_avg_sq.shape() {
                candle_core::bail!("AdamW state: moment shapes differ for {name}")
            }
            state.insert(
                name,
                Moments {
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        if let Some(name) = avg_sq.keys().next() {
            candle_core::bail!("AdamW state: {name}{EXP_AVG} missing")
        }
        Ok(Self { config, state, t })
    }
}

/// Learning rate for the update that follows `step` completed updates (0-based: `step = 0` is the
/// first update), as HF's `get_constant_schedule_with_warmup` /
/// `get_cosine_schedule_with_warmup(num_cycles = 0.5)` under `LambdaLR`. Warmup is linear from 0:
/// with `warmup_steps > 0` the first update uses lr 0, exactly as HF does.
///
/// One deviation: past `total_steps` HF's cosine climbs again; here it stays at 0.
pub fn lr_at(
    schedule: Schedule,
    base_lr: f64,
    warmup_steps: u64,
    total_steps: u64,
    step: u64,
) -> f64 {
    if step < warmup_steps {
        return base_lr * step as f64 / warmup_steps.max(1) as f64;
    }
    match schedule {
        Schedule::Constant => base_lr,
        Schedule::Cosine => {
            let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
            let progress = ((step - warmup_steps) as f64 / span).min(1.0);
            base_lr * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    }
}

/// Total L2 norm over all gradients (before clipping), scaling them by
/// `max_norm / (norm + 1e-6)` when that is below 1 (`torch.nn.utils.clip_grad_norm_`).
/// `max_norm <= 0` only measures. A non-finite norm is returned and nothing is scaled; the caller
/// decides (skip the step, fail the job).
///
/// The sum runs over names in sorted order, so the norm, and thus a resumed run, is reproducible.
pub fn clip_global_norm(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let Some(first) = names.first() else {
        return Ok(0.0);
    };
    let device = grads[*first].device().clone();
    let squares = names
        .iter()
        .map(|name| {
            grads[*name]
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_device(&device)
        })
        .collect::<Result<Vec<_>>>()?;
    let norm = Tensor::stack(&squares, 0)?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt();
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.values_mut() {
                *g = g.affine(coef, 0.0)?;
            }
        }
    }
    Ok(norm)
}

/// Sums gradients of named params over several backward passes (micro-batches, or layers
/// back-propagated one at a time), in f32, detached from any graph.
#[derive(Default)]
pub struct GradAccumulator {
    sums: HashMap<String, Tensor>,
    passes: usize,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds what `store` holds for each of `params` and counts one pass; returns how many params
    /// had a gradient (a trainable param without one usually means a broken graph).
    pub fn accumulate(&mut self, params: &[(String, Var)], store: &GradStore) -> Result<usize> {
        let mut found = 0;
        for (name, var) in params {
            if let Some(g) = store.get(var) {
                self.add(name, g)?;
                found += 1;
            }
        }
        self.passes += 1;
        Ok(found)
    }

    /// Adds one named gradient without counting a pass: for gradients that arrive piecewise, e.g.
    /// one layer's params per recomputed backward.
    pub fn add(&mut self, name: &str, grad: &Tensor) -> Result<()> {
        let grad = grad.detach().to_dtype(DType::F32)?;
        match self.sums.get_mut(name) {
            Some(prev) if prev.shape() != grad.shape() => candle_core::bail!(
                "GradAccumulator: {name} was {:?}, now {:?}",
                prev.shape(),
                grad.shape()
            ),
            Some(prev) => *prev = (&*prev + grad)?,
            None => {
                self.sums.insert(name.to_string(), grad);
            }
        }
        Ok(())
    }

    /// Passes counted by [`accumulate`](Self::accumulate).
    pub fn passes(&self) -> usize {
        self.passes
    }

    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// The sums divided by the number of passes (left as they are if none was counted).
    pub fn into_mean(self) -> Result<HashMap<String, Tensor>> {
        let factor = 1.0 / self.passes.max(1) as f64;
        self.into_scaled(factor)
    }

    /// The sums times `factor` (e.g. 1 / tokens in the whole batch for token-mean losses).
    pub fn into_scaled(self, factor: f64) -> Result<HashMap<String, Tensor>> {
        self.sums
            .into_iter()
            .map(|(name, g)| {
                Ok((
                    name,
                    if factor == 1.0 {
                        g
                    } else {
                        g.affine(factor, 0.0)?
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "optim_tests.rs"]
mod tests;
