// Element-wise steps of the Qwen2 layer fused into one kernel each, so a decode step launches a
// handful of kernels per layer instead of one per candle op (at batch 1 the launches, not the bytes,
// set the time of these steps):
//   - rotary embedding of q and k + the K/V cache write (was: two dtype casts and a rope per tensor,
//     the contiguous copies of the q/k/v views, and the cache write);
//   - SiLU(gate) * up (was: silu, then a multiply over two strided views);
//   - residual add + RMSNorm (was: an add, then rms_norm re-reading the sum).
// Each computes in f32 and rounds where the unfused ops rounded (after the rotation, after the add,
// after the norm), so the results match the candle ops they replace up to f32 summation order.
#include "common.cuh"

#define RMR1_FUSED_THREADS 256

// One CUDA block per token. q/k/v rows are `q_stride` / `kv_stride` elements apart (views into one
// stacked q|k|v matmul output, or separate tensors); cos/sin are the token's rotary tables [n, D/2]
// (f32, non-interleaved halves as in HF Qwen2: out[i] = x[i] c - x[i + D/2] s, out[i + D/2] =
// x[i + D/2] c + x[i] s). Rotated q goes to q_out [n, heads, D]; rotated k and v go to the cache
// slots of this layer ([slot][kv_head][D]).
template <typename T>
__device__ void rope_write_kv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              size_t q_stride, size_t kv_stride, const float* __restrict__ cos,
                              const float* __restrict__ sin, const uint32_t* __restrict__ slot_mapping,
                              T* __restrict__ q_out, T* __restrict__ k_cache, T* __restrict__ v_cache,
                              uint32_t num_heads, uint32_t num_kv_heads, uint32_t head_dim) {
  const size_t token = blockIdx.x;
  const uint32_t half = head_dim / 2;
  const size_t slot = slot_mapping[token];
  const float* c = cos + token * half;
  const float* s = sin + token * half;
  const size_t width = (size_t)num_kv_heads * head_dim;
  for (uint32_t idx = threadIdx.x; idx < (num_heads + num_kv_heads) * half; idx += blockDim.x) {
    const uint32_t head = idx / half, i = idx % half;
    const bool is_q = head < num_heads;
    const T* row = is_q ? q + token * q_stride + (size_t)head * head_dim
                        : k + token * kv_stride + (size_t)(head - num_heads) * head_dim;
    const float x1 = to_f32(row[i]), x2 = to_f32(row[i + half]);
    const T r1 = from_f32<T>(x1 * c[i] - x2 * s[i]);
    const T r2 = from_f32<T>(x2 * c[i] + x1 * s[i]);
    T* dst = is_q ? q_out + (token * num_heads + head) * head_dim
                  : k_cache + slot * width + (size_t)(head - num_heads) * head_dim;
    dst[i] = r1;
    dst[i + half] = r2;
  }
  for (uint32_t i = threadIdx.x; i < width; i += blockDim.x) {
    v_cache[slot * width + i] = v[token * kv_stride + i];
  }
}

// out[t][i] = silu(gate[t][i]) * up[t][i] for rows `stride` elements apart (views into one stacked
// gate|up output, or separate tensors); out is [n, width] contiguous. silu is rounded to T before the
// product, as candle's separate ops do.
template <typename T>
__device__ void silu_mul(const T* __restrict__ gate, const T* __restrict__ up, size_t stride,
                         T* __restrict__ out, size_t rows, size_t width) {
  const size_t total = rows * width;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
    const size_t t = e / width, i = e % width;
    const float g = to_f32(gate[t * stride + i]);
    const float activated = to_f32(from_f32<T>(g / (1.0f + expf(-g))));
    out[e] = from_f32<T>(activated * to_f32(up[t * stride + i]));
  }
}

// One block per token: sum = x + residual (rounded to T, the new residual stream) and
// normed = sum / rms(sum) * weight, with the mean of squares over the rounded sum in f32.
template <typename T>
__device__ void add_rms_norm(const T* __restrict__ x, const T* __restrict__ residual, const T* __restrict__ weight,
                             T* __restrict__ sum, T* __restrict__ normed, uint32_t width, float eps) {
  __shared__ float scratch[RMR1_FUSED_THREADS / RMR1_WARP];
  const size_t row = (size_t)blockIdx.x * width;
  float squares = 0.0f;
  for (uint32_t i = threadIdx.x; i < width; i += blockDim.x) {
    const T s = from_f32<T>(to_f32(x[row + i]) + to_f32(residual[row + i]));
    sum[row + i] = s;
    const float f = to_f32(s);
    squares += f * f;
  }
  const float total = block_sum(squares, scratch);
  const float inv_rms = 1.0f / sqrtf(total / width + eps);
  for (uint32_t i = threadIdx.x; i < width; i += blockDim.x) {
    normed[row + i] = from_f32<T>(to_f32(sum[row + i]) * inv_rms * to_f32(weight[i]));
  }
}

#define RMR1_FUSED_INSTANTIATE(T, SUFFIX)                                                                     \
  extern "C" __global__ void __launch_bounds__(RMR1_FUSED_THREADS) rmr1_rope_write_kv_##SUFFIX(                \
      const T* q, const T* k, const T* v, size_t q_stride, size_t kv_stride, const float* cos, const float* sin, \
      const uint32_t* slot_mapping, T* q_out, T* k_cache, T* v_cache, uint32_t num_heads, uint32_t num_kv_heads, \
      uint32_t head_dim) {                                                                                    \
    rope_write_kv<T>(q, k, v, q_stride, kv_stride, cos, sin, slot_mapping, q_out, k_cache, v_cache, num_heads,  \
                     num_kv_heads, head_dim);                                                                 \
  }                                                                                                           \
  extern "C" __global__ void __launch_bounds__(RMR1_FUSED_THREADS) rmr1_silu_mul_##SUFFIX(                     \
      const T* gate, const T* up, size_t stride, T* out, size_t rows, size_t width) {                         \
    silu_mul<T>(gate, up, stride, out, rows, width);                                                          \
  }                                                                                                           \
  extern "C" __global__ void __launch_bounds__(RMR1_FUSED_THREADS) rmr1_add_rms_norm_##SUFFIX(                 \
      const T* x, const T* residual, const T* weight, T* sum, T* normed, uint32_t width, float eps) {          \
    add_rms_norm<T>(x, residual, weight, sum, normed, width, eps);                                            \
  }

RMR1_FUSED_INSTANTIATE(__nv_bfloat16, bf16)
RMR1_FUSED_INSTANTIATE(__half, f16)
RMR1_FUSED_INSTANTIATE(float, f32)
