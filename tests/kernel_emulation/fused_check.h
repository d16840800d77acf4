// Checks of kernels/fused.cu against references in double written from the formulas (HF Qwen2's
// rotate_half RoPE, SiLU, RMSNorm), not from the kernels. Included by check.cpp after the kernels.
#pragma once

#include "harness.h"

template <class T> struct Fused;
#define RMR1_FUSED_KERNELS(T, SUFFIX)                             \
  template <> struct Fused<T> {                                   \
    static constexpr auto rope_write = rmr1_rope_write_kv_##SUFFIX; \
    static constexpr auto silu_mul = rmr1_silu_mul_##SUFFIX;       \
    static constexpr auto add_rms_norm = rmr1_add_rms_norm_##SUFFIX; \
  };
RMR1_FUSED_KERNELS(float, f32)
RMR1_FUSED_KERNELS(__nv_bfloat16, bf16)
RMR1_FUSED_KERNELS(__half, f16)

template <class T>
double rounding_tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : std::is_same_v<T, __half> ? 2e-3 : 1e-2;
}

// q, k and v as views into one stacked [n, (heads + 2 kv_heads) * D] matmul output, as the dense
// model's q|k|v projection produces them; every cache slot not written stays NaN.
template <class T>
void check_rope_write_kv(check::Rng& rng, uint32_t heads, uint32_t kv_heads, uint32_t dim) {
  using check::load;
  using check::store;
  const uint32_t tokens = 13, num_slots = 64, half = dim / 2;
  const size_t stride = size_t(heads + 2 * kv_heads) * dim, width = size_t(kv_heads) * dim;
  std::vector<T> qkv(tokens * stride);
  for (auto& x : qkv) x = store<T>(rng.normal());
  std::vector<float> cos(tokens * half), sin(tokens * half);
  for (uint32_t t = 0; t < tokens; ++t) {
    const double pos = rng.below(30000);
    for (uint32_t i = 0; i < half; ++i) {
      const double angle = pos / std::pow(1e6, 2.0 * i / dim);  // Qwen2.5's rope_theta
      cos[t * half + i] = float(std::cos(angle));
      sin[t * half + i] = float(std::sin(angle));
    }
  }
  std::vector<uint32_t> slots = rng.permutation(num_slots);
  slots.resize(tokens);
  std::vector<T> q_out(size_t(tokens) * heads * dim), kc(num_slots * width), vc(num_slots * width);
  check::poison(q_out);
  check::poison(kc);
  check::poison(vc);
  const T* q = qkv.data();
  const T* k = q + size_t(heads) * dim;
  const T* v = k + width;
  launch(Fused<T>::rope_write, dim3(tokens), dim3(RMR1_FUSED_THREADS), q, k, v, stride, stride, cos.data(), sin.data(),
         slots.data(), q_out.data(), kc.data(), vc.data(), heads, kv_heads, dim);

  double worst = 0.0;
  size_t wrong_v = 0, touched = 0;
  for (uint32_t t = 0; t < tokens; ++t) {
    for (uint32_t h = 0; h < heads + kv_heads; ++h) {
      const T* row = h < heads ? q + t * stride + size_t(h) * dim : k + t * stride + size_t(h - heads) * dim;
      const T* got = h < heads ? &q_out[(size_t(t) * heads + h) * dim] : &kc[slots[t] * width + (h - heads) * dim];
      for (uint32_t i = 0; i < dim; ++i) {
        const double c = cos[t * half + i % half], s = sin[t * half + i % half];
        const double x = load(row[i]);
        const double partner = i < half ? -double(load(row[i + half])) : double(load(row[i - half]));
        worst = std::max(worst, check::rel_err(load(got[i]), x * c + partner * s));
      }
    }
    for (size_t i = 0; i < width; ++i) wrong_v += !check::same_bits(vc[slots[t] * width + i], v[t * stride + i]);
  }
  for (size_t i = 0; i < kc.size(); ++i) touched += !std::isnan(double(load(kc[i]))) + !std::isnan(double(load(vc[i])));
  const double tol = rounding_tolerance<T>();
  const std::string shape = std::to_string(heads) + ":" + std::to_string(kv_heads) + " d" + std::to_string(dim);
  check::record("rope_write_kv " + std::string(check::dtype_name<T>()) + " " + shape + " (q, k rotation)", worst, tol,
                worst <= tol);
  check::record("rope_write_kv " + std::string(check::dtype_name<T>()) + " " + shape +
                    " (v rows wrong, slots written beyond the tokens')",
                double(wrong_v) + std::fabs(double(touched) - 2.0 * tokens * width), 0.0,
                wrong_v == 0 && touched == 2 * tokens * width);
}

// gate and up as views into one stacked [n, 2 * width] output.
template <class T>
void check_silu_mul(check::Rng& rng, uint32_t rows, uint32_t width) {
  using check::load;
  using check::store;
  const size_t stride = 2 * size_t(width);
  std::vector<T> gate_up(rows * stride);
  for (auto& x : gate_up) x = store<T>(rng.normal(3.0f));
  std::vector<T> out(size_t(rows) * width);
  check::poison(out);
  const size_t total = out.size();
  launch(Fused<T>::silu_mul, dim3(uint32_t(std::min<size_t>((total + 255) / 256, 64))), dim3(RMR1_FUSED_THREADS),
         gate_up.data(), gate_up.data() + width, stride, out.data(), size_t(rows), size_t(width));
  double worst = 0.0;
  for (uint32_t t = 0; t < rows; ++t) {
    for (uint32_t i = 0; i < width; ++i) {
      const double g = load(gate_up[t * stride + i]), u = load(gate_up[t * stride + width + i]);
      worst = std::max(worst, check::rel_err(load(out[size_t(t) * width + i]), g / (1.0 + std::exp(-g)) * u));
    }
  }
  const double tol = 2 * rounding_tolerance<T>();  // rounded twice: after silu, after the product
  check::record("silu_mul " + std::string(check::dtype_name<T>()) + " " + std::to_string(rows) + "x" +
                    std::to_string(width) + " (grid-stride)",
                worst, tol, worst <= tol);
}

template <class T>
void check_add_rms_norm(check::Rng& rng, uint32_t rows, uint32_t width) {
  using check::load;
  using check::store;
  std::vector<T> x(size_t(rows) * width), r(x.size()), w(width), sum(x.size()), normed(x.size());
  for (auto& e : x) e = store<T>(rng.normal(2.0f));
  for (auto& e : r) e = store<T>(rng.normal(0.5f));
  for (auto& e : w) e = store<T>(1.0f + rng.normal(0.1f));
  check::poison(sum);
  check::poison(normed);
  const float eps = 1e-6f;
  launch(Fused<T>::add_rms_norm, dim3(rows), dim3(RMR1_FUSED_THREADS), x.data(), r.data(), w.data(), sum.data(),
         normed.data(), width, eps);
  size_t wrong_sum = 0;
  double worst = 0.0;
  for (uint32_t t = 0; t < rows; ++t) {
    double squares = 0.0;
    for (uint32_t i = 0; i < width; ++i) {
      const size_t e = size_t(t) * width + i;
      // The residual stream is the sum rounded once, as candle's add stores it.
      const T want = store<T>(load(x[e]) + load(r[e]));
      wrong_sum += !check::same_bits(sum[e], want);
      squares += double(load(want)) * load(want);
    }
    const double inv_rms = 1.0 / std::sqrt(squares / width + eps);
    for (uint32_t i = 0; i < width; ++i) {
      const size_t e = size_t(t) * width + i;
      worst = std::max(worst, check::rel_err(load(normed[e]), load(sum[e]) * inv_rms * load(w[i])));
    }
  }
  const std::string name = "add_rms_norm " + std::string(check::dtype_name<T>()) + " " + std::to_string(rows) + "x" +
                           std::to_string(width);
  check::record(name + " (sum, wrong elements)", double(wrong_sum), 0.0, wrong_sum == 0);
  const double tol = rounding_tolerance<T>();
  check::record(name + " (normed)", worst, tol, worst <= tol);
}

inline void check_fused(check::Rng& rng) {
  check_rope_write_kv<__nv_bfloat16>(rng, 14, 2, 64);   // 0.5B
  check_rope_write_kv<__nv_bfloat16>(rng, 28, 4, 128);  // 7B
  check_rope_write_kv<__half>(rng, 40, 8, 128);         // 14B / 32B
  check_rope_write_kv<float>(rng, 6, 2, 80);
  check_silu_mul<__nv_bfloat16>(rng, 5, 4864);
  check_silu_mul<__half>(rng, 3, 18944);
  check_silu_mul<float>(rng, 7, 333);
  check_add_rms_norm<__nv_bfloat16>(rng, 4, 896);
  check_add_rms_norm<__nv_bfloat16>(rng, 2, 3584);
  check_add_rms_norm<__half>(rng, 2, 5120);
  check_add_rms_norm<float>(rng, 3, 100);
}
