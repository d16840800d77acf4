//! What the job store keeps about a job: its record, its append-only events and its checkpoints.
//! Progress, results and event payloads are stored as JSON, so their serde names are a
//! persistence format: add fields with defaults, never rename.

use super::executor::{StepReport, TrainErrorKind, TrainResult};
use super::job::JobState;
use super::spec::TrainSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub job_id: String,
    pub labels: BTreeMap<String, String>,
    /// Validated, with paths resolved inside the train roots.
    pub spec: TrainSpec,
    pub state: JobState,
    pub create_ms: i64,
    /// When it first left QUEUED.
    pub start_ms: Option<i64>,
    /// When it reached a terminal state.
    pub end_ms: Option<i64>,
    pub update_ms: i64,
    pub progress: Option<JobProgress>,
    pub error: Option<JobFailure>,
    pub result: Option<JobOutput>,
    pub restart_count: u32,
    /// Position in creation order (the queue order and the list paging key).
    pub position: i64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobProgress {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u32,
    pub tokens_seen: u64,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub eta_seconds: Option<f64>,
}

impl From<&StepReport> for JobProgress {
    fn from(r: &StepReport) -> Self {
        Self {
            step: r.step,
            total_steps: r.total_steps,
            epoch: r.epoch,
            tokens_seen: r.tokens_seen,
            metrics: r.metrics.clone(),
            eta_seconds: r.eta_seconds,
        }
    }
}

/// gRPC-style status codes a failed job carries (the numbers are gRPC's, so clients can reuse
/// their code tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidArgument,
    ResourceExhausted,
    FailedPrecondition,
    Internal,
}

impl ErrorCode {
    pub fn number(self) -> i32 {
        match self {
            ErrorCode::InvalidArgument => 3,
            ErrorCode::ResourceExhausted => 8,
            ErrorCode::FailedPrecondition => 9,
            ErrorCode::Internal => 13,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl From<TrainErrorKind> for ErrorCode {
    fn from(kind: TrainErrorKind) -> Self {
        match kind {
            TrainErrorKind::InvalidData => ErrorCode::InvalidArgument,
            TrainErrorKind::FailedPrecondition => ErrorCode::FailedPrecondition,
            TrainErrorKind::ResourceExhausted => ErrorCode::ResourceExhausted,
            TrainErrorKind::Internal => ErrorCode::Internal,
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFailure {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub path: PathBuf,
    pub format: String,
}

/// What a succeeded job produced.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobOutput {
    pub artifacts: Vec<ArtifactRecord>,
    #[serde(default)]
    pub final_metrics: BTreeMap<String, f64>,
}

impl From<&TrainResult> for JobOutput {
    fn from(r: &TrainResult) -> Self {
        Self {
            artifacts: r
                .artifacts
                .iter()
                .map(|a| ArtifactRecord {
                    path: a.path.clone(),
                    format: a.format.clone(),
                })
                .collect(),
            final_metrics: r.final_metrics.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// One entry of a job's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// `from` is `None` for the job's creation.
    StateChanged {
        from: Option<JobState>,
        to: JobState,
        message: String,
    },
    Step(JobProgress),
    CheckpointSaved {
        step: u64,
        path: PathBuf,
        loss: Option<f64>,
    },
    Eval {
        step: u64,
        metrics: BTreeMap<String, f64>,
    },
    Log {
        level: LogLevel,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub job_id: String,
    /// 1, 2, 3, ... per job, without gaps.
    pub seq: u64,
    pub time_ms: i64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRecord {
    pub step: u64,
    pub path: PathBuf,
    pub loss: Option<f64>,
    pub time_ms: i64,
}

/// Milliseconds since the unix epoch, the one clock every record uses.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_payloads_are_tagged_json() {
        let e = EventKind::StateChanged {
            from: None,
            to: JobState::Queued,
            message: "created".into(),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"type":"state_changed","from":null,"to":"QUEUED","message":"created"}"#
        );
        assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), e);
        let step = EventKind::Step(JobProgress {
            step: 3,
            ..JobProgress::default()
        });
        let json = serde_json::to_string(&step).unwrap();
        assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), step);
    }

    #[test]
    fn trainer_error_kinds_map_to_grpc_codes() {
        assert_eq!(ErrorCode::from(TrainErrorKind::InvalidData).number(), 3);
        assert_eq!(
            ErrorCode::from(TrainErrorKind::FailedPrecondition).number(),
            9
        );
        assert_eq!(
            ErrorCode::from(TrainErrorKind::ResourceExhausted).number(),
            8
        );
        assert_eq!(ErrorCode::from(TrainErrorKind::Internal).name(), "INTERNAL");
    }
}
