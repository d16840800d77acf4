// Shared pieces of the kernel checks: random inputs, dtype helpers, poisoning and the results table.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace check {

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  float normal(float sd = 1.0f) { return std::normal_distribution<float>(0.0f, sd)(gen); }
  float uniform() { return std::uniform_real_distribution<float>(0.0f, 1.0f)(gen); }
  uint32_t below(uint32_t n) { return std::uniform_int_distribution<uint32_t>(0, n - 1)(gen); }
  uint32_t between(uint32_t lo, uint32_t hi) { return std::uniform_int_distribution<uint32_t>(lo, hi)(gen); }
  std::vector<uint32_t> permutation(uint32_t n) {
    std::vector<uint32_t> p(n);
    for (uint32_t i = 0; i < n; ++i) p[i] = i;
    std::shuffle(p.begin(), p.end(), gen);
    return p;
  }
};

// Element conversions through the shim's device intrinsics, so "stored as T" means what it does on
// the GPU (round to nearest even).
template <class T> T store(float x);
template <> inline float store<float>(float x) { return x; }
template <> inline __nv_bfloat16 store<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> inline __half store<__half>(float x) { return __float2half(x); }
inline float load(float x) { return x; }
inline float load(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float load(__half x) { return __half2float(x); }

template <class T> const char* dtype_name();
template <> inline const char* dtype_name<float>() { return "f32"; }
template <> inline const char* dtype_name<__nv_bfloat16>() { return "bf16"; }
template <> inline const char* dtype_name<__half>() { return "f16"; }

// All-ones bytes are NaN in f32, bf16 and f16 alike: an element a kernel should have written but did
// not cannot pass for a plausible value.
template <class T>
void poison(std::vector<T>& v) {
  std::memset(static_cast<void*>(v.data()), 0xff, v.size() * sizeof(T));
}
template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

struct Row {
  std::string check;
  double err;
  double tol;
  bool pass;
  std::string note;
  double secs;  // time since the previous row was recorded (emulation cost of the check)
};

inline std::vector<Row>& table() {
  static std::vector<Row> rows;
  return rows;
}

// When the previous row was recorded (main resets it before the first check).
inline std::chrono::steady_clock::time_point& last_record() {
  static std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
  return t;
}

inline void record(std::string check, double err, double tol, bool pass, std::string note = "") {
  const auto now = std::chrono::steady_clock::now();
  const double secs = std::chrono::duration<double>(now - last_record()).count();
  last_record() = now;
  table().push_back({std::move(check), err, tol, pass, std::move(note), secs});
}

// Relative-ish error: absolute for values of magnitude below 1, relative above; NaN counts as infinite.
inline double rel_err(double got, double want) {
  if (std::isnan(got) != std::isnan(want)) return INFINITY;
  if (std::isnan(got)) return 0.0;
  return std::fabs(got - want) / std::max(1.0, std::fabs(want));
}

inline bool print_table() {
  bool ok = true;
  std::printf("\n%-68s %10s %9s %6s  %s\n", "check", "max error", "tolerance", "secs", "result");
  for (const Row& r : table()) {
    std::printf("%-68s %10.3g %9.1g %6.2f  %s%s%s\n", r.check.c_str(), r.err, r.tol, r.secs, r.pass ? "pass" : "FAIL",
                r.note.empty() ? "" : "  ", r.note.c_str());
    ok = ok && r.pass;
  }
  return ok;
}

}  // namespace check
