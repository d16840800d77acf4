//! `kill -9` of `rmr1 serve` while an SFT or a GRPO job runs: on restart the job is re-queued,
//! resumes from its newest complete checkpoint, and ends with the loss and weights of an
//! uninterrupted run. The GRPO job is also watched for its metrics, and a second one cancelled.

mod common;

use common::grpo::{setup_verdict_task, verdict_spec};
use common::training::{write_copy_task, RecordingContext};
use common::{write_tiny_model, TinySpec};
use rmr1::api::proto::training_service_client::TrainingServiceClient;
use rmr1::api::proto::{
    train_job_event, CancelTrainJobRequest, CreateTrainJobRequest, GetTrainJobRequest, TrainJob,
    TrainJobEvent, TrainJobState, WatchTrainJobRequest,
};
use rmr1::train::trainer::Trainer;
use rmr1::train::{
    LoraSpec, OptimizerSpec, RunOutcome, RunPolicy, SftSpec, TaskSpec, TrainExecutor, TrainSpec,
};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: u64 = 120;
const GRPO_STEPS: u64 = 9;

fn spec(root: &Path, output: &str) -> TrainSpec {
    TrainSpec {
        base_model: root.join("base").display().to_string(),
        task: TaskSpec::Sft(SftSpec {
            train_files: vec![root.join("train.jsonl")],
            eval_files: vec![],
            target_field: "winner".into(),
            max_seq_len: 64,
            skip_bad_rows: false,
            eval_every_steps: 0,
        }),
        adapter: Some(LoraSpec {
            rank: 4,
            alpha: 8.0,
            dropout: 0.1,
            target_modules: vec![],
        }),
        optimizer: OptimizerSpec {
            lr: 1e-2,
            micro_batch_size: 2,
            grad_accumulation: 2,
            ..OptimizerSpec::default()
        },
        run: RunPolicy {
            seed: 3,
            checkpoint_every_steps: 10,
            keep_last_checkpoints: 2,
            max_steps: STEPS,
            epochs: 100,
        },
        output_dir: root.join(output),
    }
}

/// Starts `rmr1 serve` with training on a port the server picks (no race with other tests for a
/// "free" one); returns the child and its address once it reports serving.
fn serve(root: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rmr1"))
        .args(["serve", "--model"])
        .arg(root.join("base"))
        .args([
            "--family",
            "instruct",
            "--metrics-listen",
            "off",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(root.join("data"))
        .arg("--train-roots")
        .arg(root)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut log = Vec::new();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("rmr1 serving on ").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
            break;
        }
        log.push(line);
    }
    let addr = addr.unwrap_or_else(|| panic!("rmr1 serve did not start:\n{}", log.join("\n")));
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{addr}"))
}

async fn get(client: &mut TrainingServiceClient<tonic::transport::Channel>, id: &str) -> TrainJob {
    client
        .get_train_job(GetTrainJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Submits `job_spec` as `job_id`, SIGKILLs the server once a checkpoint at or past `kill_at` is
/// on disk, restarts it and waits for the job to finish; returns the finished job and every event
/// the first server sent before the kill.
async fn kill_and_resume(
    root: &Path,
    job_id: &str,
    job_spec: &TrainSpec,
    kill_at: u64,
) -> (TrainJob, Vec<TrainJobEvent>) {
    let (mut server, addr) = serve(root);
    let mut client = TrainingServiceClient::connect(addr.clone()).await.unwrap();
    client
        .create_train_job(CreateTrainJobRequest {
            job_id: job_id.into(),
            labels: Default::default(),
            spec: Some(rmr1::api::training_convert::spec_proto(job_spec)),
        })
        .await
        .unwrap();
    // Watch until a checkpoint at `kill_at` or later is on disk, then SIGKILL mid-run.
    let mut events = client
        .watch_train_job(WatchTrainJobRequest {
            job_id: job_id.into(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let mut checkpointed = 0;
    while let Some(event) = events.message().await.unwrap() {
        seen.push(event.clone());
        if let Some(train_job_event::Event::CheckpointSaved(c)) = event.event {
            checkpointed = c.step;
            if c.step >= kill_at {
                break;
            }
        }
    }
    assert!(
        checkpointed >= kill_at,
        "the job ended before it could be killed"
    );
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    drop(client);

    let (mut server, addr) = serve(root);
    let mut client = TrainingServiceClient::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let job = loop {
        let job = get(&mut client, job_id).await;
        if job.state == TrainJobState::Succeeded as i32 || job.state == TrainJobState::Failed as i32
        {
            break job;
        }
        assert!(Instant::now() < deadline, "job did not finish: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(
        job.state,
        TrainJobState::Succeeded as i32,
        "{:?}",
        job.error
    );
    assert_eq!(job.restart_count, 1);
    (job, seen)
}

/// Runs `straight` in this process and checks that its final loss and weights equal those the
/// killed-and-resumed `job` left in `resumed_dir`.
fn assert_matches_uninterrupted(
    job: TrainJob,
    resumed_dir: &Path,
    straight: &TrainSpec,
    steps: u64,
) {
    let job_id = job.job_id.clone();
    let progress = job.progress.unwrap();
    assert_eq!(progress.step, steps);
    let served_loss = job.result.unwrap().final_metrics["loss"];
    let ctx = RecordingContext::new(&job_id);
    let outcome = Trainer::new(candle_core::Device::Cpu)
        .run(straight, &ctx)
        .unwrap();
    let RunOutcome::Completed(result) = outcome else {
        panic!("cancelled");
    };
    let loss = result.final_metrics["loss"];
    assert!(
        (loss - served_loss).abs() <= 1e-6,
        "final loss after kill and resume {served_loss} vs uninterrupted {loss}"
    );
    common::training::assert_same_final_weights(
        resumed_dir,
        &straight.output_dir,
        &job_id,
        Some(steps),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_server_resumes_the_job_and_matches_an_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    write_tiny_model(&root.join("base"), &TinySpec::default());
    write_copy_task(&root.join("train.jsonl"), 24, 1);
    let (job, _) = kill_and_resume(&root, "kill-me", &spec(&root, "out"), 20).await;
    assert_matches_uninterrupted(job, &root.join("out"), &spec(&root, "straight"), STEPS);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpo_job_reports_its_metrics_survives_a_kill_and_cancels() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    setup_verdict_task(&root);
    let grpo = |out: &str| {
        let mut s = verdict_spec(&root, None, GRPO_STEPS, out);
        s.run.checkpoint_every_steps = 3;
        s
    };
    let (job, seen) = kill_and_resume(&root, "grpo-kill", &grpo("out"), 3).await;
    // What the watcher saw per step: the RL metrics.
    let progress: Vec<_> = seen
        .iter()
        .filter_map(|e| match &e.event {
            Some(train_job_event::Event::Step(p)) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert!(!progress.is_empty());
    for p in &progress {
        for key in [
            "reward_mean",
            "reward_std",
            "accuracy",
            "kl",
            "clip_fraction",
            "entropy",
            "response_length_mean",
            "grad_norm",
            "rollout_tokens_per_s",
            "rollout_seconds",
            "update_seconds",
        ] {
            assert!(p.metrics.contains_key(key), "step {} lacks {key}", p.step);
        }
        assert_eq!(p.total_steps, GRPO_STEPS);
    }
    let formats: Vec<&str> = job
        .result
        .as_ref()
        .unwrap()
        .artifacts
        .iter()
        .map(|a| a.format.as_str())
        .collect();
    assert_eq!(formats, vec!["hf_full"]);
    assert_matches_uninterrupted(job, &root.join("out"), &grpo("straight"), GRPO_STEPS);

    // A running GRPO job cancels between rollouts and updates.
    let (mut server, addr) = serve(&root);
    let mut client = TrainingServiceClient::connect(addr).await.unwrap();
    let mut long = grpo("long");
    long.run.max_steps = 10_000;
    client
        .create_train_job(CreateTrainJobRequest {
            job_id: "grpo-cancel".into(),
            labels: Default::default(),
            spec: Some(rmr1::api::training_convert::spec_proto(&long)),
        })
        .await
        .unwrap();
    let mut events = client
        .watch_train_job(WatchTrainJobRequest {
            job_id: "grpo-cancel".into(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(event) = events.message().await.unwrap() {
        if matches!(event.event, Some(train_job_event::Event::Step(_))) {
            break;
        }
    }
    client
        .cancel_train_job(CancelTrainJobRequest {
            job_id: "grpo-cancel".into(),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job = get(&mut client, "grpo-cancel").await;
        if job.state == TrainJobState::Cancelled as i32 {
            break job;
        }
        assert!(Instant::now() < deadline, "not cancelled: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(job.progress.unwrap().step < 10_000);
    server.kill().unwrap();
    server.wait().unwrap();
}
