//! Decides, every step, which sequences run and how many of their tokens: a token budget shared by
//! decode tokens (first, so long prompts never starve generation) and chunked prefill, at most
//! `max_num_seqs` sequences, and preemption of the youngest sequence when KV blocks run out.

use super::block_manager::{BlockManager, SeqId};
use super::fair_queue::FairQueue;
use super::request::ClientId;
use super::request::FinishReason;
use super::sequence::Sequence;
use crate::model::BlockId;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens (decode + prefill) per forward step.
    pub max_num_batched_tokens: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub id: SeqId,
    /// Tokens of this sequence computed in this step, starting at its `num_computed`.
    pub num_tokens: usize,
}

#[derive(Debug, Default)]
pub struct Schedule {
    pub scheduled: Vec<Scheduled>,
    /// Block copies the KV cache must perform before the step (copy-on-write).
    pub copies: Vec<(BlockId, BlockId)>,
    pub preempted: Vec<SeqId>,
    /// Sequences that can never fit the KV pool, to be finished by the caller.
    pub rejected: Vec<(SeqId, FinishReason)>,
    /// Prompt tokens found in the prefix cache at admissions in this step.
    pub prefix_hit_tokens: usize,
    pub prefix_query_tokens: usize,
}

pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    /// Taking turns between clients; preempted sequences first.
    waiting: FairQueue,
    /// In admission order: the last one is the youngest and the first to be preempted.
    running: Vec<SeqId>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, blocks: BlockManager) -> Self {
        assert!(config.max_num_batched_tokens > 0 && config.max_num_seqs > 0);
        Self {
            config,
            blocks,
            waiting: FairQueue::default(),
            running: Vec::new(),
        }
    }

    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    pub fn blocks_mut(&mut self) -> &mut BlockManager {
        &mut self.blocks
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn enqueue(&mut self, id: SeqId, client: &ClientId) {
        self.waiting.push_back(id, client);
    }

    /// Starts `child` as a running sequence sharing all of `parent`'s blocks (copy-on-write).
    pub fn adopt_fork(&mut self, parent: SeqId, child: SeqId) {
        self.blocks.fork(parent, child);
        self.running.push(child);
    }

    /// Forgets a sequence wherever it is and returns its blocks.
    pub fn remove(&mut self, id: SeqId) {
        self.waiting.remove(id);
        self.running.retain(|&s| s != id);
        self.blocks.free(id);
    }

    fn preempt(&mut self, id: SeqId, seqs: &mut HashMap<SeqId, Sequence>, out: &mut Schedule) {
        self.running.retain(|&s| s != id);
        self.blocks.free(id);
        let seq = seqs.get_mut(&id).expect("running sequence exists");
        seq.num_computed = 0;
        seq.preemptions += 1;
        self.waiting.push_front(id);
        out.preempted.push(id);
    }

    /// Whether a running sequence that has not yet computed it shares `tokens`' first uncached
    /// block (and everything before it), so waiting one step turns that block into a cache hit.
    fn prefix_in_progress(
        &self,
        tokens: &[u32],
        cached: usize,
        seqs: &HashMap<SeqId, Sequence>,
    ) -> bool {
        let through = cached + self.blocks.block_size();
        tokens.len() >= through
            && self.running.iter().any(|other| {
                let other = &seqs[other];
                other.num_computed < through
                    && other.tokens.len() >= through
                    && other.tokens[..through] == tokens[..through]
            })
    }

    pub fn schedule(&mut self, seqs: &mut HashMap<SeqId, Sequence>) -> Schedule {
        let mut out = Schedule::default();
        let mut budget = self.config.max_num_batched_tokens;

        // Running sequences: decoders first, then unfinished prefills, oldest first within each.
        let mut order: Vec<SeqId> = self.running.clone();
        order.sort_by_key(|id| !seqs[id].is_decoding());
        for id in order {
            if budget == 0 {
                break;
            }
            if !self.running.contains(&id) {
                continue; // preempted earlier in this step
            }
            let seq = &seqs[&id];
            let (start, n) = (seq.num_computed, seq.num_uncomputed().min(budget));
            loop {
                match self.blocks.grow(id, start, start + n) {
                    Ok(copies) => {
                        out.copies.extend(copies);
                        out.scheduled.push(Scheduled { id, num_tokens: n });
                        budget -= n;
                        break;
                    }
                    Err(_) => {
                        let scheduled: Vec<SeqId> = out.scheduled.iter().map(|s| s.id).collect();
                        let victim = self
                            .running
                            .iter()
                            .rev()
                            .copied()
                            .find(|v| *v != id && !scheduled.contains(v));
                        match victim {
                            Some(v) => self.preempt(v, seqs, &mut out),
                            None => {
                                self.preempt(id, seqs, &mut out);
                                break;
                            }
                        }
                    }
                }
            }
        }

        // Admissions, clients taking turns (first come first served within a client): a request that
        // does not fit blocks those behind it.
        while budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(id) = self.waiting.front() else {
                break;
            };
            let prefix = self.blocks.match_prefix(&seqs[&id].tokens);
            let cached = prefix.cached_tokens(self.blocks.block_size());
            if self.prefix_in_progress(&seqs[&id].tokens, cached, seqs) {
                // Its next block is being computed by a running prefill: admitted next step, it
                // finds the block cached instead of computing it again (16 judgments arriving at
                // once share a ~650-token system prompt).
                break;
            }
            let seq = seqs.get_mut(&id).expect("waiting sequence exists");
            let n = (seq.tokens.len() - cached).min(budget);
            if self.blocks.admit(id, &prefix, cached + n).is_err() {
                let whole = seq.tokens.len().div_ceil(self.blocks.block_size());
                if self.running.is_empty()
                    && out.scheduled.is_empty()
                    && whole > self.blocks.num_blocks()
                {
                    // Even an empty pool could not hold it: finish rather than wait forever.
                    self.waiting.pop_front();
                    out.rejected.push((id, FinishReason::Length));
                    continue;
                }
                break;
            }
            self.waiting.pop_front();
            seq.num_computed = cached;
            seq.cached_tokens = cached;
            seq.first_scheduled
                .get_or_insert_with(std::time::Instant::now);
            out.prefix_hit_tokens += cached;
            out.prefix_query_tokens += seq.tokens.len();
            self.running.push(id);
            out.scheduled.push(Scheduled { id, num_tokens: n });
            budget -= n;
        }
        out
    }
}
