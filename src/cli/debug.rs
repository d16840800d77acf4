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
