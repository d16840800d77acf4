//! Training jobs over gRPC on loopback with a fake trainer (see common/train_server.rs):
//! creation and idempotency, spec and path validation, listing and paging, watching, cancelling,
//! queueing, failures, panics, and recovery after a restart. No judge model is loaded: training
//! does not need one.

#[path = "common/train_server.rs"]
mod train_server;

use rmr1::api::proto::training_service_client::TrainingServiceClient;
use rmr1::api::proto::{
    self, train_job_event, train_job_spec, GetTrainJobRequest, ListCheckpointsRequest,
    ListTrainJobsRequest, TrainJobSpec, TrainJobState, WatchTrainJobRequest,
};
use rmr1::api::GrpcServer;
use rmr1::train::job::JobState;
use rmr1::train::store::{CreateOutcome, JobStore, StateChange};
use rmr1::train::{OptimizerSpec, TrainSpec};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tonic::transport::Channel;
use tonic::Code;
use train_server::{assert_contiguous, resolved_spec, spec, states, to_state, Harness, WAIT};

#[tokio::test]
async fn create_is_idempotent_on_the_job_id() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let a = h.create("a", "gate", "runs/a").await.unwrap();
    assert_eq!(a.job_id, "a");
    // The stored spec has the defaults filled in and the paths resolved.
    let stored = a.spec.as_ref().unwrap();
    assert_eq!(stored.output_dir, h.root().join("runs/a").to_str().unwrap());
    let Some(train_job_spec::Task::Sft(sft)) = &stored.task else {
        panic!("not sft")
    };
    assert_eq!(
        sft.train_files,
        [h.root().join("data/train.jsonl").to_str().unwrap()]
    );
    assert_eq!(sft.target_field, "winner");
    assert_eq!(stored.optimizer.as_ref().unwrap().lr, 5e-6);

    let again = h.create("a", "gate", "runs/a").await.unwrap();
    assert_eq!(again.create_time_ms, a.create_time_ms);
    // The same spec spelled with its absolute paths is the same spec.
    let absolute = h
        .create_with("a", a.spec.clone().unwrap(), HashMap::new())
        .await
        .unwrap();
    assert_eq!(absolute.create_time_ms, a.create_time_ms);

    let e = h.create("a", "steps:1", "runs/a").await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let labelled = HashMap::from([("k".to_string(), "v".to_string())]);
    let e = h
        .create_with("a", spec("gate", "runs/a"), labelled)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    // Another active job may not write to the same output dir.
    let e = h.create("b", "steps:1", "runs/a").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("\"a\""), "{e:?}");

    let generated = h.create("", "steps:1", "runs/g").await.unwrap();
    assert!(generated.job_id.starts_with("job-"), "{}", generated.job_id);

    h.trainer.open_gate("a");
    assert_eq!(
        states(&h.events("a", 0).await).last(),
        Some(&TrainJobState::Succeeded)
    );
    // Once `a` has finished its output dir is free.
    h.create("b", "steps:1", "runs/a").await.unwrap();
}

#[tokio::test]
async fn bad_specs_are_invalid_arguments_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let cases: Vec<(TrainJobSpec, &str)> = vec![
        (
            TrainJobSpec {
                task: Some(train_job_spec::Task::Sft(proto::SftSpec::default())),
                ..spec("steps:1", "runs/x")
            },
            "sft.train_files",
        ),
        (
            TrainJobSpec {
                adapter: Some(proto::LoraSpec {
                    rank: 0,
                    alpha: 16.0,
                    ..Default::default()
                }),
                ..spec("steps:1", "runs/x")
            },
            "adapter.rank",
        ),
        (
            TrainJobSpec {
                optimizer: Some(proto::OptimizerSpec {
                    beta2: Some(1.5),
                    ..Default::default()
                }),
                ..spec("steps:1", "runs/x")
            },
            "optimizer.beta2",
        ),
        (spec("", "runs/x"), "base_model"),
        (spec("steps:1", ""), "output_dir"),
        (
            TrainJobSpec {
                task: None,
                ..spec("steps:1", "runs/x")
            },
            "task",
        ),
    ];
    for (s, field) in cases {
        let e = h.create_with("x", s, HashMap::new()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            e.message()
        );
    }
    let e = h.create("../x", "steps:1", "runs/x").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("job_id:"), "{}", e.message());
    // Nothing was stored.
    let e = h
        .client
        .clone()
        .get_train_job(GetTrainJobRequest { job_id: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn paths_must_stay_inside_the_train_roots() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.jsonl"), "{}\n").unwrap();
    std::os::unix::fs::symlink(&outside, h.root().join("data/link")).unwrap();
    let with_files = |files: &[&str], out: &str| TrainJobSpec {
        task: Some(train_job_spec::Task::Sft(proto::SftSpec {
            train_files: files.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        })),
        ..spec("steps:1", out)
    };
    let cases = [
        (
            with_files(&["data/train.jsonl", "/etc/passwd"], "runs/x"),
            "sft.train_files[1]: /etc/passwd is outside the train roots",
        ),
        (
            with_files(&["../outside/secret.jsonl"], "runs/x"),
            "sft.train_files[0]: ../outside/secret.jsonl is outside the train roots",
        ),
        (
            with_files(&["data/link/secret.jsonl"], "runs/x"),
            "sft.train_files[0]: data/link/secret.jsonl is outside the train roots",
        ),
        (
            with_files(&["data/train.jsonl"], "../escaped"),
            "output_dir: ../escaped is outside the train roots",
        ),
        (
            with_files(&["data/train.jsonl"], "data/link/run"),
            "output_dir: data/link/run is outside the train roots",
        ),
    ];
    for (s, message) in cases {
        let e = h.create_with("x", s, HashMap::new()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(e.message(), message);
    }
    let mut eval = with_files(&["data/train.jsonl"], "runs/x");
    if let Some(train_job_spec::Task::Sft(s)) = &mut eval.task {
        s.eval_files = vec![outside.join("secret.jsonl").to_str().unwrap().into()];
    }
    let e = h.create_with("x", eval, HashMap::new()).await.unwrap_err();
    assert!(e.message().starts_with("sft.eval_files[0]:"), "{e:?}");
}

#[tokio::test]
async fn list_filters_by_state_and_label_and_pages_in_creation_order() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    h.create("g", "gate", "runs/g").await.unwrap();
    let _running = h.running("g").await;
    for i in 0..7 {
        let parity = if i % 2 == 0 { "even" } else { "odd" };
        let labels = HashMap::from([("parity".to_string(), parity.to_string())]);
        h.create_with(
            &format!("q{i}"),
            spec("steps:1", &format!("runs/q{i}")),
            labels,
        )
        .await
        .unwrap();
    }
    h.cancel("q1").await.unwrap();
    h.cancel("q4").await.unwrap();

    let list = |states: Vec<TrainJobState>, labels: &[(&str, &str)], size: u32| {
        let mut client = h.client.clone();
        let labels: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        async move {
            let mut pages = Vec::new();
            let mut token = String::new();
            loop {
                let r = client
                    .list_train_jobs(ListTrainJobsRequest {
                        states: states.iter().map(|s| *s as i32).collect(),
                        labels: labels.clone(),
                        page_size: size,
                        page_token: token.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                pages.push(r.jobs.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>());
                if r.next_page_token.is_empty() {
                    return pages;
                }
                token = r.next_page_token;
            }
        }
    };
    assert_eq!(
        list(vec![TrainJobState::Queued], &[], 2).await,
        [vec!["q0", "q2"], vec!["q3", "q5"], vec!["q6"]]
    );
    assert_eq!(
        list(vec![], &[], 3).await,
        [
            vec!["g", "q0", "q1"],
            vec!["q2", "q3", "q4"],
            vec!["q5", "q6"]
        ]
    );
    assert_eq!(
        list(
            vec![TrainJobState::Cancelled, TrainJobState::Running],
            &[],
            0
        )
        .await,
        [vec!["g", "q1", "q4"]]
    );
    assert_eq!(
        list(vec![TrainJobState::Queued], &[("parity", "odd")], 1).await,
        [vec!["q3"], vec!["q5"]]
    );
    let e = h
        .client
        .clone()
        .list_train_jobs(ListTrainJobsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    h.trainer.open_gate("g");
}

#[tokio::test]
async fn watch_replays_then_follows_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    h.create("w", "gate", "runs/w").await.unwrap();
    // Live: the first part is replayed or live depending on timing; either way seamless.
    let mut stream = h.running("w").await;
    h.trainer.open_gate("w");
    let mut live = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(e) = stream.message().await.unwrap() {
            live.push(e);
        }
    })
    .await
    .expect("the watch ends with the job");
    let all = h.events("w", 0).await;
    assert_contiguous(&all, 1);
    assert_eq!(
        states(&all),
        [
            TrainJobState::Queued,
            TrainJobState::Pending,
            TrainJobState::Running,
            TrainJobState::Succeeded
        ]
    );
    // What the live watcher saw after RUNNING is exactly the tail of the log.
    let running_at = all
        .iter()
        .position(|e| to_state(e) == Some(TrainJobState::Running))
        .unwrap();
    assert_eq!(live, all[running_at + 1..]);
    for e in &all {
        assert_eq!(e.job_id, "w");
        assert!(e.time_ms > 0);
    }

    // From the middle: exactly the rest.
    let rest = h.events("w", 3).await;
    assert_eq!(rest, all[3..]);
    // From the end: nothing, and the stream still ends.
    assert!(h.events("w", all.len() as u64).await.is_empty());

    let e = h
        .client
        .clone()
        .watch_train_job(WatchTrainJobRequest {
            job_id: "nope".into(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn a_finished_job_reports_progress_checkpoints_and_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    h.create("s", "steps:6", "runs/s").await.unwrap();
    let events = h.events("s", 0).await;
    assert_contiguous(&events, 1);
    let steps: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(train_job_event::Event::Step(p)) => Some(p.step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    assert!(events
        .iter()
        .any(|e| matches!(&e.event, Some(train_job_event::Event::Eval(ev)) if ev.step == 6)));
    let job = h.get("s").await;
    assert_eq!(job.state(), TrainJobState::Succeeded);
    let progress = job.progress.unwrap();
    assert_eq!((progress.step, progress.total_steps), (6, 6));
    assert_eq!(progress.metrics["loss"], 1.0 / 6.0);
    assert!(job.start_time_ms >= job.create_time_ms);
    assert!(job.end_time_ms >= job.start_time_ms);
    let result = job.result.unwrap();
    assert_eq!(result.artifacts[0].format, "peft_lora");
    assert_eq!(result.final_metrics["loss"], 0.25);
    assert!(job.error.is_none());

    let checkpoints = h
        .client
        .clone()
        .list_checkpoints(ListCheckpointsRequest { job_id: "s".into() })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    let steps: Vec<u64> = checkpoints.iter().map(|c| c.step).collect();
    assert_eq!(steps, [2, 4, 6]);
    assert!(checkpoints[0].path.ends_with("runs/s/checkpoint-2"));
    assert_eq!(checkpoints[1].loss, Some(0.25));
}

#[tokio::test]
async fn cancel_queued_running_and_finished_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    h.create("run", "gate", "runs/run").await.unwrap();
    h.create("wait", "steps:1", "runs/wait").await.unwrap();
    let mut stream = h.running("run").await;

    // QUEUED: cancelled at once.
    let queued = h.cancel("wait").await.unwrap();
    assert_eq!(queued.state(), TrainJobState::Cancelled);
    assert!(queued.end_time_ms > 0);

    // RUNNING: CANCELLING now, CANCELLED once the trainer stops.
    let cancelling = h.cancel("run").await.unwrap();
    assert_eq!(cancelling.state(), TrainJobState::Cancelling);
    // Cancelling twice is harmless.
    assert_eq!(
        h.cancel("run").await.unwrap().state(),
        TrainJobState::Cancelling
    );
    let seen = Harness::until_state(&mut stream, TrainJobState::Cancelled).await;
    assert_eq!(
        states(&seen),
        [TrainJobState::Cancelling, TrainJobState::Cancelled]
    );
    assert!(stream.message().await.unwrap().is_none(), "the watch ends");
    assert_eq!(h.get("run").await.state(), TrainJobState::Cancelled);

    // Finished: nothing to cancel.
    for id in ["run", "wait"] {
        let e = h.cancel(id).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    }
    assert_eq!(h.cancel("nope").await.unwrap_err().code(), Code::NotFound);
    // The cancelled queued job never reached the trainer.
    assert_eq!(h.trainer.runs(), ["run"]);
}

#[tokio::test]
async fn one_job_at_a_time_in_creation_order() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    h.create("first", "gate", "runs/1").await.unwrap();
    h.create("second", "gate", "runs/2").await.unwrap();
    h.create("third", "steps:1", "runs/3").await.unwrap();
    let _first = h.running("first").await;
    assert_eq!(h.get("second").await.state(), TrainJobState::Queued);
    assert_eq!(h.get("third").await.state(), TrainJobState::Queued);
    // The second may start only once the first has ended.
    h.trainer.open_gate("second");
    h.trainer.open_gate("first");
    for id in ["first", "second", "third"] {
        let events = h.events(id, 0).await;
        assert_eq!(
            states(&events).last(),
            Some(&TrainJobState::Succeeded),
            "{id}"
        );
    }
    let (first, second, third) = (
        h.get("first").await,
        h.get("second").await,
        h.get("third").await,
    );
    assert!(second.start_time_ms >= first.end_time_ms);
    assert!(third.start_time_ms >= second.end_time_ms);
    assert_eq!(h.trainer.runs(), ["first", "second", "third"]);
}

#[tokio::test]
async fn trainer_failures_become_failed_jobs_with_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    h.create("oom", "fail", "runs/oom").await.unwrap();
    h.create("data", "bad-data", "runs/data").await.unwrap();
    let events = h.events("oom", 0).await;
    assert_eq!(states(&events).last(), Some(&TrainJobState::Failed));
    assert!(events.iter().any(|e| matches!(
        &e.event,
        Some(train_job_event::Event::Log(l)) if l.message == "memory is getting tight"
            && l.level() == proto::LogLevel::Warn
    )));
    let job = h.get("oom").await;
    assert_eq!(job.state(), TrainJobState::Failed);
    let error = job.error.unwrap();
    assert_eq!(
        (error.code, error.code_name.as_str()),
        (8, "RESOURCE_EXHAUSTED")
    );
    assert_eq!(error.message, "out of device memory at step 2");

    // Bad data fails in PENDING, before RUNNING.
    let events = h.events("data", 0).await;
    assert_eq!(
        states(&events),
        [
            TrainJobState::Queued,
            TrainJobState::Pending,
            TrainJobState::Failed
        ]
    );
    let error = h.get("data").await.error.unwrap();
    assert_eq!(
        (error.code, error.code_name.as_str()),
        (3, "INVALID_ARGUMENT")
    );
}

#[tokio::test]
async fn a_trainer_panic_fails_the_job_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    h.create("boom", "panic", "runs/boom").await.unwrap();
    h.create("after", "steps:2", "runs/after").await.unwrap();
    h.events("boom", 0).await;
    let error = h.get("boom").await.error.unwrap();
    assert_eq!(error.code_name, "INTERNAL");
    assert!(
        error.message.contains("the fake trainer exploded"),
        "{error:?}"
    );
    // The runner survived and runs the next job.
    let events = h.events("after", 0).await;
    assert_eq!(states(&events).last(), Some(&TrainJobState::Succeeded));
}

#[tokio::test]
async fn health_reports_training_serving_without_a_judge_model() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let channel = Channel::from_shared(format!("http://{}", h.server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_string();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    assert_eq!(
        status("rmr1.v1.TrainingService").await,
        ServingStatus::Serving
    );
    assert_eq!(
        status("rmr1.v1.JudgeService").await,
        ServingStatus::NotServing
    );
    // A server without training does not offer it.
    let plain = GrpcServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut client = TrainingServiceClient::connect(format!("http://{}", plain.local_addr()))
        .await
        .unwrap();
    let e = client
        .get_train_job(GetTrainJobRequest { job_id: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    let _ = health.check(HealthCheckRequest::default()).await.unwrap();
}

#[tokio::test]
async fn a_restarted_server_requeues_and_resumes_interrupted_jobs() {
    let dir = tempfile::tempdir().unwrap();
    // A job the previous process left RUNNING (as after kill -9), written straight to the store.
    let h = Harness::start(dir.path()).await;
    let root = h.root();
    h.server.shutdown().await.unwrap();
    {
        let store = JobStore::open(&dir.path().join("data")).unwrap();
        let spec = resolved_spec(&root, "steps:3", "runs/crashed");
        assert!(matches!(
            store.create("crashed", &BTreeMap::new(), &spec).unwrap(),
            CreateOutcome::Created(..)
        ));
        store.claim_next().unwrap().unwrap();
        store
            .transition("crashed", JobState::Running, StateChange::default())
            .unwrap();
    }
    let h = Harness::start(dir.path()).await;
    let events = h.events("crashed", 0).await;
    assert_contiguous(&events, 1);
    assert_eq!(
        states(&events),
        [
            TrainJobState::Queued,
            TrainJobState::Pending,
            TrainJobState::Running,
            TrainJobState::Queued,
            TrainJobState::Pending,
            TrainJobState::Running,
            TrainJobState::Succeeded
        ]
    );
    let requeued = events.iter().find_map(|e| match &e.event {
        Some(train_job_event::Event::StateChanged(s))
            if s.from() == TrainJobState::Running && s.to() == TrainJobState::Queued =>
        {
            Some(s.message.clone())
        }
        _ => None,
    });
    assert!(requeued.unwrap().contains("restarted"));
    let job = h.get("crashed").await;
    assert_eq!(job.restart_count, 1);
    assert_eq!(h.trainer.runs(), ["crashed"]);

    // A graceful shutdown interrupts a running job the same way: it resumes on the next start.
    h.create("long", "gate", "runs/long").await.unwrap();
    let _watch = h.running("long").await;
    h.server.shutdown().await.unwrap();
    let h = Harness::start(dir.path()).await;
    h.trainer.open_gate("long");
    let events = h.events("long", 0).await;
    assert_eq!(states(&events).last(), Some(&TrainJobState::Succeeded));
    assert_eq!(h.get("long").await.restart_count, 1);
    assert_eq!(h.trainer.runs(), ["long"]);
}

#[test]
fn the_example_specs_are_valid_train_specs() {
    let read = |name: &str| {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/training")
                .join(name),
        )
        .unwrap();
        let spec = TrainSpec::from_json(&text).unwrap();
        spec.validate().unwrap();
        spec
    };
    let sft = read("sft-lora.example.json");
    assert!(sft.adapter.is_some());
    assert_eq!(sft.optimizer.lr, 1e-4);
    // The GRPO example names no optimizer: it gets GRPO's defaults, not SFT's.
    let grpo = read("grpo-lora.example.json");
    assert!(matches!(grpo.task, rmr1::train::TaskSpec::Grpo(_)));
    assert_eq!(grpo.optimizer, OptimizerSpec::default_for(&grpo.task));
    assert_eq!(grpo.optimizer.lr, 1e-6);
    assert_eq!(grpo.optimizer.schedule, rmr1::train::Schedule::Constant);
    // A partial optimizer keeps the task's defaults for the fields it leaves out.
    let partial = TrainSpec::from_json(
        r#"{"base_model": "m", "output_dir": "o", "optimizer": {"lr": 3e-6},
            "task": {"kind": "grpo", "train_files": ["d.jsonl"]}}"#,
    )
    .unwrap();
    assert_eq!(partial.optimizer.lr, 3e-6);
    assert_eq!(partial.optimizer.beta2, 0.999);
    assert_eq!(partial.optimizer.warmup_ratio, 0.0);
    let rmr1::train::TaskSpec::Grpo(g) = &partial.task else {
        panic!("grpo")
    };
    assert_eq!(
        (
            g.group_size,
            g.prompts_per_step,
            g.prompts_per_update,
            g.kl_coef
        ),
        (7, 1024, 128, 0.001)
    );
}
