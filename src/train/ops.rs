//! Differentiable building blocks for the trainable Qwen2 forward.
//!
//! Several fast candle ops record no autograd node (`candle_nn::ops::{rms_norm, softmax_last_dim}`,
//! `candle_nn::rotary_emb::*`): backward "works", but nothing upstream of them gets a gradient.
//! Everything here is either a composite of ops that do have a backward, or a custom op whose
//! backward is written out; the tests finite-difference every input, so swapping one of these for a
//! fused inference kernel fails loudly.
//!
//! Precision: bf16/f16 inputs are computed in f32 internally (as HF Qwen2 does for norm, rope and
//! softmax) and cast back; f32 and f64 stay as they are, which lets the tests check gradients in
//! f64.
//!
//! Every op is written with tensor ops or device-generic storage calls, so it runs unchanged on
//! CPU and CUDA (`--features cuda`).

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

/// The dtype the arithmetic runs in: half precisions widen to f32, everything else stays.
fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// `x @ wᵀ` for a storage pair, with `w` stored `[out, in]`. Both backends go through the same
/// storage-level matmul `Tensor::matmul(x, w.t())` would use, so no weight copy is made.
fn matmul_wt<S: BackendStorage>(x: &S, lx: &Layout, w: &S, lw: &Layout) -> Result<(S, Shape)> {
    let (m, k) = lx.shape().dims2()?;
    let (n, k2) = lw.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("frozen_linear: x is [{m}, {k}] but w is [{n}, {k2}]")
    }
    let out = x.matmul(w, (1, m, n, k), lx, &lw.transpose(0, 1)?)?;
    Ok((out, Shape::from((m, n))))
}

/// A fresh contiguous copy of the elements `l` addresses (what `Tensor::contiguous` does). Unlike
/// the CPU `try_clone`, which ignores the layout, this is correct for views with offsets.
fn copy_strided<S: BackendStorage>(s: &S, l: &Layout) -> Result<(S, Shape)>
where
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: `copy_strided_src` writes every element of the new storage before it is read.
    let mut dst = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok((dst, l.shape().clone()))
}

/// `y = x @ wᵀ` whose backward yields only `dx = g @ w`.
struct FrozenLinear;

impl CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        matmul_wt(x, lx, w, lw)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        matmul_wt(x, lx, w, lw)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // `None` for w: candle's own matmul backward would compute and store `xᵀ @ g` here even
        // for a plain tensor (a weight-sized gradient per linear, then discarded).
        Ok((Some(g.contiguous()?.matmul(w)?), None))
    }
}

/// `y = x @ wᵀ` for a frozen weight `w` `[out, in]` and `x` `[.., in]` (any rank ≥ 1, same dtype
/// and device as `w`); `y` is `[.., out]`.
///
/// Backward gives `dx = g @ w` and nothing for `w`: no weight gradient is computed or stored, even
/// if `w` happens to be a `Var`. Use it for the LoRA base projections; use a plain matmul for
/// anything that trains.
///
/// Rather than the "inject" form (`x.detach() @ wᵀ`, then a custom op copying the result), the
/// custom op here runs the matmul itself on (x, w): the same gradient routing, without a second
/// copy of `y` held in the graph.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_features, in_features) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&in_features) {
        candle_core::bail!("frozen_linear: x {:?} against w {:?}", x.shape(), w.shape())
    }
    if x.dtype() != w.dtype() || !x.device().same_device(w.device()) {
        candle_core::bail!(
            "frozen_linear: x is {:?} on {:?}, w is {:?} on {:?}",
            x.dtype(),
            x.device(),
            w.dtype(),
            w.device()
        )
    }
    let rows = x.elem_count() / in_features;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("checked above") = out_features;
    if rows == 0 || in_features == 0 {
        return Tensor::zeros(out_dims, x.dtype(), x.device());
    }
    // Flattening to 2-D keeps the storage matmul a single, unbatched gemm; reshape is
    // differentiable (it copies only if x is not contiguous).
    let x2 = x.reshape((rows, in_features))?;
    x2.apply_op2(w, FrozenLinear)?.reshape(out_dims)
}

/// RMSNorm as HF Qwen2: `weight * (x / sqrt(mean(x², last) + eps))`, normalised in f32 (for half
/// inputs) and cast back before the weight multiply. `x` is `[.., H]` (e.g. `[T, H]` or
/// `[B, T, H]`), `weight` `[H]`; the result has x's shape and dtype. Differentiable in both.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xc = x.to_dtype(compute_dtype(dtype))?;
    let inv_rms = xc
        .sqr()?
        .mean_keepdim(D::Minus1)?
        .affine(1.0, eps)?
        .sqrt()?
        .recip()?;
    xc.broadcast_mul(&inv_rms)?
        .to_dtype(dtype)?
        .broadcast_mul(&weight.to_dtype(dtype)?)
}

/// Rotary embedding, HF Qwen2 style (non-interleaved halves):
/// `[x1·cos − x2·sin, x2·cos + x1·sin]`.
///
/// Layout: `x` is `[T, heads, d]` (or `[B, T, heads, d]`, the same tables for every batch row),
/// i.e. the projection output reshaped before the head transpose; `cos`, `sin` are `[T, d/2]`, one
/// row per token's position (what `RopeTables::gather` returns). Computed in f32 for half inputs;
/// differentiable in `x` (cos/sin are constants).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let rank = x.rank();
    if rank < 3 {
        candle_core::bail!("rope: x must be [.., T, heads, d], got {:?}", x.shape())
    }
    let d = x.dim(D::Minus1)?;
    let t = x.dim(rank - 3)?;
    let half = d / 2;
    if d % 2 != 0 || cos.dims() != [t, half] || sin.dims() != [t, half] {
        candle_core::bail!(
            "rope: x {:?} needs cos/sin [{t}, {half}], got {:?} / {:?}",
            x.shape(),
            cos.shape(),
            sin.shape()
        )
    }
    let dtype = x.dtype();
    let cdt = compute_dtype(dtype);
    // [T, 1, d/2] broadcasts over heads (and, from the left, over a batch dim).
    let cos = cos.to_dtype(cdt)?.reshape((t, 1, half))?;
    let sin = sin.to_dtype(cdt)?.reshape((t, 1, half))?;
    let xc = x.to_dtype(cdt)?;
    let x1 = xc.narrow(D::Minus1, 0, half)?;
    let x2 = xc.narrow(D::Minus1, half, half)?;
    let lo = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let hi = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[lo, hi], D::Minus1)?.to_dtype(dtype)
}

/// Softmax over the last dim with a written-out backward.
///
/// Inject pattern: the forward runs on a detached copy (no graph), and this op on (x, y) copies y
/// and routes `dx = y ⊙ (g − Σ g⊙y)` to x. It keeps x, y and the result alive (3 tensors) where
/// the composite `exp(x − max) / Σ` keeps about 5, which matters for `[heads, T, T]` scores.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "softmax-last-dim-bwd"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _lx: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_strided(y, ly)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _x: &candle_core::CudaStorage,
        _lx: &Layout,
        y: &candle_core::CudaStorage,
        ly: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        copy_strided(y, ly)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _y: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Masked positions have y = 0, so they get no gradient without looking at the mask.
        let gc = g.to_dtype(res.dtype())?;
        let dot = (&gc * res)?.sum_keepdim(D::Minus1)?;
        let dx = (res * gc.broadcast_sub(&dot)?)?.to_dtype(x.dtype())?;
        Ok((Some(dx), None))
    }
}

/// Softmax of `x` over its last dim, computed on detached values with an optional additive `mask`
/// (0 / −inf, broadcastable to x), then attached to x's graph through [`SoftmaxBwd`]. The result
/// is in the compute dtype (f32 for half inputs).
fn softmax_attached(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let mut xd = x.detach().to_dtype(compute_dtype(x.dtype()))?;
    if let Some(mask) = mask {
        xd = xd.broadcast_add(&mask.to_dtype(xd.dtype())?)?;
    }
    let max = xd.max_keepdim(D::Minus1)?;
    let num = xd.broadcast_sub(&max)?.exp()?;
    let y = num.broadcast_div(&num.sum_keepdim(D::Minus1)?)?;
    // The op's gradient for x is built from y, so x is widened to y's dtype first (a no-op for
    // f32/f64); the cast's own backward narrows the gradient back.
    x.to_dtype(y.dtype())?.apply_op2(&y, SoftmaxBwd)
}

/// Differentiable softmax over the last dim (any shape). Result in x's dtype, computed in f32 for
/// half inputs. Use this, not `candle_nn::ops::softmax_last_dim`, which has no backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    softmax_attached(x, None)?.to_dtype(x.dtype())
}

/// `[T, T]` additive causal mask: 0 on and below the diagonal, −inf above.
fn causal_mask(t: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let rows = Tensor::arange(0u32, t as u32, device)?.reshape((t, 1))?;
    let cols = Tensor::arange(0u32, t as u32, device)?.reshape((1, t))?;
    let future = cols.broadcast_gt(&rows)?;
    let zeros = Tensor::zeros((t, t), dtype, device)?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, (t, t), device)?.to_dtype(dtype)?;
    future.where_cond(&neg_inf, &zeros)
}

/// Causal self-attention for one sequence.
///
/// Layout: `q` `[heads, T, d]`, `k`, `v` `[kv_heads, T, d]` with `heads % kv_heads == 0`; query head
/// `h` reads kv head `h / (heads / kv_heads)` (HF `repeat_kv`). Returns `[T, heads·d]`, ready for
/// `o_proj`. `scale` is usually `1/sqrt(d)`.
///
/// Grouped-query attention is done without repeating k/v: the `n_rep` query heads sharing a kv head
/// are stacked along T, so each kv head takes part in one batched matmul and its gradient sums over
/// its query heads by construction. Scores and softmax run in f32 for half inputs; the
/// probabilities are cast back to v's dtype for the value matmul (as HF eager attention). Memory is
/// O(heads·T²): fine for SFT lengths up to a few thousand tokens, not a flash kernel.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (heads, t, d) = q.dims3()?;
    let (kv_heads, tk, dk) = k.dims3()?;
    if v.dims() != k.dims() || tk != t || dk != d || kv_heads == 0 || heads % kv_heads != 0 {
        candle_core::bail!(
            "causal_attention: q {:?}, k {:?}, v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        )
    }
    let n_rep = heads / kv_heads;
    let cdt = compute_dtype(q.dtype());
    // [kv, n_rep·T, d]: heads h = kv·n_rep + r are contiguous in q, so this is a free reshape.
    let qg = q.contiguous()?.reshape((kv_heads, n_rep * t, d))?;
    let scores = qg
        .matmul(&k.t()?)?
        .to_dtype(cdt)?
        .affine(scale, 0.0)?
        .reshape((heads, t, t))?;
    let mask = causal_mask(t, cdt, q.device())?;
    let probs = softmax_attached(&scores, Some(&mask))?
        .to_dtype(v.dtype())?
        .reshape((kv_heads, n_rep * t, t))?;
    // [kv, n_rep·T, d] → [heads, T, d] → [T, heads, d] → [T, heads·d]
    probs
        .matmul(v)?
        .reshape((heads, t, d))?
        .transpose(0, 1)?
        .reshape((t, heads * d))
}

/// Log-probability of each row's target: `logits[i, targets[i]] − logsumexp(logits[i, :])`.
///
/// `logits` `[n, V]` (any float dtype), `targets` `[n]` u32. Returns `[n]` in f32 (f64 for f64
/// logits). Differentiable in `logits`. The whole `[n, V]` block is widened to f32 here, so callers
/// chunk long sequences by rows (a 152k vocabulary is 600 KB of f32 per token).
pub fn log_softmax_gather(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, _v) = logits.dims2()?;
    if targets.dims() != [n] {
        candle_core::bail!(
            "log_softmax_gather: logits {:?}, targets {:?}",
            logits.shape(),
            targets.shape()
        )
    }
    let wide = match logits.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let x = logits.to_dtype(wide)?;
    // The max is only a shift for stability; logsumexp's gradient through it is exactly zero, so
    // detaching it is exact and skips the max backward.
    let max = x.max_keepdim(1)?.detach();
    let lse = x
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(1)?
        .log()?
        .add(&max)?;
    let idx = targets.to_dtype(DType::U32)?.reshape((n, 1))?;
    x.gather(&idx, 1)?.sub(&lse)?.reshape(n)
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;

#[cfg(all(test, feature = "cuda"))]
#[path = "ops_gpu_tests.rs"]
mod gpu_tests;
