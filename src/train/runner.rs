//! Runs queued jobs one at a time on the device, on a thread of their own (training blocks for
//! hours; the async runtime must not). The queue is the store: the runner takes the oldest QUEUED
//! job, hands it to the [`TrainExecutor`] with a [`JobContext`] that writes everything the
//! trainer reports to the store, and records how the run ended.
//!
//! Cancellation is a flag the trainer polls between micro-batches. Claiming a job and cancelling
//! one both happen under the `current` lock, so a cancel can never fall between "the store says
//! PENDING" and "the runner has a flag for it".

use super::events::JobEvents;
use super::executor::{
    CheckpointReport, JobContext, RunOutcome, StepReport, TrainError, TrainExecutor,
};
use super::job::JobState;
use super::record::{
    ErrorCode, EventKind, JobFailure, JobOutput, JobProgress, JobRecord, LogLevel,
};
use super::store::{CancelOutcome, JobStore, StateChange, StoreError};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the runner sleeps after a store error before it looks at the queue again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

pub struct JobRunner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    store: Arc<JobStore>,
    events: Arc<JobEvents>,
    executor: Arc<dyn TrainExecutor>,
    /// The job on the device and its cancel flag.
    current: Mutex<Option<(String, Arc<AtomicBool>)>>,
    /// Set by [`JobRunner::wake`]: the queue may have changed.
    work: Mutex<bool>,
    work_cv: Condvar,
    /// The server is stopping: the running trainer is asked to stop, and its job stays where it
    /// is so that the next start resumes it.
    stopping: AtomicBool,
}

impl JobRunner {
    /// Starts the runner thread; it picks up any QUEUED jobs at once.
    pub fn start(
        store: Arc<JobStore>,
        events: Arc<JobEvents>,
        executor: Arc<dyn TrainExecutor>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            store,
            events,
            executor,
            current: Mutex::new(None),
            work: Mutex::new(true),
            work_cv: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("rmr1-train".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run_loop()
            })?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Tells the runner that a job was queued.
    pub fn wake(&self) {
        let mut work = self.shared.work.lock().unwrap_or_else(|p| p.into_inner());
        *work = true;
        self.shared.work_cv.notify_all();
    }

    /// Cancels a job in the store and, if it is the one on the device, raises its flag.
    pub fn cancel(&self, job_id: &str) -> Result<CancelOutcome, StoreError> {
        let current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let outcome = self.shared.store.cancel(job_id)?;
        if let CancelOutcome::Changed(_, event) = &outcome {
            if let Some((id, flag)) = current.as_ref() {
                if id == job_id {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            self.shared.events.publish(event);
        }
        Ok(outcome)
    }

    /// The id of the job on the device, if any.
    pub fn current_job(&self) -> Option<String> {
        let current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        current.as_ref().map(|(id, _)| id.clone())
    }

    /// Asks the running trainer to stop (its job stays PENDING/RUNNING and resumes on the next
    /// start) and waits for the runner thread to end. Blocks: call it off the async threads.
    pub fn shutdown(&self) {
        self.signal_stop();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    fn signal_stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.wake();
    }
}

impl Drop for JobRunner {
    /// Without [`Self::shutdown`] the thread is not waited for; it stops at the trainer's next
    /// micro-batch.
    fn drop(&mut self) {
        self.signal_stop();
    }
}

impl Shared {
    fn run_loop(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            match self.claim() {
                Ok(Some((job, cancel))) => self.run_job(job, cancel),
                Ok(None) => self.wait_for_work(None),
                Err(e) => {
                    tracing::error!(error = %e, "cannot take the next training job");
                    self.wait_for_work(Some(RETRY_AFTER_ERROR));
                }
            }
        }
        tracing::debug!("training runner stopped");
    }

    fn wait_for_work(&self, timeout: Option<Duration>) {
        let mut work = self.work.lock().unwrap_or_else(|p| p.into_inner());
        while !*work && !self.stopping.load(Ordering::SeqCst) {
            match timeout {
                Some(t) => {
                    work = self
                        .work_cv
                        .wait_timeout(work, t)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    break;
                }
                None => work = self.work_cv.wait(work).unwrap_or_else(|p| p.into_inner()),
            }
        }
        *work = false;
    }

    /// The oldest QUEUED job, now PENDING, with its fresh cancel flag.
    fn claim(&self) -> Result<Option<(JobRecord, Arc<AtomicBool>)>, StoreError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let Some((job, event)) = self.store.claim_next()? else {
            return Ok(None);
        };
        let cancel = Arc::new(AtomicBool::new(false));
        *current = Some((job.job_id.clone(), cancel.clone()));
        self.events.publish(&event);
        Ok(Some((job, cancel)))
    }

    fn run_job(&self, job: JobRecord, cancel: Arc<AtomicBool>) {
        let ctx = RunnerContext {
            shared: self,
            job_id: job.job_id.clone(),
            cancel,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| self.executor.run(&job.spec, &ctx)));
        self.finish(&job.job_id, outcome);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn finish(&self, job_id: &str, outcome: std::thread::Result<Result<RunOutcome, TrainError>>) {
        let fail = |code: ErrorCode, message: String| {
            (
                JobState::Failed,
                StateChange {
                    message: format!("{}: {message}", code.name()),
                    error: Some(JobFailure { code, message }),
                    ..StateChange::default()
                },
            )
        };
        let (to, change) = match outcome {
            Ok(Ok(RunOutcome::Completed(result))) => (
                JobState::Succeeded,
                StateChange {
                    message: "finished".into(),
                    result: Some(JobOutput::from(&result)),
                    ..StateChange::default()
                },
            ),
            Ok(Ok(RunOutcome::Cancelled)) => match self.store.get(job_id) {
                Ok(Some(job)) if job.state == JobState::Cancelling => (
                    JobState::Cancelled,
                    StateChange::message("the trainer stopped as asked"),
                ),
                _ if self.stopping.load(Ordering::SeqCst) => {
                    self.log(
                        job_id,
                        LogLevel::Warn,
                        "the server is shutting down; the job resumes from its newest \
                         checkpoint when it restarts",
                    );
                    return;
                }
                _ => fail(
                    ErrorCode::Internal,
                    "the trainer stopped although nobody asked it to".into(),
                ),
            },
            Ok(Err(e)) => fail(ErrorCode::from(e.kind), e.message),
            Err(panic) => fail(
                ErrorCode::Internal,
                format!("the trainer panicked: {}", panic_message(&*panic)),
            ),
        };
        match self.store.transition(job_id, to, change) {
            Ok((_, event)) => self.events.publish(&event),
            Err(e) => tracing::error!(job_id, error = %e, "cannot record how the job ended"),
        }
    }

    fn log(&self, job_id: &str, level: LogLevel, message: &str) {
        let kind = EventKind::Log {
            level,
            message: message.to_string(),
        };
        self.append(job_id, &kind);
    }

    fn append(&self, job_id: &str, kind: &EventKind) {
        match self.store.append(job_id, kind) {
            Ok(event) => self.events.publish(&event),
            Err(e) => tracing::error!(job_id, error = %e, "cannot record a job event"),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// What the trainer sees of its job. Store failures are logged, never passed to the trainer: a
/// full disk under the database should not abort hours of training.
struct RunnerContext<'a> {
    shared: &'a Shared,
    job_id: String,
    cancel: Arc<AtomicBool>,
}

impl JobContext for RunnerContext<'_> {
    fn job_id(&self) -> &str {
        &self.job_id
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst) || self.shared.stopping.load(Ordering::SeqCst)
    }

    fn running(&self) {
        let change = StateChange::message("training");
        match self
            .shared
            .store
            .transition(&self.job_id, JobState::Running, change)
        {
            Ok((_, event)) => self.shared.events.publish(&event),
            // Reported twice, or cancelled meanwhile (CANCELLING stays CANCELLING).
            Err(StoreError::IllegalTransition { from, .. }) => {
                tracing::debug!(job_id = %self.job_id, %from, "running() ignored");
            }
            Err(e) => tracing::error!(job_id = %self.job_id, error = %e, "cannot record RUNNING"),
        }
    }

    fn step(&self, report: &StepReport) {
        match self
            .shared
            .store
            .record_step(&self.job_id, &JobProgress::from(report))
        {
            Ok(event) => self.shared.events.publish(&event),
            Err(e) => tracing::error!(job_id = %self.job_id, error = %e, "cannot record a step"),
        }
    }

    fn checkpoint_saved(&self, report: &CheckpointReport) {
        match self.shared.store.record_checkpoint(
            &self.job_id,
            report.step,
            &report.path,
            report.loss,
        ) {
            Ok(event) => self.shared.events.publish(&event),
            Err(e) => {
                tracing::error!(job_id = %self.job_id, error = %e, "cannot record a checkpoint")
            }
        }
    }

    fn eval(&self, step: u64, metrics: &BTreeMap<String, f64>) {
        let kind = EventKind::Eval {
            step,
            metrics: metrics.clone(),
        };
        self.shared.append(&self.job_id, &kind);
    }

    fn warn(&self, message: &str) {
        self.shared.log(&self.job_id, LogLevel::Warn, message);
    }

    fn info(&self, message: &str) {
        self.shared.log(&self.job_id, LogLevel::Info, message);
    }
}
