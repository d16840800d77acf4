//! CUDA plumbing shared by rmr1's own kernels (built with the `cuda` feature): the PTX that build.rs
//! compiles from kernels/*.cu, function lookup, and views of candle tensors' device memory.
//!
//! Kernels launch on the candle device's stream, so they are ordered with candle's own ops and need
//! no extra synchronisation.

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, LaunchConfig,
    PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, Device, Result, Shape, Storage, Tensor};
use std::sync::Arc;

/// A PTX module built from one kernels/*.cu file.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    name: &'static str,
    ptx: &'static str,
}

pub const PAGED_ATTENTION: Module = Module {
    name: "rmr1_paged_attention",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx")),
};

pub const SAMPLING: Module = Module {
    name: "rmr1_sampling",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/sampling.ptx")),
};

/// A loaded kernel bound to the device's stream.
pub struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// Loads `name` from `module` (the module is JIT-compiled for the card on first use, then cached).
pub fn function(dev: &CudaDevice, module: Module, name: &str) -> Result<Kernel> {
    let func = dev.get_or_load_custom_func(name, module.name, module.ptx)?;
    Ok(Kernel {
        func: func.into_cuda_function(),
        stream: dev.cuda_stream(),
    })
}

/// The CUDA device behind a candle device.
pub fn cuda_device(device: &Device) -> Result<&CudaDevice> {
    match device {
        Device::Cuda(dev) => Ok(dev),
        other => bail!("expected a CUDA device, got {other:?}"),
    }
}

/// Runs `f` on the device memory of a contiguous CUDA tensor viewed as `T`.
pub fn with_view<T: CudaDType + DeviceRepr, R>(
    tensor: &Tensor,
    f: impl FnOnce(&CudaView<'_, T>) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        bail!("expected a CUDA tensor, got one on {:?}", tensor.device())
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!(
            "kernel input of shape {:?} is not contiguous",
            tensor.dims()
        )
    };
    let slice = cuda.as_cuda_slice::<T>()?;
    f(&slice.slice(start..end))
}

/// Wraps device memory the caller filled as a tensor (contiguous strides).
pub fn into_tensor<T: CudaDType + DeviceRepr>(
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    let storage = CudaStorage::wrap_cuda_slice(slice, dev.clone());
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}

/// Uploads host data.
pub fn upload<T: DeviceRepr + 'static>(dev: &CudaDevice, data: &[T]) -> Result<CudaSlice<T>> {
    dev.clone_htod(data)
}

/// Free and total device memory in bytes.
pub fn memory_info(dev: &CudaDevice) -> Result<(usize, usize)> {
    dev.cuda_stream().context().mem_get_info().w()
}

/// Waits for every queued kernel and surfaces an asynchronous CUDA error (checks call this after each
/// kernel so a fault is pinned to the kernel that caused it).
pub fn synchronize(dev: &CudaDevice) -> Result<()> {
    dev.synchronize()
}

/// Fills a buffer with the all-ones bit pattern (NaN in f32, bf16 and f16), so a check can tell an
/// element a kernel never wrote from a plausible value.
pub fn poison<T: DeviceRepr>(dev: &CudaDevice, slice: &mut CudaSlice<T>) -> Result<()> {
    let halves = slice.len() * std::mem::size_of::<T>() / 2;
    if halves == 0 {
        return Ok(());
    }
    // Safety: the u16 view covers exactly the slice's bytes (element sizes are multiples of 2).
    let func = function(dev, PAGED_ATTENTION, "rmr1_fill_ones_u16")?;
    let mut builder = func.builder();
    builder.arg(slice);
    builder.arg(&halves);
    let blocks = halves.div_ceil(256).min(4096) as u32;
    // Safety: the kernel writes `halves` u16 values inside the allocation.
    unsafe { builder.launch(launch_config((blocks, 1, 1), 256)) }.w()?;
    Ok(())
}

/// A launch of `grid` blocks of `threads` threads, no dynamic shared memory.
pub fn launch_config(grid: (u32, u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}
