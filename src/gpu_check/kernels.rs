//! Kernel checks: each CUDA kernel against its CPU reference on fresh random inputs, outputs poisoned
//! with NaN beforehand, the device synchronised after each kernel group so a CUDA fault is reported
//! against the check that caused it.

use super::{compare, CheckResult};
use crate::cuda::attention::CudaPagedAttention;
use crate::cuda::sampler as device_sampler;
use crate::engine::request::SamplingParams;
use crate::engine::sampler;
use crate::engine::token_sampler::Draw;
use crate::model::attention::reference::ReferencePagedAttention;
use crate::model::{AttentionBatch, BlockId, CacheShape, PagedAttention, SequenceSpan};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Runs every kernel check on `device` (a CUDA device).
pub fn run(device: &Device, seed: u64) -> Vec<CheckResult> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut results = Vec::new();
    // The served shapes: Qwen2.5-0.5B (14 q / 2 kv heads, d64), 7B (28 / 4, d128), 14B and 32B
    // (40 / 8, d128), and plain multi-head attention.
    let shapes = [(14, 2, 64), (28, 4, 128), (40, 8, 128), (4, 4, 64)];
    for (i, &(heads, kv_heads, head_dim)) in shapes.iter().enumerate() {
        for dtype in [DType::BF16, DType::F32] {
            if i > 0 && dtype == DType::F32 {
                continue;
            }
            let name = format!("attention {dtype:?} {heads}q/{kv_heads}kv d{head_dim}");
            match attention(device, dtype, heads, kv_heads, head_dim, &mut rng) {
                Ok(mut r) => results.append(&mut r),
                Err(e) => results.push(CheckResult::error(name, &e)),
            }
        }
    }
    match sampling(device, &mut rng) {
        Ok(mut r) => results.append(&mut r),
        Err(e) => results.push(CheckResult::error("sampling", &e)),
    }
    results.extend(super::fused::run(device, &mut rng));
    results
}

/// A sequence of the attention check: `cached` tokens written by a first step, `new` by a second.
struct Plan {
    cached: usize,
    new: usize,
}

/// Decode with short and long contexts (up to 24 512-position partitions, past 10k tokens), prefill
/// chunks over a short and a 10k cached prefix, and a fresh prefill, in one mixed batch.
const PLANS: [Plan; 7] = [
    Plan {
        cached: 12_000,
        new: 1,
    },
    Plan {
        cached: 10_000,
        new: 8,
    },
    Plan { cached: 4, new: 1 },
    Plan {
        cached: 699,
        new: 1,
    },
    Plan {
        cached: 1100,
        new: 1,
    },
    Plan {
        cached: 100,
        new: 40,
    },
    Plan { cached: 0, new: 30 },
];

/// A standard normal draw (Box-Muller).
pub(super) fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn random_values(rng: &mut StdRng, len: usize, dtype: DType) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let x = normal(rng);
            // Round through the kernel's dtype so the CPU reference sees exactly the device's inputs.
            match dtype {
                DType::BF16 => half::bf16::from_f32(x).to_f32(),
                DType::F16 => half::f16::from_f32(x).to_f32(),
                _ => x,
            }
        })
        .collect()
}

/// One step's batch: for every plan, `rows(plan)` query tokens ending at `context(plan)`.
fn step_batch(
    tables: &[Vec<BlockId>],
    block_size: usize,
    rows: impl Fn(&Plan) -> (usize, usize),
) -> AttentionBatch {
    let mut batch = AttentionBatch::default();
    for (plan, table) in PLANS.iter().zip(tables) {
        let (first, count) = rows(plan);
        if count == 0 {
            continue;
        }
        let query_start = batch.slot_mapping.len();
        for p in first..first + count {
            batch
                .slot_mapping
                .push(table[p / block_size] * block_size as u32 + (p % block_size) as u32);
        }
        batch.sequences.push(SequenceSpan {
            query_start,
            query_len: count,
            context_len: first + count,
            block_table: table[..(first + count).div_ceil(block_size)].to_vec(),
        });
    }
    batch
}

fn attention(
    device: &Device,
    dtype: DType,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rng: &mut StdRng,
) -> Result<Vec<CheckResult>> {
    let block_size = 16;
    let needed: Vec<usize> = PLANS
        .iter()
        .map(|p| (p.cached + p.new).div_ceil(block_size))
        .collect();
    let spare = 4;
    let shape = CacheShape {
        num_layers: 2,
        num_blocks: needed.iter().sum::<usize>() + spare,
        block_size,
        num_kv_heads: kv_heads,
        head_dim,
    };
    // Scrambled block tables: logical order never matches physical order.
    let mut ids: Vec<BlockId> = (0..shape.num_blocks as BlockId).collect();
    ids.shuffle(rng);
    let mut tables = Vec::new();
    let mut next = 0;
    for n in &needed {
        tables.push(ids[next..next + n].to_vec());
        next += n;
    }
    let spare_blocks = ids[next..].to_vec();

    let mut cpu = ReferencePagedAttention::new(shape, heads);
    let mut gpu = CudaPagedAttention::new(shape, heads, dtype, device)?;
    gpu.set_poison_outputs(true);
    let (atol, rtol) = if dtype == DType::F32 {
        (1e-4, 1e-4)
    } else {
        (2e-2, 2e-2)
    };
    let label = format!("{dtype:?} {heads}q/{kv_heads}kv d{head_dim}");
    let mut worst = 0.0f64;
    let mut bad = 0;
    let steps = [
        step_batch(&tables, block_size, |p| (0, p.cached)),
        step_batch(&tables, block_size, |p| (p.cached, p.new)),
    ];
    for batch in &steps {
        let n = batch.num_tokens();
        cpu.prepare(batch)?;
        gpu.prepare(batch)?;
        for layer in 0..shape.num_layers {
            let q = random_values(rng, n * heads * head_dim, dtype);
            let k = random_values(rng, n * kv_heads * head_dim, dtype);
            let v = random_values(rng, n * kv_heads * head_dim, dtype);
            let on =
                |data: &[f32], h: usize, dev: &Device| -> Result<Tensor> {
                    Ok(Tensor::from_slice(data, (n, h, head_dim), dev)?
                        .to_dtype(if dev.is_cpu() { DType::F32 } else { dtype })?)
                };
            let want = cpu
                .forward(
                    layer,
                    &on(&q, heads, &Device::Cpu)?,
                    &on(&k, kv_heads, &Device::Cpu)?,
                    &on(&v, kv_heads, &Device::Cpu)?,
                    batch,
                )?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let got = gpu
                .forward(
                    layer,
                    &on(&q, heads, device)?,
                    &on(&k, kv_heads, device)?,
                    &on(&v, kv_heads, device)?,
                    batch,
                )?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            crate::cuda::synchronize(crate::cuda::cuda_device(device)?)?;
            let (err, _, wrong) = compare(&got, &want, atol, rtol);
            worst = worst.max(err);
            bad += wrong;
        }
    }
    let mut results = vec![CheckResult::judged(
        format!("attention {label}"),
        worst,
        atol as f64,
        bad == 0,
        format!(
            "{} tokens over 2 steps x 2 layers, contexts up to {}; {bad} elements outside {atol}+{rtol}*|ref|",
            steps.iter().map(AttentionBatch::num_tokens).sum::<usize>(),
            PLANS.iter().map(|p| p.cached + p.new).max().unwrap_or(0)
        ),
    )];

    // The cache itself: every written block, then copy-on-write copies into spare blocks.
    let copies: Vec<(BlockId, BlockId)> = tables
        .iter()
        .zip(&spare_blocks)
        .map(|(t, &dst)| (t[0], dst))
        .collect();
    cpu.copy_blocks(&copies)?;
    gpu.copy_blocks(&copies)?;
    crate::cuda::synchronize(crate::cuda::cuda_device(device)?)?;
    let mut cache_err = 0.0f64;
    let mut cache_bad = 0;
    for layer in 0..shape.num_layers {
        for block in tables.iter().flatten().chain(&spare_blocks[..copies.len()]) {
            let (ck, cv) = cpu.read_block(layer, *block)?;
            let (gk, gv) = gpu.read_block(layer, *block)?;
            for (got, want) in [(gk, ck), (gv, cv)] {
                let (err, _, wrong) = compare(&got, &want, 0.0, 0.0);
                cache_err = cache_err.max(err);
                cache_bad += wrong;
            }
        }
    }
    results.push(CheckResult::new(
        format!("kv write + block copy {label}"),
        cache_err,
        0.0,
        format!(
            "bit-exact over {} blocks x 2 layers, {} copies; {cache_bad} differing",
            needed.iter().sum::<usize>(),
            copies.len()
        ),
    ));
    Ok(results)
}

fn sampling(device: &Device, rng: &mut StdRng) -> Result<Vec<CheckResult>> {
    let vocab = 151_936;
    let params = |temperature: f32, top_k: usize, top_p: f32| SamplingParams {
        temperature,
        top_k,
        top_p,
        ..SamplingParams::default()
    };
    let cases = [
        params(0.0, 0, 1.0),
        params(0.0, 0, 1.0), // with a tied maximum
        params(1.0, 1, 1.0),
        params(0.7, 0, 1.0),
        params(1.0, 50, 1.0),
        params(0.8, 0, 0.9),
        params(1.2, 200, 0.5),
        params(1.0, 0, 0.95), // peaked row
        params(1.0, vocab - 1, 1.0),
        params(1.0, 0, 0.0),
        params(0.6, 20, 0.8),
        params(1.0, 3, 1.0), // with ties at the k-th logit
    ];
    let rows = cases.len() * 3;
    let mut logits = Vec::with_capacity(rows * vocab);
    for row in 0..rows {
        let mut values: Vec<f32> = (0..vocab).map(|_| 3.0 * normal(rng)).collect();
        match row % cases.len() {
            1 => {
                let top = values.iter().copied().fold(f32::NEG_INFINITY, f32::max) + 1.0;
                values[rng.random_range(0..vocab / 2)] = top;
                values[rng.random_range(vocab / 2..vocab)] = top;
            }
            7 => values[rng.random_range(0..vocab)] += 15.0,
            11 => {
                let top = values.iter().copied().fold(f32::NEG_INFINITY, f32::max) + 2.0;
                for _ in 0..5 {
                    values[rng.random_range(0..vocab)] = top;
                }
            }
            _ => {}
        }
        logits.extend(values);
    }
    let uniforms: Vec<f32> = (0..rows).map(|_| rng.random::<f32>()).collect();
    let requests: Vec<Draw> = (0..rows)
        .map(|row| {
            let p = &cases[row % cases.len()];
            Draw {
                row,
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                uniform: uniforms[row],
                logprob_tokens: Vec::new(),
                logprob_of_draw: false,
            }
        })
        .collect();
    let on_device = Tensor::from_slice(&logits, (rows, vocab), device)?;
    let results = device_sampler::sample(&on_device, &requests)?;
    crate::cuda::synchronize(crate::cuda::cuda_device(device)?)?;

    let mut greedy_mismatch = 0;
    let mut sampled_mismatch = Vec::new();
    let mut logprob_err = 0.0f64;
    let mut picks = Vec::new();
    for (row, result) in results.iter().enumerate() {
        let p = &cases[row % cases.len()];
        let values = &logits[row * vocab..(row + 1) * vocab];
        let want = sampler::sample_with_uniform(values, p, uniforms[row]);
        if want != result.token {
            if sampler::is_greedy(p) {
                greedy_mismatch += 1;
            } else {
                sampled_mismatch.push(format!("row {row}: gpu {} cpu {want}", result.token));
            }
        }
        let norm = sampler::LogSoftmax::new(values);
        let token = result.token.min(vocab as u32 - 1);
        let err = (result.logprob(values[token as usize]) - norm.logprob(values, token)).abs();
        logprob_err = logprob_err.max(err as f64);
        picks.push((row as u32, token));
    }
    let gathered = device_sampler::gather(&on_device, &picks)?;
    let gather_wrong = picks
        .iter()
        .zip(&gathered)
        .filter(|(&(row, t), &g)| logits[row as usize * vocab + t as usize] != g)
        .count();
    Ok(vec![
        CheckResult::new(
            "sampling: greedy tokens (vocab 151936)",
            greedy_mismatch as f64,
            0.0,
            format!("{greedy_mismatch} of {} greedy rows differ from the CPU argmax", rows / 4),
        ),
        CheckResult::new(
            "sampling: temperature/top-k/top-p tokens",
            sampled_mismatch.len() as f64,
            1.0,
            format!(
                "same uniform draw as the CPU sampler; {} of {} rows differ (1 allowed for a draw within rounding of a boundary) {}",
                sampled_mismatch.len(),
                rows - rows / 4,
                sampled_mismatch.join(", ")
            ),
        ),
        CheckResult::new(
            "sampling: log-softmax normaliser",
            logprob_err,
            1e-4,
            format!("|log p(token)| device vs CPU over {rows} rows"),
        ),
        CheckResult::new(
            "sampling: logit gather",
            gather_wrong as f64,
            0.0,
            format!("{gather_wrong} of {} gathered logits differ", picks.len()),
        ),
    ])
}
