// Paged KV cache writes and grouped-query attention over the paged cache.
//
// Cache layout (one allocation per K and per V, all layers): [layer][slot][kv_head][head_dim], where
// slot = block * block_size + offset. The same layout as the CPU reference (src/model/attention/cpu.rs),
// so block ids, slot mappings and block tables mean the same on both devices.
//
// Attention is one kernel for decode and prefill: every query token attends to positions
// 0..token_ctx[t] of its sequence, reading keys and values through the sequence's block table. A CUDA
// block handles one (query token, kv head, partition of PARTITION positions) and all `groups` query heads
// that share the kv head, so each K/V row is read once for the whole group. Contexts longer than one
// partition are split across blocks (more parallelism for long decodes) and merged by
// `paged_attention_reduce` with the usual max/sum rescaling.
#include "common.cuh"

#define RMR1_PARTITION 512
#define RMR1_MAX_GROUPS 8
#define RMR1_MAX_HEAD_DIM 256
#define RMR1_ATTN_THREADS 128

// One CUDA block per token row; threads copy its K and V rows into their slots.
template <typename T>
__device__ void write_kv_cache(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ k_cache,
                               T* __restrict__ v_cache, const uint32_t* __restrict__ slot_mapping,
                               uint32_t width) {
  const size_t token = blockIdx.x;
  const size_t slot = slot_mapping[token];
  for (uint32_t i = threadIdx.x; i < width; i += blockDim.x) {
    k_cache[slot * width + i] = k[token * width + i];
    v_cache[slot * width + i] = v[token * width + i];
  }
}

// Copies whole blocks of every layer: grid (pairs, layers). `pairs` is [src0, dst0, src1, dst1, ...].
template <typename T>
__device__ void copy_kv_blocks(T* __restrict__ k_cache, T* __restrict__ v_cache,
                               const uint32_t* __restrict__ pairs, size_t block_len, size_t layer_len) {
  const size_t layer = blockIdx.y;
  const size_t src = layer * layer_len + (size_t)pairs[2 * blockIdx.x] * block_len;
  const size_t dst = layer * layer_len + (size_t)pairs[2 * blockIdx.x + 1] * block_len;
  for (size_t i = threadIdx.x; i < block_len; i += blockDim.x) {
    k_cache[dst + i] = k_cache[src + i];
    v_cache[dst + i] = v_cache[src + i];
  }
}

// q: [tokens, num_heads, head_dim]; out: [tokens, num_heads, head_dim] (written when num_splits == 1);
// part_out: [tokens, num_heads, num_splits, head_dim], part_max / part_sum: [tokens, num_heads,
// num_splits] (written when num_splits > 1). token_seq[t] picks the block-table row of token t and
// token_ctx[t] is how many cached positions it attends to (its own position + 1).
template <typename T>
__device__ void paged_attention(const T* __restrict__ q, const T* __restrict__ k_cache,
                                const T* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                                const uint32_t* __restrict__ token_seq, const uint32_t* __restrict__ token_ctx,
                                T* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_max,
                                float* __restrict__ part_sum, uint32_t num_heads, uint32_t num_kv_heads,
                                uint32_t head_dim, uint32_t block_size, uint32_t max_blocks_per_seq,
                                float scale) {
  __shared__ float q_s[RMR1_MAX_GROUPS * RMR1_MAX_HEAD_DIM];
  __shared__ float scores[RMR1_MAX_GROUPS * RMR1_PARTITION];
  __shared__ uint32_t slots[RMR1_PARTITION];
  __shared__ float head_max[RMR1_MAX_GROUPS];
  __shared__ float head_sum[RMR1_MAX_GROUPS];

  const uint32_t token = blockIdx.x;
  const uint32_t kv_head = blockIdx.y;
  const uint32_t split = blockIdx.z;
  const uint32_t num_splits = gridDim.z;
  const uint32_t groups = num_heads / num_kv_heads;
  const uint32_t D = head_dim;
  const int lane = threadIdx.x % RMR1_WARP;
  const int warp = threadIdx.x / RMR1_WARP;
  const int num_warps = blockDim.x / RMR1_WARP;

  const uint32_t ctx = token_ctx[token];
  const uint32_t start = split * RMR1_PARTITION;
  const uint32_t end = min(ctx, start + RMR1_PARTITION);
  const size_t first_head = (size_t)token * num_heads + (size_t)kv_head * groups;

  if (start >= end) {
    // This partition lies beyond the token's context (shorter tokens share the launch with longer
    // ones): contribute nothing to the merge.
    for (uint32_t i = threadIdx.x; i < groups * D; i += blockDim.x) {
      const uint32_t h = i / D, d = i % D;
      part_out[((first_head + h) * num_splits + split) * D + d] = 0.0f;
    }
    if (threadIdx.x < groups) {
      part_max[(first_head + threadIdx.x) * num_splits + split] = -INFINITY;
      part_sum[(first_head + threadIdx.x) * num_splits + split] = 0.0f;
    }
    return;
  }
  const uint32_t len = end - start;

  for (uint32_t i = threadIdx.x; i < groups * D; i += blockDim.x) {
    q_s[i] = to_f32(q[first_head * D + i]) * scale;
  }
  const uint32_t* table = block_tables + (size_t)token_seq[token] * max_blocks_per_seq;
  for (uint32_t i = threadIdx.x; i < len; i += blockDim.x) {
    const uint32_t p = start + i;
    slots[i] = table[p / block_size] * block_size + p % block_size;
  }
  __syncthreads();

  // Scores: one warp per position, lanes across head_dim; the K row is read once for all groups.
  for (uint32_t i = warp; i < len; i += num_warps) {
    const T* k_row = k_cache + ((size_t)slots[i] * num_kv_heads + kv_head) * D;
    float k_reg[RMR1_MAX_HEAD_DIM / RMR1_WARP];
#pragma unroll
    for (int j = 0; j < RMR1_MAX_HEAD_DIM / RMR1_WARP; ++j) {
      const uint32_t d = lane + j * RMR1_WARP;
      k_reg[j] = d < D ? to_f32(k_row[d]) : 0.0f;
    }
    for (uint32_t h = 0; h < groups; ++h) {
      float dot = 0.0f;
#pragma unroll
      for (int j = 0; j < RMR1_MAX_HEAD_DIM / RMR1_WARP; ++j) {
        const uint32_t d = lane + j * RMR1_WARP;
        if (d < D) dot += q_s[h * D + d] * k_reg[j];
      }
      dot = warp_sum(dot);
      if (lane == 0) scores[h * RMR1_PARTITION + i] = dot;
    }
  }
  __syncthreads();

  // Softmax statistics per head (one warp per head); scores become exp(score - max).
  for (uint32_t h = warp; h < groups; h += num_warps) {
    float m = -INFINITY;
    for (uint32_t i = lane; i < len; i += RMR1_WARP) m = fmaxf(m, scores[h * RMR1_PARTITION + i]);
    m = warp_max(m);
    float s = 0.0f;
    for (uint32_t i = lane; i < len; i += RMR1_WARP) {
      const float e = expf(scores[h * RMR1_PARTITION + i] - m);
      scores[h * RMR1_PARTITION + i] = e;
      s += e;
    }
    s = warp_sum(s);
    if (lane == 0) {
      head_max[h] = m;
      head_sum[h] = s;
    }
  }
  __syncthreads();

  // Weighted sum of V: threads across head_dim, every group accumulated from one V read.
  for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) {
    float acc[RMR1_MAX_GROUPS];
#pragma unroll
    for (int h = 0; h < RMR1_MAX_GROUPS; ++h) acc[h] = 0.0f;
    for (uint32_t i = 0; i < len; ++i) {
      const float v = to_f32(v_cache[((size_t)slots[i] * num_kv_heads + kv_head) * D + d]);
#pragma unroll
      for (int h = 0; h < RMR1_MAX_GROUPS; ++h) {
        if (h < (int)groups) acc[h] += scores[h * RMR1_PARTITION + i] * v;
      }
    }
    for (uint32_t h = 0; h < groups; ++h) {
      const float o = acc[h] / head_sum[h];
      if (num_splits == 1) {
        out[(first_head + h) * D + d] = from_f32<T>(o);
      } else {
        part_out[((first_head + h) * num_splits + split) * D + d] = o;
      }
    }
  }
  if (num_splits > 1 && threadIdx.x < groups) {
    part_max[(first_head + threadIdx.x) * num_splits + split] = head_max[threadIdx.x];
    part_sum[(first_head + threadIdx.x) * num_splits + split] = head_sum[threadIdx.x];
  }
}

// Merges the partitions of each (token, head): grid (tokens, num_heads), threads across head_dim.
template <typename T>
__device__ void paged_attention_reduce(const float* __restrict__ part_out, const float* __restrict__ part_max,
                                       const float* __restrict__ part_sum, T* __restrict__ out,
                                       uint32_t num_heads, uint32_t head_dim, uint32_t num_splits) {
  const size_t head = (size_t)blockIdx.x * num_heads + blockIdx.y;
  const float* maxes = part_max + head * num_splits;
  const float* sums = part_sum + head * num_splits;
  float m = -INFINITY;
  for (uint32_t s = 0; s < num_splits; ++s) m = fmaxf(m, maxes[s]);
  float total = 0.0f;
  for (uint32_t s = 0; s < num_splits; ++s) total += sums[s] * expf(maxes[s] - m);
  for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (uint32_t s = 0; s < num_splits; ++s) {
      const float w = sums[s] * expf(maxes[s] - m);
      acc += w * part_out[(head * num_splits + s) * head_dim + d];
    }
    out[head * head_dim + d] = from_f32<T>(acc / total);
  }
}

// Fills a buffer with NaN (the all-ones bit pattern in every float format): the checks poison outputs
// so that an element a kernel forgot to write cannot pass as a plausible value.
extern "C" __global__ void __launch_bounds__(256) rmr1_fill_ones_u16(uint16_t* data, size_t len) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += (size_t)gridDim.x * blockDim.x) {
    data[i] = 0xffffu;
  }
}

#define RMR1_INSTANTIATE(T, SUFFIX)                                                                       \
  extern "C" __global__ void __launch_bounds__(RMR1_ATTN_THREADS) rmr1_write_kv_cache_##SUFFIX(const T* k, const T* v, T* k_cache, T* v_cache,  \
                                                         const uint32_t* slot_mapping, uint32_t width) {    \
    write_kv_cache<T>(k, v, k_cache, v_cache, slot_mapping, width);                                       \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(RMR1_ATTN_THREADS) rmr1_copy_kv_blocks_##SUFFIX(T* k_cache, T* v_cache, const uint32_t* pairs,  \
                                                         size_t block_len, size_t layer_len) {             \
    copy_kv_blocks<T>(k_cache, v_cache, pairs, block_len, layer_len);                                     \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(RMR1_ATTN_THREADS) rmr1_paged_attention_##SUFFIX(                                               \
      const T* q, const T* k_cache, const T* v_cache, const uint32_t* block_tables,                       \
      const uint32_t* token_seq, const uint32_t* token_ctx, T* out, float* part_out, float* part_max,     \
      float* part_sum, uint32_t num_heads, uint32_t num_kv_heads, uint32_t head_dim, uint32_t block_size, \
      uint32_t max_blocks_per_seq, float scale) {                                                         \
    paged_attention<T>(q, k_cache, v_cache, block_tables, token_seq, token_ctx, out, part_out, part_max,  \
                       part_sum, num_heads, num_kv_heads, head_dim, block_size, max_blocks_per_seq,       \
                       scale);                                                                            \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(RMR1_ATTN_THREADS) rmr1_paged_attention_reduce_##SUFFIX(                                        \
      const float* part_out, const float* part_max, const float* part_sum, T* out, uint32_t num_heads,    \
      uint32_t head_dim, uint32_t num_splits) {                                                           \
    paged_attention_reduce<T>(part_out, part_max, part_sum, out, num_heads, head_dim, num_splits);        \
  }

RMR1_INSTANTIATE(__nv_bfloat16, bf16)
RMR1_INSTANTIATE(__half, f16)
RMR1_INSTANTIATE(float, f32)
