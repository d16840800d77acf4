//! `rmr1 bench grpo`: where a GRPO step's time goes on the CPU — weight hand-over to the engine,
//! rollouts, the trainer's old/reference log-probs, the updates — for full fine-tuning of a small
//! random model and LoRA on a real one, both on RM-R1-shaped prompts (the instruct judge prompt
//! over a short pair). The reference measured in the same run is the rollout engine's own prefill
//! of the same sequences: the updates' tokens/s against it says what a trainer token costs.

use super::train::{engine_prefill_tokens_per_s, peak_rss_mib, reset_peak_rss, small_random};
use crate::judge::prompt::judge_messages;
use crate::judge::{PairInput, PromptFamily, Turn};
use crate::model::base_weights::BaseWeights;
use crate::train::executor::{CheckpointReport, JobContext, StepReport};
use crate::train::export::{qwen2_config_json, write_hf_checkpoint, TokenizerFiles};
use crate::train::{GrpoSpec, LoraSpec, OptimizerSpec, RunOutcome, RunPolicy, TaskSpec, TrainSpec};
use anyhow::{bail, Result};
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

#[derive(clap::Args, Debug, Clone)]
pub struct GrpoBenchArgs {
    /// The real model (GGUF or HF dir): the LoRA row, and the tokenizer and chat template of both.
    #[arg(long)]
    pub model: String,
    /// Prompts per step.
    #[arg(long, default_value_t = 1)]
    pub prompts: usize,
    /// Samples per prompt (G).
    #[arg(long, default_value_t = 4)]
    pub group_size: usize,
    #[arg(long, default_value_t = 48)]
    pub max_response_len: usize,
    /// Steps per row; the table averages all but the first (which also loads the model).
    #[arg(long, default_value_t = 2)]
    pub steps: u64,
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    /// Only the small random model (minutes less).
    #[arg(long)]
    pub skip_lora: bool,
}

/// Collects step reports; nothing else.
#[derive(Default)]
struct Collect {
    steps: Mutex<Vec<StepReport>>,
}

impl JobContext for Collect {
    fn job_id(&self) -> &str {
        "bench-grpo"
    }
    fn is_cancelled(&self) -> bool {
        false
    }
    fn running(&self) {}
    fn step(&self, report: &StepReport) {
        eprintln!(
            "  step {}: rollout {:.1} s, scoring {:.1} s, updates {:.1} s",
            report.step,
            report.metrics["rollout_seconds"],
            report.metrics["score_seconds"],
            report.metrics["update_seconds"]
        );
        self.steps.lock().unwrap().push(report.clone());
    }
    fn checkpoint_saved(&self, _: &CheckpointReport) {}
    fn eval(&self, _: u64, _: &BTreeMap<String, f64>) {}
    fn warn(&self, message: &str) {
        eprintln!("  warn: {message}");
    }
    fn info(&self, message: &str) {
        eprintln!("  {message}");
    }
}

/// RLVR rows whose prompt is the instruct judge prompt over a short question and two answers.
fn write_rows(path: &Path, n: usize) -> Result<()> {
    let mut lines = Vec::new();
    for i in 0..n {
        let input = PairInput::Responses {
            conversation: vec![Turn::user(format!(
                "What is {} + {}? Answer with the number and one sentence of explanation.",
                17 + i,
                25 + 2 * i
            ))],
            response_a: format!("{}. Adding the tens and the ones gives it.", 42 + 3 * i),
            response_b: format!("{}. I counted up from the first number.", 41 + 3 * i),
        };
        let messages: Vec<serde_json::Value> = judge_messages(PromptFamily::Instruct, &input)
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        lines.push(
            serde_json::json!({"context_messages": messages, "winner": "model_a"}).to_string(),
        );
    }
    std::fs::write(path, lines.join("\n") + "\n")?;
    Ok(())
}

struct Row {
    name: String,
    figures: BTreeMap<String, f64>,
    prefill_tokens_per_s: f64,
    peak_mib: f64,
}

/// The engine's prefill of one rollout-shaped sequence (the first prompt plus a response's worth
/// of tokens) on the row's weights.
fn prefill_reference(base: &BaseWeights, data: &Path, response_len: usize) -> Result<f64> {
    let text = std::fs::read_to_string(data)?;
    let row: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or("{}"))?;
    let messages = crate::train::sft_data::context_messages(&row).map_err(anyhow::Error::msg)?;
    let mut tokens = base.tokenizer.encode_chat_prompt(&messages)?;
    let filler = tokens[tokens.len() / 2];
    tokens.extend(std::iter::repeat_n(filler, response_len));
    engine_prefill_tokens_per_s(&base.config, &base.tensors, &tokens)
}

fn measure(name: &str, spec: TrainSpec, prefill: f64, args: &GrpoBenchArgs) -> Result<Row> {
    eprintln!("{name}:");
    reset_peak_rss();
    let ctx = Collect::default();
    let TaskSpec::Grpo(grpo) = &spec.task else {
        bail!("a GRPO spec")
    };
    match crate::train::grpo::run(&spec, grpo, &ctx, &Device::Cpu) {
        Ok(RunOutcome::Completed(_)) => {}
        Ok(RunOutcome::Cancelled) => bail!("cancelled"),
        Err(e) => bail!("{e}"),
    }
    let steps = ctx.steps.into_inner().unwrap();
    let timed: Vec<&StepReport> = steps.iter().skip(usize::from(args.steps > 1)).collect();
    let mut figures = BTreeMap::new();
    for key in [
        "weight_sync_seconds",
        "rollout_seconds",
        "score_seconds",
        "update_seconds",
        "step_seconds",
        "rollout_tokens_per_s",
        "trainer_tokens_per_s",
        "response_length_mean",
    ] {
        let mean = timed.iter().map(|s| s.metrics[key]).sum::<f64>() / timed.len() as f64;
        figures.insert(key.to_string(), mean);
    }
    Ok(Row {
        name: name.to_string(),
        figures,
        prefill_tokens_per_s: prefill,
        peak_mib: peak_rss_mib(),
    })
}

fn spec(
    base: &Path,
    data: &Path,
    out: &Path,
    adapter: Option<LoraSpec>,
    a: &GrpoBenchArgs,
) -> TrainSpec {
    let task = TaskSpec::Grpo(GrpoSpec {
        group_size: a.group_size,
        prompts_per_step: a.prompts,
        prompts_per_update: a.prompts,
        max_response_len: a.max_response_len,
        max_prompt_len: 4096,
        rollout_kv_cache_mib: 512,
        ..GrpoSpec::with_defaults(vec![data.to_path_buf()])
    });
    TrainSpec {
        base_model: base.display().to_string(),
        optimizer: OptimizerSpec::default_for(&task),
        task,
        adapter,
        run: RunPolicy {
            seed: 1,
            checkpoint_every_steps: 0,
            keep_last_checkpoints: 1,
            max_steps: a.steps,
            epochs: 1000,
        },
        output_dir: out.to_path_buf(),
    }
}

pub fn run(args: GrpoBenchArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("rmr1-bench-grpo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, &args);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &Path, args: &GrpoBenchArgs) -> Result<()> {
    let args = args.clone();
    let data = dir.join("rlvr.jsonl");
    write_rows(&data, args.prompts.max(1) * 4)?;
    let base = BaseWeights::load(&args.model, DType::F32, &Device::Cpu)?;
    let (config, tensors) = small_random(base.config.vocab_size)?;
    let small = dir.join("small");
    write_hf_checkpoint(
        &small,
        &qwen2_config_json(&config, DType::F32, base.tokenizer.eos_ids())?,
        &tensors,
        DType::F32,
        TokenizerFiles::of_base(&base, None),
        u64::MAX,
    )?;
    let real_prefill = prefill_reference(&base, &data, args.max_response_len)?;
    drop(base);
    let small_base = BaseWeights::load(&small.display().to_string(), DType::F32, &Device::Cpu)?;
    let small_prefill = prefill_reference(&small_base, &data, args.max_response_len)?;
    drop(small_base);

    let mut rows = vec![measure(
        "full fine-tune, random 4x256 (f32)",
        spec(&small, &data, &dir.join("out-small"), None, &args),
        small_prefill,
        &args,
    )?];
    if !args.skip_lora {
        let lora = LoraSpec {
            rank: args.lora_rank,
            alpha: 2.0 * args.lora_rank as f64,
            dropout: 0.0,
            target_modules: vec![],
        };
        rows.push(measure(
            &format!(
                "LoRA r{} all 7 modules, {} (f32)",
                args.lora_rank, args.model
            ),
            spec(
                Path::new(&args.model),
                &data,
                &dir.join("out-lora"),
                Some(lora),
                &args,
            ),
            real_prefill,
            &args,
        )?);
    }

    println!(
        "\nGRPO step on the CPU: {} prompt(s) × {} samples, responses ≤ {} tokens, RM-R1 instruct \
         prompts; mean of {} step(s) after the first\n",
        args.prompts,
        args.group_size,
        args.max_response_len,
        args.steps.saturating_sub(1).max(1)
    );
    println!("| configuration | step s | weight sync s | rollout s | old+ref log-probs s | updates s | rollout gen tok/s | update tok/s | engine prefill tok/s | update / prefill | response len | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let f = |k: &str| r.figures[k];
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.3} | {:.1} | {:.0} |",
            r.name,
            f("step_seconds"),
            f("weight_sync_seconds"),
            f("rollout_seconds"),
            f("score_seconds"),
            f("update_seconds"),
            f("rollout_tokens_per_s"),
            f("trainer_tokens_per_s"),
            r.prefill_tokens_per_s,
            f("trainer_tokens_per_s") / r.prefill_tokens_per_s,
            f("response_length_mean"),
            r.peak_mib
        );
    }
    println!(
        "\nupdate tok/s counts whole sequences (prompt + response) through forward and backward;\n\
         engine prefill: the rollout engine's forward over one sequence of the same shape, same weights,\n\
         this run (a recomputed update costs ~3-4 forwards)."
    );
    Ok(())
}
