//! Stage 2 of RM-R1: GRPO with verifiable rewards (RM-R1 README §6, veRL's recipe).
//!
//! One step = one rollout batch: `prompts_per_step` prompts, G samples each from the engine running
//! the current policy; rewards by upstream's RL rule ([`crate::judge::rl_reward`]); advantages
//! normalised within each group; old log-probs (and entropies) recomputed by the trainer, reference
//! log-probs from the starting model; then `update_epochs` passes of optimizer updates over
//! mini-batches of `prompts_per_update` prompts, each the token mean of the clipped surrogate plus
//! `kl_coef · k3`. The engine gets the updated weights before the next rollout.
//!
//! Resume needs no RNG state: the prompt order is the seeded per-epoch order at the consumed count,
//! and each prompt's rollout seed is drawn from (run seed, its consumed index).

use super::executor::{JobContext, RunOutcome, TrainError, TrainErrorKind};
use super::forward::TrainableQwen2;
use super::grad_step::{accumulate_sequence, sequence_scores, LossRows};
use super::grpo_loss::{group_advantages, GrpoLoss, GrpoLossConfig, LossStats};
use super::optim::GradAccumulator;
use super::params::TrainParams;
use super::rlvr_data::{load_rlvr_dataset, RlvrPrompt};
use super::rng::{mix64, GOLDEN_GAMMA};
use super::rollout::{RolloutCapacity, RolloutEngine, RolloutSampling, RolloutStats};
use super::session::TrainSession;
use super::sft::{total_steps, DataCursor};
use super::spec::{GrpoSpec, TrainSpec};
use crate::judge::rl_reward;
use crate::model::base_weights::BaseWeights;
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::time::Instant;

/// Rows of the output head computed at once (as in SFT).
const HEAD_CHUNK: usize = 128;
/// Most sequences the rollout engine runs at once.
const MAX_ROLLOUT_SEQS: usize = 256;

/// Controls for experiments and tests; a job always runs with the default (none).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ablation {
    /// Train with every advantage set to 0 (only the KL term acts): the control under which a
    /// learning signal must not appear.
    pub zero_advantages: bool,
}

/// One rollout sample as the trainer sees it.
struct Sample {
    tokens: Vec<u32>,
    rows: LossRows,
    reward: f64,
    advantage: f64,
    /// The engine's log-probs of the sampled tokens, to measure on-policyness against `old`.
    engine: Vec<f32>,
    old: Vec<f32>,
    reference: Option<Vec<f32>>,
}

/// The starting model, for the KL term: the base with the adapter switched off (LoRA: the frozen
/// tensors themselves, shared), or for full fine-tuning a second, frozen copy of the base.
fn reference_model(
    session: &TrainSession,
    grpo: &GrpoSpec,
    device: &Device,
) -> Result<Option<TrainableQwen2>, TrainError> {
    if grpo.kl_coef == 0.0 {
        return Ok(None);
    }
    let compute_dtype = crate::model::loader::default_dtype(device);
    let frozen = if session.model.params.is_lora() {
        session.model.params.frozen().clone()
    } else {
        BaseWeights::load(&session.spec.base_model, DType::F32, device)
            .map_err(|e| TrainError::internal(format!("loading the reference model: {e:#}")))?
            .tensors
    };
    let params = TrainParams::frozen_only(&frozen, device);
    Ok(Some(TrainableQwen2::new(
        session.base.config.clone(),
        params,
        compute_dtype,
        session.model.max_positions(),
    )?))
}

/// Rollout seed of the prompt at consumed index `index`.
fn rollout_seed(run_seed: u64, index: u64) -> u64 {
    mix64(run_seed ^ mix64(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for x in xs {
        sum += x;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

pub fn run(
    spec: &TrainSpec,
    grpo: &GrpoSpec,
    ctx: &dyn JobContext,
    device: &Device,
) -> Result<RunOutcome, TrainError> {
    run_with(spec, grpo, ctx, device, Ablation::default())
}

pub fn run_with(
    spec: &TrainSpec,
    grpo: &GrpoSpec,
    ctx: &dyn JobContext,
    device: &Device,
    ablation: Ablation,
) -> Result<RunOutcome, TrainError> {
    let mut session = TrainSession::load(
        spec,
        ctx.job_id(),
        device,
        grpo.max_prompt_len + grpo.max_response_len,
    )?;
    let max_len = session.model.max_positions();
    // A model with a shorter context than max_prompt_len + 1 bounds the prompts instead: each
    // needs room for at least one generated token.
    let grpo = &GrpoSpec {
        max_prompt_len: grpo.max_prompt_len.min(max_len.saturating_sub(1)),
        ..grpo.clone()
    };
    let mut warn = |m: &str| ctx.warn(m);
    let data = load_rlvr_dataset(grpo, &session.base.tokenizer, &mut warn)?;
    session.total_steps = total_steps(
        data.len(),
        grpo.prompts_per_step,
        spec.run.epochs,
        spec.run.max_steps,
    );
    session.updates_per_step = grpo.updates_per_step();
    session.resume(ctx)?;
    let reference = reference_model(&session, grpo, device)?;
    let compute_dtype = crate::model::loader::default_dtype(device);
    let mut engine = RolloutEngine::new(
        &session.policy_weights()?,
        &session.base.config,
        &session.base.tokenizer,
        (compute_dtype, device),
        RolloutCapacity {
            kv_cache_bytes: grpo.rollout_kv_cache_mib << 20,
            max_len,
            max_num_seqs: (grpo.prompts_per_step * grpo.group_size).min(MAX_ROLLOUT_SEQS),
        },
    )
    .map_err(|e| {
        TrainError::new(
            TrainErrorKind::ResourceExhausted,
            format!("starting the rollout engine: {e:#}"),
        )
    })?;
    ctx.info(&format!(
        "GRPO: {} prompts, {} steps of {} prompts × {} samples, {} updates per step, {} trainable \
         parameters",
        data.len(),
        session.total_steps,
        grpo.prompts_per_step,
        grpo.group_size,
        session.updates_per_step,
        session.model.params.trainable_elements()
    ));
    ctx.running();

    let n = data.len() as u64;
    let mut cursor = DataCursor::new(&data, spec.run.seed);
    let loss_config = GrpoLossConfig {
        clip_low: grpo.clip_low,
        clip_high: grpo.clip_high,
        kl_coef: grpo.kl_coef,
    };
    let sampling = RolloutSampling {
        group_size: grpo.group_size,
        temperature: grpo.temperature,
        top_p: grpo.top_p,
        max_response_len: grpo.max_response_len,
    };
    // The engine was built from the weights as loaded or resumed; after that, every step's
    // updates are handed over before the next rollout.
    let mut engine_stale = false;
    while session.state.step < session.total_steps {
        if ctx.is_cancelled() {
            return Ok(RunOutcome::Cancelled);
        }
        let step_start = Instant::now();
        let sync_start = Instant::now();
        if engine_stale {
            engine
                .load_weights(&session.policy_weights()?)
                .map_err(|e| TrainError::internal(format!("updating the rollout engine: {e:#}")))?;
        }
        let sync_seconds = sync_start.elapsed().as_secs_f64();

        let first = session.state.examples_consumed;
        let indices: Vec<u64> = (first..first + grpo.prompts_per_step as u64)
            .filter(|&c| spec.run.epochs == 0 || c < n * spec.run.epochs as u64)
            .collect();
        let prompts: Vec<&RlvrPrompt> = indices.iter().map(|&c| cursor.example(c)).collect();
        let seeds: Vec<u64> = indices
            .iter()
            .map(|&c| rollout_seed(spec.run.seed, c))
            .collect();
        let prompt_ids: Vec<&[u32]> = prompts.iter().map(|p| p.tokens.as_slice()).collect();
        let rolled = engine
            .generate(&prompt_ids, &seeds, &sampling, &|| ctx.is_cancelled())
            .map_err(|e| TrainError::internal(format!("rollout: {e:#}")))?;
        let Some((groups, rollout)) = rolled else {
            return Ok(RunOutcome::Cancelled);
        };

        // Rewards and advantages, group by group.
        let mut samples: Vec<Vec<Sample>> = Vec::with_capacity(groups.len());
        for (prompt, group) in prompts.iter().zip(groups) {
            let rewards: Vec<f64> = group
                .iter()
                .map(|s| rl_reward(&s.text, prompt.label) as f64)
                .collect();
            let advantages = if ablation.zero_advantages {
                vec![0.0; rewards.len()]
            } else {
                group_advantages(&rewards)
            };
            let mut out = Vec::with_capacity(group.len());
            for ((sample, reward), advantage) in group.into_iter().zip(rewards).zip(advantages) {
                let mut tokens = prompt.tokens.clone();
                tokens.extend_from_slice(&sample.tokens);
                let rows = LossRows::completion(&tokens, prompt.tokens.len());
                out.push(Sample {
                    tokens,
                    rows,
                    reward,
                    advantage,
                    engine: sample.engine_log_probs,
                    old: Vec::new(),
                    reference: None,
                });
            }
            samples.push(out);
        }

        // Old (behaviour) and reference log-probs, recomputed by the trainer.
        let score_start = Instant::now();
        let mut entropies = Vec::new();
        let mut on_policy_gap = 0f64;
        for group in samples.iter_mut() {
            for s in group.iter_mut() {
                if ctx.is_cancelled() {
                    return Ok(RunOutcome::Cancelled);
                }
                let scores = sequence_scores(
                    &session.model,
                    &s.tokens,
                    &s.rows,
                    HEAD_CHUNK,
                    grpo.temperature,
                    true,
                )?;
                // The engine reports temperature-1 log-probs: comparable when sampling at 1.
                if grpo.temperature == 1.0 {
                    for (a, b) in scores.log_probs.iter().zip(&s.engine) {
                        on_policy_gap = on_policy_gap.max((a - b).abs() as f64);
                    }
                }
                entropies.extend(scores.entropies.iter().map(|&e| e as f64));
                s.old = scores.log_probs;
                if let Some(reference) = &reference {
                    s.reference = Some(
                        sequence_scores(
                            reference,
                            &s.tokens,
                            &s.rows,
                            HEAD_CHUNK,
                            grpo.temperature,
                            false,
                        )?
                        .log_probs,
                    );
                }
            }
        }
        let score_seconds = score_start.elapsed().as_secs_f64();

        // Mini-batch updates.
        let update_start = Instant::now();
        let mut stats = LossStats::default();
        let (mut grad_norms, mut losses) = (Vec::new(), Vec::new());
        let mut lr = 0.0;
        let mut trained_tokens = 0u64;
        for _ in 0..grpo.update_epochs {
            for mini_batch in samples.chunks(grpo.prompts_per_update) {
                let loss_tokens: usize = mini_batch.iter().flatten().map(|s| s.rows.len()).sum();
                let weight = 1.0 / loss_tokens.max(1) as f64;
                let mut sums = GradAccumulator::new();
                let mut batch_loss = 0.0;
                for s in mini_batch.iter().flatten() {
                    if ctx.is_cancelled() {
                        return Ok(RunOutcome::Cancelled);
                    }
                    let loss = GrpoLoss {
                        config: loss_config,
                        advantage: s.advantage,
                        old: &s.old,
                        reference: s.reference.as_deref(),
                        weight,
                        temperature: grpo.temperature,
                        stats: Default::default(),
                    };
                    let pass = accumulate_sequence(
                        &session.model,
                        &s.tokens,
                        &s.rows,
                        &loss,
                        None,
                        HEAD_CHUNK,
                        &mut sums,
                    )?;
                    batch_loss += pass.loss;
                    trained_tokens += pass.tokens as u64;
                    stats.add(&loss.stats.borrow());
                }
                let (norm, update_lr) = session.apply_update(sums)?;
                grad_norms.push(norm);
                losses.push(batch_loss);
                lr = update_lr;
            }
        }
        engine_stale = true;
        let update_seconds = update_start.elapsed().as_secs_f64();

        session.state.step += 1;
        session.state.examples_consumed += indices.len() as u64;
        session.state.tokens_seen += trained_tokens;
        let loss = mean(losses.iter().copied());
        session.state.loss = Some(loss);
        let metrics = step_metrics(StepFigures {
            samples: &samples,
            rollout,
            stats,
            loss,
            lr,
            grad_norm: mean(grad_norms.iter().copied()),
            entropy: mean(entropies.iter().copied()),
            on_policy_gap,
            trained_tokens,
            seconds: [
                sync_seconds,
                rollout.seconds,
                score_seconds,
                update_seconds,
                step_start.elapsed().as_secs_f64(),
            ],
        });
        let epoch = (session.state.examples_consumed.saturating_sub(1) / n) as u32;
        session.report_step(ctx, epoch, metrics);
        let last = session.state.step == session.total_steps;
        if session.checkpoint_due() || last {
            session.checkpoint(ctx)?;
        }
    }

    Ok(RunOutcome::Completed(session.finish(BTreeMap::new())?))
}

struct StepFigures<'a> {
    samples: &'a [Vec<Sample>],
    rollout: RolloutStats,
    stats: LossStats,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    entropy: f64,
    on_policy_gap: f64,
    trained_tokens: u64,
    /// Weight sync, rollout, scoring (old + reference log-probs), updates, whole step.
    seconds: [f64; 5],
}

/// The per-step metrics a GRPO job reports (veRL's names where it has one, in our snake case).
fn step_metrics(f: StepFigures) -> BTreeMap<String, f64> {
    let all: Vec<&Sample> = f.samples.iter().flatten().collect();
    let rewards: Vec<f64> = all.iter().map(|s| s.reward).collect();
    let reward_mean = mean(rewards.iter().copied());
    let reward_std = if rewards.len() > 1 {
        (rewards
            .iter()
            .map(|r| (r - reward_mean).powi(2))
            .sum::<f64>()
            / (rewards.len() - 1) as f64)
            .sqrt()
    } else {
        0.0
    };
    let lengths: Vec<f64> = all.iter().map(|s| s.rows.len() as f64).collect();
    let flat_groups = f
        .samples
        .iter()
        .filter(|g| g.windows(2).all(|w| w[0].reward == w[1].reward))
        .count();
    let tokens = f.stats.tokens.max(1) as f64;
    let [sync, rollout, score, update, total] = f.seconds;
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_string(), v);
    };
    put("loss", f.loss);
    put("reward_mean", reward_mean);
    put("reward_std", reward_std);
    put(
        "accuracy",
        mean(rewards.iter().map(|&r| if r > 0.0 { 1.0 } else { 0.0 })),
    );
    put("kl", f.stats.kl / tokens);
    put("policy_loss", f.stats.policy_loss / tokens);
    put("clip_fraction", f.stats.clipped as f64 / tokens);
    put("ratio_mean", f.stats.ratio / tokens);
    put("entropy", f.entropy);
    put("response_length_mean", mean(lengths.iter().copied()));
    put(
        "response_length_max",
        lengths.iter().copied().fold(0.0, f64::max),
    );
    put(
        "flat_group_fraction",
        flat_groups as f64 / f.samples.len().max(1) as f64,
    );
    put("grad_norm", f.grad_norm);
    put("lr", f.lr);
    put(
        "rollout_tokens_per_s",
        f.rollout.generated_tokens as f64 / rollout.max(1e-9),
    );
    put(
        "trainer_tokens_per_s",
        f.trained_tokens as f64 / update.max(1e-9),
    );
    put("rollout_logprob_max_abs_diff", f.on_policy_gap);
    put("weight_sync_seconds", sync);
    put("rollout_seconds", rollout);
    put("score_seconds", score);
    put("update_seconds", update);
    put("step_seconds", total);
    m
}
