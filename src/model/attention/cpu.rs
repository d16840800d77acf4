//! Paged attention for serving on the CPU: a K/V cache in f16 (the default for GGUF models), bf16 or
//! f32, and a tiled kernel (`cpu_tile.rs`) that reads each cache block once per tile of query
//! vectors.
//!
//! Judge prompts attend to 700–1,500 positions, where attention done one position at a time
//! (`reference.rs`) costs more than the matmuls. Here the work item is (sequence, kv head, up to
//! [`ROWS_PER_TILE`] query rows): the query heads of a GQA group and consecutive prefill rows share
//! every K/V block they read, which is converted to f32 once per item, 64 positions at a time, and
//! stays in cache while two GEMMs use it for all of them. The reference stays the oracle: tests hold
//! this backend to it.
//!
//! Storage layout per layer: `[block][kv_head][offset in block][head_dim]`, so one head's slice of a
//! block is contiguous (the reference keeps `[slot][kv_head][head_dim]`; `read_block` converts).

use super::cpu_tile::{attend_tile, KvElement, TileScratch, TileShape};
use super::{AttentionBatch, BlockId, CacheShape, KvCacheDtype, PagedAttention, SequenceSpan};
use crate::model::parallel::{parallel_for, SharedMut};
use candle_core::{bail, DType, Device, Result, Tensor};
use half::{bf16, f16};
use std::cell::RefCell;

/// Query rows of one sequence that share a work item. 16 rows of a 7-head group are 112 query
/// vectors (28 KiB at head dim 64): enough reuse per K/V block, still L2-resident, and a 512-token
/// chunk still splits into 32 items per kv head for the threads to share.
const ROWS_PER_TILE: usize = 16;

struct LayerCache<E> {
    k: Vec<E>,
    v: Vec<E>,
}

enum Layers {
    F16(Vec<LayerCache<f16>>),
    Bf16(Vec<LayerCache<bf16>>),
    F32(Vec<LayerCache<f32>>),
}

pub struct CpuPagedAttention {
    shape: CacheShape,
    num_heads: usize,
    dtype: KvCacheDtype,
    layers: Layers,
}

fn new_layers<E: KvElement>(shape: &CacheShape) -> Vec<LayerCache<E>> {
    let len = shape.num_blocks * shape.block_size * shape.slot_width();
    (0..shape.num_layers)
        .map(|_| LayerCache {
            k: vec![E::ZERO; len],
            v: vec![E::ZERO; len],
        })
        .collect()
}

impl CpuPagedAttention {
    pub fn new(shape: CacheShape, num_heads: usize, dtype: KvCacheDtype) -> Self {
        let layers = match dtype {
            KvCacheDtype::F16 => Layers::F16(new_layers(&shape)),
            KvCacheDtype::Bf16 => Layers::Bf16(new_layers(&shape)),
            KvCacheDtype::F32 => Layers::F32(new_layers(&shape)),
        };
        Self {
            shape,
            num_heads,
            dtype,
            layers,
        }
    }

    pub fn dtype(&self) -> KvCacheDtype {
        self.dtype
    }

    /// Bytes one token's K and V take across all layers.
    pub fn bytes_per_token(shape: &CacheShape, dtype: KvCacheDtype) -> usize {
        2 * shape.num_layers * shape.slot_width() * dtype.size_in_bytes()
    }
}

fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// One work item: `rows` consecutive query rows of `span`, starting at its row `first`, for the
/// query heads of kv head `kv_head`.
struct Item<'a> {
    span: &'a SequenceSpan,
    first: usize,
    rows: usize,
    kv_head: usize,
}

thread_local! {
    static SCRATCH: RefCell<TileScratch> = RefCell::new(TileScratch::default());
}

impl CpuPagedAttention {
    fn check(&self, q: &Tensor, k: &Tensor, v: &Tensor, batch: &AttentionBatch) -> Result<()> {
        let s = self.shape;
        let n = batch.num_tokens();
        let kv = [n, s.num_kv_heads, s.head_dim];
        if q.dims() != [n, self.num_heads, s.head_dim] || k.dims() != kv || v.dims() != kv {
            bail!(
                "attention inputs {:?} / {:?} / {:?} do not match {n} tokens",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        batch.validate(&s)
    }

    fn forward_typed<E: KvElement>(
        shape: CacheShape,
        num_heads: usize,
        cache: &mut LayerCache<E>,
        (q, k, v): (&[f32], &[f32], &[f32]),
        batch: &AttentionBatch,
    ) -> Vec<f32> {
        let (d, kv_heads, block_size) = (shape.head_dim, shape.num_kv_heads, shape.block_size);
        for (row, &slot) in batch.slot_mapping.iter().enumerate() {
            let (block, offset) = (slot as usize / block_size, slot as usize % block_size);
            for g in 0..kv_heads {
                let dst = ((block * kv_heads + g) * block_size + offset) * d;
                let src = (row * kv_heads + g) * d;
                E::from_f32(&k[src..src + d], &mut cache.k[dst..dst + d]);
                E::from_f32(&v[src..src + d], &mut cache.v[dst..dst + d]);
            }
        }

        // Items in order of falling cost (later rows attend to more positions), so the expensive
        // ones start first and the threads finish together.
        let mut items = Vec::new();
        for span in &batch.sequences {
            let mut end = span.query_len;
            while end > 0 {
                let first = end.saturating_sub(ROWS_PER_TILE);
                for kv_head in 0..kv_heads {
                    items.push(Item {
                        span,
                        first,
                        rows: end - first,
                        kv_head,
                    });
                }
                end = first;
            }
        }
        let last_position = |i: &Item| i.span.context_len - i.span.query_len + i.first + i.rows;
        items.sort_by_key(|i| std::cmp::Reverse(last_position(i) * i.rows));

        let tile = TileShape {
            head_dim: d,
            group: num_heads / kv_heads,
            block_size,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let mut result = vec![0.0f32; batch.num_tokens() * num_heads * d];
        let shared = SharedMut::new(&mut result);
        let cache = &*cache;
        let row_width = num_heads * d;
        parallel_for(items.len(), |range| {
            SCRATCH.with(|scratch| {
                let scratch = &mut scratch.borrow_mut();
                for item in &items[range] {
                    let span = item.span;
                    let head_base = item.kv_head * tile.group * d;
                    let first_row = span.query_start + item.first;
                    let queries = (0..item.rows).map(|r| {
                        let start = (first_row + r) * row_width + head_base;
                        &q[start..start + tile.group * d]
                    });
                    // One cache block of this kv head: `block_size` rows of `d`.
                    let head_block = |b: usize| {
                        let start = (span.block_table[b] as usize * kv_heads + item.kv_head)
                            * block_size
                            * d;
                        start..start + block_size * d
                    };
                    let first_position = span.context_len - span.query_len + item.first;
                    attend_tile(
                        &tile,
                        scratch,
                        queries,
                        first_position,
                        |b| (&cache.k[head_block(b)], &cache.v[head_block(b)]),
                        |r| {
                            // Safety: each item owns its rows' outputs for its kv head's query
                            // heads; no two items share (row, kv head).
                            unsafe {
                                shared
                                    .slice((first_row + r) * row_width + head_base, tile.group * d)
                            }
                        },
                    );
                }
            })
        });
        result
    }
}

impl PagedAttention for CpuPagedAttention {
    fn cache_shape(&self) -> CacheShape {
        self.shape
    }

    fn forward(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        batch: &AttentionBatch,
    ) -> Result<Tensor> {
        self.check(q, k, v, batch)?;
        let (q, k, v) = (host_f32(q)?, host_f32(k)?, host_f32(v)?);
        let inputs = (&q[..], &k[..], &v[..]);
        let (shape, heads) = (self.shape, self.num_heads);
        let result = match &mut self.layers {
            Layers::F16(l) => Self::forward_typed(shape, heads, &mut l[layer], inputs, batch),
            Layers::Bf16(l) => Self::forward_typed(shape, heads, &mut l[layer], inputs, batch),
            Layers::F32(l) => Self::forward_typed(shape, heads, &mut l[layer], inputs, batch),
        };
        Tensor::from_vec(
            result,
            (batch.num_tokens(), heads * shape.head_dim),
            &Device::Cpu,
        )
    }

    fn copy_blocks(&mut self, copies: &[(BlockId, BlockId)]) -> Result<()> {
        fn copy<E: Copy>(layers: &mut [LayerCache<E>], block_len: usize, c: &[(BlockId, BlockId)]) {
            for layer in layers {
                for &(src, dst) in c {
                    let (src, dst) = (src as usize * block_len, dst as usize * block_len);
                    layer.k.copy_within(src..src + block_len, dst);
                    layer.v.copy_within(src..src + block_len, dst);
                }
            }
        }
        // A block holds all kv heads of its positions contiguously.
        let block_len = self.shape.block_size * self.shape.slot_width();
        match &mut self.layers {
            Layers::F16(l) => copy(l, block_len, copies),
            Layers::Bf16(l) => copy(l, block_len, copies),
            Layers::F32(l) => copy(l, block_len, copies),
        }
        Ok(())
    }

    fn read_block(&self, layer: usize, block: BlockId) -> Result<(Vec<f32>, Vec<f32>)> {
        fn read<E: KvElement>(
            cache: &LayerCache<E>,
            s: &CacheShape,
            block: usize,
        ) -> [Vec<f32>; 2] {
            let (d, heads, bs) = (s.head_dim, s.num_kv_heads, s.block_size);
            [&cache.k, &cache.v].map(|data| {
                // Stored [kv_head][offset][d]; returned [offset][kv_head][d].
                let mut out = vec![0.0; bs * heads * d];
                for g in 0..heads {
                    for o in 0..bs {
                        let src = ((block * heads + g) * bs + o) * d;
                        E::to_f32(&data[src..src + d], &mut out[(o * heads + g) * d..][..d]);
                    }
                }
                out
            })
        }
        let s = &self.shape;
        let [k, v] = match &self.layers {
            Layers::F16(l) => read(&l[layer], s, block as usize),
            Layers::Bf16(l) => read(&l[layer], s, block as usize),
            Layers::F32(l) => read(&l[layer], s, block as usize),
        };
        Ok((k, v))
    }
}

#[cfg(test)]
#[path = "cpu_tests.rs"]
mod tests;
