//! A training job's lifecycle: its states and which moves between them are allowed. Pure, so the
//! store can check every transition inside its transaction and the rules are tested in one place.
//!
//! ```text
//! QUEUED ─▶ PENDING ─▶ RUNNING ─▶ SUCCEEDED | FAILED
//!   │          │          │
//!   │          └──────────┴─▶ CANCELLING ─▶ CANCELLED (or SUCCEEDED / FAILED if it ended first)
//!   └─▶ CANCELLED
//! PENDING | RUNNING ─▶ QUEUED   only when a restarted server recovers an interrupted job
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Queued,
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelling,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Pending,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelling,
        JobState::Cancelled,
    ];

    /// Nothing happens to a job in a terminal state any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// The trainer holds the job (its output dir is in use).
    pub fn is_on_device(self) -> bool {
        matches!(
            self,
            JobState::Pending | JobState::Running | JobState::Cancelling
        )
    }

    /// The name stored in the database and used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelling => "CANCELLING",
            JobState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a job may move from `from` to `to`.
pub fn can_transition(from: JobState, to: JobState) -> bool {
    use JobState::*;
    match from {
        Queued => matches!(to, Pending | Cancelled),
        // A trainer may complete without ever reporting RUNNING (it resumed from its final
        // checkpoint); back to QUEUED only through crash recovery.
        Pending => matches!(to, Running | Succeeded | Failed | Cancelling | Queued),
        Running => matches!(to, Succeeded | Failed | Cancelling | Queued),
        // Cancellation is cooperative: the trainer may finish or fail before it looks at the flag,
        // and the job then reports what really happened.
        Cancelling => matches!(to, Cancelled | Succeeded | Failed),
        Succeeded | Failed | Cancelled => false,
    }
}

/// What `CancelTrainJob` does to a job in `state`: the new state (the same state when there is
/// nothing to do), or `None` when the job has already finished.
pub fn cancel_target(state: JobState) -> Option<JobState> {
    match state {
        JobState::Queued => Some(JobState::Cancelled),
        JobState::Pending | JobState::Running => Some(JobState::Cancelling),
        JobState::Cancelling => Some(JobState::Cancelling),
        JobState::Succeeded | JobState::Failed | JobState::Cancelled => None,
    }
}

/// Where a restarted server puts a job it finds in `state`: interrupted work goes back to the
/// queue (the trainer resumes from its checkpoints), a pending cancel completes; `None` = leave it.
pub fn recovery_target(state: JobState) -> Option<JobState> {
    match state {
        JobState::Pending | JobState::Running => Some(JobState::Queued),
        JobState::Cancelling => Some(JobState::Cancelled),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::JobState::*;
    use super::*;

    #[test]
    fn terminal_states_go_nowhere() {
        for from in [Succeeded, Failed, Cancelled] {
            assert!(from.is_terminal());
            for to in JobState::ALL {
                assert!(!can_transition(from, to), "{from} -> {to}");
            }
        }
        for s in [Queued, Pending, Running, Cancelling] {
            assert!(!s.is_terminal());
        }
    }

    #[test]
    fn the_happy_path_and_its_exits() {
        assert!(can_transition(Queued, Pending));
        assert!(can_transition(Pending, Running));
        assert!(can_transition(Running, Succeeded));
        assert!(can_transition(Running, Failed));
        assert!(can_transition(Pending, Failed));
        assert!(can_transition(Pending, Succeeded));
        // A queued job never ran: it cannot succeed, fail or be running without PENDING first.
        for to in [Running, Succeeded, Failed, Cancelling, Queued] {
            assert!(!can_transition(Queued, to), "QUEUED -> {to}");
        }
        assert!(!can_transition(Running, Pending));
        assert!(!can_transition(Running, Running));
    }

    #[test]
    fn cancellation() {
        assert_eq!(cancel_target(Queued), Some(Cancelled));
        assert_eq!(cancel_target(Pending), Some(Cancelling));
        assert_eq!(cancel_target(Running), Some(Cancelling));
        assert_eq!(cancel_target(Cancelling), Some(Cancelling));
        for s in [Succeeded, Failed, Cancelled] {
            assert_eq!(cancel_target(s), None);
        }
        assert!(can_transition(Queued, Cancelled));
        assert!(can_transition(Running, Cancelling));
        assert!(can_transition(Cancelling, Cancelled));
        assert!(
            !can_transition(Running, Cancelled),
            "only through CANCELLING"
        );
        assert!(!can_transition(Cancelling, Running));
        assert!(!can_transition(Cancelling, Queued));
    }

    #[test]
    fn recovery_after_a_crash() {
        assert_eq!(recovery_target(Pending), Some(Queued));
        assert_eq!(recovery_target(Running), Some(Queued));
        assert_eq!(recovery_target(Cancelling), Some(Cancelled));
        for s in [Queued, Succeeded, Failed, Cancelled] {
            assert_eq!(recovery_target(s), None);
        }
        for s in JobState::ALL {
            if let Some(to) = recovery_target(s) {
                assert!(can_transition(s, to), "{s} -> {to}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(JobState::parse("queued"), None);
    }
}
