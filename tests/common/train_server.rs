//! A training server on loopback with a fake trainer, and helpers to drive it over gRPC.
//!
//! The fake trainer's behaviour is chosen by the job's `base_model`: `steps:N` (N steps, a
//! checkpoint every 2), `gate` (one step, then waits for the test to open its gate while honouring
//! cancellation), `fail`, `bad-data` (fails before RUNNING) and `panic`.
#![allow(dead_code)]

use rmr1::api::proto::training_service_client::TrainingServiceClient;
use rmr1::api::proto::{
    self, train_job_event, train_job_spec, CancelTrainJobRequest, CreateTrainJobRequest,
    GetTrainJobRequest, TrainJob, TrainJobEvent, TrainJobSpec, TrainJobState, WatchTrainJobRequest,
};
use rmr1::api::{GrpcServer, TrainingConfig};
use rmr1::train::{
    Artifact, CheckpointReport, JobContext, RunOutcome, StepReport, TrainError, TrainErrorKind,
    TrainExecutor, TrainResult, TrainSpec,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct FakeTrainer {
    /// Jobs whose `gate` trainer may finish.
    opened: Mutex<HashSet<String>>,
    opened_cv: Condvar,
    /// Job ids in the order runs started (a restarted job appears twice).
    runs: Mutex<Vec<String>>,
}

impl FakeTrainer {
    pub fn open_gate(&self, job_id: &str) {
        self.opened.lock().unwrap().insert(job_id.to_string());
        self.opened_cv.notify_all();
    }

    pub fn runs(&self) -> Vec<String> {
        self.runs.lock().unwrap().clone()
    }

    pub fn report(ctx: &dyn JobContext, step: u64, total: u64) {
        ctx.step(&StepReport {
            step,
            total_steps: total,
            epoch: 0,
            tokens_seen: step * 100,
            metrics: BTreeMap::from([
                ("loss".to_string(), 1.0 / step as f64),
                ("tokens_per_s".to_string(), 1000.0),
            ]),
            eta_seconds: Some((total - step) as f64),
        });
    }

    pub fn completed(spec: &TrainSpec) -> RunOutcome {
        RunOutcome::Completed(TrainResult {
            artifacts: vec![Artifact {
                path: spec.output_dir.join("final"),
                format: "peft_lora".into(),
            }],
            final_metrics: BTreeMap::from([("loss".to_string(), 0.25)]),
        })
    }
}

impl TrainExecutor for FakeTrainer {
    fn run(&self, spec: &TrainSpec, ctx: &dyn JobContext) -> Result<RunOutcome, TrainError> {
        self.runs.lock().unwrap().push(ctx.job_id().to_string());
        let mode = spec.base_model.as_str();
        if mode == "bad-data" {
            return Err(TrainError::invalid_data(
                "train.jsonl row 3: no `winner` field",
            ));
        }
        ctx.running();
        if let Some(n) = mode.strip_prefix("steps:") {
            let total: u64 = n.parse().unwrap();
            for step in 1..=total {
                if ctx.is_cancelled() {
                    return Ok(RunOutcome::Cancelled);
                }
                Self::report(ctx, step, total);
                if step % 2 == 0 {
                    ctx.checkpoint_saved(&CheckpointReport {
                        step,
                        path: spec.output_dir.join(format!("checkpoint-{step}")),
                        loss: Some(1.0 / step as f64),
                    });
                }
            }
            ctx.eval(total, &BTreeMap::from([("accuracy".to_string(), 0.5)]));
            return Ok(Self::completed(spec));
        }
        match mode {
            "gate" => {
                Self::report(ctx, 1, 2);
                let mut opened = self.opened.lock().unwrap();
                // Polls the flag like a trainer between micro-batches; the gate is the test's
                // signal to finish.
                while !opened.contains(ctx.job_id()) {
                    if ctx.is_cancelled() {
                        ctx.info("stopping at step 1");
                        return Ok(RunOutcome::Cancelled);
                    }
                    opened = self
                        .opened_cv
                        .wait_timeout(opened, Duration::from_millis(5))
                        .unwrap()
                        .0;
                }
                drop(opened);
                Self::report(ctx, 2, 2);
                Ok(Self::completed(spec))
            }
            "fail" => {
                Self::report(ctx, 1, 10);
                ctx.warn("memory is getting tight");
                Err(TrainError::new(
                    TrainErrorKind::ResourceExhausted,
                    "out of device memory at step 2",
                ))
            }
            "panic" => panic!("the fake trainer exploded"),
            other => panic!("unknown fake mode {other:?}"),
        }
    }
}

pub struct Harness {
    pub server: GrpcServer,
    pub trainer: Arc<FakeTrainer>,
    pub dir: PathBuf,
    pub client: TrainingServiceClient<Channel>,
}

impl Harness {
    /// A server with training over `dir/data` (database) and `dir/root` (the one train root).
    pub async fn start(dir: &Path) -> Self {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/train.jsonl"), "{}\n").unwrap();
        let trainer = Arc::new(FakeTrainer::default());
        let config = TrainingConfig {
            data_dir: dir.join("data"),
            train_roots: vec![root],
            executor: trainer.clone(),
        };
        let server = GrpcServer::start_with("127.0.0.1:0".parse().unwrap(), Some(config))
            .await
            .unwrap();
        let client = TrainingServiceClient::connect(format!("http://{}", server.local_addr()))
            .await
            .unwrap();
        Self {
            server,
            trainer,
            dir: dir.to_path_buf(),
            client,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root").canonicalize().unwrap()
    }

    pub async fn create(&self, id: &str, mode: &str, out: &str) -> Result<TrainJob, tonic::Status> {
        self.create_with(id, spec(mode, out), HashMap::new()).await
    }

    pub async fn create_with(
        &self,
        id: &str,
        spec: TrainJobSpec,
        labels: HashMap<String, String>,
    ) -> Result<TrainJob, tonic::Status> {
        let request = CreateTrainJobRequest {
            job_id: id.into(),
            labels,
            spec: Some(spec),
        };
        self.client
            .clone()
            .create_train_job(request)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn get(&self, id: &str) -> TrainJob {
        let request = GetTrainJobRequest { job_id: id.into() };
        self.client
            .clone()
            .get_train_job(request)
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn cancel(&self, id: &str) -> Result<TrainJob, tonic::Status> {
        let request = CancelTrainJobRequest { job_id: id.into() };
        self.client
            .clone()
            .cancel_train_job(request)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn watch(&self, id: &str, after: u64) -> tonic::Streaming<TrainJobEvent> {
        let request = WatchTrainJobRequest {
            job_id: id.into(),
            after_sequence: after,
        };
        self.client
            .clone()
            .watch_train_job(request)
            .await
            .unwrap()
            .into_inner()
    }

    /// Every event after `after` until the stream ends (the job is terminal).
    pub async fn events(&self, id: &str, after: u64) -> Vec<TrainJobEvent> {
        let mut stream = self.watch(id, after).await;
        let mut events = Vec::new();
        tokio::time::timeout(WAIT, async {
            while let Some(e) = stream.message().await.unwrap() {
                events.push(e);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("job {id} did not end; events so far: {events:?}"));
        events
    }

    /// Reads `stream` until the job enters `state`; returns the events read.
    pub async fn until_state(
        stream: &mut tonic::Streaming<TrainJobEvent>,
        state: TrainJobState,
    ) -> Vec<TrainJobEvent> {
        let mut seen = Vec::new();
        tokio::time::timeout(WAIT, async {
            loop {
                let e = stream.message().await.unwrap().expect("stream ended early");
                let reached = to_state(&e) == Some(state);
                seen.push(e);
                if reached {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {state:?} event"));
        seen
    }

    /// Waits for `id` to be RUNNING (on the device) and returns the stream, positioned after it.
    pub async fn running(&self, id: &str) -> tonic::Streaming<TrainJobEvent> {
        let mut stream = self.watch(id, 0).await;
        Self::until_state(&mut stream, TrainJobState::Running).await;
        stream
    }
}

pub fn spec(mode: &str, out: &str) -> TrainJobSpec {
    TrainJobSpec {
        base_model: mode.into(),
        task: Some(train_job_spec::Task::Sft(proto::SftSpec {
            train_files: vec!["data/train.jsonl".into()],
            ..Default::default()
        })),
        output_dir: out.into(),
        ..Default::default()
    }
}

pub fn to_state(e: &TrainJobEvent) -> Option<TrainJobState> {
    match &e.event {
        Some(train_job_event::Event::StateChanged(s)) => Some(s.to()),
        _ => None,
    }
}

pub fn states(events: &[TrainJobEvent]) -> Vec<TrainJobState> {
    events.iter().filter_map(to_state).collect()
}

pub fn assert_contiguous(events: &[TrainJobEvent], first: u64) {
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "sequences must have no gaps or repeats");
}

/// A spec as the server stores it (resolved), for writing to the store directly.
pub fn resolved_spec(root: &Path, mode: &str, out: &str) -> TrainSpec {
    let mut spec = rmr1::api::training_convert::train_spec(&spec(mode, out)).expect("a valid spec");
    let roots = rmr1::train::roots::TrainRoots::new(&[root.to_path_buf()]).unwrap();
    roots.resolve_spec(&mut spec).unwrap();
    spec
}
