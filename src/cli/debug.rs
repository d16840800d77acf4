//! `rmr1 debug` (hidden): developer tools for checking rmr1 against other implementations.

use anyhow::{Context, Result};
use rmr1::gpu_check::model::prompt_logits;
use rmr1::model::{self, LoadOptions};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum DebugCommand {
    /// Writes the logits at every position of a token sequence, from the engine's forward, as
    /// JSON `{"tokens": [...], "logits": [[...], ...]}` (scripts/verify_peft.py compares them).
    Logits(LogitsArgs),
    /// Reads a PEFT adapter and writes it back with rmr1's writer (checks PEFT loads what rmr1
    /// writes).
    ResaveAdapter {
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints the judge prompts for LLMBar-format pairs (`input`, `output_1`, `output_2`) as JSON
    /// lines with the exact token ids the judge feeds the engine, so a peer implementation can be
    /// timed on the same prompts (scripts/cpu-vs-llamacpp.sh).
    JudgePrompts(JudgePromptsArgs),
}

#[derive(clap::Args)]
pub struct JudgePromptsArgs {
    #[arg(long)]
    model: String,
    /// RM-R1 prompt family; default: the manifest of a known checkpoint.
    #[arg(long)]
    family: Option<rmr1::judge::PromptFamily>,
    /// An LLMBar `dataset.json` (a JSON array of pairs).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 0)]
    offset: usize,
    #[arg(long, default_value_t = 16)]
    count: usize,
}

#[derive(clap::Args)]
pub struct LogitsArgs {
    #[arg(long)]
    model: String,
    /// A PEFT LoRA adapter, merged at load as `serve --adapter` does.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    tokens: Vec<u32>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = model::DeviceChoice::Cpu)]
    device: model::DeviceChoice,
}

pub fn run(command: DebugCommand) -> Result<()> {
    match command {
        DebugCommand::Logits(args) => logits(args),
        DebugCommand::ResaveAdapter { adapter, out } => {
            rmr1::model::LoraAdapter::load_peft(&adapter, &candle_core::Device::Cpu)?
                .save_peft(&out)
        }
        DebugCommand::JudgePrompts(args) => judge_prompts(args),
    }
}

fn logits(args: LogitsArgs) -> Result<()> {
    let loaded = model::load(
        &args.model,
        &LoadOptions {
            adapter: args.adapter.clone(),
            device: args.device.open()?,
            ..LoadOptions::default()
        },
    )?;
    let (logits, _) = prompt_logits(
        &loaded.model,
        std::slice::from_ref(&args.tokens),
        args.tokens.len(),
    )?;
    let logits: Vec<Vec<f32>> = logits.to_dtype(candle_core::DType::F32)?.to_vec2()?;
    let json = serde_json::json!({ "tokens": args.tokens, "logits": logits });
    std::fs::write(&args.out, json.to_string())
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

fn judge_prompts(args: JudgePromptsArgs) -> Result<()> {
    use rmr1::judge::{judge_messages, manifest::choose_family, PairInput, Turn};
    let family = choose_family(&args.model, args.family, None)?.family;
    let loaded = model::load(&args.model, &LoadOptions::default())?;
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let records: Vec<serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON array", args.data.display()))?;
    let field = |record: &serde_json::Value, name: &str| -> Result<String> {
        record[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("a record has no string `{name}`"))
    };
    for (index, record) in records
        .iter()
        .enumerate()
        .skip(args.offset)
        .take(args.count)
    {
        let (instruction, a, b) = (
            field(record, "input")?,
            field(record, "output_1")?,
            field(record, "output_2")?,
        );
        let input = PairInput::Responses {
            conversation: vec![Turn::user(instruction.clone())],
            response_a: a.clone(),
            response_b: b.clone(),
        };
        let tokens = loaded
            .tokenizer
            .encode_chat_prompt(&judge_messages(family, &input))?;
        let line = serde_json::json!({
            "id": format!("{}#{index}", args.data.display()),
            "instruction": instruction,
            "response_a": a,
            "response_b": b,
            "prompt_tokens": tokens,
        });
        println!("{line}");
    }
    Ok(())
}
