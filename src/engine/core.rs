//! The engine loop body: admit requests, schedule a step, run the batched forward, sample, report.
//! Synchronous and single-owner; [`super::handle`] runs it on its own thread.

use super::block_manager::{BlockManager, SeqId};
use super::request::{EngineEvent, FinishReason, GenerateRequest};
use super::scheduler::{Schedule, Scheduler, SchedulerConfig};
use super::sequence::{Progress, Sequence};
use super::stats::EngineStats;
use crate::model::attention::cpu::CpuPagedAttention;
use crate::model::{AttentionBatch, CacheShape, ForwardBatch, PagedAttention, Qwen2, SequenceSpan};
use anyhow::Result;
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
    /// Seed for requests that name none.
    pub seed: u64,
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
            seed: 0,
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
    tokenizer: Arc<Tokenizer>,
    eos_ids: Vec<u32>,
    scheduler: Scheduler,
    seqs: HashMap<SeqId, Sequence>,
    next_id: SeqId,
    max_model_len: usize,
    seed: u64,
    stats: Arc<EngineStats>,
}

impl EngineCore {
    pub fn new(
        model: Qwen2,
        tokenizer: Arc<Tokenizer>,
        eos_ids: Vec<u32>,
        config: &EngineConfig,
    ) -> Result<Self> {
        let cfg = model.config().clone();
        let mut shape = CacheShape {
            num_layers: cfg.num_hidden_layers,
            num_blocks: 0,
            block_size: config.block_size,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim(),
        };
        shape.num_blocks = config.num_blocks.unwrap_or_else(|| {
            config.kv_cache_bytes / (CpuPagedAttention::bytes_per_token(&shape) * config.block_size)
        });
        anyhow::ensure!(shape.num_blocks > 0, "the KV cache budget holds no block");
        let attention: Box<dyn PagedAttention> = if model.device().is_cpu() {
            Box::new(CpuPagedAttention::new(shape, cfg.num_attention_heads))
        } else {
            anyhow::bail!(
                "no paged-attention backend for {:?} in this build",
                model.device()
            )
        };
        let max_model_len = config
            .max_model_len
            .unwrap_or(cfg.max_position_embeddings)
            .min(cfg.max_position_embeddings);
        tracing::info!(
            blocks = shape.num_blocks,
            block_size = shape.block_size,
            tokens = shape.num_blocks * shape.block_size,
            "KV cache ready"
        );
        Ok(Self {
            model,
            attention,
            tokenizer,
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
            stats: Arc::new(EngineStats::default()),
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

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn has_work(&self) -> bool {
        !self.scheduler.is_idle()
    }

    /// Queues a validated request; its events go to `events`.
    pub fn add_request(
        &mut self,
        request: GenerateRequest,
        events: UnboundedSender<EngineEvent>,
    ) -> SeqId {
        let id = self.next_id;
        self.next_id += 1;
        // Requests without a seed still get a reproducible stream per (engine seed, request number).
        let default_seed = self.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let seq = Sequence::new(id, request, &self.eos_ids, default_seed, events);
        self.seqs.insert(id, seq);
        self.scheduler.enqueue(id);
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
        for child in self.pending_forks.remove(&id).unwrap_or_default() {
            let seq = Sequence::new(child.id, child.request, &self.eos_ids, 0, child.events);
            self.seqs.insert(child.id, seq);
            self.scheduler.enqueue(child.id);
        }
        self.scheduler.remove(id);
        if let Some(mut seq) = self.seqs.remove(&id) {
            seq.finish(reason);
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
            .and_then(|logits| logits.to_vec2::<f32>());
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // The cache contents of this step are unknown: fail its sequences, keep the rest.
                tracing::error!(error = %e, "forward step failed");
                for s in &schedule.scheduled {
                    if let Some(seq) = self.seqs.get(&s.id) {
                        seq.fail(format!("engine step failed: {e}"));
                    }
                    self.scheduler.remove(s.id);
                    self.seqs.remove(&s.id);
                }
                return Err(e.into());
            }
        };

        let mut rows = logits.iter();
        let mut finished = Vec::new();
        let mut sampled = 0;
        for s in &schedule.scheduled {
            let seq = self.seqs.get_mut(&s.id).expect("scheduled sequence exists");
            seq.num_computed += s.num_tokens;
            self.scheduler
                .blocks_mut()
                .register_computed(s.id, &seq.tokens, seq.num_computed);
            if seq.num_uncomputed() == 0 {
                let row = rows.next().expect("one logits row per sampling sequence");
                sampled += 1 + self.pending_forks.get(&s.id).map_or(0, Vec::len);
                let mut forked = Vec::new();
                for child in self.pending_forks.remove(&s.id).unwrap_or_default() {
                    let mut c =
                        Sequence::new(child.id, child.request, &self.eos_ids, 0, child.events);
                    c.adopt_progress(seq);
                    forked.push(c);
                }
                if let Progress::Finished(reason) =
                    seq.accept_logits(row, &self.tokenizer, self.max_model_len)
                {
                    finished.push((s.id, reason));
                }
                for mut child in forked {
                    self.scheduler.adopt_fork(s.id, child.id);
                    if let Progress::Finished(reason) =
                        child.accept_logits(row, &self.tokenizer, self.max_model_len)
                    {
                        finished.push((child.id, reason));
                    }
                    self.seqs.insert(child.id, child);
                }
            }
        }
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
