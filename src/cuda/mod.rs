//! Everything CUDA in rmr1 lives here and in `kernels/*.cu` (compiled to PTX by build.rs, checked by
//! ptxas, emulated on the CPU by tests/kernel_emulation):
//! - this file: the plumbing shared by rmr1's own kernels (PTX modules, function lookup, views of
//!   candle tensors' device memory, the driver check, the memory pool, launch/upload counters);
//! - [`attention`]: the paged-attention backend (`PagedAttention`) over kernels/paged_attention.cu,
//!   with the fused RoPE + K/V write of kernels/fused.cu;
//! - [`sampler`]: the `TokenSampler` over kernels/sampling.cu;
//! - [`fused`]: launchers for the layer's other fused steps (kernels/fused.cu).
//!
//! `crate::gpu_check` holds the checks that need a GPU to run.
//!
//! Kernels launch on the candle device's stream, so they are ordered with candle's own ops and need
//! no extra synchronisation.

pub mod attention;
pub mod fused;
pub mod sampler;

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, LaunchConfig,
    PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, Device, Result, Shape, Storage, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

pub const FUSED: Module = Module {
    name: "rmr1_fused",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/fused.ptx")),
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
    /// Arguments for one launch (counted in [`counters`]: every builder is launched once).
    pub fn builder(&self) -> LaunchArgs<'_> {
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        self.stream.launch_builder(&self.func)
    }
}

static LAUNCHES: AtomicU64 = AtomicU64::new(0);
static UPLOADS: AtomicU64 = AtomicU64::new(0);

/// rmr1's own kernel launches and host-to-device uploads since start (candle's ops not included):
/// the per-step overhead the bench reports, since each costs host time and, for an upload, a
/// synchronising copy.
pub fn counters() -> (u64, u64) {
    (
        LAUNCHES.load(Ordering::Relaxed),
        UPLOADS.load(Ordering::Relaxed),
    )
}

/// Loads `name` from `module` (the module is JIT-compiled for the card on first use, then cached).
///
/// Launchers call this for every launch, several times per layer. candle's lookup takes a lock and
/// asks the driver for the function each time (`cuModuleGetFunction`), so the handles are kept per
/// thread (the engine steps on one thread; no lock) by device, module and name.
pub fn function(dev: &CudaDevice, module: Module, name: &str) -> Result<Kernel> {
    type Handles = HashMap<(DeviceId, &'static str), HashMap<String, CudaFunction>>;
    thread_local! {
        static HANDLES: RefCell<Handles> = RefCell::new(HashMap::new());
    }
    let key = (dev.id(), module.name);
    let cached = HANDLES.with(|h| h.borrow().get(&key).and_then(|m| m.get(name)).cloned());
    let func = match cached {
        Some(func) => func,
        None => {
            driver_accepts_ptx()?;
            let func = dev
                .get_or_load_custom_func(name, module.name, module.ptx)?
                .into_cuda_function();
            HANDLES.with(|h| {
                h.borrow_mut()
                    .entry(key)
                    .or_default()
                    .insert(name.to_string(), func.clone())
            });
            func
        }
    };
    Ok(Kernel {
        func,
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

/// Elements between consecutive rows of a 2-D tensor whose rows are each contiguous (a contiguous
/// matrix, or a column range of a wider one); `None` for any other layout.
pub fn row_stride(tensor: &Tensor) -> Option<usize> {
    let (rows, cols) = tensor.dims2().ok()?;
    let stride = tensor.layout().stride();
    if cols > 1 && stride[1] != 1 {
        return None;
    }
    Some(if rows > 1 { stride[0] } else { cols })
}

/// Runs `f` on the device memory of a 2-D CUDA tensor whose rows may be apart ([`row_stride`]): from
/// its first element to the end of its last row.
pub fn with_rows<T: CudaDType + DeviceRepr, R>(
    tensor: &Tensor,
    f: impl FnOnce(&CudaView<'_, T>) -> Result<R>,
) -> Result<R> {
    let (rows, cols) = tensor.dims2()?;
    let Some(stride) = row_stride(tensor) else {
        bail!(
            "kernel input of layout {:?} does not have contiguous rows",
            tensor.layout()
        )
    };
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        bail!("expected a CUDA tensor, got one on {:?}", tensor.device())
    };
    let start = layout.start_offset();
    let len = if rows == 0 {
        0
    } else {
        (rows - 1) * stride + cols
    };
    let slice = cuda.as_cuda_slice::<T>()?;
    f(&slice.slice(start..start + len))
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
    UPLOADS.fetch_add(1, Ordering::Relaxed);
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

/// CUDA version of the nvcc that built the kernels (build.rs).
const PTX_TOOLKIT: &str = env!("RMR1_NVCC_CUDA_VERSION");

/// The driver JIT-compiles PTX only from toolkits no newer than the CUDA version it supports;
/// checked once, so an old driver is named at the first kernel load instead of surfacing as
/// CUDA_ERROR_UNSUPPORTED_PTX_VERSION from deep inside a forward step.
fn driver_accepts_ptx() -> Result<()> {
    static CHECK: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    CHECK
        .get_or_init(|| {
            let mut version = 0i32;
            // Safety: cuDriverGetVersion only writes the int it is given.
            unsafe { sys::cuDriverGetVersion(&mut version) }
                .result()
                .map_err(|e| format!("cuDriverGetVersion: {e:?}"))?;
            let driver = (version / 1000, (version % 1000) / 10);
            let (major, minor) = PTX_TOOLKIT.split_once('.').expect("build.rs writes X.Y");
            let toolkit = (major.parse().unwrap_or(0), minor.parse().unwrap_or(0));
            if driver < toolkit {
                return Err(format!(
                    "the NVIDIA driver supports CUDA {}.{}, but rmr1's kernels were built with CUDA \
                     {PTX_TOOLKIT} and a driver cannot load PTX from a newer toolkit: upgrade the \
                     driver or rebuild with nvcc <= {}.{} (RMR1_MIN_DRIVER_CUDA in build.rs)",
                    driver.0, driver.1, driver.0, driver.1
                ));
            }
            Ok(())
        })
        .clone()
        .map_err(candle_core::Error::msg)
}

/// Stops cudarc from recording an event on every use of every buffer allocated from now on. That
/// tracking orders buffers shared between streams; rmr1 issues all device work on the one stream of
/// candle's device (its kernels launch there too, see `Kernel`), so it only costs host time
/// (an event record per argument per launch). Call once, before the weights are loaded.
pub fn disable_event_tracking(dev: &CudaDevice) {
    // Safety: every buffer is used on the device's single stream (see above), so no cross-stream
    // synchronisation is lost.
    unsafe { dev.cuda_stream().context().disable_event_tracking() }
}

/// Keeps memory freed back to the device's default pool instead of returning it to the driver at
/// each synchronisation (the pool's release threshold is 0 by default), so a step's activations
/// reuse the previous step's memory without a driver call. Called once the KV cache is allocated:
/// the cache plan reads free memory before, and pooled memory would count as used.
pub fn keep_freed_memory_pooled(dev: &CudaDevice) -> Result<()> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let mut pool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // Safety: the out-pointer and the attribute's u64 value live across the calls.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .w()?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()
        .w()?;
    }
    Ok(())
}
