// Host stand-in for CUDA's cuda_bf16.h: only what rmr1's kernels use. Conversions round to nearest
// even like the device intrinsics, so bf16 results can be compared bit for bit in spirit.
#pragma once
#include <bit>
#include <stdint.h>

struct __nv_bfloat16 {
  uint16_t bits;
};

inline __nv_bfloat16 __float2bfloat16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x0040u)};  // keep NaN a (quiet) NaN
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);                       // ties to even
  return {uint16_t(rounded >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 b) { return std::bit_cast<float>(uint32_t(b.bits) << 16); }
