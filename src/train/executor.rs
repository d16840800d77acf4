//! The seam between the job layer (store, queue, gRPC; no tensors) and the trainers (tensors; no
//! gRPC): the job runner calls [`TrainExecutor::run`] on its own thread and the trainer reports
//! through [`JobContext`].

use super::spec::TrainSpec;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A progress report after an optimizer step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// Optimizer steps done (1-based after the first update).
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u32,
    /// Tokens that went through the model so far (loss-bearing and prompt tokens).
    pub tokens_seen: u64,
    /// loss, lr, grad_norm, tokens_per_s, ... (stage-specific; GRPO adds reward_mean, kl, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Seconds to the end at the current pace; `None` before the pace is known.
    pub eta_seconds: Option<f64>,
}

/// A complete checkpoint on disk (written aside and renamed into place before it is reported).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointReport {
    pub step: u64,
    pub path: PathBuf,
    /// The loss at that step, for listings.
    pub loss: Option<f64>,
}

/// One output a job produced, for the job's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub path: PathBuf,
    /// "peft_lora" | "hf_full" | "hf_merged".
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainResult {
    pub artifacts: Vec<Artifact>,
    pub final_metrics: BTreeMap<String, f64>,
}

/// How a run ended when it did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Completed(TrainResult),
    /// The context asked to stop; the trainer stopped between micro-batches.
    Cancelled,
}

/// Why a run failed; `kind` maps to the job's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TrainError {
    pub kind: TrainErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainErrorKind {
    /// The data is bad (names file and row): fails in PENDING.
    InvalidData,
    /// The base model or an output path cannot be used.
    FailedPrecondition,
    /// Out of memory or disk.
    ResourceExhausted,
    /// A bug or an unexpected failure.
    Internal,
}

impl TrainError {
    pub fn new(kind: TrainErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid_data(message: impl Into<String>) -> Self {
        Self::new(TrainErrorKind::InvalidData, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(TrainErrorKind::Internal, message)
    }
}

impl From<anyhow::Error> for TrainError {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(format!("{e:#}"))
    }
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        Self::internal(e.to_string())
    }
}

/// What a running trainer may ask of, and tell, its job. Implemented by the job layer; tests use a
/// recording implementation.
pub trait JobContext: Send + Sync {
    fn job_id(&self) -> &str;
    /// Checked between micro-batches: when true the trainer returns `RunOutcome::Cancelled`.
    fn is_cancelled(&self) -> bool;
    /// The model is loaded and the data validated: PENDING → RUNNING.
    fn running(&self);
    fn step(&self, report: &StepReport);
    fn checkpoint_saved(&self, report: &CheckpointReport);
    /// Held-out evaluation results at `step`.
    fn eval(&self, step: u64, metrics: &BTreeMap<String, f64>);
    /// Something an operator should see (skipped rows, resuming from a checkpoint, ...).
    fn warn(&self, message: &str);
    fn info(&self, message: &str);
}

/// Runs a job to its end. Must resume from the newest complete checkpoint in the spec's output dir
/// that belongs to the same job id (a job restarted after a crash), and start fresh otherwise.
pub trait TrainExecutor: Send + Sync {
    fn run(&self, spec: &TrainSpec, ctx: &dyn JobContext) -> Result<RunOutcome, TrainError>;
}
