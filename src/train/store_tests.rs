//! Unit tests of the job store (a file of their own to keep `store.rs` readable).

use super::*;
use crate::train::spec::{SftSpec, TaskSpec};

fn spec(out: &str) -> TrainSpec {
    TrainSpec {
        base_model: "m".into(),
        task: TaskSpec::Sft(SftSpec {
            train_files: vec!["/d/a.jsonl".into()],
            eval_files: vec![],
            target_field: "winner".into(),
            max_seq_len: 16,
            skip_bad_rows: false,
            eval_every_steps: 0,
        }),
        adapter: None,
        optimizer: Default::default(),
        run: Default::default(),
        output_dir: out.into(),
    }
}

fn created(o: CreateOutcome) -> JobRecord {
    match o {
        CreateOutcome::Created(j, e) => {
            assert_eq!(e.seq, 1);
            j
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn create_is_idempotent_and_guards_output_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let store = JobStore::open(dir.path()).unwrap();
    let labels = BTreeMap::from([("team".to_string(), "rm".to_string())]);
    let job = created(store.create("a", &labels, &spec("/o/a")).unwrap());
    assert_eq!(job.state, JobState::Queued);
    assert!(matches!(
        store.create("a", &labels, &spec("/o/a")).unwrap(),
        CreateOutcome::Existing(j) if j == job
    ));
    assert!(matches!(
        store.create("a", &labels, &spec("/o/other")).unwrap(),
        CreateOutcome::Conflict(_)
    ));
    assert!(matches!(
        store.create("b", &labels, &spec("/o/a")).unwrap(),
        CreateOutcome::OutputDirBusy { other_job } if other_job == "a"
    ));
    // Once `a` has finished, its output dir is free again.
    store
        .transition("a", JobState::Cancelled, StateChange::default())
        .unwrap();
    created(store.create("b", &labels, &spec("/o/a")).unwrap());
}

#[test]
fn transitions_are_checked_and_logged_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = JobStore::open(dir.path()).unwrap();
    created(store.create("a", &BTreeMap::new(), &spec("/o")).unwrap());
    let err = store
        .transition("a", JobState::Running, StateChange::default())
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { .. }), "{err}");
    let (job, _) = store.claim_next().unwrap().unwrap();
    assert_eq!(job.state, JobState::Pending);
    assert!(job.start_ms.is_some());
    assert!(store.claim_next().unwrap().is_none());
    store
        .transition("a", JobState::Running, StateChange::default())
        .unwrap();
    store
        .record_step(
            "a",
            &JobProgress {
                step: 1,
                ..Default::default()
            },
        )
        .unwrap();
    store
        .record_checkpoint("a", 1, Path::new("/o/ckpt-1"), Some(0.5))
        .unwrap();
    let (job, ev) = store
        .transition(
            "a",
            JobState::Failed,
            StateChange {
                error: Some(JobFailure {
                    code: super::super::record::ErrorCode::Internal,
                    message: "boom".into(),
                }),
                ..StateChange::default()
            },
        )
        .unwrap();
    assert_eq!(ev.seq, 6);
    assert_eq!(job.error.unwrap().message, "boom");
    assert!(job.end_ms.is_some());
    assert_eq!(job.progress.unwrap().step, 1);
    let seqs: Vec<u64> = store
        .events_after("a", 0, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(store.events_after("a", 4, 1).unwrap()[0].seq, 5);
    assert_eq!(store.checkpoints("a").unwrap()[0].loss, Some(0.5));
}

#[test]
fn recovery_requeues_interrupted_jobs_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = JobStore::open(dir.path()).unwrap();
        for (id, out) in [("run", "/o/1"), ("stop", "/o/2"), ("wait", "/o/3")] {
            created(store.create(id, &BTreeMap::new(), &spec(out)).unwrap());
        }
        store.claim_next().unwrap();
        store
            .transition("run", JobState::Running, StateChange::default())
            .unwrap();
        store.claim_next().unwrap();
        store.cancel("stop").unwrap();
    }
    let store = JobStore::open(dir.path()).unwrap();
    let events = store.recover().unwrap();
    assert_eq!(events.len(), 2);
    let run = store.get("run").unwrap().unwrap();
    assert_eq!((run.state, run.restart_count), (JobState::Queued, 1));
    assert_eq!(
        store.get("stop").unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(store.get("wait").unwrap().unwrap().restart_count, 0);
    // The recovered job keeps its place at the head of the queue.
    assert_eq!(store.claim_next().unwrap().unwrap().0.job_id, "run");
    let counts = store.count_by_state().unwrap();
    assert_eq!(counts[&JobState::Pending], 1);
    assert_eq!(counts[&JobState::Queued], 1);
    assert_eq!(counts[&JobState::Cancelled], 1);
}

#[test]
fn listing_filters_and_pages_in_creation_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = JobStore::open(dir.path()).unwrap();
    for i in 0..5 {
        let labels = BTreeMap::from([("n".to_string(), (i % 2).to_string())]);
        created(
            store
                .create(&format!("j{i}"), &labels, &spec(&format!("/o/{i}")))
                .unwrap(),
        );
    }
    store.cancel("j1").unwrap();
    let filter = JobFilter {
        states: vec![JobState::Queued],
        ..JobFilter::default()
    };
    let (page, more) = store.list(&filter, 0, 2).unwrap();
    assert!(more);
    let ids: Vec<_> = page.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, ["j0", "j2"]);
    let (page, more) = store.list(&filter, page[1].position, 2).unwrap();
    assert!(!more);
    let ids: Vec<_> = page.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, ["j3", "j4"]);
    let labelled = JobFilter {
        labels: BTreeMap::from([("n".to_string(), "1".to_string())]),
        ..JobFilter::default()
    };
    let (page, _) = store.list(&labelled, 0, 10).unwrap();
    let ids: Vec<_> = page.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, ["j1", "j3"]);
}
