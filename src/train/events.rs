//! Live delivery of job events. The store is the one source of events; this only says "job X has
//! events up to N" to whoever watches X, and watchers re-read the store. A watcher subscribes
//! before its first read, so an event written between its replay and its wait still wakes it:
//! nothing is lost or duplicated between the persisted part and the live part.
//!
//! Every event is announced here once, which makes this the place that logs events (with the
//! `job_id` field) and keeps the training metrics.

use super::job::JobState;
use super::record::{EventKind, JobEvent, LogLevel};
use super::store::{JobStore, StoreError};
use crate::metrics as m;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// Events a watcher reads from the store at a time.
const REPLAY_BATCH: usize = 256;

pub struct JobEvents {
    /// Per watched job: the newest sequence number written.
    latest: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// True once the server is stopping: watchers end (a graceful shutdown waits for open
    /// streams, and a watch of a running job would otherwise never end).
    closing: watch::Sender<bool>,
}

impl Default for JobEvents {
    fn default() -> Self {
        Self {
            latest: Mutex::default(),
            closing: watch::channel(false).0,
        }
    }
}

/// Why a watch ended early.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the server is shutting down; watch again from the last sequence seen")]
    ShuttingDown,
}

impl JobEvents {
    /// Ends every watch (with [`WatchError::ShuttingDown`]).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// A receiver that changes whenever `job_id` gets a new event.
    pub fn subscribe(&self, job_id: &str) -> watch::Receiver<u64> {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest
            .entry(job_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Announces events just written to the store: wakes watchers, logs, updates metrics.
    pub fn publish(&self, event: &JobEvent) {
        {
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = latest.get(&event.job_id) {
                tx.send_replace(event.seq);
                // Nobody watches any more: forget the job (a new watcher subscribes afresh).
                if tx.receiver_count() == 0 {
                    latest.remove(&event.job_id);
                }
            }
        }
        log_event(event);
        record_metrics(event);
    }

    pub fn publish_all<'a>(&self, events: impl IntoIterator<Item = &'a JobEvent>) {
        for e in events {
            self.publish(e);
        }
    }
}

fn log_event(e: &JobEvent) {
    let job_id = e.job_id.as_str();
    match &e.kind {
        EventKind::StateChanged { from, to, message } => {
            let from = from.map(JobState::as_str).unwrap_or("-");
            if *to == JobState::Failed {
                tracing::warn!(job_id, seq = e.seq, %from, %to, "job {to}: {message}");
            } else {
                tracing::info!(job_id, seq = e.seq, %from, %to, "job {to}: {message}");
            }
        }
        EventKind::Step(p) => tracing::debug!(
            job_id,
            seq = e.seq,
            step = p.step,
            total_steps = p.total_steps,
            loss = p.metrics.get("loss").copied(),
            "step"
        ),
        EventKind::CheckpointSaved { step, path, loss } => {
            tracing::info!(job_id, seq = e.seq, step, path = %path.display(), loss, "checkpoint saved")
        }
        EventKind::Eval { step, metrics } => {
            tracing::info!(job_id, seq = e.seq, step, ?metrics, "eval")
        }
        EventKind::Log { level, message } => match level {
            LogLevel::Info => tracing::info!(job_id, seq = e.seq, "{message}"),
            LogLevel::Warn => tracing::warn!(job_id, seq = e.seq, "{message}"),
            LogLevel::Error => tracing::error!(job_id, seq = e.seq, "{message}"),
        },
    }
}

fn record_metrics(e: &JobEvent) {
    match &e.kind {
        EventKind::StateChanged { from, to, .. } => {
            match from {
                Some(from) => {
                    metrics::gauge!(m::TRAIN_JOBS, "state" => from.as_str()).decrement(1.0)
                }
                None => metrics::counter!(m::TRAIN_JOBS_CREATED).increment(1),
            }
            metrics::gauge!(m::TRAIN_JOBS, "state" => to.as_str()).increment(1.0);
            if to.is_terminal() {
                let outcome = to.as_str().to_ascii_lowercase();
                metrics::counter!(m::TRAIN_JOBS_FINISHED, "outcome" => outcome).increment(1);
            }
        }
        EventKind::Step(p) => {
            metrics::gauge!(m::TRAIN_STEP).set(p.step as f64);
            if let Some(loss) = p.metrics.get("loss") {
                metrics::gauge!(m::TRAIN_LOSS).set(*loss);
            }
            // SFT's throughput is tokens_per_s; GRPO's trainer half is trainer_tokens_per_s.
            if let Some(rate) = p
                .metrics
                .get("tokens_per_s")
                .or_else(|| p.metrics.get("trainer_tokens_per_s"))
            {
                metrics::gauge!(m::TRAIN_TOKENS_PER_SECOND).set(*rate);
            }
            for (key, gauge) in [
                ("reward_mean", m::TRAIN_REWARD),
                ("kl", m::TRAIN_KL),
                ("rollout_tokens_per_s", m::TRAIN_ROLLOUT_TOKENS_PER_SECOND),
            ] {
                if let Some(v) = p.metrics.get(key) {
                    metrics::gauge!(gauge).set(*v);
                }
            }
        }
        _ => {}
    }
}

/// Sets the jobs-by-state gauges outright (at startup; events keep them current afterwards).
pub fn set_state_gauges(counts: &BTreeMap<JobState, u64>) {
    for (state, n) in counts {
        metrics::gauge!(m::TRAIN_JOBS, "state" => state.as_str()).set(*n as f64);
    }
}

/// Sends `job_id`'s events after `after` into `sink`: the stored ones, then new ones as they are
/// written, until the job is terminal and all its events are sent, or the receiver is gone. A
/// store failure is sent as the last item.
pub async fn follow(
    store: Arc<JobStore>,
    events: Arc<JobEvents>,
    job_id: String,
    after: u64,
    sink: mpsc::Sender<Result<JobEvent, WatchError>>,
) {
    if let Err(e) = follow_inner(&store, &events, &job_id, after, &sink).await {
        let _ = sink.send(Err(e)).await;
    }
}

async fn follow_inner(
    store: &JobStore,
    events: &JobEvents,
    job_id: &str,
    mut after: u64,
    sink: &mpsc::Sender<Result<JobEvent, WatchError>>,
) -> Result<(), WatchError> {
    let mut changed = events.subscribe(job_id);
    let mut closing = events.closing.subscribe();
    loop {
        if *closing.borrow_and_update() {
            return Err(WatchError::ShuttingDown);
        }
        changed.borrow_and_update();
        let batch = store.events_after(job_id, after, REPLAY_BATCH)?;
        if let Some(last) = batch.last() {
            after = last.seq;
            for e in batch {
                if sink.send(Ok(e)).await.is_err() {
                    return Ok(());
                }
            }
            continue;
        }
        let job = store
            .get(job_id)?
            .ok_or_else(|| StoreError::NotFound(job_id.to_string()))?;
        if job.state.is_terminal() {
            // The terminal state change is written with its event in one transaction, and no
            // event follows it: one more empty read means everything has been sent.
            if store.events_after(job_id, after, 1)?.is_empty() {
                return Ok(());
            }
            continue;
        }
        tokio::select! {
            r = changed.changed() => {
                if r.is_err() {
                    // The sender stays in the map while we hold a receiver, so this should not
                    // happen; resubscribe rather than spin on a closed channel.
                    changed = events.subscribe(job_id);
                }
            }
            _ = closing.changed() => {}
            _ = sink.closed() => return Ok(()),
        }
    }
}
