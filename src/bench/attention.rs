//! `rmr1 bench attention`: the CPU paged attention at judge shapes, the serving backend against
//! the reference it is tested with, in the same run. Prints a table; asserts nothing.

use crate::model::attention::cpu::CpuPagedAttention;
use crate::model::attention::reference::ReferencePagedAttention;
use crate::model::attention::KvCacheDtype;
use crate::model::{AttentionBatch, PagedAttention, SequenceSpan};
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct AttentionBenchArgs {
    /// Query heads / kv heads / head dim (default: Qwen2.5-0.5B's).
    #[arg(long, value_delimiter = '/', default_value = "14/2/64")]
    pub heads: Vec<usize>,
    /// Timed repetitions per shape (the median is shown).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
}

/// A batch of `seqs` sequences, each adding `query_len` tokens after `cached` cached ones.
fn batch(seqs: usize, cached: usize, query_len: usize, block_size: usize) -> AttentionBatch {
    let context = cached + query_len;
    let blocks_per_seq = context.div_ceil(block_size);
    let mut batch = AttentionBatch::default();
    for s in 0..seqs {
        let block_table: Vec<u32> = (0..blocks_per_seq)
            .map(|b| (s * blocks_per_seq + b) as u32)
            .collect();
        let query_start = batch.num_tokens();
        for p in cached..context {
            let slot = block_table[p / block_size] as usize * block_size + p % block_size;
            batch.slot_mapping.push(slot as u32);
        }
        batch.sequences.push(SequenceSpan {
            query_start,
            query_len,
            context_len: context,
            block_table,
        });
    }
    batch
}

fn time_ms(
    attention: &mut dyn PagedAttention,
    inputs: &[Tensor; 3],
    batch: &AttentionBatch,
    repeats: usize,
) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        attention.forward(0, &inputs[0], &inputs[1], &inputs[2], batch)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn run(args: AttentionBenchArgs) -> Result<()> {
    let [heads, kv_heads, head_dim] = args.heads[..] else {
        anyhow::bail!("--heads takes query/kv/dim, e.g. 14/2/64");
    };
    let block_size = 16;
    // (label, sequences, cached tokens, new tokens): a judge prompt's uncached part after the
    // ~650-token system prompt, a whole prompt's first chunk, and decode at judge lengths.
    let shapes = [
        ("prefill chunk 512, context 0..512", 1, 0, 512),
        ("prefill chunk 512, context 650..1162", 1, 650, 512),
        ("decode 1 sequence, context 1200", 1, 1199, 1),
        ("decode 16 sequences, context 1200", 16, 1199, 1),
    ];
    let threads = candle_core::utils::get_num_threads();
    println!("rmr1 bench attention: {heads} q / {kv_heads} kv heads, head dim {head_dim}, one layer, {threads} threads");
    println!();
    println!("| shape | reference ms | f32 cache ms | f16 cache ms | f16 speed-up |");
    println!("|---|---:|---:|---:|---:|");
    for (label, seqs, cached, new) in shapes {
        let batch = batch(seqs, cached, new, block_size);
        let context_blocks = batch.sequences.iter().map(|s| s.block_table.len()).sum();
        let shape = crate::model::CacheShape {
            num_layers: 1,
            num_blocks: context_blocks,
            block_size,
            num_kv_heads: kv_heads,
            head_dim,
        };
        let n = batch.num_tokens();
        let random = |heads| Tensor::randn(0f32, 1.0, (n, heads, head_dim), &Device::Cpu);
        let inputs = [random(heads)?, random(kv_heads)?, random(kv_heads)?];
        // Fill the cached positions first so every backend attends to real values.
        let fill = self::batch(seqs, 0, cached + new, block_size);
        let m = fill.num_tokens();
        let fill_inputs = [heads, kv_heads, kv_heads]
            .map(|h| Tensor::randn(0f32, 1.0, (m, h, head_dim), &Device::Cpu));
        let [fq, fk, fv] = fill_inputs;
        let (fq, fk, fv) = (fq?, fk?, fv?);
        let mut reference = ReferencePagedAttention::new(shape, heads);
        let mut f32_cache = CpuPagedAttention::new(shape, heads, KvCacheDtype::F32);
        let mut f16_cache = CpuPagedAttention::new(shape, heads, KvCacheDtype::F16);
        let mut times = Vec::new();
        for attention in [
            &mut reference as &mut dyn PagedAttention,
            &mut f32_cache,
            &mut f16_cache,
        ] {
            attention.forward(0, &fq, &fk, &fv, &fill)?;
            times.push(time_ms(attention, &inputs, &batch, args.repeats)?);
        }
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.1}x |",
            times[0],
            times[1],
            times[2],
            times[0] / times[2]
        );
    }
    Ok(())
}
