//! Element-wise steps of the layer that a GPU runs as one kernel each (kernels/fused.cu): residual
//! add + RMSNorm, and SiLU(gate) · up. Elsewhere (the CPU, training's autograd, dtypes the kernels
//! lack) they are the candle ops they replace, so CPU results do not change.

use candle_core::{Result, Tensor};

/// `(x + residual, rms_norm(x + residual) * weight)`: the new residual stream and its normalised copy.
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if let Some(fused) = crate::cuda::fused::add_rms_norm(x, residual, weight, eps)? {
        return Ok(fused);
    }
    let sum = (x + residual)?;
    let normed = candle_nn::ops::rms_norm(&sum, weight, eps)?;
    Ok((sum, normed))
}

/// `silu(gate) * up`, both `[tokens, width]` (views into one stacked gate|up output are fine).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(fused) = crate::cuda::fused::silu_mul(gate, up)? {
        return Ok(fused);
    }
    candle_nn::ops::silu(gate)? * up
}
