//! Sizes the paged KV cache for the device the model is on and builds the attention backend
//! that holds it.
//!
//! On the CPU the budget is `kv_cache_bytes`. On a GPU it is what `gpu_memory_fraction` of the card
//! leaves after what is already allocated (the weights) and a reserve for one step's activations,
//! measured rather than configured, so the same flags fit a 7B on an H100 and a 32B on an H200.

use super::core::EngineConfig;
use crate::model::attention::cpu::CpuPagedAttention;
use crate::model::attention::step_layout::step_device_bytes;
use crate::model::attention::KvCacheDtype;
use crate::model::config::Qwen2Config;
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
/// per op), the logits of `max_num_seqs` rows in the model dtype and in f32, the attention's
/// per-step metadata and split-attention scratch at the longest context, and cuBLAS workspace.
/// Sized at the configured limits, so a long context admitted later cannot run the device out of
/// memory after start-up.
pub fn activation_reserve(
    c: &Qwen2Config,
    activation_dtype: DType,
    config: &EngineConfig,
) -> usize {
    let elem = activation_dtype.size_in_bytes();
    let tokens = config.max_num_batched_tokens;
    let widest = c.hidden_size * 4 + c.intermediate_size * 3 + c.kv_dim() * 2;
    let activations = tokens * widest * elem * 3;
    let logits = config.max_num_seqs.max(tokens.min(1024)) * c.vocab_size * (elem + 4) * 2;
    let attention = step_device_bytes(
        tokens,
        config.max_num_seqs.min(tokens),
        c.num_attention_heads,
        &unsized_cache(c, config),
        max_model_len(c, config),
    );
    activations + logits + attention + CUBLAS_WORKSPACE
}

/// cuBLAS / cuBLASLt workspace and allocator slack.
const CUBLAS_WORKSPACE: usize = 512 << 20;

/// The longest sequence the engine will hold: `--max-model-len`, at most the model's context.
pub fn max_model_len(c: &Qwen2Config, config: &EngineConfig) -> usize {
    config
        .max_model_len
        .unwrap_or(c.max_position_embeddings)
        .min(c.max_position_embeddings)
}

/// The KV cache's element type when none is configured. On the CPU: f16 for quantized weights (whose
/// rounding is far coarser than f16's), otherwise what the model computes in. On a GPU: the model's
/// dtype for dense weights; bf16 for GGUF, which computes in f32 there but gains nothing from an f32
/// cache except half the cache's capacity.
fn default_kv_dtype(format: &WeightFormat, on_cpu: bool) -> KvCacheDtype {
    match format {
        WeightFormat::Gguf(_) if on_cpu => KvCacheDtype::F16,
        WeightFormat::Gguf(_) => KvCacheDtype::Bf16,
        WeightFormat::Dense(DType::F32 | DType::F64) => KvCacheDtype::F32,
        WeightFormat::Dense(DType::BF16) => KvCacheDtype::Bf16,
        WeightFormat::Dense(_) => KvCacheDtype::F16,
    }
}

/// Blocks that fit in the device's allowed share once what is already allocated (the weights) and
/// the activation reserve are taken out.
pub fn gpu_num_blocks(
    (free, total): (usize, usize),
    memory_fraction: f64,
    activation_reserve: usize,
    bytes_per_block: usize,
) -> usize {
    let used = total - free;
    let allowed = (total as f64 * memory_fraction) as usize;
    allowed
        .saturating_sub(used)
        .saturating_sub(activation_reserve)
        / bytes_per_block
}

/// The cache's shape for this model and block size, before its number of blocks is chosen.
fn unsized_cache(c: &Qwen2Config, config: &EngineConfig) -> CacheShape {
    CacheShape {
        num_layers: c.num_hidden_layers,
        num_blocks: 0,
        block_size: config.block_size,
        num_kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim(),
    }
}

pub fn build(model: &Qwen2, config: &EngineConfig) -> Result<(Box<dyn PagedAttention>, CachePlan)> {
    let cfg = model.config();
    let mut shape = unsized_cache(cfg, config);
    if model.device().is_cpu() {
        let kv_dtype = config
            .kv_cache_dtype
            .unwrap_or_else(|| default_kv_dtype(model.weight_format(), true));
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
    use crate::cuda::attention::CudaPagedAttention;
    ensure!(
        config.gpu_memory_fraction > 0.0 && config.gpu_memory_fraction <= 1.0,
        "--gpu-memory-fraction must be in (0, 1], got {}",
        config.gpu_memory_fraction
    );
    let dev = crate::cuda::cuda_device(model.device())?;
    let (free, total) = crate::cuda::memory_info(dev)?;
    let kv_dtype = config
        .kv_cache_dtype
        .unwrap_or_else(|| default_kv_dtype(model.weight_format(), false));
    let bytes_per_token = CudaPagedAttention::bytes_per_token(&shape, kv_dtype.dtype());
    let reserve = activation_reserve(model.config(), model.dtype(), config);
    let used = total - free;
    shape.num_blocks = config.num_blocks.unwrap_or_else(|| {
        gpu_num_blocks(
            (free, total),
            config.gpu_memory_fraction,
            reserve,
            bytes_per_token * config.block_size,
        )
    });
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
        kv_dtype.dtype(),
        model.device(),
    )?;
    tracing::info!(kv_cache_dtype = %kv_dtype, "GPU KV cache element type");
    crate::cuda::keep_freed_memory_pooled(dev)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2.5-7B-Instruct's config.json (the RM-R1 7B checkpoints share it).
    fn qwen25_7b() -> Qwen2Config {
        Qwen2Config::from_json_str(
            r#"{"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                "tie_word_embeddings": false, "use_sliding_window": false}"#,
        )
        .unwrap()
    }

    fn gpu_defaults() -> EngineConfig {
        EngineConfig {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            ..EngineConfig::default()
        }
    }

    #[test]
    fn the_reserve_covers_every_per_step_buffer_of_the_7b_at_32k() {
        let c = qwen25_7b();
        let config = gpu_defaults();
        let reserve = activation_reserve(&c, DType::BF16, &config);
        // Hand-computed worst cases of one 2,048-token step at 32k context:
        // split attention: 2048 tokens x 28 heads x 64 partitions x (128 + 2) floats;
        let partials: usize = 2048 * 28 * 64 * 130 * 4;
        assert_eq!(partials, 1_908_408_320);
        // f32 logits of 1,024 rows over the vocabulary;
        let logits: usize = 1024 * 152_064 * 4;
        // the MLP's gate and up projections of every token in bf16.
        let mlp: usize = 2048 * 18_944 * 2 * 2;
        assert!(
            reserve >= partials + logits + mlp + (512 << 20),
            "reserve {:.2} GiB",
            gib(reserve)
        );
        // Only the attention's share grows with the context: 64 partitions instead of 8, and
        // 2,048 instead of 256 block-table entries for each of 256 sequences.
        let short = activation_reserve(
            &c,
            DType::BF16,
            &EngineConfig {
                max_model_len: Some(4096),
                ..gpu_defaults()
            },
        );
        let grown = 2048 * 28 * (64 - 8) * 130 * 4 + 256 * (2048 - 256) * 4;
        assert_eq!(reserve - short, grown);
    }

    #[test]
    fn the_7b_at_32k_plans_a_cache_that_fits_an_h100() {
        let c = qwen25_7b();
        let config = gpu_defaults();
        let total: usize = 79_647 << 20; // what an 80 GB H100 reports
        let weights: usize = 15_231_233_024 + (600 << 20); // bf16 weights + CUDA context
        let reserve = activation_reserve(&c, DType::BF16, &config);
        // 2 (K and V) x 28 layers x 4 kv heads x 128 dims x 2 bytes per token, 16 tokens a block.
        let bytes_per_block = 2 * 28 * 4 * 128 * 2 * 16;
        let blocks = gpu_num_blocks((total - weights, total), 0.9, reserve, bytes_per_block);
        let planned = weights + reserve + blocks * bytes_per_block;
        assert!(planned as f64 <= 0.9 * total as f64);
        assert!(0.9 * total as f64 - (planned as f64) < bytes_per_block as f64);
        // Room for many full-length judgments at once (~50 GiB of cache, ~940k tokens).
        assert!(blocks * 16 >= 28 * 32_768, "{} tokens", blocks * 16);
        // A fraction that leaves less than the reserve gives no blocks, not a negative budget.
        assert_eq!(
            gpu_num_blocks((total - weights, total), 0.2, reserve, bytes_per_block),
            0
        );
    }

    #[test]
    fn gguf_keeps_a_half_precision_cache_on_either_device() {
        let gguf = WeightFormat::Gguf("Q4_K_M".into());
        assert_eq!(default_kv_dtype(&gguf, true), KvCacheDtype::F16);
        assert_eq!(default_kv_dtype(&gguf, false), KvCacheDtype::Bf16);
        let bf16 = WeightFormat::Dense(DType::BF16);
        assert_eq!(default_kv_dtype(&bf16, false), KvCacheDtype::Bf16);
        let f32 = WeightFormat::Dense(DType::F32);
        assert_eq!(default_kv_dtype(&f32, true), KvCacheDtype::F32);
    }
}
