//! The job layer as one object: what the training service asks for (create, get, list, cancel,
//! watch, checkpoints) in terms of validated specs and stored records, with errors as a type the
//! API maps to status codes. Owns the store, the event fan-out and the runner.

use super::events::{self, JobEvents, WatchError};
use super::executor::TrainExecutor;
use super::job::JobState;
use super::record::{CheckpointRecord, JobEvent, JobRecord};
use super::roots::TrainRoots;
use super::runner::JobRunner;
use super::spec::TrainSpec;
use super::store::{CancelOutcome, CreateOutcome, JobFilter, JobStore, StoreError};
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Listing page size when the client asks for none, and the most it may ask for.
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
const MAX_JOB_ID_LEN: usize = 128;
/// Watch events buffered per stream before the reader is waited for.
const WATCH_BUFFER: usize = 64;

/// What the server needs to run training jobs.
#[derive(Clone)]
pub struct TrainingConfig {
    /// Holds `jobs.sqlite3`.
    pub data_dir: PathBuf,
    /// Directories jobs may read data from and write outputs to.
    pub train_roots: Vec<PathBuf>,
    pub executor: Arc<dyn TrainExecutor>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobsError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<WatchError> for JobsError {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::Store(e) => e.into(),
            e @ WatchError::ShuttingDown => JobsError::Unavailable(e.to_string()),
        }
    }
}

impl From<StoreError> for JobsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => JobsError::NotFound(format!("no training job {id:?}")),
            other => JobsError::Internal(other.to_string()),
        }
    }
}

pub struct TrainJobs {
    store: Arc<JobStore>,
    events: Arc<JobEvents>,
    roots: TrainRoots,
    runner: JobRunner,
}

impl TrainJobs {
    /// Opens the job database, recovers jobs a previous process left on the device, and starts
    /// the runner.
    pub fn open(config: TrainingConfig) -> anyhow::Result<Self> {
        let roots = TrainRoots::new(&config.train_roots)?;
        let store =
            Arc::new(JobStore::open(&config.data_dir).with_context(|| {
                format!("opening the job store in {}", config.data_dir.display())
            })?);
        let events = Arc::new(JobEvents::default());
        let recovered = store.recover()?;
        events.publish_all(&recovered);
        events::set_state_gauges(&store.count_by_state()?);
        let runner = JobRunner::start(store.clone(), events.clone(), config.executor)
            .context("starting the training runner thread")?;
        tracing::info!(
            db = %store.path().display(),
            roots = ?roots.roots(),
            recovered = recovered.len(),
            "training jobs enabled"
        );
        Ok(Self {
            store,
            events,
            roots,
            runner,
        })
    }

    pub fn store(&self) -> &Arc<JobStore> {
        &self.store
    }

    pub fn roots(&self) -> &TrainRoots {
        &self.roots
    }

    /// Validates `spec`, resolves its paths inside the train roots and queues it (or returns the
    /// job a retried request created).
    pub fn create(
        &self,
        job_id: &str,
        labels: BTreeMap<String, String>,
        mut spec: TrainSpec,
    ) -> Result<JobRecord, JobsError> {
        let job_id = if job_id.is_empty() {
            format!("job-{:016x}", rand::random::<u64>())
        } else {
            check_job_id(job_id)?;
            job_id.to_string()
        };
        check_labels(&labels)?;
        let invalid = |e: super::spec::SpecError| JobsError::InvalidArgument(e.to_string());
        spec.validate().map_err(invalid)?;
        self.roots.resolve_spec(&mut spec).map_err(invalid)?;
        match self.store.create(&job_id, &labels, &spec)? {
            CreateOutcome::Created(job, event) => {
                self.events.publish(&event);
                self.runner.wake();
                Ok(job)
            }
            CreateOutcome::Existing(job) => Ok(job),
            CreateOutcome::Conflict(_) => Err(JobsError::AlreadyExists(format!(
                "training job {job_id:?} exists with a different spec or labels"
            ))),
            CreateOutcome::OutputDirBusy { other_job } => {
                Err(JobsError::FailedPrecondition(format!(
                    "output_dir: {} is in use by unfinished job {other_job:?}",
                    spec.output_dir.display()
                )))
            }
        }
    }

    pub fn get(&self, job_id: &str) -> Result<JobRecord, JobsError> {
        self.store
            .get(job_id)?
            .ok_or_else(|| JobsError::NotFound(format!("no training job {job_id:?}")))
    }

    /// One page of jobs in creation order, and the token of the next page ("" at the end).
    pub fn list(
        &self,
        filter: &JobFilter,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<JobRecord>, String), JobsError> {
        let after = if page_token.is_empty() {
            0
        } else {
            page_token
                .parse::<i64>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    JobsError::InvalidArgument("page_token: not a token from ListTrainJobs".into())
                })?
        };
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let (jobs, more) = self.store.list(filter, after, size)?;
        let next = match jobs.last() {
            Some(last) if more => last.position.to_string(),
            _ => String::new(),
        };
        Ok((jobs, next))
    }

    /// QUEUED → CANCELLED, PENDING/RUNNING → CANCELLING; a finished job is FAILED_PRECONDITION.
    pub fn cancel(&self, job_id: &str) -> Result<JobRecord, JobsError> {
        match self.runner.cancel(job_id)? {
            CancelOutcome::Changed(job, _) | CancelOutcome::AlreadyCancelling(job) => Ok(job),
            CancelOutcome::Finished(job) => Err(JobsError::FailedPrecondition(format!(
                "training job {job_id:?} has already finished ({})",
                job.state
            ))),
        }
    }

    /// The job's events after `after`, replayed then live, ending after its terminal state.
    /// Must be called inside a tokio runtime.
    pub fn watch(
        &self,
        job_id: &str,
        after: u64,
    ) -> Result<mpsc::Receiver<Result<JobEvent, JobsError>>, JobsError> {
        self.get(job_id)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let (raw_tx, mut raw_rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(events::follow(
            self.store.clone(),
            self.events.clone(),
            job_id.to_string(),
            after,
            raw_tx,
        ));
        // Converting the error type here keeps `events` free of the API's error type.
        tokio::spawn(async move {
            while let Some(item) = raw_rx.recv().await {
                if tx.send(item.map_err(JobsError::from)).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    pub fn checkpoints(&self, job_id: &str) -> Result<Vec<CheckpointRecord>, JobsError> {
        self.get(job_id)?;
        Ok(self.store.checkpoints(job_id)?)
    }

    /// Ends open watches, stops the runner (a running job stays RUNNING and resumes on the next
    /// start) and waits for its thread. Blocks.
    pub fn shutdown(&self) {
        self.events.close();
        self.runner.shutdown();
    }

    /// Jobs per state, for callers that report them.
    pub fn count_by_state(&self) -> Result<BTreeMap<JobState, u64>, JobsError> {
        Ok(self.store.count_by_state()?)
    }
}

fn check_job_id(id: &str) -> Result<(), JobsError> {
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if id.len() > MAX_JOB_ID_LEN || !ok_chars || id.starts_with('.') {
        return Err(JobsError::InvalidArgument(format!(
            "job_id: {id:?} must be 1-{MAX_JOB_ID_LEN} of [A-Za-z0-9._-], not starting with '.'"
        )));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), JobsError> {
    for (k, v) in labels {
        if k.is_empty() || k.len() > 128 || v.len() > 1024 {
            return Err(JobsError::InvalidArgument(format!(
                "labels: key {k:?} must be 1-128 bytes and its value at most 1024"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        assert!(check_job_id("sft-run_1.2").is_ok());
        assert!(check_job_id("../x").is_err());
        assert!(check_job_id("a/b").is_err());
        assert!(check_job_id(".hidden").is_err());
        assert!(check_job_id(&"x".repeat(129)).is_err());
    }
}
