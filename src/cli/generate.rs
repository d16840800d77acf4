//! `rmr1 generate`: plain text generation with the engine, streamed to stdout.

use anyhow::{Context, Result};
use rmr1::engine::{EngineConfig, EngineEvent, EngineHandle, GenerateRequest, SamplingParams};
use rmr1::model::chat_template::ChatMessage;
use rmr1::model::{self, LoadOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A Hugging Face model directory, a GGUF file, or a hub id (owner/name[@revision]).
    #[arg(long)]
    model: String,
    /// tokenizer.json to use instead of the model's own.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A PEFT LoRA adapter directory, merged into --model's weights at load (a GGUF base is
    /// dequantized to dense first).
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long)]
    seed: Option<u64>,
    /// cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value_t = model::DeviceChoice::Auto)]
    device: model::DeviceChoice,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let loaded = model::load(
        &args.model,
        &LoadOptions {
            tokenizer: args.tokenizer.clone(),
            adapter: args.adapter.clone(),
            device: args.device.open()?,
            ..LoadOptions::default()
        },
    )?;
    let tokenizer = &loaded.tokenizer;
    let text = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        tokenizer.apply_chat_template(&messages, true)?
    } else {
        args.prompt.clone()
    };
    let prompt_tokens = tokenizer.encode(&text)?;
    let engine = EngineHandle::start(
        loaded.model,
        Arc::new(tokenizer.inner().clone()),
        tokenizer.eos_ids().to_vec(),
        EngineConfig::default(),
    )?;
    let started = Instant::now();
    let mut stream = engine
        .submit(GenerateRequest {
            prompt_tokens,
            sampling: SamplingParams {
                temperature: args.temperature,
                top_p: args.top_p,
                top_k: args.top_k,
                seed: args.seed,
                max_new_tokens: args.max_new_tokens,
                ..SamplingParams::default()
            },
        })
        .context("submitting the prompt")?;
    let mut stdout = std::io::stdout();
    let mut first_token = None;
    while let Some(event) = stream.next_blocking() {
        match event {
            EngineEvent::Token(t) => {
                first_token.get_or_insert_with(Instant::now);
                write!(stdout, "{}", t.text)?;
                stdout.flush()?;
            }
            EngineEvent::Finished(f) => {
                writeln!(stdout, "{}", f.final_delta)?;
                let decode_time = first_token
                    .map(|t| t.elapsed().as_secs_f64())
                    .unwrap_or_default();
                let decode_rate = if f.usage.completion_tokens > 1 && decode_time > 0.0 {
                    (f.usage.completion_tokens - 1) as f64 / decode_time
                } else {
                    0.0
                };
                eprintln!(
                    "\n[{}] prompt {} tokens, generated {} tokens in {:.2}s; \
                     time to first token {:.0} ms, decode {:.1} tokens/s",
                    f.reason.as_str(),
                    f.usage.prompt_tokens,
                    f.usage.completion_tokens,
                    started.elapsed().as_secs_f64(),
                    f.timings.time_to_first_token.as_secs_f64() * 1e3,
                    decode_rate
                );
                break;
            }
            EngineEvent::Error(e) => anyhow::bail!("generation failed: {e}"),
        }
    }
    Ok(())
}
