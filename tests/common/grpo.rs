//! A verifiable task for GRPO on the tiny word-level model: the prompt's hint word says which side
//! wins, and the model's vocabulary holds the two exact verdict strings upstream's RL reward looks
//! for, so the real reward rule (`judge::rl_reward`) scores its samples.

use super::{write_tiny_model, TinySpec};
use rmr1::train::{GrpoSpec, LoraSpec, OptimizerSpec, RunPolicy, Schedule, TaskSpec, TrainSpec};
use std::path::Path;

/// Vocabulary: 0 `<unk>`, 1 `</s>`, 2..=9 `w2`..`w9`, then the two verdicts.
pub const VOCAB: usize = 12;
pub const ANSWER_A: u32 = 10;
pub const ANSWER_B: u32 = 11;
/// Hint words in the user turn: `w4` → model_a wins, `w5` → model_b.
pub const HINT_A: &str = "w4";
pub const HINT_B: &str = "w5";

/// Writes the tiny base model with the verdict words `<answer>[[A]]</answer>` (id 10) and
/// `<answer>[[B]]</answer>` (id 11).
pub fn write_verdict_model(dir: &Path) {
    write_tiny_model(
        dir,
        &TinySpec {
            vocab: VOCAB,
            seed: 11,
            ..TinySpec::default()
        },
    );
    let path = dir.join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object_mut().unwrap();
    vocab.remove("w10");
    vocab.remove("w11");
    vocab.insert("<answer>[[A]]</answer>".into(), ANSWER_A.into());
    vocab.insert("<answer>[[B]]</answer>".into(), ANSWER_B.into());
    std::fs::write(&path, tokenizer.to_string()).unwrap();
}

/// `n` RLVR rows alternating between the two hints (winner model_a, model_b).
pub fn write_verdict_task(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let (hint, winner) = if i % 2 == 0 {
                (HINT_A, "model_a")
            } else {
                (HINT_B, "model_b")
            };
            let filler = ["w6", "w7", "w8", "w9"][i % 4];
            serde_json::json!({
                "context_messages": [
                    {"role": "system", "content": "w3"},
                    {"role": "user", "content": format!("{filler} {hint}")}
                ],
                "winner": winner,
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A GRPO spec over `root/base` and `root/rl.jsonl` (8 prompts × 8 samples per step, two updates
/// per step, responses of at most 2 tokens).
pub fn verdict_spec(root: &Path, adapter: Option<LoraSpec>, steps: u64, out: &str) -> TrainSpec {
    TrainSpec {
        base_model: root.join("base").display().to_string(),
        task: TaskSpec::Grpo(GrpoSpec {
            group_size: 8,
            prompts_per_step: 8,
            prompts_per_update: 4,
            max_prompt_len: 64,
            max_response_len: 2,
            rollout_kv_cache_mib: 16,
            ..GrpoSpec::with_defaults(vec![root.join("rl.jsonl")])
        }),
        adapter,
        optimizer: OptimizerSpec {
            lr: 5e-3,
            schedule: Schedule::Constant,
            warmup_ratio: 0.0,
            ..OptimizerSpec::default()
        },
        run: RunPolicy {
            seed: 7,
            checkpoint_every_steps: 0,
            keep_last_checkpoints: 2,
            max_steps: steps,
            epochs: 1000,
        },
        output_dir: root.join(out),
    }
}

pub fn setup_verdict_task(root: &Path) {
    write_verdict_model(&root.join("base"));
    write_verdict_task(&root.join("rl.jsonl"), 16);
}
