//! `rmr1 bench train`: SFT training throughput and peak memory on the CPU — LoRA on a real model
//! (dequantized) and full fine-tuning on a small random one — with the engine's dense prefill of the
//! same sequence on the same weights, measured in the same run, as the reference. Prints a table.

use crate::gpu_check::model::prompt_logits;
use crate::model::base_weights::BaseWeights;
use crate::model::{Qwen2, Qwen2Config};
use crate::train::forward::TrainableQwen2;
use crate::train::grad_step::{accumulate_sequence, LossRows, NegLogLikelihood};
use crate::train::optim::GradAccumulator;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::params::TrainParams;
use crate::train::rng::SplitMix64;
use crate::train::spec::{LoraSpec, LORA_MODULES};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainBenchArgs {
    /// The real model for the LoRA row (GGUF or HF dir); omitted: only the tiny full fine-tune.
    #[arg(long)]
    pub model: Option<String>,
    /// Tokens per training sequence (half prompt, half completion).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Timed optimizer steps per row (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
}

/// Peak resident memory since the last reset, in MiB (Linux `VmHWM`).
pub(crate) fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets `VmHWM` to the current RSS so each row reports its own peak.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Row {
    name: String,
    trainable: usize,
    train_tokens_per_s: f64,
    step_seconds: f64,
    prefill_tokens_per_s: f64,
    peak_mib: f64,
}

fn synthetic_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = SplitMix64::new(42);
    let span = vocab.min(100_000).saturating_sub(100).max(10) as u64;
    (0..n)
        .map(|_| 50 + (rng.next_u64() % span) as u32)
        .collect()
}

/// Engine prefill of `tokens` on dense weights: forward only, the yardstick for a training step.
pub(crate) fn engine_prefill_tokens_per_s(
    config: &Qwen2Config,
    tensors: &BTreeMap<String, Tensor>,
    tokens: &[u32],
) -> Result<f64> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let model = Qwen2::from_var_builder(
        config,
        VarBuilder::from_tensors(map, DType::F32, &Device::Cpu),
    )?;
    let prompts = [tokens.to_vec()];
    prompt_logits(&model, &prompts, 1)?; // warm-up
    let start = Instant::now();
    prompt_logits(&model, &prompts, 1)?;
    Ok(tokens.len() as f64 / start.elapsed().as_secs_f64())
}

fn measure(
    name: &str,
    config: &Qwen2Config,
    tensors: &BTreeMap<String, Tensor>,
    params: TrainParams,
    args: &TrainBenchArgs,
) -> Result<Row> {
    let tokens = synthetic_tokens(args.seq_len, config.vocab_size);
    let prefill = engine_prefill_tokens_per_s(config, tensors, &tokens)?;
    reset_peak_rss();
    let model = TrainableQwen2::new(config.clone(), params, DType::F32, args.seq_len)?;
    let mut optimizer = AdamW::new(AdamWConfig {
        lr: 1e-5,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    });
    let rows = LossRows::completion(&tokens, args.seq_len / 2);
    let loss = NegLogLikelihood {
        weight: 1.0 / rows.len() as f64,
    };
    let mut step = || -> Result<f64> {
        let start = Instant::now();
        let mut sums = GradAccumulator::new();
        accumulate_sequence(&model, &tokens, &rows, &loss, None, 128, &mut sums)?;
        let grads = sums.into_scaled(1.0)?;
        optimizer.step(&model.params.trainable(), &grads, 1e-5)?;
        Ok(start.elapsed().as_secs_f64())
    };
    step()?;
    let mut seconds = 0.0;
    for _ in 0..args.steps.max(1) {
        seconds += step()?;
    }
    let per_step = seconds / args.steps.max(1) as f64;
    Ok(Row {
        name: name.to_string(),
        trainable: model.params.trainable_elements(),
        train_tokens_per_s: args.seq_len as f64 / per_step,
        step_seconds: per_step,
        prefill_tokens_per_s: prefill,
        peak_mib: peak_rss_mib(),
    })
}

/// A random Qwen2 with the real tokenizer's vocabulary size but few, narrow layers.
pub(crate) fn small_random(vocab: usize) -> Result<(Qwen2Config, BTreeMap<String, Tensor>)> {
    let config: Qwen2Config = serde_json::from_value(serde_json::json!({
        "vocab_size": vocab, "hidden_size": 256, "intermediate_size": 704,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": true
    }))?;
    let dev = Device::Cpu;
    let (h, i, kv) = (256, 704, 2 * 64);
    let mut t = BTreeMap::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        Tensor::randn(0f32, 0.02, (vocab, h), &dev)?,
    );
    t.insert(
        "model.norm.weight".into(),
        Tensor::ones(h, DType::F32, &dev)?,
    );
    for l in 0..4 {
        let p = format!("model.layers.{l}");
        for (n, shape) in [
            ("self_attn.q_proj.weight", (h, h)),
            ("self_attn.k_proj.weight", (kv, h)),
            ("self_attn.v_proj.weight", (kv, h)),
            ("self_attn.o_proj.weight", (h, h)),
            ("mlp.gate_proj.weight", (i, h)),
            ("mlp.up_proj.weight", (i, h)),
            ("mlp.down_proj.weight", (h, i)),
        ] {
            t.insert(format!("{p}.{n}"), Tensor::randn(0f32, 0.05, shape, &dev)?);
        }
        for (n, len) in [
            ("self_attn.q_proj.bias", h),
            ("self_attn.k_proj.bias", kv),
            ("self_attn.v_proj.bias", kv),
        ] {
            t.insert(format!("{p}.{n}"), Tensor::zeros(len, DType::F32, &dev)?);
        }
        for n in ["input_layernorm.weight", "post_attention_layernorm.weight"] {
            t.insert(format!("{p}.{n}"), Tensor::ones(h, DType::F32, &dev)?);
        }
    }
    Ok((config, t))
}

pub fn run(args: TrainBenchArgs) -> Result<()> {
    let mut rows = Vec::new();
    let dev = Device::Cpu;
    let mut vocab = 151_936;
    if let Some(spec) = &args.model {
        let base = BaseWeights::load(spec, DType::F32, &dev)?;
        vocab = base.config.vocab_size;
        let lora = LoraSpec {
            rank: args.lora_rank,
            alpha: 2.0 * args.lora_rank as f64,
            dropout: 0.0,
            target_modules: vec![],
        };
        let targets: Vec<String> = LORA_MODULES.iter().map(|s| s.to_string()).collect();
        let params = TrainParams::with_lora(
            &base.tensors,
            &lora,
            base.config.num_hidden_layers,
            &targets,
            0,
            &dev,
        )?;
        rows.push(measure(
            &format!(
                "LoRA r{} all 7 modules, {} (f32)",
                args.lora_rank, base.spec
            ),
            &base.config,
            &base.tensors,
            params,
            &args,
        )?);
    }
    let (config, tensors) = small_random(vocab)?;
    let params = TrainParams::full(&tensors, &dev)?;
    rows.push(measure(
        "full fine-tune, random 4x256 (f32)",
        &config,
        &tensors,
        params,
        &args,
    )?);

    println!(
        "\nSFT training step on the CPU, one sequence of {} tokens ({} loss tokens), {} timed steps\n",
        args.seq_len,
        args.seq_len - args.seq_len / 2,
        args.steps
    );
    println!("| configuration | trainable params | train tok/s | step s | engine prefill tok/s (same weights) | train / prefill | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.1} | {:.3} | {:.0} |",
            r.name,
            r.trainable,
            r.train_tokens_per_s,
            r.step_seconds,
            r.prefill_tokens_per_s,
            r.train_tokens_per_s / r.prefill_tokens_per_s,
            r.peak_mib
        );
    }
    println!("\ntrain / prefill: a recomputed training step costs ~3-4 forwards (forward, recompute, backward);\nthe ratio shows how close the trainer is to that.");
    Ok(())
}
