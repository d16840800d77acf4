//! `kill -9` of `rmr1 serve` while an SFT job runs: on restart the job is re-queued, resumes from its
//! newest complete checkpoint, and ends with the loss and weights of an uninterrupted run.

mod common;

use common::training::{write_copy_task, RecordingContext};
use common::{write_tiny_model, TinySpec};
use rmr1::api::proto::training_service_client::TrainingServiceClient;
use rmr1::api::proto::{
    train_job_event, CreateTrainJobRequest, GetTrainJobRequest, TrainJob, TrainJobState,
    WatchTrainJobRequest,
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

/// Starts `rmr1 serve` with training on a free port; returns the child and its address once it
/// reports serving.
fn serve(root: &Path) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rmr1"))
        .args(["serve", "--model"])
        .arg(root.join("base"))
        .args([
            "--family",
            "instruct",
            "--metrics-listen",
            "off",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(root.join("data"))
        .arg("--train-roots")
        .arg(root)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("rmr1 serving on") {
            break;
        }
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://127.0.0.1:{port}"))
}

async fn get(client: &mut TrainingServiceClient<tonic::transport::Channel>, id: &str) -> TrainJob {
    client
        .get_train_job(GetTrainJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_server_resumes_the_job_and_matches_an_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    write_tiny_model(&root.join("base"), &TinySpec::default());
    write_copy_task(&root.join("train.jsonl"), 24, 1);

    let (mut server, addr) = serve(&root);
    let mut client = TrainingServiceClient::connect(addr.clone()).await.unwrap();
    let job_spec = spec(&root, "out");
    client
        .create_train_job(CreateTrainJobRequest {
            job_id: "kill-me".into(),
            labels: Default::default(),
            spec: Some(rmr1::api::training_convert::spec_proto(&job_spec)),
        })
        .await
        .unwrap();
    // Watch until a checkpoint past step 10 is on disk, then SIGKILL in the middle of the run.
    let mut events = client
        .watch_train_job(WatchTrainJobRequest {
            job_id: "kill-me".into(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut checkpointed = 0;
    while let Some(event) = events.message().await.unwrap() {
        if let Some(train_job_event::Event::CheckpointSaved(c)) = event.event {
            checkpointed = c.step;
            if c.step >= 20 {
                break;
            }
        }
    }
    assert!(
        checkpointed >= 20,
        "the job ended before it could be killed"
    );
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    drop(client);

    let (mut server, addr) = serve(&root);
    let mut client = TrainingServiceClient::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let job = loop {
        let job = get(&mut client, "kill-me").await;
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
    let progress = job.progress.unwrap();
    assert_eq!(progress.step, STEPS);
    let served_loss = job.result.unwrap().final_metrics["loss"];

    // The same spec run straight through in this process.
    let ctx = RecordingContext::new("kill-me");
    let straight = spec(&root, "straight");
    let outcome = Trainer::new(candle_core::Device::Cpu)
        .run(&straight, &ctx)
        .unwrap();
    let RunOutcome::Completed(result) = outcome else {
        panic!("cancelled");
    };
    let loss = result.final_metrics["loss"];
    assert!(
        (loss - served_loss).abs() <= 1e-6,
        "final loss after kill and resume {served_loss} vs uninterrupted {loss}"
    );
    let load = |dir: &Path| {
        let c = rmr1::train::checkpoint::latest_for_job(dir, "kill-me")
            .unwrap()
            .unwrap();
        assert_eq!(c.state.step, STEPS);
        rmr1::train::checkpoint::load_tensors(&c, &candle_core::Device::Cpu)
            .unwrap()
            .0
    };
    let (a, b) = (load(&root.join("out")), load(&root.join("straight")));
    for (name, t) in &a {
        let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
        assert!(common::max_abs_diff(&x, &y) <= 1e-6, "{name} differs");
    }
}
