// Token selection on the device over full-vocabulary logits rows (152k entries for Qwen2), one CUDA
// block per sample. Semantics match the CPU sampler (src/engine/sampler.rs) exactly:
//   - log-softmax normaliser (max, log-sum-exp at temperature 1) for log-probabilities;
//   - greedy (temperature <= 0 or top_k == 1): first index of the maximum;
//   - otherwise weights w = exp((l - max) / T); top-k keeps logits >= the k-th largest logit (ties at
//     the threshold kept); top-p then keeps logits >= the logit at which the descending cumulative mass
//     first reaches top_p of the kept mass (ties kept); a token is drawn by walking the kept weights in
//     index order with r = u * total, u drawn on the host from the request's seeded RNG.
// Thresholds are found by radix selection on order-preserving float keys (four 8-bit passes), so no
// row is ever sorted and shared memory stays a few KiB whatever the vocabulary.
#include "common.cuh"

#define RMR1_SAMPLE_THREADS 1024
#define RMR1_RADIX_BINS 256

struct SampleShared {
  float scratch[RMR1_WARP];
  float bins[RMR1_RADIX_BINS];
  uint32_t counts[RMR1_RADIX_BINS];
  float chunk_incl[RMR1_SAMPLE_THREADS];
  uint32_t prefix;
  uint32_t remaining;
  float mass_above;
  uint32_t best_index;
  uint32_t last_mass_thread;
  uint32_t draw_thread;
};

// Radix selection of the k-th largest key (1-based k) among all entries.
__device__ uint32_t kth_largest_key(const float* row, uint32_t vocab, uint32_t k, SampleShared& sh) {
  uint32_t prefix = 0, mask = 0;
  if (threadIdx.x == 0) sh.remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (uint32_t b = threadIdx.x; b < RMR1_RADIX_BINS; b += blockDim.x) sh.counts[b] = 0;
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const uint32_t key = order_key(row[i]);
      if ((key & mask) == prefix) atomicAdd(&sh.counts[(key >> shift) & 0xffu], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint32_t remaining = sh.remaining;
      int digit = 0;
      for (int d = RMR1_RADIX_BINS - 1; d >= 0; --d) {
        if (sh.counts[d] >= remaining) {
          digit = d;
          break;
        }
        remaining -= sh.counts[d];
      }
      sh.remaining = remaining;
      sh.prefix = prefix | ((uint32_t)digit << shift);
    }
    __syncthreads();
    prefix = sh.prefix;
    mask |= 0xffu << shift;
  }
  return prefix;
}

// Radix selection of the largest key t such that the weights of entries with key >= t (among those
// with key >= floor_key) sum to at least `target`.
__device__ uint32_t top_p_key(const float* row, uint32_t vocab, float max_logit, float inv_t, uint32_t floor_key,
                              float target, SampleShared& sh) {
  uint32_t prefix = 0, mask = 0;
  if (threadIdx.x == 0) sh.mass_above = 0.0f;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (uint32_t b = threadIdx.x; b < RMR1_RADIX_BINS; b += blockDim.x) sh.bins[b] = 0.0f;
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float l = row[i];
      const uint32_t key = order_key(l);
      if (key >= floor_key && (key & mask) == prefix) {
        atomicAdd(&sh.bins[(key >> shift) & 0xffu], expf((l - max_logit) * inv_t));
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float above = sh.mass_above;
      int digit = -1, lowest_nonempty = 0;
      for (int d = RMR1_RADIX_BINS - 1; d >= 0; --d) {
        if (sh.bins[d] <= 0.0f) continue;
        lowest_nonempty = d;
        if (above + sh.bins[d] >= target) {
          digit = d;
          break;
        }
        above += sh.bins[d];
      }
      // Rounding can leave the total a hair under the target: then every entry is kept.
      if (digit < 0) {
        digit = lowest_nonempty;
        above = sh.mass_above;
      }
      sh.mass_above = above;
      sh.prefix = prefix | ((uint32_t)digit << shift);
    }
    __syncthreads();
    prefix = sh.prefix;
    mask |= 0xffu << shift;
  }
  return prefix;
}

// Inclusive block scan of one value per thread into sh.chunk_incl.
__device__ void block_inclusive_scan(float v, SampleShared& sh) {
  const int lane = threadIdx.x % RMR1_WARP;
  const int warp = threadIdx.x / RMR1_WARP;
  const int num_warps = blockDim.x / RMR1_WARP;
  for (int offset = 1; offset < RMR1_WARP; offset *= 2) {
    const float up = __shfl_up_sync(RMR1_FULL_MASK, v, offset);
    if (lane >= offset) v += up;
  }
  if (lane == RMR1_WARP - 1) sh.scratch[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < num_warps; ++w) sh.scratch[w] += sh.scratch[w - 1];
  }
  __syncthreads();
  if (warp > 0) v += sh.scratch[warp - 1];
  sh.chunk_incl[threadIdx.x] = v;
  __syncthreads();
}

// 1,024 threads leave ptxas at most 64 registers per thread: without the bound it may use more and
// every launch fails with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES (build.rs checks the result).
extern "C" __global__ void __launch_bounds__(RMR1_SAMPLE_THREADS) rmr1_sample_rows_f32(const float* __restrict__ logits, uint32_t vocab,
                                                const uint32_t* __restrict__ row_of_sample,
                                                const float* __restrict__ temperature,
                                                const uint32_t* __restrict__ top_k, const float* __restrict__ top_p,
                                                const float* __restrict__ uniform, uint32_t* __restrict__ out_token,
                                                float* __restrict__ out_max, float* __restrict__ out_log_sum) {
  __shared__ SampleShared sh;
  const uint32_t s = blockIdx.x;
  const float* row = logits + (size_t)row_of_sample[s] * vocab;

  // Maximum and its first index.
  float best = -INFINITY;
  uint32_t best_i = 0xffffffffu;
  for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float l = row[i];
    if (l > best) {
      best = l;
      best_i = i;
    }
  }
  const float max_logit = block_max(best, sh.scratch);
  if (threadIdx.x == 0) sh.best_index = 0xffffffffu;
  __syncthreads();
  if (best == max_logit) atomicMin(&sh.best_index, best_i);
  float local = 0.0f;
  for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) local += expf(row[i] - max_logit);
  const float total_t1 = block_sum(local, sh.scratch);
  // A row of nothing but -inf never passes `l > best`, so no thread has a candidate and best_index
  // stayed 0xffffffff, an index outside the vocabulary that every path below then returned. The CPU
  // sampler answers 0 (the first of equal maxima); so does this (found by tests/kernel_emulation).
  const uint32_t argmax = sh.best_index == 0xffffffffu ? 0u : sh.best_index;
  if (threadIdx.x == 0) {
    out_max[s] = max_logit;
    out_log_sum[s] = logf(total_t1);
  }

  const float t = temperature[s];
  const uint32_t k = top_k[s];
  if (t <= 0.0f || k == 1) {
    if (threadIdx.x == 0) out_token[s] = argmax;
    return;
  }
  const float inv_t = 1.0f / t;

  uint32_t floor_key = 0;
  if (k > 0 && k < vocab) floor_key = kth_largest_key(row, vocab, k, sh);
  const float p = top_p[s];
  if (p < 1.0f) {
    float kept = 0.0f;
    for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float l = row[i];
      if (order_key(l) >= floor_key) kept += expf((l - max_logit) * inv_t);
    }
    const float kept_total = block_sum(kept, sh.scratch);
    const float target = fmaxf(p, 0.0f) * kept_total;
    const uint32_t p_key = top_p_key(row, vocab, max_logit, inv_t, floor_key, target, sh);
    if (p_key > floor_key) floor_key = p_key;
  }

  // Draw: contiguous chunks per thread so that index order is chunk order.
  const uint32_t chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const uint32_t lo = min(vocab, threadIdx.x * chunk);
  const uint32_t hi = min(vocab, lo + chunk);
  float mass = 0.0f;
  for (uint32_t i = lo; i < hi; ++i) {
    const float l = row[i];
    if (order_key(l) >= floor_key) mass += expf((l - max_logit) * inv_t);
  }
  // The draw belongs to the first thread with mass whose scanned end passes r, or to the last thread
  // with mass when none does. The scan adds in a tree order, so neighbouring scanned values can differ
  // by an ulp even with only zero-mass threads between them: a test of the form `before <= r < end` per
  // thread then leaves an r in such an ulp (u within ~1e-7 of 1) to no thread, and the token fell back
  // to the argmax (found twice by tests/kernel_emulation: first for the last thread with mass, then for
  // any thread followed by masked ones). Choosing the first qualifying thread by atomicMin leaves no gap.
  if (threadIdx.x == 0) {
    sh.last_mass_thread = 0;  // ordered before the atomics by the scan's barriers
    sh.draw_thread = 0xffffffffu;
  }
  block_inclusive_scan(mass, sh);
  const float total = sh.chunk_incl[blockDim.x - 1];
  const float r = uniform[s] * total;
  const float before = threadIdx.x == 0 ? 0.0f : sh.chunk_incl[threadIdx.x - 1];
  if (threadIdx.x == 0) sh.best_index = 0xffffffffu;
  if (mass > 0.0f) atomicMax(&sh.last_mass_thread, (uint32_t)threadIdx.x);
  __syncthreads();
  const bool last_with_mass = threadIdx.x == sh.last_mass_thread;
  if (mass > 0.0f && (r < sh.chunk_incl[threadIdx.x] || last_with_mass)) {
    atomicMin(&sh.draw_thread, (uint32_t)threadIdx.x);
  }
  __syncthreads();
  if (threadIdx.x == sh.draw_thread) {
    // `before` may exceed r by an ulp (see above): then r falls at this chunk's first kept token.
    float acc = before;
    uint32_t chosen = 0xffffffffu, last_kept = lo;
    for (uint32_t i = lo; i < hi; ++i) {
      const float l = row[i];
      if (order_key(l) < floor_key) continue;
      // A token of zero weight (-inf, or underflowed) can never be drawn, not even at a chunk's edge.
      const float w = expf((l - max_logit) * inv_t);
      if (w == 0.0f) continue;
      last_kept = i;
      acc += w;
      if (r < acc) {
        chosen = i;
        break;
      }
    }
    sh.best_index = chosen == 0xffffffffu ? last_kept : chosen;
  }
  __syncthreads();
  if (threadIdx.x == 0) out_token[s] = sh.best_index == 0xffffffffu ? argmax : sh.best_index;
}
