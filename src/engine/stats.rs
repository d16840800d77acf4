//! Counters and gauges the engine keeps about itself, readable from any thread without locks.
//! Benchmarks and tests read these; the engine thread is the only writer. Each update is also
//! sent to the `metrics` facade (Prometheus, see `crate::metrics`), a no-op when none is installed.

use super::request::FinishReason;
use super::scheduler::Schedule;
use crate::metrics as m;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct EngineStats {
    pub steps: AtomicU64,
    pub step_tokens: AtomicU64,
    pub step_micros: AtomicU64,
    pub preemptions: AtomicU64,
    pub prefix_query_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub finished_stop: AtomicU64,
    pub finished_length: AtomicU64,
    pub cancelled: AtomicU64,
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    /// KV usage as parts per million of the pool.
    pub kv_usage_ppm: AtomicU64,
    /// Keep the counts here only, sending nothing to the `metrics` facade: an engine that is not
    /// the served one (GRPO's rollout engine) must not move the judge's gauges.
    pub quiet: bool,
}

impl EngineStats {
    pub fn record_schedule(&self, s: &Schedule) {
        self.preemptions
            .fetch_add(s.preempted.len() as u64, Relaxed);
        self.prefix_query_tokens
            .fetch_add(s.prefix_query_tokens as u64, Relaxed);
        self.prefix_hit_tokens
            .fetch_add(s.prefix_hit_tokens as u64, Relaxed);
        if self.quiet {
            return;
        }
        metrics::counter!(m::PREEMPTIONS).increment(s.preempted.len() as u64);
        metrics::counter!(m::PREFIX_CACHE_QUERIES).increment(s.prefix_query_tokens as u64);
        metrics::counter!(m::PREFIX_CACHE_HITS).increment(s.prefix_hit_tokens as u64);
    }

    /// `sampled`: tokens generated in the step; the other tokens were prefill (prompts, or
    /// recomputation after preemption).
    pub fn record_step(&self, tokens: usize, sampled: usize, took: Duration) {
        self.steps.fetch_add(1, Relaxed);
        self.step_tokens.fetch_add(tokens as u64, Relaxed);
        self.step_micros.fetch_add(took.as_micros() as u64, Relaxed);
        if self.quiet {
            return;
        }
        metrics::histogram!(m::STEP_TIME).record(took.as_secs_f64());
        metrics::histogram!(m::STEP_TOKENS).record(tokens as f64);
        metrics::counter!(m::GENERATION_TOKENS).increment(sampled as u64);
        let decode_inputs = sampled.min(tokens);
        metrics::counter!(m::PROMPT_TOKENS).increment((tokens - decode_inputs) as u64);
    }

    pub fn record_finish(&self, reason: FinishReason) {
        match reason {
            FinishReason::Stop => &self.finished_stop,
            FinishReason::Length => &self.finished_length,
            FinishReason::Cancelled => &self.cancelled,
        }
        .fetch_add(1, Relaxed);
        if self.quiet {
            return;
        }
        metrics::counter!(m::REQUEST_SUCCESS, "finished_reason" => reason.as_str()).increment(1);
    }

    pub fn set_queue(&self, running: usize, waiting: usize) {
        self.running.store(running as u64, Relaxed);
        self.waiting.store(waiting as u64, Relaxed);
        if self.quiet {
            return;
        }
        metrics::gauge!(m::REQUESTS_RUNNING).set(running as f64);
        metrics::gauge!(m::REQUESTS_WAITING).set(waiting as f64);
    }

    pub fn set_kv_usage(&self, fraction: f64) {
        self.kv_usage_ppm
            .store((fraction * 1e6).round() as u64, Relaxed);
        if self.quiet {
            return;
        }
        metrics::gauge!(m::KV_CACHE_USAGE).set(fraction);
    }

    pub fn kv_usage(&self) -> f64 {
        self.kv_usage_ppm.load(Relaxed) as f64 / 1e6
    }
}
