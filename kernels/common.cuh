// Shared helpers for rmr1's CUDA kernels: dtype conversion and warp/block reductions.
//
// The kernels are written against a small set of CUDA features (threadIdx/blockIdx, __syncthreads,
// __shfl_*_sync, shared-memory atomics) so that tests/kernel_emulation can also compile them as
// plain C++ and run them on the CPU against the Rust references.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define RMR1_FULL_MASK 0xffffffffu
#define RMR1_WARP 32

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = RMR1_WARP / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(RMR1_FULL_MASK, v, offset);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = RMR1_WARP / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(RMR1_FULL_MASK, v, offset));
  }
  return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds one float per warp and
// must not be in use by the caller. Contains two __syncthreads, so every thread must call it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % RMR1_WARP;
  const int warp = threadIdx.x / RMR1_WARP;
  const int num_warps = (blockDim.x + RMR1_WARP - 1) / RMR1_WARP;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < num_warps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % RMR1_WARP;
  const int warp = threadIdx.x / RMR1_WARP;
  const int num_warps = (blockDim.x + RMR1_WARP - 1) / RMR1_WARP;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float best = scratch[0];
  for (int w = 1; w < num_warps; ++w) best = fmaxf(best, scratch[w]);
  __syncthreads();
  return best;
}

// Maps a float to an unsigned key with the same order (larger float, larger key), so radix
// selection can run on the bits. NaN is not expected in logits.
// -0.0 gets the key of +0.0: the two compare equal as floats, and the sampling rule keeps logits
// ">= threshold" by float comparison, so with distinct keys a -0.0 logit was dropped whenever the
// threshold was +0.0 (found by tests/kernel_emulation). Checked on the bits, not with f + 0.0f, so
// no fast-math flag can fold it away.
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f) == 0x80000000u ? 0u : __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
