//! Launchers for kernels/fused.cu (residual add + RMSNorm, SiLU·up); `crate::model::fused` calls
//! them for CUDA tensors and falls back to candle's ops when they answer `None`. The fused RoPE + K/V
//! write is launched by the attention backend (`attention.rs`).

use crate::cuda::{self, launch_config, FUSED};
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{DType, Result, Tensor};
use half::{bf16, f16};

const THREADS: u32 = 256; // RMR1_FUSED_THREADS

/// The kernels' name suffix when all of `tensors` are CUDA tensors of one supported dtype and
/// no gradient is being tracked through them.
fn suffix(tensors: &[&Tensor]) -> Option<&'static str> {
    let first = tensors[0];
    let same = tensors
        .iter()
        .all(|t| t.device().is_cuda() && t.dtype() == first.dtype() && !t.track_op());
    if !same {
        return None;
    }
    match first.dtype() {
        DType::BF16 => Some("bf16"),
        DType::F16 => Some("f16"),
        DType::F32 => Some("f32"),
        _ => None,
    }
}

pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<Option<(Tensor, Tensor)>> {
    let Some(sfx) = suffix(&[x, residual, weight]) else {
        return Ok(None);
    };
    let (rows, width) = x.dims2()?;
    if residual.dims() != x.dims() || weight.dims() != [width] {
        return Ok(None);
    }
    let (x, residual, weight) = (
        x.contiguous()?,
        residual.contiguous()?,
        weight.contiguous()?,
    );
    match x.dtype() {
        DType::BF16 => add_rms_norm_as::<bf16>(sfx, &x, &residual, &weight, rows, width, eps),
        DType::F16 => add_rms_norm_as::<f16>(sfx, &x, &residual, &weight, rows, width, eps),
        _ => add_rms_norm_as::<f32>(sfx, &x, &residual, &weight, rows, width, eps),
    }
    .map(Some)
}

fn add_rms_norm_as<T: CudaDType + DeviceRepr>(
    sfx: &str,
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    rows: usize,
    width: usize,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let dev = cuda::cuda_device(x.device())?;
    // Safety: the kernel writes every element of both outputs (one block per row).
    let mut sum = unsafe { dev.alloc::<T>(rows * width)? };
    let mut normed = unsafe { dev.alloc::<T>(rows * width)? };
    let func = cuda::function(dev, FUSED, &format!("rmr1_add_rms_norm_{sfx}"))?;
    cuda::with_view::<T, _>(x, |x| {
        cuda::with_view::<T, _>(residual, |r| {
            cuda::with_view::<T, _>(weight, |w| {
                let mut b = func.builder();
                let width = width as u32;
                b.arg(x).arg(r).arg(w).arg(&mut sum).arg(&mut normed);
                b.arg(&width).arg(&eps);
                // Safety: all three inputs hold rows x width (weight: width) elements.
                unsafe { b.launch(launch_config((rows as u32, 1, 1), THREADS)) }.w()?;
                Ok(())
            })
        })
    })?;
    Ok((
        cuda::into_tensor(sum, dev, (rows, width)),
        cuda::into_tensor(normed, dev, (rows, width)),
    ))
}

pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    let Some(sfx) = suffix(&[gate, up]) else {
        return Ok(None);
    };
    let (rows, width) = gate.dims2()?;
    if up.dims() != gate.dims() {
        return Ok(None);
    }
    match gate.dtype() {
        DType::BF16 => silu_mul_as::<bf16>(sfx, gate, up, rows, width),
        DType::F16 => silu_mul_as::<f16>(sfx, gate, up, rows, width),
        _ => silu_mul_as::<f32>(sfx, gate, up, rows, width),
    }
}

fn silu_mul_as<T: CudaDType + DeviceRepr>(
    sfx: &str,
    gate: &Tensor,
    up: &Tensor,
    rows: usize,
    width: usize,
) -> Result<Option<Tensor>> {
    // The kernel takes one row stride for both: the stacked gate|up views share theirs.
    let (Some(g_stride), Some(u_stride)) = (cuda::row_stride(gate), cuda::row_stride(up)) else {
        return Ok(None);
    };
    if g_stride != u_stride {
        return Ok(None);
    }
    let dev = cuda::cuda_device(gate.device())?;
    // Safety: the grid-stride loop writes every element.
    let mut out = unsafe { dev.alloc::<T>(rows * width)? };
    let func = cuda::function(dev, FUSED, &format!("rmr1_silu_mul_{sfx}"))?;
    cuda::with_rows::<T, _>(gate, |g| {
        cuda::with_rows::<T, _>(up, |u| {
            let mut b = func.builder();
            b.arg(g)
                .arg(u)
                .arg(&g_stride)
                .arg(&mut out)
                .arg(&rows)
                .arg(&width);
            let blocks = (rows * width).div_ceil(THREADS as usize).min(4096) as u32;
            // Safety: both views span rows rows of `stride` elements (checked by with_rows).
            unsafe { b.launch(launch_config((blocks, 1, 1), THREADS)) }.w()?;
            Ok(())
        })
    })?;
    Ok(Some(cuda::into_tensor(out, dev, (rows, width))))
}
