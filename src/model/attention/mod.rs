//! Paged attention: the one seam between the device-agnostic forward and device-specific kernels.
//!
//! The forward hands each layer's rotated Q, K and V for a flat batch of tokens plus [`AttentionBatch`]
//! (where every token's K/V goes and which cache blocks each sequence reads). A backend owns the KV
//! cache storage for all layers, writes the new K/V into it and returns the attention output. The CPU
//! backend is the reference; a CUDA backend implements the same trait with its own kernels, so the
//! scheduler and the forward never change when the device does.

pub mod cpu;
mod cpu_tile;
pub mod reference;
pub mod step_layout;

use crate::model::rope::StepRotary;
use candle_core::{DType, Result, Tensor};

/// Element type of the K/V cache, on either device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KvCacheDtype {
    /// Half the memory of f32 and exact to ~3 significant digits (K/V values are O(1–100)).
    #[default]
    F16,
    /// Same size as f16 with f32's range but 3 fewer mantissa bits.
    Bf16,
    /// Exact; twice the memory and memory traffic.
    F32,
}

impl KvCacheDtype {
    pub fn size_in_bytes(self) -> usize {
        match self {
            KvCacheDtype::F16 | KvCacheDtype::Bf16 => 2,
            KvCacheDtype::F32 => 4,
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            KvCacheDtype::F16 => DType::F16,
            KvCacheDtype::Bf16 => DType::BF16,
            KvCacheDtype::F32 => DType::F32,
        }
    }
}

impl std::fmt::Display for KvCacheDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvCacheDtype::F16 => "f16",
            KvCacheDtype::Bf16 => "bf16",
            KvCacheDtype::F32 => "f32",
        })
    }
}

/// Index of a KV block in every layer's pool (block `b` of layer 0 and block `b` of layer 27 belong
/// to the same tokens).
pub type BlockId = u32;

/// One sequence's share of the flat batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSpan {
    /// First row of this sequence's tokens in the flat batch.
    pub query_start: usize,
    /// Number of tokens of this sequence in the batch (a prefill chunk, or 1 for decode).
    pub query_len: usize,
    /// Tokens in the cache once this step's K/V are written: cached prefix plus `query_len`.
    pub context_len: usize,
    /// Blocks holding positions `0..context_len`, in order.
    pub block_table: Vec<BlockId>,
}

/// Host-side description of one forward step, shared by every layer.
#[derive(Debug, Clone, Default)]
pub struct AttentionBatch {
    /// Cache slot (`block * block_size + offset`) for each token row of the batch.
    pub slot_mapping: Vec<u32>,
    pub sequences: Vec<SequenceSpan>,
}

impl AttentionBatch {
    pub fn num_tokens(&self) -> usize {
        self.slot_mapping.len()
    }

    /// Every index a backend will follow is inside `shape`'s cache and every token row belongs to
    /// exactly one sequence (backends write each row's output without further checks).
    pub fn validate(&self, shape: &CacheShape) -> Result<()> {
        let n = self.num_tokens();
        let num_slots = shape.num_blocks * shape.block_size;
        if let Some(&slot) = self.slot_mapping.iter().find(|&&x| x as usize >= num_slots) {
            candle_core::bail!("slot {slot} outside a cache of {num_slots} slots");
        }
        let mut owned = vec![false; n];
        for (i, span) in self.sequences.iter().enumerate() {
            if span.block_table.len() * shape.block_size < span.context_len
                || span.query_len > span.context_len
                || span.query_start + span.query_len > n
            {
                candle_core::bail!(
                    "sequence {i}: {} blocks, {} context tokens, rows {}..{} of {n}",
                    span.block_table.len(),
                    span.context_len,
                    span.query_start,
                    span.query_start + span.query_len
                );
            }
            if let Some(&b) = span
                .block_table
                .iter()
                .find(|&&b| b as usize >= shape.num_blocks)
            {
                candle_core::bail!("block {b} outside a cache of {} blocks", shape.num_blocks);
            }
            let rows = span.query_start..span.query_start + span.query_len;
            for (row, owned) in rows.clone().zip(&mut owned[rows]) {
                if std::mem::replace(owned, true) {
                    candle_core::bail!("token row {row} belongs to two sequences");
                }
            }
        }
        if let Some(row) = owned.iter().position(|&o| !o) {
            candle_core::bail!("token row {row} belongs to no sequence");
        }
        Ok(())
    }
}

/// Shape of the KV cache a backend must provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl CacheShape {
    pub fn slot_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// Writes K/V into the paged cache and computes causal grouped-query attention over it.
pub trait PagedAttention: Send {
    fn cache_shape(&self) -> CacheShape;

    /// Called once per forward step before the first layer, with the batch every layer will see
    /// (a device backend uploads its per-step metadata here instead of once per layer).
    fn prepare(&mut self, batch: &AttentionBatch) -> Result<()> {
        let _ = batch;
        Ok(())
    }

    /// `q`: `[tokens, num_heads, head_dim]`, `k`/`v`: `[tokens, num_kv_heads, head_dim]`, all rotated
    /// and contiguous. Writes k/v at `batch.slot_mapping`, then returns `[tokens, num_heads * head_dim]`
    /// where each token attends to positions `0..=its own` of its sequence.
    fn forward(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        batch: &AttentionBatch,
    ) -> Result<Tensor>;

    /// One layer from the q/k/v projections, `[tokens, heads * head_dim]` rows (views into one
    /// stacked matmul output are fine): the rotary embedding with the step's tables, the K/V write
    /// and the attention, returning what [`forward`](Self::forward) returns. The default rotates with
    /// candle ops and calls `forward`; a device backend fuses the rotation into its K/V write.
    fn forward_rotary(
        &mut self,
        layer: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        rotary: &StepRotary,
        batch: &AttentionBatch,
    ) -> Result<Tensor> {
        rotate_then_attend(self, layer, (q, k, v), rotary, batch)
    }

    /// Copies whole blocks in every layer (copy-on-write when sequences sharing a block diverge).
    fn copy_blocks(&mut self, copies: &[(BlockId, BlockId)]) -> Result<()>;

    /// The K and V stored in one block of one layer, `[block_size, num_kv_heads, head_dim]` each, as f32.
    /// For tests and debugging; not on the hot path.
    fn read_block(&self, layer: usize, block: BlockId) -> Result<(Vec<f32>, Vec<f32>)>;
}

/// [`PagedAttention::forward_rotary`] without fusion: rotates q and k with candle ops, then
/// [`PagedAttention::forward`].
pub fn rotate_then_attend<A: PagedAttention + ?Sized>(
    attention: &mut A,
    layer: usize,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    rotary: &StepRotary,
    batch: &AttentionBatch,
) -> Result<Tensor> {
    let (n, d) = (q.dim(0)?, attention.cache_shape().head_dim);
    let (heads, kv_heads) = (q.dim(1)? / d, k.dim(1)? / d);
    let q = rotary
        .apply(&q.reshape((1, n, heads, d))?)?
        .reshape((n, heads, d))?;
    let k = rotary
        .apply(&k.reshape((1, n, kv_heads, d))?)?
        .reshape((n, kv_heads, d))?;
    let v = v.contiguous()?.reshape((n, kv_heads, d))?;
    attention.forward(layer, &q, &k, &v, batch)
}
