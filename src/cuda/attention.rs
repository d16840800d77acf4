//! Paged attention on CUDA with rmr1's own kernels (kernels/paged_attention.cu).
//!
//! The K and V caches are two device allocations holding every layer, laid out like the CPU reference
//! (`[layer][slot][kv_head][head_dim]`), so block ids and slots mean the same on both devices. The
//! per-step metadata (slots, block tables, each token's sequence and context length) is uploaded once,
//! packed into one buffer, in [`PagedAttention::prepare`] and shared by every layer of the step; the
//! attention partition is chosen there too, so small decode batches still fill the GPU. Each layer
//! launches the specialised attention kernel for the model's head size and grouping when there is one.

use crate::cuda::{self, launch_config, FUSED, PAGED_ATTENTION};
use crate::model::attention::step_layout::{choose_partition, StepLayout};
use crate::model::attention::{
    rotate_then_attend, AttentionBatch, BlockId, CacheShape, PagedAttention,
};
use crate::model::rope::StepRotary;
use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaSlice, CudaView, DeviceRepr, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, DType, Device, Result, Tensor};
use half::{bf16, f16};
use std::ops::Range;

/// Largest query-heads-per-kv-head ratio the kernel supports (`RMR1_MAX_GROUPS`).
pub const MAX_GROUPS: usize = 8;
/// Largest head dimension the kernel supports (`RMR1_MAX_HEAD_DIM`).
pub const MAX_HEAD_DIM: usize = 256;
const THREADS: u32 = 128;

/// Device copies of one step's [`AttentionBatch`], plus scratch for split attention.
struct StepMetadata {
    num_tokens: usize,
    /// Positions per attention block this step (`choose_partition`).
    partition: usize,
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
    /// Blocks an attention launch should reach to keep every multiprocessor busy (twice their count).
    target_blocks: usize,
}

/// Head sizes and query-heads-per-kv-head ratios with a specialised kernel
/// (`rmr1_paged_attention_fast_*` and, by head size, `rmr1_paged_attention_reduce_fast_*` in
/// kernels/paged_attention.cu), for bf16 and f16 caches.
const FAST_HEAD_DIMS: [usize; 2] = [64, 128];
const FAST_GROUPS: [usize; 7] = [1, 2, 4, 5, 6, 7, 8];

/// The cache dtypes with specialised kernels, by kernel-name suffix.
fn fast_suffix(dtype: DType) -> Option<&'static str> {
    match dtype {
        DType::BF16 => Some("bf16"),
        DType::F16 => Some("f16"),
        _ => None,
    }
}

/// The specialised attention kernel's name for this cache, if there is one.
fn fast_kernel(dtype: DType, head_dim: usize, groups: usize) -> Option<String> {
    let sfx = fast_suffix(dtype)?;
    (FAST_HEAD_DIMS.contains(&head_dim) && FAST_GROUPS.contains(&groups))
        .then(|| format!("rmr1_paged_attention_fast_{sfx}_d{head_dim}_g{groups}"))
}

/// The specialised reduce's name for this cache (`rmr1_paged_attention_reduce_fast_*`), whatever the
/// group count: it only depends on the head size.
fn fast_reduce_kernel(dtype: DType, head_dim: usize) -> Option<String> {
    let sfx = fast_suffix(dtype)?;
    FAST_HEAD_DIMS
        .contains(&head_dim)
        .then(|| format!("rmr1_paged_attention_reduce_fast_{sfx}_d{head_dim}"))
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
        let multiprocessors = dev
            .cuda_stream()
            .context()
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .w()?;
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
            target_blocks: 2 * multiprocessors.max(1) as usize,
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

    /// This layer's K and V pools, as raw bytes.
    fn layer_caches(&self, layer: usize) -> (CudaView<'_, u8>, CudaView<'_, u8>) {
        let range = self.layer_range(layer);
        (self.k_cache.slice(range.clone()), self.v_cache.slice(range))
    }

    /// Bytes of `layer` in each of the K and V allocations.
    fn layer_range(&self, layer: usize) -> Range<usize> {
        let layer_bytes = self.layer_bytes();
        layer * layer_bytes..(layer + 1) * layer_bytes
    }

    /// Writes the step's (rotated, contiguous) K and V rows into their slots of `layer`.
    fn write_rows<T: CudaDType + DeviceRepr>(
        &self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<()> {
        let sfx = suffix(self.dtype)?;
        let s = self.shape;
        let Some(step) = self.step.as_ref() else {
            bail!("CudaPagedAttention::forward before prepare")
        };
        let n = step.num_tokens;
        let (k_layer, v_layer) = self.layer_caches(layer);
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
        })
    }

    /// Rotates q and k with the step's tables and writes k and v into their slots of `layer`, in one
    /// kernel (kernels/fused.cu); returns the rotated q, `[tokens, heads, head_dim]`. `q`, `k`, `v`
    /// are `[tokens, width]` rows in the cache's dtype, each row contiguous, k and v equally strided.
    fn rotate_and_write<T: CudaDType + DeviceRepr>(
        &self,
        layer: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        (q_stride, kv_stride): (usize, usize),
        rotary: &StepRotary,
    ) -> Result<Tensor> {
        let sfx = suffix(self.dtype)?;
        let s = self.shape;
        let Some(step) = self.step.as_ref() else {
            bail!("CudaPagedAttention::forward before prepare")
        };
        let n = step.num_tokens;
        let (heads, d) = (self.num_heads, s.head_dim);
        let (k_layer, v_layer) = self.layer_caches(layer);
        let (cos, sin) = (rotary.cos.contiguous()?, rotary.sin.contiguous()?);
        if cos.dims() != [n, d / 2] || cos.dtype() != DType::F32 || sin.dims() != cos.dims() {
            bail!(
                "rotary tables {:?} for {n} tokens of head_dim {d}",
                cos.dims()
            );
        }
        // Safety: the kernel writes every element (each token's heads x head_dim).
        let mut q_out = unsafe { self.dev.alloc::<T>(n * heads * d)? };
        let func = cuda::function(&self.dev, FUSED, &format!("rmr1_rope_write_kv_{sfx}"))?;
        cuda::with_rows::<T, _>(q, |q| {
            cuda::with_rows::<T, _>(k, |k| {
                cuda::with_rows::<T, _>(v, |v| {
                    cuda::with_view::<f32, _>(&cos, |cos| {
                        cuda::with_view::<f32, _>(&sin, |sin| {
                            let mut b = func.builder();
                            b.arg(q).arg(k).arg(v).arg(&q_stride).arg(&kv_stride);
                            b.arg(cos).arg(sin);
                            let slots = step.metadata.slice(step.slot_mapping.clone());
                            b.arg(&slots).arg(&mut q_out).arg(&k_layer).arg(&v_layer);
                            let dims = [heads as u32, s.num_kv_heads as u32, d as u32];
                            b.arg(&dims[0]).arg(&dims[1]).arg(&dims[2]);
                            // Safety: the row views cover n rows (with_rows), slots were
                            // checked against the cache in `prepare`.
                            unsafe { b.launch(launch_config((n as u32, 1, 1), 256)) }.w()?;
                            Ok(())
                        })
                    })
                })
            })
        })?;
        Ok(cuda::into_tensor(q_out, &self.dev, (n, heads, d)))
    }

    /// Attention of the step's (rotated) queries over `layer`'s cache, K/V already written.
    fn attend<T: CudaDType + DeviceRepr>(&mut self, layer: usize, q: &Tensor) -> Result<Tensor> {
        let sfx = suffix(self.dtype)?;
        let s = self.shape;
        let (heads, d) = (self.num_heads, s.head_dim);
        // Field by field rather than `layer_caches`: `step` is borrowed mutably below.
        let layer_range = self.layer_range(layer);
        let k_layer = self.k_cache.slice(layer_range.clone());
        let v_layer = self.v_cache.slice(layer_range);
        let Some(step) = self.step.as_mut() else {
            bail!("CudaPagedAttention::forward before prepare")
        };
        let n = step.num_tokens;

        let mut out = unsafe { self.dev.alloc::<T>(n * heads * d)? };
        if self.poison_outputs {
            cuda::poison(&self.dev, &mut out)?;
            cuda::poison(&self.dev, &mut step.part_out)?;
        }
        let groups = heads / s.num_kv_heads;
        let fast = fast_kernel(self.dtype, d, groups);
        let attend = cuda::function(
            &self.dev,
            PAGED_ATTENTION,
            &fast
                .clone()
                .unwrap_or_else(|| format!("rmr1_paged_attention_{sfx}")),
        )?;
        let scale = 1.0f32 / (d as f32).sqrt();
        let (num_heads, num_kv_heads, head_dim, block_size, max_blocks, partition) = (
            heads as u32,
            s.num_kv_heads as u32,
            d as u32,
            s.block_size as u32,
            step.max_blocks_per_seq as u32,
            step.partition as u32,
        );
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
            b.arg(&num_heads).arg(&num_kv_heads);
            if fast.is_none() {
                // The specialised kernels have the head size built in.
                b.arg(&head_dim);
            }
            b.arg(&block_size)
                .arg(&max_blocks)
                .arg(&partition)
                .arg(&scale);
            let grid = (n as u32, s.num_kv_heads as u32, step.num_splits as u32);
            // Safety: every index the kernel forms was validated in `prepare` and above; a
            // specialised kernel is only picked for its own head size and group count.
            unsafe { b.launch(launch_config(grid, THREADS)) }.w()?;
            Ok(())
        })?;
        if step.num_splits > 1 {
            let fast_reduce = fast_reduce_kernel(self.dtype, d);
            let is_fast = fast_reduce.is_some();
            let name = fast_reduce.unwrap_or_else(|| format!("rmr1_paged_attention_reduce_{sfx}"));
            let reduce = cuda::function(&self.dev, PAGED_ATTENTION, &name)?;
            let mut b = reduce.builder();
            b.arg(&step.part_out)
                .arg(&step.part_max)
                .arg(&step.part_sum)
                .arg(&mut out);
            let (h, dd, splits) = (heads as u32, d as u32, step.num_splits as u32);
            b.arg(&h);
            // The specialised reduce has the head size built in and one thread per element.
            let threads = if is_fast {
                d as u32
            } else {
                b.arg(&dd);
                THREADS
            };
            b.arg(&splits);
            // Safety: the partial buffers were sized for this step in `prepare`; a specialised
            // reduce is only picked for its own head size.
            unsafe { b.launch(launch_config((n as u32, heads as u32, 1), threads)) }.w()?;
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
        let layout = StepLayout::new(batch, &s)?;
        let partition = choose_partition(n, s.num_kv_heads, layout.max_context, self.target_blocks);
        let num_splits = layout.num_splits(partition);
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
            partition,
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
            DType::BF16 => self
                .write_rows::<bf16>(layer, &k, &v)
                .and_then(|()| self.attend::<bf16>(layer, &q)),
            DType::F16 => self
                .write_rows::<f16>(layer, &k, &v)
                .and_then(|()| self.attend::<f16>(layer, &q)),
            _ => self
                .write_rows::<f32>(layer, &k, &v)
                .and_then(|()| self.attend::<f32>(layer, &q)),
        }?;
        out.to_dtype(model_dtype)
    }

    fn forward_rotary(
        &mut self,
        layer: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        rotary: &StepRotary,
        batch: &AttentionBatch,
    ) -> Result<Tensor> {
        let s = self.shape;
        let n = batch.num_tokens();
        let (q_width, kv_width) = (self.num_heads * s.head_dim, s.slot_width());
        // The fused kernel takes the projections as they come when they already are in the cache's
        // dtype (a dense model's); otherwise (GGUF computes in f32) rotate, convert and write apart.
        let shapes_fit = [q, k, v].iter().all(|t| t.dtype() == self.dtype)
            && q.dims() == [n, q_width]
            && k.dims() == [n, kv_width]
            && v.dims() == [n, kv_width];
        let rows = (
            cuda::row_stride(q),
            cuda::row_stride(k),
            cuda::row_stride(v),
        );
        let strides = match rows {
            (Some(q_stride), Some(k_stride), Some(v_stride))
                if shapes_fit && k_stride == v_stride =>
            {
                (q_stride, k_stride)
            }
            _ => return rotate_then_attend(self, layer, (q, k, v), rotary, batch),
        };
        if self.step.as_ref().map(|m| m.num_tokens) != Some(n) {
            bail!("CudaPagedAttention::forward_rotary for a batch that was not prepared");
        }
        if layer >= s.num_layers {
            bail!("layer {layer} of a {}-layer cache", s.num_layers);
        }
        match self.dtype {
            DType::BF16 => {
                let q = self.rotate_and_write::<bf16>(layer, (q, k, v), strides, rotary)?;
                self.attend::<bf16>(layer, &q)
            }
            DType::F16 => {
                let q = self.rotate_and_write::<f16>(layer, (q, k, v), strides, rotary)?;
                self.attend::<f16>(layer, &q)
            }
            _ => {
                let q = self.rotate_and_write::<f32>(layer, (q, k, v), strides, rotary)?;
                self.attend::<f32>(layer, &q)
            }
        }
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
