//! The reference paged attention: plain f32 loops, parallel over (token, kv head) pairs.
//!
//! Kept deliberately simple and exact (f32 everywhere, max-subtracted softmax, one position at a
//! time) because it is the oracle the fast CPU backend (`cpu.rs`) and the CUDA kernels are checked
//! against. Too slow to serve with: at judge context lengths it costs more than the matmuls.

use super::{AttentionBatch, BlockId, CacheShape, PagedAttention};
use crate::model::parallel::{parallel_for, SharedMut};
use candle_core::{bail, DType, Device, Result, Tensor};

struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

pub struct ReferencePagedAttention {
    shape: CacheShape,
    num_heads: usize,
    scale: f32,
    layers: Vec<LayerCache>,
}

impl ReferencePagedAttention {
    pub fn new(shape: CacheShape, num_heads: usize) -> Self {
        let len = shape.num_blocks * shape.block_size * shape.slot_width();
        let layers = (0..shape.num_layers)
            .map(|_| LayerCache {
                k: vec![0.0; len],
                v: vec![0.0; len],
            })
            .collect();
        Self {
            shape,
            num_heads,
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
            layers,
        }
    }

    /// Bytes one token's K and V take across all layers.
    pub fn bytes_per_token(shape: &CacheShape) -> usize {
        2 * shape.num_layers * shape.slot_width() * std::mem::size_of::<f32>()
    }
}

fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl PagedAttention for ReferencePagedAttention {
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
        let s = self.shape;
        let width = s.slot_width();
        let d = s.head_dim;
        let groups = self.num_heads / s.num_kv_heads;
        let n = batch.num_tokens();
        if q.dims() != [n, self.num_heads, d] || k.dims() != [n, s.num_kv_heads, d] {
            bail!(
                "attention inputs {:?} / {:?} do not match {n} tokens",
                q.dims(),
                k.dims()
            );
        }
        let (q, k, v) = (host_f32(q)?, host_f32(k)?, host_f32(v)?);
        let cache = &mut self.layers[layer];
        let num_slots = s.num_blocks * s.block_size;
        for (row, &slot) in batch.slot_mapping.iter().enumerate() {
            let slot = slot as usize;
            if slot >= num_slots {
                bail!("slot {slot} outside a cache of {num_slots} slots");
            }
            cache.k[slot * width..(slot + 1) * width]
                .copy_from_slice(&k[row * width..(row + 1) * width]);
            cache.v[slot * width..(slot + 1) * width]
                .copy_from_slice(&v[row * width..(row + 1) * width]);
        }

        // One work item per (token row, kv head): the `groups` query heads that share a kv head
        // read the same K/V rows, so they are computed together.
        let mut items = Vec::with_capacity(n * s.num_kv_heads);
        for span in &batch.sequences {
            if span.block_table.len() * s.block_size < span.context_len {
                bail!(
                    "block table of {} blocks cannot hold {} tokens",
                    span.block_table.len(),
                    span.context_len
                );
            }
            for j in 0..span.query_len {
                let position = span.context_len - span.query_len + j;
                for g in 0..s.num_kv_heads {
                    items.push((span, span.query_start + j, position, g));
                }
            }
        }
        let cache = &*cache;
        let scale = self.scale;
        let block_size = s.block_size;
        let mut result = vec![0.0f32; n * self.num_heads * d];
        let shared = SharedMut::new(&mut result);
        parallel_for(items.len(), |range| {
            let mut scores = Vec::new();
            for &(span, row, position, g) in &items[range] {
                // Safety: each (row, kv head) item owns the output of its `groups` query heads.
                let out =
                    unsafe { shared.slice((row * self.num_heads + g * groups) * d, groups * d) };
                let ctx = position + 1;
                scores.clear();
                scores.resize(ctx, 0.0f32);
                for h in 0..groups {
                    let head = g * groups + h;
                    let qh = &q[(row * self.num_heads + head) * d..][..d];
                    let mut max = f32::NEG_INFINITY;
                    for (p, score) in scores.iter_mut().enumerate() {
                        let slot =
                            span.block_table[p / block_size] as usize * block_size + p % block_size;
                        let kh = &cache.k[slot * width + g * d..][..d];
                        let dot: f32 = qh.iter().zip(kh).map(|(a, b)| a * b).sum();
                        *score = dot * scale;
                        max = max.max(*score);
                    }
                    let mut sum = 0.0f32;
                    for score in scores.iter_mut() {
                        *score = (*score - max).exp();
                        sum += *score;
                    }
                    let o = &mut out[h * d..(h + 1) * d];
                    o.fill(0.0);
                    for (p, &w) in scores.iter().enumerate() {
                        let slot =
                            span.block_table[p / block_size] as usize * block_size + p % block_size;
                        let vh = &cache.v[slot * width + g * d..][..d];
                        let w = w / sum;
                        for (o, &x) in o.iter_mut().zip(vh) {
                            *o += w * x;
                        }
                    }
                }
            }
        });
        Tensor::from_vec(result, (n, self.num_heads * d), &Device::Cpu)
    }

    fn copy_blocks(&mut self, copies: &[(BlockId, BlockId)]) -> Result<()> {
        let block_len = self.shape.block_size * self.shape.slot_width();
        for layer in &mut self.layers {
            for &(src, dst) in copies {
                let (src, dst) = (src as usize * block_len, dst as usize * block_len);
                layer.k.copy_within(src..src + block_len, dst);
                layer.v.copy_within(src..src + block_len, dst);
            }
        }
        Ok(())
    }

    fn read_block(&self, layer: usize, block: BlockId) -> Result<(Vec<f32>, Vec<f32>)> {
        let block_len = self.shape.block_size * self.shape.slot_width();
        let start = block as usize * block_len;
        let cache = &self.layers[layer];
        Ok((
            cache.k[start..start + block_len].to_vec(),
            cache.v[start..start + block_len].to_vec(),
        ))
    }
}
