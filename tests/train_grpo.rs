//! GRPO through the trainer on a verifiable task (the prompt's hint word names the winner, the
//! reward is upstream's RL rule): reward rises from chance and does not without advantages,
//! rollouts are on-policy, the policy gradient matches finite differences, resume is exact.

mod common;

use candle_core::{DType, Device};
use common::grpo::{setup_verdict_task, verdict_spec};
use common::training::{
    assert_same_final_weights, base, check_gradients_by_finite_differences, engine_logits,
    full_model, host_log_prob, RecordingContext,
};
use common::{max_abs_diff, tokens, write_tiny_model, TinySpec};
use rmr1::train::forward::TrainableQwen2;
use rmr1::train::grad_step::{accumulate_sequence, sequence_log_probs, LossRows, NegLogLikelihood};
use rmr1::train::grpo::{run_with, Ablation};
use rmr1::train::grpo_loss::{token_terms, GrpoLoss, GrpoLossConfig};
use rmr1::train::optim::GradAccumulator;
use rmr1::train::rollout::{RolloutCapacity, RolloutEngine};
use rmr1::train::session::TrainSession;
use rmr1::train::trainer::Trainer;
use rmr1::train::{LoraSpec, RunOutcome, TaskSpec, TrainErrorKind, TrainExecutor, TrainSpec};

fn lora() -> Option<LoraSpec> {
    Some(LoraSpec {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: vec![],
    })
}

fn run(spec: &TrainSpec, ctx: &RecordingContext, ablation: Ablation) -> RunOutcome {
    let TaskSpec::Grpo(grpo) = &spec.task else {
        panic!("a GRPO spec")
    };
    run_with(spec, grpo, ctx, &candle_core::Device::Cpu, ablation).unwrap()
}

fn series(ctx: &RecordingContext, key: &str) -> Vec<f64> {
    ctx.series(key)
}

fn window_mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

#[test]
fn reward_rises_on_the_verifiable_task_and_not_without_advantages() {
    let root = tempfile::tempdir().unwrap();
    setup_verdict_task(root.path());
    let steps = 16;
    let ctx = RecordingContext::new("grpo-learn");
    let outcome = run(
        &verdict_spec(root.path(), lora(), steps, "out"),
        &ctx,
        Ablation::default(),
    );
    let RunOutcome::Completed(result) = outcome else {
        panic!("cancelled")
    };
    let rewards = series(&ctx, "reward_mean");
    println!("reward_mean by step: {rewards:.3?}");
    assert_eq!(rewards.len(), steps as usize);
    // The untrained model seldom writes the right verdict: about −1, below even a coin flip
    // between the two verdicts (0).
    assert!(window_mean(&rewards[..2]) < -0.5, "{rewards:?}");
    // Trained, it reads the hint: far above a coin flip.
    assert!(
        window_mean(&rewards[steps as usize - 4..]) > 0.7,
        "{rewards:?}"
    );
    let accuracy = series(&ctx, "accuracy");
    assert!(accuracy[steps as usize - 1] > 0.8, "{accuracy:?}");
    assert!(result
        .artifacts
        .iter()
        .any(|a| a.format == "peft_lora" && a.path.join("adapter_model.safetensors").exists()));

    // Every rollout came from the policy as updated: the engine's log-probs of what it sampled
    // equal the trainer's. The policy moved far from the start (large KL), so a stale engine
    // would show gaps of order one.
    let gaps = series(&ctx, "rollout_logprob_max_abs_diff");
    assert!(gaps.iter().all(|&g| g <= 1e-4), "{gaps:?}");
    let kl = series(&ctx, "kl");
    assert!(kl[steps as usize - 1] > 0.05, "{kl:?}");
    for key in [
        "reward_std",
        "clip_fraction",
        "entropy",
        "response_length_mean",
        "response_length_max",
        "grad_norm",
        "lr",
        "rollout_tokens_per_s",
        "trainer_tokens_per_s",
        "rollout_seconds",
        "update_seconds",
    ] {
        let v = series(&ctx, key);
        assert!(v.iter().all(|x| x.is_finite()), "{key}: {v:?}");
    }
    let lengths = series(&ctx, "response_length_max");
    assert!(
        lengths.iter().all(|&l| (1.0..=2.0).contains(&l)),
        "{lengths:?}"
    );

    // The control: the same run with every advantage zeroed (only the KL term acts) stays where
    // it started.
    let control = RecordingContext::new("grpo-control");
    run(
        &verdict_spec(root.path(), lora(), steps, "control"),
        &control,
        Ablation {
            zero_advantages: true,
        },
    );
    let flat = series(&control, "reward_mean");
    println!("control reward_mean by step: {flat:.3?}");
    assert!(flat.iter().all(|&r| r < -0.5), "{flat:?}");
}

#[test]
fn the_policy_gradient_matches_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinySpec::default());
    let b = base(dir.path());
    let model = full_model(&b);
    let config = GrpoLossConfig {
        clip_low: 0.2,
        clip_high: 0.2,
        kl_coef: 1.0,
    };
    // Two samples with opposite advantages; old and reference log-probs offset from the current
    // ones so that some ratios sit inside the clip range and some beyond it on either side.
    let offsets = [0.05, -0.4, 0.4, -0.05, 0.1, -0.3, 0.3, 0.0, -0.1, 0.2, 0.15];
    let samples: Vec<(Vec<u32>, LossRows, f64)> = [(1, 1.3), (2, -0.8)]
        .into_iter()
        .map(|(seed, adv)| {
            let toks = tokens(seed, 16, 96);
            let rows = LossRows::completion(&toks, 5);
            (toks, rows, adv)
        })
        .collect();
    let total_rows: usize = samples.iter().map(|s| s.1.len()).sum();
    let weight = 1.0 / total_rows as f64;
    let anchors: Vec<(Vec<f32>, Vec<f32>)> = samples
        .iter()
        .map(|(toks, rows, _)| {
            let lp = sequence_log_probs(&model, toks, rows, 64).unwrap();
            let old = lp
                .iter()
                .zip(offsets.iter().cycle())
                .map(|(x, o)| x + *o as f32);
            let reference = lp
                .iter()
                .zip(offsets.iter().rev().cycle())
                .map(|(x, o)| x - *o as f32);
            (old.collect(), reference.collect())
        })
        .collect();
    let loss_at = |m: &TrainableQwen2| -> f64 {
        let mut total = 0.0;
        for ((toks, rows, adv), (old, reference)) in samples.iter().zip(&anchors) {
            let lp = sequence_log_probs(m, toks, rows, 64).unwrap();
            for (i, &x) in lp.iter().enumerate() {
                total += weight
                    * token_terms(
                        x as f64,
                        old[i] as f64,
                        Some(reference[i] as f64),
                        *adv,
                        &config,
                    )
                    .loss;
            }
        }
        total
    };
    let mut sums = GradAccumulator::new();
    let mut clipped = 0;
    for ((toks, rows, adv), (old, reference)) in samples.iter().zip(&anchors) {
        let loss = GrpoLoss {
            config,
            advantage: *adv,
            old,
            reference: Some(reference),
            weight,
            temperature: 1.0,
            stats: Default::default(),
        };
        accumulate_sequence(&model, toks, rows, &loss, None, 4, &mut sums).unwrap();
        clipped += loss.stats.borrow().clipped;
    }
    assert!(
        clipped > 0 && clipped < total_rows,
        "{clipped} of {total_rows} clipped"
    );
    let grads = sums.into_scaled(1.0).unwrap();
    check_gradients_by_finite_differences(&model, &grads, &loss_at, 3, 1e-3);
}

#[test]
fn after_an_update_the_engine_scores_a_sequence_as_the_trainer_does() {
    for adapter in [lora(), None] {
        let root = tempfile::tempdir().unwrap();
        setup_verdict_task(root.path());
        let spec = verdict_spec(root.path(), adapter, 4, "out");
        let mut session = TrainSession::load(&spec, "on-policy", &Device::Cpu, 128).unwrap();
        let mut engine = RolloutEngine::new(
            &session.policy_weights().unwrap(),
            &session.base.config,
            &session.base.tokenizer,
            (DType::F32, &Device::Cpu),
            RolloutCapacity {
                kv_cache_bytes: 16 << 20,
                max_len: 128,
                max_num_seqs: 8,
            },
        )
        .unwrap();
        let toks = tokens(3, 24, common::grpo::VOCAB);
        let rows = LossRows::completion(&toks, 6);
        let engine_lp = |engine: &RolloutEngine| -> Vec<f32> {
            let logits = engine_logits(engine.model(), &toks);
            rows.positions
                .iter()
                .zip(&rows.targets)
                .map(|(&p, &t)| host_log_prob(&logits[p as usize], t) as f32)
                .collect()
        };
        let before = engine_lp(&engine);
        // Two optimizer updates of an NLL step, as any loss would move the weights.
        for _ in 0..2 {
            let mut sums = GradAccumulator::new();
            let nll = NegLogLikelihood {
                weight: 1.0 / rows.len() as f64,
            };
            accumulate_sequence(&session.model, &toks, &rows, &nll, None, 64, &mut sums).unwrap();
            session.apply_update(sums).unwrap();
        }
        let trainer = sequence_log_probs(&session.model, &toks, &rows, 64).unwrap();
        let moved = max_abs_diff(&trainer, &before);
        assert!(moved > 1e-2, "the update barely moved the policy: {moved}");
        engine
            .load_weights(&session.policy_weights().unwrap())
            .unwrap();
        let after = engine_lp(&engine);
        let gap = max_abs_diff(&trainer, &after);
        assert!(gap <= 1e-4, "engine vs trainer after the update: {gap}");
    }
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let root = tempfile::tempdir().unwrap();
    setup_verdict_task(root.path());
    let mut spec = verdict_spec(root.path(), None, 6, "resumed");
    spec.run.checkpoint_every_steps = 2;
    let first = RecordingContext {
        cancel_after_step: Some(3),
        ..RecordingContext::new("resume")
    };
    assert!(matches!(
        run(&spec, &first, Ablation::default()),
        RunOutcome::Cancelled
    ));
    let second = RecordingContext::new("resume");
    assert!(matches!(
        run(&spec, &second, Ablation::default()),
        RunOutcome::Completed(_)
    ));
    assert_eq!(
        second.step_numbers(),
        vec![3, 4, 5, 6],
        "resumes after the step-2 checkpoint"
    );

    let mut straight_spec = spec.clone();
    straight_spec.output_dir = root.path().join("straight");
    let straight = RecordingContext::new("resume");
    run(&straight_spec, &straight, Ablation::default());
    // The rollouts after the resume are the ones the uninterrupted run drew.
    assert_eq!(
        series(&second, "reward_mean"),
        series(&straight, "reward_mean")[2..].to_vec()
    );
    assert_same_final_weights(
        &spec.output_dir,
        &straight_spec.output_dir,
        "resume",
        Some(6),
    );
}

#[test]
fn bad_rows_fail_the_job_naming_the_row_or_are_skipped() {
    let root = tempfile::tempdir().unwrap();
    setup_verdict_task(root.path());
    let data = root.path().join("rl.jsonl");
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str(
        &serde_json::json!({
            "context_messages": [{"role": "user", "content": "w4"}],
            "winner": "tie"
        })
        .to_string(),
    );
    text.push('\n');
    // A prompt longer than max_prompt_len (64 tokens).
    let long = vec!["w6"; 80].join(" ");
    text.push_str(
        &serde_json::json!({
            "context_messages": [{"role": "user", "content": long}],
            "winner": "model_a"
        })
        .to_string(),
    );
    text.push('\n');
    std::fs::write(&data, text).unwrap();

    let spec = verdict_spec(root.path(), lora(), 1, "out");
    let Err(err) = Trainer::new(Device::Cpu).run(&spec, &RecordingContext::new("bad")) else {
        panic!("a bad row fails the job")
    };
    assert_eq!(err.kind, TrainErrorKind::InvalidData);
    assert!(
        err.message.contains("rl.jsonl row 17") && err.message.contains("\"tie\""),
        "{}",
        err.message
    );

    let mut skipping = spec.clone();
    let TaskSpec::Grpo(grpo) = &mut skipping.task else {
        unreachable!()
    };
    grpo.skip_bad_rows = true;
    let ctx = RecordingContext::new("skip");
    assert!(matches!(
        Trainer::new(Device::Cpu).run(&skipping, &ctx).unwrap(),
        RunOutcome::Completed(_)
    ));
    let messages = ctx.messages.lock().unwrap().join("\n");
    assert!(
        messages.contains("row 17") && messages.contains("row 18"),
        "{messages}"
    );
    assert!(
        messages.contains("more than max_prompt_len 64"),
        "{messages}"
    );
    assert!(messages.contains("skipped 2 of 18 rows"), "{messages}");
}
