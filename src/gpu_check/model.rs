//! The model half of the GPU check: loads a Hugging Face Qwen2 directory, writes the logits of chosen
//! prompt positions (one flat mixed-length prefill through the device's attention backend) and greedy
//! generations through the whole engine (scheduler, chunked prefill, prefix cache, device sampler),
//! for scripts/gpu_check.py to compare with transformers on the same card. Device-generic, so the
//! same code is exercised on the CPU by tests/gpu_check_model.rs.

use crate::engine::{
    cache_plan, EngineConfig, EngineEvent, EngineHandle, GenerateRequest, SamplingParams,
};
use crate::model::loader::{default_dtype, load_hf_weights};
use crate::model::{AttentionBatch, ForwardBatch, Qwen2, Qwen2Config, SequenceSpan};
use anyhow::{anyhow, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct ModelCheckInput {
    /// Token ids of each prompt (first wave: submitted together, different lengths batched).
    pub prompts: Vec<Vec<u32>>,
    /// How many final positions of each first-wave prompt have their logits written.
    pub logit_positions: usize,
    pub new_tokens: usize,
    /// Submitted after the first wave has finished, so a prefix they share with it is served from
    /// the prefix cache.
    pub second_wave: Vec<Vec<u32>>,
}

#[derive(Debug, Serialize)]
struct Generation {
    wave: u8,
    index: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    cached_tokens: usize,
}

#[derive(Debug, Serialize)]
struct ModelCheckOutput {
    /// (prompt, position) of each row of ours_logits.npy.
    logit_rows: Vec<(usize, usize)>,
    generations: Vec<Generation>,
    prefix_hit_tokens: u64,
}

fn load(dir: &Path, device: &Device) -> Result<Qwen2> {
    let config = Qwen2Config::from_json_file(&dir.join("config.json"))?;
    load_hf_weights(dir, &config, default_dtype(device), device)
}

/// Logits of the last `positions` tokens of every prompt, all prompts in one forward step (also
/// `rmr1 debug logits` and the export tests: the engine's own forward, paged attention included).
pub fn prompt_logits(
    model: &Qwen2,
    prompts: &[Vec<u32>],
    positions: usize,
) -> Result<(candle_core::Tensor, Vec<(usize, usize)>)> {
    let block_size = 16;
    let blocks: usize = prompts.iter().map(|p| p.len().div_ceil(block_size)).sum();
    let (mut attention, _) = cache_plan::build(
        model,
        &EngineConfig {
            block_size,
            num_blocks: Some(blocks),
            ..EngineConfig::default()
        },
    )?;
    let mut batch = ForwardBatch {
        attention: AttentionBatch::default(),
        ..ForwardBatch::default()
    };
    let mut rows = Vec::new();
    let mut next_block = 0u32;
    for (i, prompt) in prompts.iter().enumerate() {
        let n_blocks = prompt.len().div_ceil(block_size) as u32;
        let table: Vec<u32> = (next_block..next_block + n_blocks).collect();
        next_block += n_blocks;
        let query_start = batch.tokens.len();
        for (p, &token) in prompt.iter().enumerate() {
            batch.tokens.push(token);
            batch.positions.push(p as u32);
            batch
                .attention
                .slot_mapping
                .push(table[p / block_size] * block_size as u32 + (p % block_size) as u32);
            if p + positions >= prompt.len() {
                batch.logit_rows.push((query_start + p) as u32);
                rows.push((i, p));
            }
        }
        batch.attention.sequences.push(SequenceSpan {
            query_start,
            query_len: prompt.len(),
            context_len: prompt.len(),
            block_table: table,
        });
    }
    let logits = model.forward(&batch, attention.as_mut())?;
    Ok((logits, rows))
}

fn generate(
    engine: &EngineHandle,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    wave: u8,
) -> Result<Vec<Generation>> {
    let mut streams = Vec::new();
    for prompt in prompts {
        let sampling = SamplingParams {
            max_new_tokens: new_tokens,
            ignore_eos: true,
            logprobs: true,
            ..SamplingParams::greedy(new_tokens)
        };
        let request = GenerateRequest {
            prompt_tokens: prompt.clone(),
            sampling,
        };
        streams.push(
            engine
                .submit(request)
                .map_err(|e| anyhow!("submitting a check prompt: {e:?}"))?,
        );
    }
    let mut out = Vec::new();
    for (index, mut stream) in streams.into_iter().enumerate() {
        let mut logprobs = Vec::new();
        loop {
            match stream.next_blocking() {
                Some(EngineEvent::Token(t)) => logprobs.push(t.logprob.unwrap_or(f32::NAN)),
                Some(EngineEvent::Finished(f)) => {
                    out.push(Generation {
                        wave,
                        index,
                        tokens: f.token_ids,
                        logprobs,
                        cached_tokens: f.usage.cached_tokens,
                    });
                    break;
                }
                Some(EngineEvent::Error(e)) => anyhow::bail!("check generation failed: {e}"),
                None => anyhow::bail!("engine stopped during the check"),
            }
        }
    }
    Ok(out)
}

/// Writes `ours_logits.npy` and `ours.json` into `out_dir`.
pub fn run(model_dir: &Path, input: &Path, out_dir: &Path, device: &Device) -> Result<()> {
    let input: ModelCheckInput = serde_json::from_str(
        &std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?,
    )?;
    let model = load(model_dir, device)?;
    let (logits, logit_rows) = prompt_logits(&model, &input.prompts, input.logit_positions)?;
    logits.write_npy(out_dir.join("ours_logits.npy"))?;

    let tokenizer = Arc::new(crate::model::tokenizer::numbered_vocabulary(
        model.config().vocab_size,
    )?);
    // A small step budget so the longer prompts are prefilled in chunks over a cached prefix.
    let config = EngineConfig {
        max_num_batched_tokens: 256,
        max_num_seqs: 64,
        gpu_memory_fraction: 0.5,
        ..EngineConfig::default()
    };
    let engine = EngineHandle::start(model, tokenizer, Vec::new(), config)?;
    let mut generations = generate(&engine, &input.prompts, input.new_tokens, 1)?;
    generations.extend(generate(&engine, &input.second_wave, input.new_tokens, 2)?);
    let output = ModelCheckOutput {
        logit_rows,
        generations,
        prefix_hit_tokens: engine
            .stats()
            .prefix_hit_tokens
            .load(std::sync::atomic::Ordering::Relaxed),
    };
    std::fs::write(
        out_dir.join("ours.json"),
        serde_json::to_string_pretty(&output)?,
    )?;
    Ok(())
}
