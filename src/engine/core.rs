//! The engine loop body: admit requests, schedule a step, run the batched forward, sample, report.
//! Synchronous and single-owner; [`super::handle`] runs it on its own thread.

use super::block_manager::{BlockManager, SeqId};
use super::cache_plan;
use super::fault::Injection;
use super::request::{ClientId, EngineEvent, FinishReason, GenerateRequest};
use super::scheduler::{Schedule, Scheduler, SchedulerConfig};
use super::sequence::{Progress, Sequence};
use super::stats::EngineStats;
use super::token_sampler::{self, Draw, TokenSampler};
use super::token_text::TokenText;
use crate::model::{AttentionBatch, ForwardBatch, PagedAttention, Qwen2, SequenceSpan};
use anyhow::Result;
use candle_core::Tensor;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks per layer. `None`: as many as `kv_cache_bytes` allows.
    pub num_blocks: Option<usize>,
    pub kv_cache_bytes: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// Longest prompt + generation; `None`: the model's context length.
    pub max_model_len: Option<usize>,
    /// Requests waiting or running before new ones are refused.
    pub max_pending_requests: usize,
    /// Of those, the most one client may hold (`None`: three quarters of them), so one client
    /// cannot fill the queue for everyone.
    pub max_pending_per_client: Option<usize>,
    /// Seed for requests that name none.
    pub seed: u64,
    /// On a GPU, the share of device memory the process may fill; the KV cache gets what the weights
    /// and a reserve for activations leave (unless `num_blocks` is set).
    pub gpu_memory_fraction: f64,
    /// Send the engine's counters and gauges to Prometheus. Off for engines that are not the
    /// served one (GRPO rollouts), whose numbers would mix with the judge's.
    pub export_metrics: bool,
    /// Element type of the KV cache. `None`: for GGUF models f16 on the CPU and bf16 on a GPU
    /// (their weights are already far coarser than that rounding of K/V), else the model's own
    /// dtype, so dense f32 models stay exact against f32 references (training).
    pub kv_cache_dtype: Option<crate::model::attention::KvCacheDtype>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_blocks: None,
            kv_cache_bytes: 1 << 30,
            max_num_seqs: 64,
            max_num_batched_tokens: 512,
            max_model_len: None,
            max_pending_requests: 4096,
            max_pending_per_client: None,
            seed: 0,
            gpu_memory_fraction: 0.90,
            export_metrics: true,
            kv_cache_dtype: None,
        }
    }
}

/// A sample of a group waiting for the group's first sequence to finish the shared prompt.
struct PendingFork {
    id: SeqId,
    request: GenerateRequest,
    events: UnboundedSender<EngineEvent>,
}

pub struct EngineCore {
    pending_forks: HashMap<SeqId, Vec<PendingFork>>,
    model: Qwen2,
    attention: Box<dyn PagedAttention>,
    sampler: Box<dyn TokenSampler>,
    /// Turns each sequence's tokens into text on this thread (stop strings and text probes act on
    /// the step they appear).
    text: TokenText,
    eos_ids: Vec<u32>,
    scheduler: Scheduler,
    seqs: HashMap<SeqId, Sequence>,
    next_id: SeqId,
    max_model_len: usize,
    seed: u64,
    stats: Arc<EngineStats>,
    /// A test fault (see `fault::Injection`); `None` in production.
    injection: Option<Injection>,
}

impl EngineCore {
    pub fn new(
        model: Qwen2,
        tokenizer: Arc<Tokenizer>,
        eos_ids: Vec<u32>,
        config: &EngineConfig,
    ) -> Result<Self> {
        let cfg = model.config().clone();
        let (attention, plan) = cache_plan::build(&model, config)?;
        let shape = plan.shape;
        let max_model_len = cache_plan::max_model_len(&cfg, config);
        tracing::info!(
            device = ?model.device(),
            blocks = shape.num_blocks,
            block_size = shape.block_size,
            tokens = plan.tokens(),
            kv_cache_gib = format!("{:.2}", cache_plan::gib(plan.bytes())),
            "KV cache ready"
        );
        if let Some((free, total)) = plan.device_memory {
            tracing::info!(
                free_after_weights_gib = format!("{:.2}", cache_plan::gib(free)),
                total_gib = format!("{:.2}", cache_plan::gib(total)),
                activation_reserve_gib = format!("{:.2}", cache_plan::gib(plan.activation_reserve)),
                "GPU memory at KV cache sizing"
            );
        }
        Ok(Self {
            sampler: token_sampler::for_device(model.device()),
            model,
            attention,
            text: TokenText::new(tokenizer),
            eos_ids,
            scheduler: Scheduler::new(
                SchedulerConfig {
                    max_num_batched_tokens: config.max_num_batched_tokens,
                    max_num_seqs: config.max_num_seqs,
                },
                BlockManager::new(shape.num_blocks, shape.block_size),
            ),
            seqs: HashMap::new(),
            pending_forks: HashMap::new(),
            next_id: 0,
            max_model_len,
            seed: config.seed,
            stats: Arc::new(EngineStats {
                quiet: !config.export_metrics,
                ..EngineStats::default()
            }),
            injection: Injection::from_env(),
        })
    }

    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    pub fn model(&self) -> &Qwen2 {
        &self.model
    }

    /// Serves `model` from the next step on (GRPO: the policy after an optimizer update) and returns
    /// the old one. Only between requests: the KV cache and every cached prefix were computed by the
    /// old weights, so the prefix cache is emptied. The new model must have the old one's shape,
    /// dtype and device (the cache was planned for it).
    pub fn replace_model(&mut self, model: Qwen2) -> Result<Qwen2> {
        if self.has_work() || !self.seqs.is_empty() {
            anyhow::bail!("the engine's weights can only be replaced while it is idle");
        }
        let (old, new) = (self.model.config(), model.config());
        let same_shape = old.num_hidden_layers == new.num_hidden_layers
            && old.kv_dim() == new.kv_dim()
            && old.vocab_size == new.vocab_size
            && old.hidden_size == new.hidden_size;
        if !same_shape
            || self.model.dtype() != model.dtype()
            || !self.model.device().same_device(model.device())
        {
            anyhow::bail!(
                "replacement weights differ in shape, dtype or device from the served ones"
            );
        }
        self.scheduler.blocks_mut().forget_prefixes();
        Ok(std::mem::replace(&mut self.model, model))
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn has_work(&self) -> bool {
        !self.scheduler.is_idle()
    }

    /// Queues a validated request of the anonymous client; its events go to `events`.
    pub fn add_request(
        &mut self,
        request: GenerateRequest,
        events: UnboundedSender<EngineEvent>,
    ) -> SeqId {
        self.add_request_for(&ClientId::default(), request, events)
    }

    /// Queues a validated request of `client`, which takes turns with other clients' requests.
    pub fn add_request_for(
        &mut self,
        client: &ClientId,
        request: GenerateRequest,
        events: UnboundedSender<EngineEvent>,
    ) -> SeqId {
        let id = self.next_id;
        self.next_id += 1;
        // Requests without a seed still get a reproducible stream per (engine seed, request number).
        let default_seed = self.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut seq = Sequence::new(id, request, &self.eos_ids, default_seed, events);
        seq.client = client.clone();
        self.seqs.insert(id, seq);
        self.scheduler.enqueue(id, client);
        self.stats
            .set_queue(self.scheduler.num_running(), self.scheduler.num_waiting());
        id
    }

    /// `n` samples of one prompt (GRPO rollouts, both-orders judging). The prompt is computed once:
    /// when the first sample's prefill completes, the others fork its KV blocks (shared, copy-on-write)
    /// and each draws from the same first distribution with its own seed (`seed + i`).
    pub fn add_group(
        &mut self,
        request: GenerateRequest,
        events: Vec<UnboundedSender<EngineEvent>>,
    ) -> Vec<SeqId> {
        let mut events = events.into_iter();
        let Some(first) = events.next() else {
            return Vec::new();
        };
        let base_seed = request.sampling.seed;
        let parent = self.add_request(request.clone(), first);
        let mut ids = vec![parent];
        let mut children = Vec::new();
        for (i, tx) in events.enumerate() {
            let id = self.next_id;
            self.next_id += 1;
            let mut child = request.clone();
            child.sampling.seed = Some(match base_seed {
                Some(s) => s.wrapping_add(i as u64 + 1),
                None => self.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            });
            children.push(PendingFork {
                id,
                request: child,
                events: tx,
            });
            ids.push(id);
        }
        if !children.is_empty() {
            self.pending_forks.insert(parent, children);
        }
        ids
    }

    fn finish(&mut self, id: SeqId, reason: FinishReason) {
        // Siblings still waiting for this sequence's prefill run on their own instead (their prompt
        // blocks will mostly come from the prefix cache).
        let forks = self.pending_forks.remove(&id).unwrap_or_default();
        // Siblings inherit the client of the request they were sampled for.
        let client = if forks.is_empty() {
            ClientId::default()
        } else {
            self.seqs
                .get(&id)
                .map(|s| s.client.clone())
                .unwrap_or_default()
        };
        for child in forks {
            let mut seq = Sequence::new(child.id, child.request, &self.eos_ids, 0, child.events);
            seq.client = client.clone();
            self.seqs.insert(child.id, seq);
            self.scheduler.enqueue(child.id, &client);
        }
        self.scheduler.remove(id);
        if let Some(mut seq) = self.seqs.remove(&id) {
            seq.finish(reason, &self.text);
            self.stats.record_finish(reason);
        }
    }

    /// Stops sequences whose caller dropped the event stream and frees their blocks.
    fn reap_cancelled(&mut self) {
        for pending in self.pending_forks.values_mut() {
            pending.retain(|c| !c.events.is_closed());
        }
        let gone: Vec<SeqId> = self
            .seqs
            .values()
            .filter(|s| s.is_cancelled())
            .map(|s| s.id)
            .collect();
        for id in gone {
            self.finish(id, FinishReason::Cancelled);
        }
    }

    /// Runs one engine step. Returns the number of tokens that went through the model.
    pub fn step(&mut self) -> Result<usize> {
        self.reap_cancelled();
        let schedule = self.scheduler.schedule(&mut self.seqs);
        for &(id, reason) in &schedule.rejected {
            self.finish(id, reason);
        }
        self.stats.record_schedule(&schedule);
        if schedule.scheduled.is_empty() {
            self.stats
                .set_queue(self.scheduler.num_running(), self.scheduler.num_waiting());
            self.stats
                .set_kv_usage(self.scheduler.blocks().pool().usage());
            return Ok(0);
        }
        let started = Instant::now();
        let batch = self.build_batch(&schedule);
        let result = self
            .attention
            .copy_blocks(&schedule.copies)
            .and_then(|_| self.model.forward(&batch, self.attention.as_mut()))
            .map_err(anyhow::Error::from)
            .and_then(|logits| match &self.injection {
                Some(injection) => injection.fire().map(|_| logits),
                None => Ok(logits),
            });
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // The cache contents of this step are unknown: fail its sequences, keep the rest.
                tracing::error!(error = %e, "forward step failed");
                let ids: Vec<SeqId> = schedule.scheduled.iter().map(|s| s.id).collect();
                self.fail_all(&ids, &format!("engine step failed: {e}"));
                return Err(e);
            }
        };

        // Every sequence that samples this step, with the logits row it reads. A group's forked
        // samples read their parent's row and take over its progress before anyone's token is added.
        let mut samplers: Vec<(SeqId, usize)> = Vec::new();
        let mut forked = Vec::new();
        for s in &schedule.scheduled {
            let seq = self.seqs.get_mut(&s.id).expect("scheduled sequence exists");
            seq.num_computed += s.num_tokens;
            self.scheduler
                .blocks_mut()
                .register_computed(s.id, &seq.tokens, seq.num_computed);
            if seq.num_uncomputed() == 0 {
                let row = samplers.len();
                samplers.push((s.id, row));
                for child in self.pending_forks.remove(&s.id).unwrap_or_default() {
                    let mut c =
                        Sequence::new(child.id, child.request, &self.eos_ids, 0, child.events);
                    c.adopt_progress(seq);
                    forked.push((s.id, c, row));
                }
            }
        }
        for (parent, child, row) in forked {
            self.scheduler.adopt_fork(parent, child.id);
            samplers.push((child.id, row));
            self.seqs.insert(child.id, child);
        }
        let progress = match self.choose_tokens(&logits, &samplers) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "sampling failed");
                let ids: Vec<SeqId> = samplers.iter().map(|&(id, _)| id).collect();
                self.fail_all(&ids, &format!("sampling failed: {e}"));
                return Err(e);
            }
        };
        let sampled = samplers.len();
        let finished: Vec<(SeqId, FinishReason)> = samplers
            .iter()
            .zip(progress)
            .filter_map(|(&(id, _), p)| match p {
                Progress::Finished(reason) => Some((id, reason)),
                Progress::Continue => None,
            })
            .collect();
        for (id, reason) in finished {
            self.finish(id, reason);
        }
        self.stats
            .record_step(batch.tokens.len(), sampled, started.elapsed());
        self.stats
            .set_queue(self.scheduler.num_running(), self.scheduler.num_waiting());
        self.stats
            .set_kv_usage(self.scheduler.blocks().pool().usage());
        Ok(batch.tokens.len())
    }

    /// Ends every request (queued, running, or a group sample waiting for its prompt) with an error
    /// event: the engine is about to stop for good.
    pub fn fail_everything(&mut self, message: &str) {
        for fork in self.pending_forks.drain().flat_map(|(_, forks)| forks) {
            let _ = fork.events.send(EngineEvent::Error(message.to_string()));
        }
        let ids: Vec<SeqId> = self.seqs.keys().copied().collect();
        self.fail_all(&ids, message);
    }

    /// Whether the model runs on a GPU, where a failed step leaves the device in an unknown state.
    pub fn runs_on_gpu(&self) -> bool {
        !self.model.device().is_cpu()
    }

    /// Ends `ids` with an error event and frees their blocks; the rest of the batch is unaffected.
    fn fail_all(&mut self, ids: &[SeqId], message: &str) {
        for &id in ids {
            if let Some(seq) = self.seqs.remove(&id) {
                seq.fail(message.to_string());
            }
            self.scheduler.remove(id);
        }
    }

    /// Picks each sampler's next token from `logits` (`[rows, vocab]`) and reports it.
    fn choose_tokens(
        &mut self,
        logits: &Tensor,
        samplers: &[(SeqId, usize)],
    ) -> Result<Vec<Progress>> {
        let draws: Vec<Draw> = samplers
            .iter()
            .map(|&(id, row)| {
                let seq = self.seqs.get_mut(&id).expect("sampling sequence exists");
                Draw {
                    row,
                    temperature: seq.params.temperature,
                    top_k: seq.params.top_k,
                    top_p: seq.params.top_p,
                    uniform: seq.draw_uniform(),
                    logprob_tokens: if seq.wants_logprobs() {
                        seq.probed_tokens()
                    } else {
                        Vec::new()
                    },
                    logprob_of_draw: seq.params.logprobs,
                }
            })
            .collect();
        let drawn = self.sampler.sample(logits, &draws)?;
        Ok(samplers
            .iter()
            .zip(drawn)
            .map(|(&(id, _), drawn)| {
                let seq = self.seqs.get_mut(&id).expect("sampling sequence exists");
                seq.accept_token(
                    drawn.token,
                    &|t| drawn.logprob(t),
                    &self.text,
                    self.max_model_len,
                )
            })
            .collect())
    }

    fn build_batch(&self, schedule: &Schedule) -> ForwardBatch {
        let blocks = self.scheduler.blocks();
        let mut batch = ForwardBatch {
            attention: AttentionBatch::default(),
            ..ForwardBatch::default()
        };
        for s in &schedule.scheduled {
            let seq = &self.seqs[&s.id];
            let start = seq.num_computed;
            let query_start = batch.tokens.len();
            for pos in start..start + s.num_tokens {
                batch.tokens.push(seq.tokens[pos]);
                batch.positions.push(pos as u32);
                batch.attention.slot_mapping.push(blocks.slot(s.id, pos));
            }
            batch.attention.sequences.push(SequenceSpan {
                query_start,
                query_len: s.num_tokens,
                context_len: start + s.num_tokens,
                block_table: blocks.block_table(s.id).to_vec(),
            });
            if start + s.num_tokens == seq.tokens.len() {
                batch.logit_rows.push((batch.tokens.len() - 1) as u32);
            }
        }
        batch
    }
}
