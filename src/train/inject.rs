//! Gradient injection: a value computed outside the autograd graph, given the backward we choose.
//!
//! candle's backward computes a gradient for *every* input of a recorded op, frozen or not: `x @ Wᵀ`
//! with a frozen `W` still builds `dW` (for LoRA on a 7B model, ~15 GB of dead gradients and half the
//! backward work). [`inject`] takes a value `y` computed from detached inputs and ties it to `x`
//! with a custom op whose forward copies `y` and whose backward is the closure given: only `dx` is
//! ever computed, and the frozen tensors never enter the graph, so no gradient can be kept for them.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// `dx` from the gradient of the injected value.
pub type InputGrad = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

struct Inject {
    name: &'static str,
    input_grad: InputGrad,
}

fn copy_contiguous<T: Copy>(data: &[T], layout: &Layout) -> Result<Vec<T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(data[start..end].to_vec()),
        None => candle_core::bail!("inject: the injected value must be contiguous"),
    }
}

impl CustomOp2 for Inject {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        value: &CpuStorage,
        layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match value {
            CpuStorage::F32(v) => CpuStorage::F32(copy_contiguous(v, layout)?),
            CpuStorage::F64(v) => CpuStorage::F64(copy_contiguous(v, layout)?),
            CpuStorage::BF16(v) => CpuStorage::BF16(copy_contiguous(v, layout)?),
            CpuStorage::F16(v) => CpuStorage::F16(copy_contiguous(v, layout)?),
            other => candle_core::bail!("inject: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        value: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if !layout.is_contiguous() {
            candle_core::bail!("inject: the injected value must be contiguous");
        }
        Ok((value.try_clone(layout)?, layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _value: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.input_grad)(grad)?), None))
    }
}

/// Returns `value` (computed without a graph from `x.detach()` and frozen tensors) as a function of
/// `x` whose backward is `input_grad(dvalue) = dx`. When `x` tracks no gradient there is nothing to
/// inject and `value` is returned as it is.
pub fn inject(
    name: &'static str,
    x: &Tensor,
    value: Tensor,
    input_grad: InputGrad,
) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(value);
    }
    let value = value.detach().contiguous()?;
    x.apply_op2(&value, Inject { name, input_grad })
}

/// `x @ wᵀ (+ b)` for a frozen `w` `[out, in]` (and bias `[out]`); `x` is `[.., in]`. Backward: `dx = g @ w`.
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.detach().broadcast_matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let w = w.clone();
    inject(
        "frozen-linear",
        x,
        y,
        Arc::new(move |g| g.broadcast_matmul(&w)),
    )
}

/// `x * w` broadcast over the last dimension for a frozen `w` (norm weights). Backward: `dx = g * w`.
pub fn frozen_scale(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = x.detach().broadcast_mul(w)?;
    let w = w.clone();
    inject("frozen-scale", x, y, Arc::new(move |g| g.broadcast_mul(&w)))
}
