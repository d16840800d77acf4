//! GRPO's rollouts from rmr1's own continuous-batching engine, running the current policy.
//!
//! The trainer drives an [`EngineCore`] directly on its own thread (no engine thread, no channel
//! hop): a rollout submits every prompt as a group of G samples (the prompt computed once, its KV
//! blocks shared copy-on-write by the samples), steps the engine until all finish, and collects the
//! samples. Before the next rollout the trainer hands over the updated weights (LoRA merged into
//! the base, or the full-fine-tuning masters), so every rollout samples the policy as it is after
//! the last optimizer update. The engine forgets its cached prefixes on every swap: they were
//! computed by the old weights.

use crate::engine::{
    EngineConfig, EngineCore, EngineEvent, FinishReason, GenerateRequest, SamplingParams,
};
use crate::model::{ModelTokenizer, Qwen2, Qwen2Config};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// One sampled response.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSample {
    /// Generated ids, the stop token included when there was one.
    pub tokens: Vec<u32>,
    /// The ids decoded with special tokens kept (what upstream's reward reads).
    pub text: String,
    /// The engine's log-probability of each generated id (temperature 1).
    pub engine_log_probs: Vec<f32>,
    pub finish: FinishReason,
}

/// What one rollout cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RolloutStats {
    pub seconds: f64,
    pub generated_tokens: usize,
    /// Tokens that went through the model: prompts (once per group) and every decode step.
    pub forwarded_tokens: usize,
}

/// How rollouts sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutSampling {
    pub group_size: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_response_len: usize,
}

/// How much the rollout engine holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutCapacity {
    pub kv_cache_bytes: usize,
    /// Longest prompt + response.
    pub max_len: usize,
    /// Sequences run at once.
    pub max_num_seqs: usize,
}

pub struct RolloutEngine {
    core: EngineCore,
    /// Decodes samples for the reward, special tokens kept.
    tokenizer: Arc<tokenizers::Tokenizer>,
    config: Qwen2Config,
    dtype: DType,
    device: Device,
}

/// The engine's model over dense HF-named weights (the trainer's view of the policy).
fn build_model(
    weights: &BTreeMap<String, Tensor>,
    config: &Qwen2Config,
    dtype: DType,
    device: &Device,
) -> Result<Qwen2> {
    let tensors: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.detach()))
        .collect();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, device);
    Qwen2::from_var_builder(config, vb).context("building the rollout engine's model")
}

impl RolloutEngine {
    /// An engine over `weights` (activations in `dtype` on `device`).
    pub fn new(
        weights: &BTreeMap<String, Tensor>,
        config: &Qwen2Config,
        tokenizer: &ModelTokenizer,
        (dtype, device): (DType, &Device),
        capacity: RolloutCapacity,
    ) -> Result<Self> {
        let model = build_model(weights, config, dtype, device)?;
        let engine_config = EngineConfig {
            kv_cache_bytes: capacity.kv_cache_bytes,
            max_num_seqs: capacity.max_num_seqs.max(1),
            max_model_len: Some(capacity.max_len),
            max_pending_requests: usize::MAX,
            // The judge's metrics are the served engine's alone; GRPO reports its own.
            export_metrics: false,
            ..EngineConfig::default()
        };
        let inner = Arc::new(tokenizer.inner().clone());
        let core = EngineCore::new(
            model,
            inner.clone(),
            tokenizer.eos_ids().to_vec(),
            &engine_config,
        )?;
        Ok(Self {
            core,
            tokenizer: inner,
            config: config.clone(),
            dtype,
            device: device.clone(),
        })
    }

    /// Serves `weights` from the next rollout on.
    pub fn load_weights(&mut self, weights: &BTreeMap<String, Tensor>) -> Result<()> {
        let model = build_model(weights, &self.config, self.dtype, &self.device)?;
        self.core.replace_model(model)?;
        Ok(())
    }

    /// The model the engine serves now.
    pub fn model(&self) -> &Qwen2 {
        self.core.model()
    }

    pub fn max_model_len(&self) -> usize {
        self.core.max_model_len()
    }

    /// `sampling.group_size` samples of each prompt; group `i` draws from seed `seeds[i]` (its
    /// samples from `seeds[i] + j`). Returns `None` when `cancelled` said so between steps.
    pub fn generate(
        &mut self,
        prompts: &[&[u32]],
        seeds: &[u64],
        sampling: &RolloutSampling,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<(Vec<Vec<RolloutSample>>, RolloutStats)>> {
        let started = Instant::now();
        let mut receivers: Vec<Vec<UnboundedReceiver<EngineEvent>>> = Vec::new();
        for (prompt, &seed) in prompts.iter().zip(seeds) {
            let room = self.max_model_len().saturating_sub(prompt.len());
            if room == 0 {
                bail!(
                    "a prompt of {} tokens leaves no room to generate in {} positions",
                    prompt.len(),
                    self.max_model_len()
                );
            }
            let request = GenerateRequest {
                prompt_tokens: prompt.to_vec(),
                sampling: SamplingParams {
                    temperature: sampling.temperature as f32,
                    top_p: sampling.top_p as f32,
                    seed: Some(seed),
                    max_new_tokens: sampling.max_response_len.min(room),
                    logprobs: true,
                    ..SamplingParams::default()
                },
            };
            let (senders, group): (Vec<_>, Vec<_>) = (0..sampling.group_size)
                .map(|_| unbounded_channel())
                .unzip();
            self.core.add_group(request, senders);
            receivers.push(group);
        }
        let mut stats = RolloutStats::default();
        let stats_now = self.core.stats();
        let forwarded_before = stats_now.step_tokens.load(Ordering::Relaxed);
        while self.core.has_work() {
            if cancelled() {
                // Dropping the receivers cancels every sequence; step until the engine has freed
                // them, so it is idle for the next weight swap.
                drop(receivers);
                while self.core.has_work() {
                    self.core.step()?;
                }
                return Ok(None);
            }
            self.core.step()?;
        }
        stats.forwarded_tokens = stats_now
            .step_tokens
            .load(Ordering::Relaxed)
            .saturating_sub(forwarded_before) as usize;

        let mut groups = Vec::with_capacity(receivers.len());
        for group in receivers {
            let mut samples = Vec::with_capacity(group.len());
            for mut rx in group {
                let mut log_probs = Vec::new();
                let mut finished = None;
                while let Ok(event) = rx.try_recv() {
                    match event {
                        EngineEvent::Token(t) => log_probs.push(t.logprob.unwrap_or(f32::NAN)),
                        EngineEvent::Finished(f) => finished = Some(f),
                        EngineEvent::Error(e) => bail!("a rollout failed: {e}"),
                    }
                }
                let f = finished.context("a rollout sample ended without finishing")?;
                stats.generated_tokens += f.token_ids.len();
                samples.push(RolloutSample {
                    text: self
                        .tokenizer
                        .decode(&f.token_ids, false)
                        .map_err(|e| anyhow::anyhow!("detokenizing a rollout: {e}"))?,
                    tokens: f.token_ids,
                    engine_log_probs: log_probs,
                    finish: f.reason,
                });
            }
            groups.push(samples);
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(Some((groups, stats)))
    }
}
