//! The job database: `<data_dir>/jobs.sqlite3` (SQLite, WAL) holding job records, their
//! append-only events and their checkpoints. Every read and write of job state goes through
//! [`JobStore`], and every state change is checked against [`can_transition`] and written together
//! with its event in one transaction, so the record and the event log never disagree — even
//! after a crash.

use super::job::{can_transition, cancel_target, recovery_target, JobState};
use super::record::{
    now_ms, CheckpointRecord, EventKind, JobEvent, JobFailure, JobOutput, JobProgress, JobRecord,
};
use super::spec::TrainSpec;
use super::store_rows::{append_event, get_job, job_from_row, JOB_COLUMNS, SCHEMA};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub const DB_FILE: &str = "jobs.sqlite3";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("job database holds unreadable JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("job database: {0}")]
    Io(#[from] std::io::Error),
    #[error("no job {0:?}")]
    NotFound(String),
    #[error("job {job_id} cannot go from {from} to {to}")]
    IllegalTransition {
        job_id: String,
        from: JobState,
        to: JobState,
    },
    #[error("job database holds an unknown state {0:?}")]
    UnknownState(String),
}

/// What [`JobStore::create`] found.
#[derive(Debug)]
pub enum CreateOutcome {
    Created(JobRecord, JobEvent),
    /// The same id with the same spec and labels: a retried request.
    Existing(JobRecord),
    /// The same id with a different spec or labels.
    Conflict(JobRecord),
    /// Another unfinished job writes to the same output dir.
    OutputDirBusy {
        other_job: String,
    },
}

/// What [`JobStore::cancel`] did.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The job moved (QUEUED → CANCELLED, or PENDING/RUNNING → CANCELLING).
    Changed(JobRecord, JobEvent),
    /// It was CANCELLING already.
    AlreadyCancelling(JobRecord),
    /// It had finished.
    Finished(JobRecord),
}

/// Extra effects of a state change.
#[derive(Debug, Default)]
pub struct StateChange {
    pub message: String,
    pub error: Option<JobFailure>,
    pub result: Option<JobOutput>,
    /// A recovered job: count the restart.
    pub restart: bool,
}

impl StateChange {
    pub fn message(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..Self::default()
        }
    }
}

/// Which jobs a listing wants.
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    /// Empty = all states.
    pub states: Vec<JobState>,
    /// Jobs carrying all of these.
    pub labels: BTreeMap<String, String>,
}

pub struct JobStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl JobStore {
    /// Opens (creating it and `data_dir` if needed) the job database.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        // WAL: readers (Get, List, Watch) never wait behind the runner's writes on disk;
        // NORMAL sync is durable across process crashes, which is what recovery is for.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic elsewhere while holding the lock leaves SQLite consistent (transactions roll
        // back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a QUEUED job, or reports why not (see [`CreateOutcome`]).
    pub fn create(
        &self,
        job_id: &str,
        labels: &BTreeMap<String, String>,
        spec: &TrainSpec,
    ) -> Result<CreateOutcome, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(existing) = get_job(&tx, job_id)? {
            return Ok(if existing.spec == *spec && existing.labels == *labels {
                CreateOutcome::Existing(existing)
            } else {
                CreateOutcome::Conflict(existing)
            });
        }
        let output_dir = spec.output_dir.to_string_lossy();
        let busy: Option<String> = tx
            .query_row(
                "SELECT job_id FROM jobs WHERE output_dir = ?1 \
                 AND state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED') LIMIT 1",
                params![output_dir],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other_job) = busy {
            return Ok(CreateOutcome::OutputDirBusy { other_job });
        }
        let now = now_ms();
        tx.execute(
            "INSERT INTO jobs (job_id, labels, spec, output_dir, state, create_ms, update_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                job_id,
                serde_json::to_string(labels)?,
                serde_json::to_string(spec)?,
                output_dir,
                JobState::Queued.as_str(),
                now,
            ],
        )?;
        let event = append_event(
            &tx,
            job_id,
            now,
            &EventKind::StateChanged {
                from: None,
                to: JobState::Queued,
                message: "created".into(),
            },
        )?;
        let job = get_job(&tx, job_id)?.ok_or_else(|| StoreError::NotFound(job_id.into()))?;
        tx.commit()?;
        Ok(CreateOutcome::Created(job, event))
    }

    pub fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        get_job(&self.lock(), job_id)
    }

    /// Up to `limit` jobs matching `filter`, in creation order, after position `after`; and
    /// whether more follow.
    pub fn list(
        &self,
        filter: &JobFilter,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<JobRecord>, bool), StoreError> {
        let conn = self.lock();
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE position > ?1");
        if !filter.states.is_empty() {
            let names: Vec<String> = filter
                .states
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            // The names are our own constants, never client text.
            sql.push_str(&format!(" AND state IN ({})", names.join(", ")));
        }
        sql.push_str(" ORDER BY position");
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(params![after])?;
        let mut jobs = Vec::new();
        while let Some(row) = rows.next()? {
            let job = job_from_row(row)?;
            let labelled = filter
                .labels
                .iter()
                .all(|(k, v)| job.labels.get(k) == Some(v));
            if !labelled {
                continue;
            }
            if jobs.len() == limit {
                return Ok((jobs, true));
            }
            jobs.push(job);
        }
        Ok((jobs, false))
    }

    /// Moves a job to `to` (if the state machine allows it from where it is) and logs the change.
    pub fn transition(
        &self,
        job_id: &str,
        to: JobState,
        change: StateChange,
    ) -> Result<(JobRecord, JobEvent), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let job = get_job(&tx, job_id)?.ok_or_else(|| StoreError::NotFound(job_id.into()))?;
        let event = transition_in(&tx, &job, to, &change)?;
        let job = get_job(&tx, job_id)?.ok_or_else(|| StoreError::NotFound(job_id.into()))?;
        tx.commit()?;
        Ok((job, event))
    }

    /// Cancels a job as far as the store can: see [`cancel_target`].
    pub fn cancel(&self, job_id: &str) -> Result<CancelOutcome, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let job = get_job(&tx, job_id)?.ok_or_else(|| StoreError::NotFound(job_id.into()))?;
        let outcome = match cancel_target(job.state) {
            None => CancelOutcome::Finished(job),
            Some(to) if to == job.state => CancelOutcome::AlreadyCancelling(job),
            Some(to) => {
                let message = if to == JobState::Cancelled {
                    "cancelled before it started"
                } else {
                    "cancel requested; stopping at the next micro-batch"
                };
                let event = transition_in(&tx, &job, to, &StateChange::message(message))?;
                let job =
                    get_job(&tx, job_id)?.ok_or_else(|| StoreError::NotFound(job_id.into()))?;
                CancelOutcome::Changed(job, event)
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Takes the oldest QUEUED job and makes it PENDING, in one transaction.
    pub fn claim_next(&self) -> Result<Option<(JobRecord, JobEvent)>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let next: Option<String> = tx
            .query_row(
                "SELECT job_id FROM jobs WHERE state = 'QUEUED' ORDER BY position LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let Some(job_id) = next else {
            return Ok(None);
        };
        let job = get_job(&tx, &job_id)?.ok_or_else(|| StoreError::NotFound(job_id.clone()))?;
        let message = if job.restart_count > 0 {
            format!("starting again (restart {})", job.restart_count)
        } else {
            "starting: loading the model and checking the data".into()
        };
        let event = transition_in(&tx, &job, JobState::Pending, &StateChange::message(message))?;
        let job = get_job(&tx, &job_id)?.ok_or_else(|| StoreError::NotFound(job_id.clone()))?;
        tx.commit()?;
        Ok(Some((job, event)))
    }

    /// Saves the latest progress and logs it as a step event.
    pub fn record_step(
        &self,
        job_id: &str,
        progress: &JobProgress,
    ) -> Result<JobEvent, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let n = tx.execute(
            "UPDATE jobs SET progress = ?2, update_ms = ?3 WHERE job_id = ?1",
            params![job_id, serde_json::to_string(progress)?, now],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(job_id.into()));
        }
        let event = append_event(&tx, job_id, now, &EventKind::Step(progress.clone()))?;
        tx.commit()?;
        Ok(event)
    }

    /// Lists a checkpoint (a re-saved step replaces its row) and logs it.
    pub fn record_checkpoint(
        &self,
        job_id: &str,
        step: u64,
        path: &Path,
        loss: Option<f64>,
    ) -> Result<JobEvent, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        tx.execute(
            "INSERT OR REPLACE INTO checkpoints (job_id, step, path, loss, time_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![job_id, step as i64, path.to_string_lossy(), loss, now],
        )?;
        let kind = EventKind::CheckpointSaved {
            step,
            path: path.to_path_buf(),
            loss,
        };
        let event = append_event(&tx, job_id, now, &kind)?;
        tx.commit()?;
        Ok(event)
    }

    /// Logs an event that changes nothing else (eval results, log lines).
    pub fn append(&self, job_id: &str, kind: &EventKind) -> Result<JobEvent, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let event = append_event(&tx, job_id, now_ms(), kind)?;
        tx.commit()?;
        Ok(event)
    }

    /// Up to `limit` events of a job with sequence numbers above `after`, in order.
    pub fn events_after(
        &self,
        job_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, time_ms, payload FROM events WHERE job_id = ?1 AND seq > ?2 \
             ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![job_id, after as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut events = Vec::new();
        for row in rows {
            let (seq, time_ms, payload) = row?;
            events.push(JobEvent {
                job_id: job_id.into(),
                seq: seq as u64,
                time_ms,
                kind: serde_json::from_str(&payload)?,
            });
        }
        Ok(events)
    }

    /// A job's checkpoints by step.
    pub fn checkpoints(&self, job_id: &str) -> Result<Vec<CheckpointRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT step, path, loss, time_ms FROM checkpoints WHERE job_id = ?1 ORDER BY step",
        )?;
        let rows = stmt.query_map(params![job_id], |r| {
            Ok(CheckpointRecord {
                step: r.get::<_, i64>(0)? as u64,
                path: PathBuf::from(r.get::<_, String>(1)?),
                loss: r.get(2)?,
                time_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// After a restart: interrupted jobs go back to the queue (counting the restart), pending
    /// cancels complete. Returns the events written.
    pub fn recover(&self) -> Result<Vec<JobEvent>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT job_id FROM jobs WHERE state IN ('PENDING', 'RUNNING', 'CANCELLING') \
                 ORDER BY position",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut events = Vec::new();
        for id in ids {
            let job = get_job(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
            let Some(to) = recovery_target(job.state) else {
                continue;
            };
            let change = if to == JobState::Queued {
                StateChange {
                    message: format!(
                        "the server restarted while the job was {}; queued again to resume from \
                         its newest checkpoint",
                        job.state
                    ),
                    restart: true,
                    ..StateChange::default()
                }
            } else {
                StateChange::message("the server restarted during cancellation")
            };
            events.push(transition_in(&tx, &job, to, &change)?);
        }
        tx.commit()?;
        Ok(events)
    }

    /// How many jobs are in each state (every state present, zeros included).
    pub fn count_by_state(&self) -> Result<BTreeMap<JobState, u64>, StoreError> {
        let conn = self.lock();
        let mut counts: BTreeMap<JobState, u64> =
            JobState::ALL.into_iter().map(|s| (s, 0)).collect();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (name, n) = row?;
            let state = JobState::parse(&name).ok_or(StoreError::UnknownState(name))?;
            counts.insert(state, n as u64);
        }
        Ok(counts)
    }
}

/// The state change of `job` to `to`, inside the caller's transaction.
fn transition_in(
    tx: &Transaction<'_>,
    job: &JobRecord,
    to: JobState,
    change: &StateChange,
) -> Result<JobEvent, StoreError> {
    if !can_transition(job.state, to) {
        return Err(StoreError::IllegalTransition {
            job_id: job.job_id.clone(),
            from: job.state,
            to,
        });
    }
    let now = now_ms();
    let start_ms = job.start_ms.or((to == JobState::Pending).then_some(now));
    let end_ms = to.is_terminal().then_some(now);
    let error = change
        .error
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let result = change
        .result
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    tx.execute(
        "UPDATE jobs SET state = ?2, start_ms = ?3, end_ms = ?4, update_ms = ?5, \
         error = COALESCE(?6, error), result = COALESCE(?7, result), \
         restart_count = restart_count + ?8 WHERE job_id = ?1",
        params![
            job.job_id,
            to.as_str(),
            start_ms,
            end_ms,
            now,
            error,
            result,
            change.restart as i64
        ],
    )?;
    append_event(
        tx,
        &job.job_id,
        now,
        &EventKind::StateChanged {
            from: Some(job.state),
            to,
            message: change.message.clone(),
        },
    )
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
