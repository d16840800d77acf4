//! `rmr1 bench engine`: CPU throughput of the engine on a GGUF model, with candle-transformers'
//! `quantized_qwen2` measured in the same run as the reference. Prints a table; asserts nothing.

use crate::engine::{EngineConfig, EngineEvent, EngineHandle, GenerateRequest, SamplingParams};
use crate::model::{self, LoadOptions};
use anyhow::{Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_qwen2::ModelWeights;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// GGUF model file (the reference implementation loads GGUF only).
    #[arg(long)]
    pub model: String,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Prompt tokens of each sequence in the decode measurements.
    #[arg(long, default_value_t = 64)]
    pub decode_prompt_tokens: usize,
    /// Generated tokens per sequence in the decode measurements.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Concurrency levels for aggregate decode.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Skip candle-transformers' reference (when a peer such as llama.cpp is measured instead).
    #[arg(long)]
    pub no_reference: bool,
    /// Also write the figures as JSON (scripts/cpu-vs-llamacpp.sh reads them).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Deterministic filler prompt of `n` tokens; `salt` keeps sequences from sharing a cached prefix.
fn synthetic_prompt(n: usize, salt: u32, vocab: u32) -> Vec<u32> {
    // Ordinary-text token ids (well below the special tokens at the top of the vocabulary).
    let span = vocab.min(100_000) - 1000;
    (0..n as u32)
        .map(|i| 1000 + (i.wrapping_mul(2_654_435_761).wrapping_add(salt * 7919)) % span)
        .collect()
}

struct DecodeResult {
    tokens: usize,
    seconds: f64,
}

/// Runs `k` sequences together; decode rate counts tokens after each sequence's first one, over the
/// time from the last first-token to the last token, so prefill is excluded.
fn engine_decode(
    engine: &EngineHandle,
    args: &BenchArgs,
    k: usize,
    vocab: u32,
) -> Result<DecodeResult> {
    let mut streams = Vec::new();
    for i in 0..k {
        streams.push(engine.submit(GenerateRequest {
            prompt_tokens: synthetic_prompt(args.decode_prompt_tokens, 100 + i as u32, vocab),
            sampling: SamplingParams {
                max_new_tokens: args.new_tokens,
                ignore_eos: true,
                ..SamplingParams::default()
            },
        })?);
    }
    let mut first_times = Vec::new();
    let mut last = Instant::now();
    let mut decode_tokens = 0;
    // Streams are drained in turn; events are timestamped by arrival, which is close enough at
    // millisecond-scale steps since the engine thread runs independently of this loop.
    let mut threads = Vec::new();
    for mut s in streams {
        threads.push(std::thread::spawn(move || {
            let mut first = None;
            let mut last = Instant::now();
            let mut n = 0usize;
            while let Some(ev) = s.next_blocking() {
                match ev {
                    EngineEvent::Token(_) => {
                        let now = Instant::now();
                        if first.is_none() {
                            first = Some(now);
                        } else {
                            n += 1;
                        }
                        last = now;
                    }
                    EngineEvent::Finished(_) | EngineEvent::Error(_) => break,
                }
            }
            (first.unwrap_or(last), last, n)
        }));
    }
    for t in threads {
        let (first, l, n) = t.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
        first_times.push(first);
        last = last.max(l);
        decode_tokens += n;
    }
    let start = first_times.into_iter().max().context("no sequences")?;
    // Tokens generated before `start` by sequences that started earlier still count toward the
    // aggregate; the bias is small for equal prompts admitted in the same step.
    Ok(DecodeResult {
        tokens: decode_tokens,
        seconds: (last - start).as_secs_f64().max(1e-9),
    })
}

fn reference_run(
    path: &str,
    prompt: &[u32],
    new_tokens: usize,
) -> Result<(Duration, DecodeResult)> {
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
    let started = Instant::now();
    let input = Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&input, 0)?.squeeze(0)?;
    let prefill = started.elapsed();
    let mut next = crate::engine::sampler::argmax(&logits.to_vec1::<f32>()?);
    let decode_start = Instant::now();
    for i in 0..new_tokens - 1 {
        let input = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward(&input, prompt.len() + i)?.squeeze(0)?;
        next = crate::engine::sampler::argmax(&logits.to_vec1::<f32>()?);
    }
    Ok((
        prefill,
        DecodeResult {
            tokens: new_tokens - 1,
            seconds: decode_start.elapsed().as_secs_f64(),
        },
    ))
}

pub fn run(args: BenchArgs) -> Result<()> {
    let loaded = model::load(&args.model, &LoadOptions::default())?;
    let vocab = loaded.model.config().vocab_size as u32;
    let engine = EngineHandle::start(
        loaded.model,
        Arc::new(loaded.tokenizer.inner().clone()),
        loaded.tokenizer.eos_ids().to_vec(),
        EngineConfig {
            max_num_batched_tokens: args.prompt_tokens.max(512),
            ..EngineConfig::default()
        },
    )?;
    let threads = candle_core::utils::get_num_threads();
    println!(
        "rmr1 bench: {} on CPU ({threads} threads), prefill P={}, decode P={} G={}",
        args.model, args.prompt_tokens, args.decode_prompt_tokens, args.new_tokens
    );

    // Warm-up (page in weights, allocate buffers).
    let warm = synthetic_prompt(32, 1, vocab);
    let mut s = engine.submit(GenerateRequest {
        prompt_tokens: warm,
        sampling: SamplingParams::greedy(4),
    })?;
    while let Some(ev) = s.next_blocking() {
        if matches!(ev, EngineEvent::Finished(_) | EngineEvent::Error(_)) {
            break;
        }
    }

    let prompt = synthetic_prompt(args.prompt_tokens, 2, vocab);
    let started = Instant::now();
    let mut s = engine.submit(GenerateRequest {
        prompt_tokens: prompt.clone(),
        sampling: SamplingParams::greedy(1),
    })?;
    while let Some(ev) = s.next_blocking() {
        if matches!(ev, EngineEvent::Token(_)) {
            break;
        }
    }
    let ours_prefill = started.elapsed();
    drop(s);

    let mut rows = Vec::new();
    for &k in &args.concurrency {
        rows.push((k, engine_decode(&engine, &args, k, vocab)?));
    }
    drop(engine);

    let rate = |tokens: usize, secs: f64| tokens as f64 / secs;
    let p_ours = rate(args.prompt_tokens, ours_prefill.as_secs_f64());
    if let Some(path) = &args.json {
        let decode: Vec<_> = rows
            .iter()
            .map(|(k, r)| serde_json::json!({"concurrency": k, "tok_s": rate(r.tokens, r.seconds)}))
            .collect();
        let json = serde_json::json!({
            "prefill_tokens": args.prompt_tokens,
            "prefill_tok_s": p_ours,
            "decode": decode,
        });
        std::fs::write(path, json.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let reference = if args.no_reference {
        None
    } else {
        let decode_prompt = synthetic_prompt(args.decode_prompt_tokens, 100, vocab);
        let (_, ref_decode) = reference_run(&args.model, &decode_prompt, args.new_tokens)?;
        let (ref_prefill, _) = reference_run(&args.model, &prompt, 2)?;
        Some((
            rate(args.prompt_tokens, ref_prefill.as_secs_f64()),
            rate(ref_decode.tokens, ref_decode.seconds),
        ))
    };
    let shown = |ours: f64, reference: Option<f64>| match reference {
        Some(r) => format!("{r:.1} | {:.2}x", ours / r),
        None => "- | -".to_string(),
    };
    let ours_single = rows
        .iter()
        .find(|(k, _)| *k == 1)
        .map(|(_, r)| rate(r.tokens, r.seconds));
    println!();
    println!("| measurement | rmr1 tok/s | reference tok/s | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| prefill {} tokens | {p_ours:.1} | {} |",
        args.prompt_tokens,
        shown(p_ours, reference.map(|r| r.0))
    );
    for (k, r) in &rows {
        let ours = rate(r.tokens, r.seconds);
        if *k == 1 {
            println!(
                "| decode, 1 sequence | {ours:.1} | {} |",
                shown(ours, reference.map(|r| r.1))
            );
        } else {
            let vs_single = ours_single.map(|s| format!("{:.2}x of ours at 1", ours / s));
            println!(
                "| decode, {k} sequences (aggregate) | {ours:.1} | - | {} |",
                vs_single.unwrap_or_default()
            );
        }
    }
    Ok(())
}
