//! Checks of the fused kernels (kernels/fused.cu) on the GPU: each against the CPU's unfused candle
//! ops on the same rounded inputs. The rotary + K/V write runs inside the CUDA attention backend
//! (`forward_rotary`), so it is checked end to end against the CPU reference attention fed the
//! same projections through the unfused rotation.

use super::kernels::normal;
use super::{compare, CheckResult};
use crate::cuda::attention::CudaPagedAttention;
use crate::model::attention::reference::ReferencePagedAttention;
use crate::model::attention::rotate_then_attend;
use crate::model::config::Qwen2Config;
use crate::model::fused;
use crate::model::rope::RopeTables;
use crate::model::{AttentionBatch, CacheShape, PagedAttention, SequenceSpan};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;

pub fn run(device: &Device, rng: &mut StdRng) -> Vec<CheckResult> {
    let mut results = Vec::new();
    for (name, check) in [
        (
            "fused add + rms_norm bf16",
            elementwise_add_rms_norm as fn(&Device, &mut StdRng) -> Result<CheckResult>,
        ),
        ("fused silu * up bf16", elementwise_silu_mul),
    ] {
        results.push(check(device, rng).unwrap_or_else(|e| CheckResult::error(name, &e)));
    }
    for (heads, kv_heads, head_dim) in [(14, 2, 64), (28, 4, 128), (40, 8, 128)] {
        let name = format!("fused rope + kv write bf16 {heads}q/{kv_heads}kv d{head_dim}");
        results.push(
            rotary_attention(device, heads, kv_heads, head_dim, rng)
                .unwrap_or_else(|e| CheckResult::error(name, &e)),
        );
    }
    results
}

/// bf16 values of standard normal draws times `scale`, as f32 `[rows, cols]` on the CPU.
fn random(rng: &mut StdRng, rows: usize, cols: usize, scale: f32) -> Result<Tensor> {
    let data: Vec<f32> = (0..rows * cols).map(|_| scale * normal(rng)).collect();
    Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?
        .to_dtype(DType::BF16)?
        .to_dtype(DType::F32)?)
}

fn on_gpu(t: &Tensor, device: &Device) -> Result<Tensor> {
    Ok(t.to_device(device)?.to_dtype(DType::BF16)?)
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

fn elementwise_add_rms_norm(device: &Device, rng: &mut StdRng) -> Result<CheckResult> {
    let (rows, width) = (5, 3584);
    let (x, r) = (
        random(rng, rows, width, 2.0)?,
        random(rng, rows, width, 0.5)?,
    );
    let w = (random(rng, 1, width, 0.1)? + 1.0)?.squeeze(0)?;
    let w = w.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
    let (sum, normed) = fused::add_rms_norm(
        &on_gpu(&x, device)?,
        &on_gpu(&r, device)?,
        &on_gpu(&w, device)?,
        1e-6,
    )?;
    // The unfused ops on the CPU, rounding the sum to bf16 where the residual stream is stored.
    let want_sum = (&x + &r)?.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
    let want_normed = candle_nn::ops::rms_norm(&want_sum, &w, 1e-6)?;
    let (sum_err, _, sum_bad) = compare(&host(&sum)?, &host(&want_sum)?, 0.0, 0.0);
    let (err, _, bad) = compare(&host(&normed)?, &host(&want_normed)?, 1e-2, 1e-2);
    Ok(CheckResult::judged(
        "fused add + rms_norm bf16",
        err.max(sum_err),
        1e-2,
        sum_bad == 0 && bad == 0,
        format!("{rows}x{width}; sum bit-exact ({sum_bad} differ), normed {bad} outside 1e-2+1e-2*|ref|"),
    ))
}

fn elementwise_silu_mul(device: &Device, rng: &mut StdRng) -> Result<CheckResult> {
    let (rows, width) = (7, 4864);
    // gate and up as column ranges of one stacked output, as the dense model's gate|up matmul.
    let stacked = random(rng, rows, 2 * width, 3.0)?;
    let gpu = on_gpu(&stacked, device)?;
    let got = fused::silu_mul(&gpu.narrow(1, 0, width)?, &gpu.narrow(1, width, width)?)?;
    let want = (candle_nn::ops::silu(&stacked.narrow(1, 0, width)?)?
        * stacked.narrow(1, width, width)?)?;
    let (err, _, bad) = compare(&host(&got)?, &host(&want)?, 2e-2, 2e-2);
    Ok(CheckResult::judged(
        "fused silu * up bf16",
        err,
        2e-2,
        bad == 0,
        format!("{rows}x{width} from strided views; {bad} outside 2e-2+2e-2*|ref|"),
    ))
}

/// A decode at 1,200 positions, a 40-token chunk over a 300-token prefix and a fresh 25-token prompt
/// in one step: the fused path on the GPU against the reference attention after the unfused rotation.
fn rotary_attention(
    device: &Device,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rng: &mut StdRng,
) -> Result<CheckResult> {
    let block_size = 16;
    let plans = [(1199usize, 1usize), (300, 40), (0, 25)];
    let mut batch = AttentionBatch::default();
    let mut positions = Vec::new();
    let mut next_block = 0u32;
    for &(cached, new) in &plans {
        let total = cached + new;
        let table: Vec<u32> =
            (next_block..next_block + total.div_ceil(block_size) as u32).collect();
        next_block += table.len() as u32;
        let query_start = batch.slot_mapping.len();
        for p in cached..total {
            batch
                .slot_mapping
                .push(table[p / block_size] * block_size as u32 + (p % block_size) as u32);
            positions.push(p as u32);
        }
        batch.sequences.push(SequenceSpan {
            query_start,
            query_len: new,
            context_len: total,
            block_table: table,
        });
    }
    let n = batch.num_tokens();
    let shape = CacheShape {
        num_layers: 1,
        num_blocks: next_block as usize,
        block_size,
        num_kv_heads: kv_heads,
        head_dim,
    };
    let config = Qwen2Config::from_json_str(&format!(
        r#"{{"vocab_size": 16, "hidden_size": {}, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": {heads}, "num_key_value_heads": {kv_heads},
            "max_position_embeddings": 2048, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": false, "use_sliding_window": false}}"#,
        heads * head_dim
    ))?;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let stacked = random(rng, n, q_width + 2 * kv_width, 1.0)?;
    let views = |t: &Tensor| -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            t.narrow(1, 0, q_width)?,
            t.narrow(1, q_width, kv_width)?,
            t.narrow(1, q_width + kv_width, kv_width)?,
        ))
    };
    let positions_cpu = Tensor::new(positions.as_slice(), &Device::Cpu)?;

    // Reference: the unfused rotation on the CPU in f32 (from the same bf16 values; the GPU rounds
    // the rotated q and k to bf16 once), then the reference attention.
    let mut cpu = ReferencePagedAttention::new(shape, heads);
    cpu.prepare(&batch)?;
    let rotary_cpu =
        RopeTables::with_max_positions(&config, 2048, &Device::Cpu)?.gather(&positions_cpu)?;
    let (q, k, v) = views(&stacked)?;
    let want = rotate_then_attend(&mut cpu, 0, (&q, &k, &v), &rotary_cpu, &batch)?;

    let mut gpu = CudaPagedAttention::new(shape, heads, DType::BF16, device)?;
    gpu.set_poison_outputs(true);
    gpu.prepare(&batch)?;
    let rotary_gpu = RopeTables::with_max_positions(&config, 2048, device)?
        .gather(&positions_cpu.to_device(device)?)?;
    let stacked_gpu = on_gpu(&stacked, device)?;
    let (q, k, v) = views(&stacked_gpu)?;
    let got = gpu.forward_rotary(0, (&q, &k, &v), &rotary_gpu, &batch)?;
    crate::cuda::synchronize(crate::cuda::cuda_device(device)?)?;
    let (err, _, bad) = compare(&host(&got)?, &host(&want)?, 2e-2, 2e-2);
    // The cache the fused kernel wrote, block by block, against the reference's rotated K and V
    // (one bf16 rounding apart at most: the reference rotates in f32 and stores f32).
    let mut cache_err = 0.0f64;
    let mut cache_bad = 0;
    for block in 0..next_block {
        let (ck, cv) = cpu.read_block(0, block)?;
        let (gk, gv) = gpu.read_block(0, block)?;
        for (got, want) in [(gk, ck), (gv, cv)] {
            let (e, _, wrong) = compare(&got, &want, 1e-2, 1e-2);
            cache_err = cache_err.max(e);
            cache_bad += wrong;
        }
    }
    Ok(CheckResult::judged(
        format!("fused rope + kv write bf16 {heads}q/{kv_heads}kv d{head_dim}"),
        err.max(cache_err),
        2e-2,
        bad == 0 && cache_bad == 0,
        format!(
            "{n} tokens (decode at 1,200, chunk over 300, fresh 25): {bad} outputs and {cache_bad} cache \
             elements outside tolerance"
        ),
    ))
}
