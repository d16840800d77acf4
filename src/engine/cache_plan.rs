//! Sizes the paged KV cache for the device the model is on and builds the attention backend
//! that holds it.
//!
//! On the CPU the budget is `kv_cache_bytes`. On a GPU it is what `gpu_memory_fraction` of the card
//! leaves after what is already allocated (the weights) and a reserve for one step's activations,
//! measured rather than configured, so the same flags fit a 7B on an H100 and a 32B on an H200.

use super::core::EngineConfig;
use crate::model::attention::cpu::{CpuPagedAttention, KvCacheDtype};
use crate::model::{CacheShape, PagedAttention, Qwen2, WeightFormat};
use anyhow::{ensure, Result};
use candle_core::DType;

/// The chosen size, for the start-up report.
#[derive(Debug, Clone, Copy)]
pub struct CachePlan {
    pub shape: CacheShape,
    pub bytes_per_token: usize,
    /// GPU only: (free, total) device bytes when the plan was made.
    pub device_memory: Option<(usize, usize)>,
    pub activation_reserve: usize,
}

impl CachePlan {
    pub fn tokens(&self) -> usize {
        self.shape.num_blocks * self.shape.block_size
    }

    pub fn bytes(&self) -> usize {
        self.tokens() * self.bytes_per_token
    }
}

/// Peak bytes one forward step needs beyond weights and cache, with headroom: the widest activations
/// of `max_num_batched_tokens` tokens in flight at once (a few copies of each, since candle allocates
/// per op), the logits of `max_num_seqs` rows in the model dtype and in f32, and cuBLAS workspace.
pub fn activation_reserve(model: &Qwen2, config: &EngineConfig) -> usize {
    let c = model.config();
    let elem = model.dtype().size_in_bytes();
    let tokens = config.max_num_batched_tokens;
    let widest = c.hidden_size * 4 + c.intermediate_size * 3 + c.kv_dim() * 2;
    let activations = tokens * widest * elem * 3;
    let logits = config.max_num_seqs.max(tokens.min(1024)) * c.vocab_size * (elem + 4) * 2;
    activations + logits + (512 << 20)
}

/// The CPU KV cache's element type when none is configured: f16 for quantized weights (whose
/// rounding is far coarser than f16's), otherwise what the model computes in.
fn cpu_kv_dtype(format: &WeightFormat) -> KvCacheDtype {
    match format {
        WeightFormat::Gguf(_) => KvCacheDtype::F16,
        WeightFormat::Dense(DType::F32 | DType::F64) => KvCacheDtype::F32,
        WeightFormat::Dense(DType::BF16) => KvCacheDtype::Bf16,
        WeightFormat::Dense(_) => KvCacheDtype::F16,
    }
}

pub fn build(model: &Qwen2, config: &EngineConfig) -> Result<(Box<dyn PagedAttention>, CachePlan)> {
    let cfg = model.config();
    let mut shape = CacheShape {
        num_layers: cfg.num_hidden_layers,
        num_blocks: 0,
        block_size: config.block_size,
        num_kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim(),
    };
    if model.device().is_cpu() {
        let kv_dtype = config
            .kv_cache_dtype
            .unwrap_or_else(|| cpu_kv_dtype(model.weight_format()));
        let bytes_per_token = CpuPagedAttention::bytes_per_token(&shape, kv_dtype);
        shape.num_blocks = config
            .num_blocks
            .unwrap_or(config.kv_cache_bytes / (bytes_per_token * config.block_size));
        ensure!(shape.num_blocks > 0, "the KV cache budget holds no block");
        let plan = CachePlan {
            shape,
            bytes_per_token,
            device_memory: None,
            activation_reserve: 0,
        };
        return Ok((
            Box::new(CpuPagedAttention::new(
                shape,
                cfg.num_attention_heads,
                kv_dtype,
            )),
            plan,
        ));
    }
    build_on_gpu(model, config, shape)
}

#[cfg(feature = "cuda")]
fn build_on_gpu(
    model: &Qwen2,
    config: &EngineConfig,
    mut shape: CacheShape,
) -> Result<(Box<dyn PagedAttention>, CachePlan)> {
    use crate::model::attention::cuda::CudaPagedAttention;
    ensure!(
        config.gpu_memory_fraction > 0.0 && config.gpu_memory_fraction <= 1.0,
        "--gpu-memory-fraction must be in (0, 1], got {}",
        config.gpu_memory_fraction
    );
    let dev = crate::cuda::cuda_device(model.device())?;
    let (free, total) = crate::cuda::memory_info(dev)?;
    let bytes_per_token = CudaPagedAttention::bytes_per_token(&shape, model.dtype());
    let reserve = activation_reserve(model, config);
    let used = total - free;
    let allowed = (total as f64 * config.gpu_memory_fraction) as usize;
    shape.num_blocks = match config.num_blocks {
        Some(n) => n,
        None => {
            let budget = allowed.saturating_sub(used).saturating_sub(reserve);
            budget / (bytes_per_token * config.block_size)
        }
    };
    ensure!(
        shape.num_blocks > 0,
        "no room for a KV cache: {:.1} GiB of {:.1} GiB in use after loading, {:.1} GiB reserved for \
         activations, limit {:.0}% (--gpu-memory-fraction)",
        gib(used),
        gib(total),
        gib(reserve),
        config.gpu_memory_fraction * 100.0
    );
    let attention = CudaPagedAttention::new(
        shape,
        model.config().num_attention_heads,
        model.dtype(),
        model.device(),
    )?;
    let plan = CachePlan {
        shape,
        bytes_per_token,
        device_memory: Some((free, total)),
        activation_reserve: reserve,
    };
    Ok((Box::new(attention), plan))
}

#[cfg(not(feature = "cuda"))]
fn build_on_gpu(
    model: &Qwen2,
    _config: &EngineConfig,
    _shape: CacheShape,
) -> Result<(Box<dyn PagedAttention>, CachePlan)> {
    anyhow::bail!(
        "no paged-attention backend for {:?} in this build (rebuild with --features cuda)",
        model.device()
    )
}

pub fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
