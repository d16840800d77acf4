//! Paged attention on CUDA with rmr1's own kernels (kernels/paged_attention.cu).
//!
//! The K and V caches are two device allocations holding every layer, laid out like the CPU reference
//! (`[layer][slot][kv_head][head_dim]`), so block ids and slots mean the same on both devices. The
//! per-step metadata (slots, block tables, each token's sequence and context length) is uploaded once
//! in [`PagedAttention::prepare`] and shared by every layer of the step.

use super::step_layout::StepLayout;
use super::{AttentionBatch, BlockId, CacheShape, PagedAttention};
use crate::cuda::{self, launch_config, PAGED_ATTENTION};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, DType, Device, Result, Tensor};
use half::{bf16, f16};
use std::ops::Range;

/// Positions one attention block covers (kernels/paged_attention.cu `RMR1_PARTITION`).
pub const PARTITION: usize = super::step_layout::CUDA_PARTITION;
/// Largest query-heads-per-kv-head ratio the kernel supports (`RMR1_MAX_GROUPS`).
pub const MAX_GROUPS: usize = 8;
/// Largest head dimension the kernel supports (`RMR1_MAX_HEAD_DIM`).
pub const MAX_HEAD_DIM: usize = 256;
const THREADS: u32 = 128;

/// Device copies of one step's [`AttentionBatch`], plus scratch for split attention.
struct StepMetadata {
    num_tokens: usize,
    num_splits: usize,
    max_blocks_per_seq: usize,
    /// slot_mapping, block_tables, token_seq and token_ctx back to back: one upload per step.
    metadata: CudaSlice<u32>,
    slot_mapping: Range<usize>,
    block_tables: Range<usize>,
    token_seq: Range<usize>,
    token_ctx: Range<usize>,
    part_out: CudaSlice<f32>,
    part_max: CudaSlice<f32>,
    part_sum: CudaSlice<f32>,
}

pub struct CudaPagedAttention {
    shape: CacheShape,
    num_heads: usize,
    dtype: DType,
    dev: CudaDevice,
    /// Raw bytes of `[layers][slots][kv_heads][head_dim]` elements of `dtype`.
    k_cache: CudaSlice<u8>,
    v_cache: CudaSlice<u8>,
    step: Option<StepMetadata>,
    poison_outputs: bool,
}

fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        other => bail!("CUDA paged attention supports bf16, f16 and f32, not {other:?}"),
    })
}

impl CudaPagedAttention {
    pub fn new(shape: CacheShape, num_heads: usize, dtype: DType, device: &Device) -> Result<Self> {
        suffix(dtype)?;
        if shape.num_kv_heads == 0 || !num_heads.is_multiple_of(shape.num_kv_heads) {
            bail!(
                "{num_heads} query heads do not group over {} kv heads",
                shape.num_kv_heads
            );
        }
        if num_heads / shape.num_kv_heads > MAX_GROUPS || shape.head_dim > MAX_HEAD_DIM {
            bail!(
                "the CUDA attention kernel supports up to {MAX_GROUPS} query heads per kv head and \
                 head_dim {MAX_HEAD_DIM}; this model has {} and {}",
                num_heads / shape.num_kv_heads,
                shape.head_dim
            );
        }
        let dev = cuda::cuda_device(device)?.clone();
        let bytes = Self::bytes_per_token(&shape, dtype) / 2 * shape.num_blocks * shape.block_size;
        // The zeroing runs on this thread's stream: a caller handing the backend to another thread
        // synchronises first (EngineHandle::start does).
        Ok(Self {
            shape,
            num_heads,
            dtype,
            k_cache: dev.alloc_zeros::<u8>(bytes)?,
            v_cache: dev.alloc_zeros::<u8>(bytes)?,
            dev,
            step: None,
            poison_outputs: false,
        })
    }

    /// Bytes one token's K and V take across all layers.
    pub fn bytes_per_token(shape: &CacheShape, dtype: DType) -> usize {
        2 * shape.num_layers * shape.slot_width() * dtype.size_in_bytes()
    }

    /// Fill every output with NaN before the kernels run (checks use this to catch unwritten elements).
    pub fn set_poison_outputs(&mut self, poison: bool) {
        self.poison_outputs = poison;
    }

    fn num_slots(&self) -> usize {
        self.shape.num_blocks * self.shape.block_size
    }

    fn layer_bytes(&self) -> usize {
        self.num_slots() * self.shape.slot_width() * self.dtype.size_in_bytes()
    }

    fn run_layer<T: CudaDType + DeviceRepr>(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let sfx = suffix(self.dtype)?;
        let s = self.shape;
        let layer_bytes = self.layer_bytes();
        let Some(step) = self.step.as_mut() else {
            bail!("CudaPagedAttention::forward before prepare")
        };
        let n = step.num_tokens;
        let (heads, d) = (self.num_heads, s.head_dim);
        let layer_range = layer * layer_bytes..(layer + 1) * layer_bytes;
        let k_layer = self.k_cache.slice(layer_range.clone());
        let v_layer = self.v_cache.slice(layer_range);

        let write = cuda::function(
            &self.dev,
            PAGED_ATTENTION,
            &format!("rmr1_write_kv_cache_{sfx}"),
        )?;
        cuda::with_view::<T, _>(k, |k| {
            cuda::with_view::<T, _>(v, |v| {
                let mut b = write.builder();
                b.arg(k).arg(v).arg(&k_layer).arg(&v_layer);
                let width = s.slot_width() as u32;
                let slots = step.metadata.slice(step.slot_mapping.clone());
                b.arg(&slots).arg(&width);
                // Safety: slots were checked against the cache size in `prepare`.
                unsafe { b.launch(launch_config((n as u32, 1, 1), THREADS)) }.w()?;
                Ok(())
            })
        })?;

        let mut out = unsafe { self.dev.alloc::<T>(n * heads * d)? };
        if self.poison_outputs {
            cuda::poison(&self.dev, &mut out)?;
            cuda::poison(&self.dev, &mut step.part_out)?;
        }
        let attend = cuda::function(
            &self.dev,
            PAGED_ATTENTION,
            &format!("rmr1_paged_attention_{sfx}"),
        )?;
        let scale = 1.0f32 / (d as f32).sqrt();
        let dims = [
            heads as u32,
            s.num_kv_heads as u32,
            d as u32,
            s.block_size as u32,
            step.max_blocks_per_seq as u32,
        ];
        cuda::with_view::<T, _>(q, |q| {
            let mut b = attend.builder();
            b.arg(q).arg(&k_layer).arg(&v_layer);
            let (tables, seq, ctx) = (
                step.metadata.slice(step.block_tables.clone()),
                step.metadata.slice(step.token_seq.clone()),
                step.metadata.slice(step.token_ctx.clone()),
            );
            b.arg(&tables).arg(&seq).arg(&ctx);
            b.arg(&mut out)
                .arg(&mut step.part_out)
                .arg(&mut step.part_max)
                .arg(&mut step.part_sum);
            for dim in &dims {
                b.arg(dim);
            }
            b.arg(&scale);
            let grid = (n as u32, s.num_kv_heads as u32, step.num_splits as u32);
            // Safety: every index the kernel forms was validated in `prepare` and above.
            unsafe { b.launch(launch_config(grid, THREADS)) }.w()?;
            Ok(())
        })?;
        if step.num_splits > 1 {
            let reduce = cuda::function(
                &self.dev,
                PAGED_ATTENTION,
                &format!("rmr1_paged_attention_reduce_{sfx}"),
            )?;
            let mut b = reduce.builder();
            b.arg(&step.part_out)
                .arg(&step.part_max)
                .arg(&step.part_sum)
                .arg(&mut out);
            let (h, dd, splits) = (heads as u32, d as u32, step.num_splits as u32);
            b.arg(&h).arg(&dd).arg(&splits);
            // Safety: the partial buffers were sized for this step in `prepare`.
            unsafe { b.launch(launch_config((n as u32, heads as u32, 1), THREADS)) }.w()?;
        }
        Ok(cuda::into_tensor(out, &self.dev, (n, heads * d)))
    }
}

impl PagedAttention for CudaPagedAttention {
    fn cache_shape(&self) -> CacheShape {
        self.shape
    }

    fn prepare(&mut self, batch: &AttentionBatch) -> Result<()> {
        let s = self.shape;
        let n = batch.num_tokens();
        let layout = StepLayout::new(batch, &s, PARTITION)?;
        let num_splits = layout.num_splits;
        // With one partition the kernel writes the output directly and never touches the scratch.
        let partial = if num_splits > 1 {
            n * self.num_heads
        } else {
            1
        };
        let dev = &self.dev;
        let mut packed = Vec::with_capacity(3 * n + layout.block_tables.len());
        let mut append = |part: &[u32]| {
            packed.extend_from_slice(part);
            packed.len() - part.len()..packed.len()
        };
        let slot_mapping = append(&batch.slot_mapping);
        let block_tables = append(&layout.block_tables);
        let token_seq = append(&layout.token_seq);
        let token_ctx = append(&layout.token_ctx);
        self.step = Some(StepMetadata {
            num_tokens: n,
            num_splits,
            max_blocks_per_seq: layout.max_blocks_per_seq,
            metadata: cuda::upload(dev, &packed)?,
            slot_mapping,
            block_tables,
            token_seq,
            token_ctx,
            // Safety: with several partitions the kernel writes every element before the reduce
            // reads it; with one, nothing reads them.
            part_out: unsafe { dev.alloc::<f32>(partial * num_splits * s.head_dim)? },
            part_max: unsafe { dev.alloc::<f32>(partial * num_splits)? },
            part_sum: unsafe { dev.alloc::<f32>(partial * num_splits)? },
        });
        Ok(())
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
        let n = batch.num_tokens();
        if self.step.as_ref().map(|m| m.num_tokens) != Some(n) {
            bail!("CudaPagedAttention::forward for a batch that was not prepared");
        }
        if q.dims() != [n, self.num_heads, s.head_dim]
            || k.dims() != [n, s.num_kv_heads, s.head_dim]
            || v.dims() != k.dims()
        {
            bail!(
                "attention inputs {:?} / {:?} / {:?} do not match {n} tokens",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        if layer >= s.num_layers {
            bail!("layer {layer} of a {}-layer cache", s.num_layers);
        }
        // The cache's dtype may be narrower than the model's (a GGUF model computes in f32 but
        // keeps K/V in bf16): the kernels run in the cache's, the output returns in the model's.
        let model_dtype = q.dtype();
        let (q, k, v) = (
            q.to_dtype(self.dtype)?.contiguous()?,
            k.to_dtype(self.dtype)?.contiguous()?,
            v.to_dtype(self.dtype)?.contiguous()?,
        );
        let out = match self.dtype {
            DType::BF16 => self.run_layer::<bf16>(layer, &q, &k, &v),
            DType::F16 => self.run_layer::<f16>(layer, &q, &k, &v),
            _ => self.run_layer::<f32>(layer, &q, &k, &v),
        }?;
        out.to_dtype(model_dtype)
    }

    fn copy_blocks(&mut self, copies: &[(BlockId, BlockId)]) -> Result<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let s = self.shape;
        let mut pairs = Vec::with_capacity(2 * copies.len());
        for &(src, dst) in copies {
            if src as usize >= s.num_blocks || dst as usize >= s.num_blocks {
                bail!(
                    "block copy {src} -> {dst} outside a cache of {} blocks",
                    s.num_blocks
                );
            }
            pairs.extend([src, dst]);
        }
        let pairs = cuda::upload(&self.dev, &pairs)?;
        let sfx = suffix(self.dtype)?;
        let func = cuda::function(
            &self.dev,
            PAGED_ATTENTION,
            &format!("rmr1_copy_kv_blocks_{sfx}"),
        )?;
        let block_len = s.block_size * s.slot_width();
        let layer_len = self.num_slots() * s.slot_width();
        let mut b = func.builder();
        b.arg(&mut self.k_cache).arg(&mut self.v_cache).arg(&pairs);
        b.arg(&block_len).arg(&layer_len);
        let grid = (copies.len() as u32, s.num_layers as u32, 1);
        // Safety: both block ids of every pair were checked above.
        unsafe { b.launch(launch_config(grid, THREADS)) }.w()?;
        Ok(())
    }

    fn read_block(&self, layer: usize, block: BlockId) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = self.shape;
        let elem = self.dtype.size_in_bytes();
        let block_bytes = s.block_size * s.slot_width() * elem;
        let start = layer * self.layer_bytes() + block as usize * block_bytes;
        let read = |cache: &CudaSlice<u8>| -> Result<Vec<f32>> {
            let bytes = self
                .dev
                .clone_dtoh(&cache.slice(start..start + block_bytes))?;
            Ok(bytes
                .chunks_exact(elem)
                .map(|c| match self.dtype {
                    DType::BF16 => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                    DType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
                    _ => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                })
                .collect())
        };
        Ok((read(&self.k_cache)?, read(&self.v_cache)?))
    }
}
