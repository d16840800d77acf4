// Host stand-in for CUDA's cuda_fp16.h, built on the compiler's IEEE binary16 type (_Float16), whose
// conversions round to nearest even like __float2half.
#pragma once
#include <bit>
#include <stdint.h>

struct __half {
  uint16_t bits;
};

inline __half __float2half(float f) { return {std::bit_cast<uint16_t>(static_cast<_Float16>(f))}; }
inline float __half2float(__half h) { return static_cast<float>(std::bit_cast<_Float16>(h.bits)); }
