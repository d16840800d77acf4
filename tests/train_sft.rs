//! SFT through the trainer (the executor the job runner calls): held-out loss falls, outputs load
//! in the engine with the trained logits, a resumed run ends where an uninterrupted one does,
//! cancellation and bad data.

mod common;

use common::training::{
    assert_same_final_weights, engine_logits, write_copy_task, RecordingContext,
};
use common::{max_abs_diff, tokens, write_tiny_model, TinySpec};
use rmr1::train::trainer::Trainer;
use rmr1::train::{
    LoraSpec, OptimizerSpec, RunOutcome, RunPolicy, Schedule, SftSpec, TaskSpec, TrainErrorKind,
    TrainExecutor, TrainSpec,
};
use std::path::Path;

fn spec(root: &Path, adapter: Option<LoraSpec>, max_steps: u64, every: u64) -> TrainSpec {
    TrainSpec {
        base_model: root.join("base").display().to_string(),
        task: TaskSpec::Sft(SftSpec {
            train_files: vec![root.join("train.jsonl")],
            eval_files: vec![root.join("eval.jsonl")],
            target_field: "winner".into(),
            max_seq_len: 64,
            skip_bad_rows: false,
            eval_every_steps: 0,
        }),
        adapter,
        optimizer: OptimizerSpec {
            lr: 2e-2,
            warmup_ratio: 0.1,
            schedule: Schedule::Cosine,
            micro_batch_size: 2,
            grad_accumulation: 2,
            ..OptimizerSpec::default()
        },
        run: RunPolicy {
            seed: 5,
            checkpoint_every_steps: every,
            keep_last_checkpoints: 2,
            max_steps,
            epochs: 10,
        },
        output_dir: root.join("out"),
    }
}

fn setup(root: &Path) {
    write_tiny_model(&root.join("base"), &TinySpec::default());
    write_copy_task(&root.join("train.jsonl"), 24, 1);
    write_copy_task(&root.join("eval.jsonl"), 8, 2);
}

fn lora() -> Option<LoraSpec> {
    Some(LoraSpec {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: vec![],
    })
}

fn completed(outcome: RunOutcome) -> rmr1::train::TrainResult {
    match outcome {
        RunOutcome::Completed(r) => r,
        RunOutcome::Cancelled => panic!("cancelled"),
    }
}

#[test]
fn lora_sft_lowers_held_out_loss_and_the_merged_export_serves_the_trained_logits() {
    let root = tempfile::tempdir().unwrap();
    setup(root.path());
    let ctx = RecordingContext::new("job-lora");
    let s = spec(root.path(), lora(), 30, 10);
    let result = completed(
        Trainer::new(candle_core::Device::Cpu)
            .run(&s, &ctx)
            .unwrap(),
    );
    assert_eq!(
        ctx.running_calls.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let losses = ctx.losses();
    assert_eq!(losses.len(), 30);
    let evals = ctx.evals.lock().unwrap().clone();
    let final_eval = evals.last().unwrap().1["eval_loss"];
    // The untrained model on the same held-out rows (LoRA starts exactly at the base).
    let initial = initial_eval_loss(root.path(), &s);
    eprintln!("held-out loss {initial:.4} -> {final_eval:.4} after 30 LoRA steps");
    assert!(
        final_eval < 0.5 * initial,
        "held-out loss {initial:.3} -> {final_eval:.3}: less than the 50% drop this test demands"
    );
    assert_eq!(result.final_metrics["eval_loss"], final_eval);
    let formats: Vec<&str> = result.artifacts.iter().map(|a| a.format.as_str()).collect();
    assert_eq!(formats, vec!["peft_lora", "hf_merged"]);
    assert!(result.artifacts[0]
        .path
        .join("adapter_model.safetensors")
        .exists());
    // Checkpoints every 10 steps, last two kept.
    let saved: Vec<u64> = ctx
        .checkpoints
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.step)
        .collect();
    assert_eq!(saved, vec![10, 20, 30]);
    let kept = rmr1::train::checkpoint::list(&s.output_dir).unwrap();
    assert_eq!(
        kept.iter().map(|c| c.state.step).collect::<Vec<_>>(),
        vec![20, 30]
    );

    // The merged export loads as a plain model dir and gives the trained logits; it moved away
    // from the base.
    let merged = common::load_tiny(&result.artifacts[1].path);
    let base = common::load_tiny(&root.path().join("base"));
    let toks = tokens(77, 20, 96);
    let trained = engine_logits(&merged.model, &toks);
    let before = engine_logits(&base.model, &toks);
    let moved = trained
        .iter()
        .zip(&before)
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0.0, f32::max);
    assert!(moved > 1e-2, "the merged model equals the base");
}

fn initial_eval_loss(root: &Path, s: &TrainSpec) -> f64 {
    let mut probe = s.clone();
    probe.run.max_steps = 1;
    probe.optimizer.lr = 1e-30;
    probe.optimizer.warmup_ratio = 0.0;
    probe.output_dir = root.join("probe");
    let ctx = RecordingContext::new("probe");
    completed(
        Trainer::new(candle_core::Device::Cpu)
            .run(&probe, &ctx)
            .unwrap(),
    );
    let evals = ctx.evals.lock().unwrap();
    evals.last().unwrap().1["eval_loss"]
}

#[test]
fn full_sft_checkpoint_reloads_in_the_engine_with_the_trained_logits() {
    let root = tempfile::tempdir().unwrap();
    setup(root.path());
    let mut s = spec(root.path(), None, 6, 0);
    s.optimizer.lr = 1e-3;
    let ctx = RecordingContext::new("job-full");
    let result = completed(
        Trainer::new(candle_core::Device::Cpu)
            .run(&s, &ctx)
            .unwrap(),
    );
    let losses = ctx.losses();
    assert!(losses.last().unwrap() < &losses[0], "{losses:?}");
    assert_eq!(result.artifacts[0].format, "hf_full");
    let reloaded = common::load_tiny(&result.artifacts[0].path);
    // The trained weights as the checkpoint holds them, through the trainable forward.
    let ckpt = rmr1::train::checkpoint::latest_for_job(&s.output_dir, "job-full")
        .unwrap()
        .unwrap();
    let (weights, _) =
        rmr1::train::checkpoint::load_tensors(&ckpt, &candle_core::Device::Cpu).unwrap();
    let base = common::training::base(&root.path().join("base"));
    let model = common::training::full_model(&base);
    model.params.load_trainable(&weights).unwrap();
    let toks = tokens(12, 25, 96);
    let ours: Vec<Vec<f32>> = model.forward_logits(&toks).unwrap().to_vec2().unwrap();
    let engine = engine_logits(&reloaded.model, &toks);
    let worst = ours
        .iter()
        .zip(&engine)
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0.0, f32::max);
    assert!(
        worst <= 1e-4,
        "reloaded full checkpoint: max |Δlogit| {worst:e}"
    );
}

#[test]
fn a_run_resumed_from_its_checkpoint_ends_where_an_uninterrupted_run_does() {
    let root = tempfile::tempdir().unwrap();
    setup(root.path());
    let trainer = Trainer::new(candle_core::Device::Cpu);
    let mut straight = spec(root.path(), lora(), 9, 3);
    straight.output_dir = root.path().join("straight");
    let a = RecordingContext::new("job");
    completed(trainer.run(&straight, &a).unwrap());

    let interrupted = spec(root.path(), lora(), 9, 3);
    // Stops after step 5: the newest checkpoint is step 3, so steps 4-5 are redone on resume, as
    // after a kill -9.
    let mut first = RecordingContext::new("job");
    first.cancel_after_step = Some(5);
    assert_eq!(
        trainer.run(&interrupted, &first).unwrap(),
        RunOutcome::Cancelled
    );
    let second = RecordingContext::new("job");
    completed(trainer.run(&interrupted, &second).unwrap());
    assert_eq!(second.step_numbers(), (4..=9).collect::<Vec<_>>());
    assert!(second
        .messages
        .lock()
        .unwrap()
        .iter()
        .any(|m| m.contains("resuming")));

    let la = a.losses();
    let lb = second.losses();
    assert!(
        (la[8] - lb[5]).abs() <= 1e-6,
        "final loss {} vs {}",
        la[8],
        lb[5]
    );
    assert_same_final_weights(&straight.output_dir, &interrupted.output_dir, "job", None);
}

#[test]
fn cancel_stops_between_micro_batches_and_bad_data_fails_naming_the_row() {
    let root = tempfile::tempdir().unwrap();
    setup(root.path());
    let trainer = Trainer::new(candle_core::Device::Cpu);
    let ctx = RecordingContext::new("c");
    ctx.cancelled
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        trainer.run(&spec(root.path(), lora(), 5, 0), &ctx).unwrap(),
        RunOutcome::Cancelled
    );
    assert!(ctx.steps.lock().unwrap().is_empty());

    let bad = root.path().join("train.jsonl");
    let mut text = std::fs::read_to_string(&bad).unwrap();
    text.push_str("{\"context_messages\": 5, \"winner\": \"w3\"}\n");
    std::fs::write(&bad, text).unwrap();
    let ctx = RecordingContext::new("d");
    let err = trainer
        .run(&spec(root.path(), lora(), 5, 0), &ctx)
        .unwrap_err();
    assert_eq!(err.kind, TrainErrorKind::InvalidData);
    assert!(err.message.contains("train.jsonl"), "{}", err.message);
    assert!(
        err.message.contains("25"),
        "row number missing: {}",
        err.message
    );
    assert_eq!(
        ctx.running_calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "failed in PENDING"
    );
}
