// Paged KV cache writes and grouped-query attention over the paged cache.
//
// Cache layout (one allocation per K and per V, all layers): [layer][slot][kv_head][head_dim], where
// slot = block * block_size + offset. The same layout as the CPU reference (src/model/attention/cpu.rs),
// so block ids, slot mappings and block tables mean the same on both devices.
//
// Attention is one kernel for decode and prefill: every query token attends to positions
// 0..token_ctx[t] of its sequence, reading keys and values through the sequence's block table. A CUDA
// block handles one (query token, kv head, partition of `partition` positions, at most RMR1_PARTITION)
// and all `groups` query heads that share the kv head, so each K/V row is read once for the whole group.
// Contexts longer than one partition are split across blocks and merged by `paged_attention_reduce`
// with the usual max/sum rescaling. The host picks the partition per step (512 down to 64 positions)
// so that a small decode batch still puts blocks on every multiprocessor.
//
// Two kernels compute this: `paged_attention_fast`, specialised at compile time for the served head
// sizes (64, 128) and query heads per kv head, with 16-byte K/V loads and a group of threads per
// position; and the generic `paged_attention` for every other shape (and f32 caches). The reduce has
// the same two forms (`paged_attention_reduce_fast` for the served head sizes).
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

// A partition beyond the token's context: partial output 0, max -inf and sum 0 for each of the
// `groups` heads, so the reduce gives it no weight.
__device__ __forceinline__ void write_empty_partition(float* __restrict__ part_out, float* __restrict__ part_max,
                                                      float* __restrict__ part_sum, size_t first_head,
                                                      uint32_t groups, uint32_t head_dim, uint32_t split,
                                                      uint32_t num_splits) {
  for (uint32_t i = threadIdx.x; i < groups * head_dim; i += blockDim.x) {
    part_out[((first_head + i / head_dim) * num_splits + split) * head_dim + i % head_dim] = 0.0f;
  }
  if (threadIdx.x < groups) {
    part_max[(first_head + threadIdx.x) * num_splits + split] = -INFINITY;
    part_sum[(first_head + threadIdx.x) * num_splits + split] = 0.0f;
  }
}

// Softmax statistics of `groups` rows of `len` scores (rows RMR1_PARTITION apart), one warp per row:
// scores become exp(score - max), and head_max / head_sum receive each row's max and sum. Ends with
// __syncthreads, so every thread of the block must call it.
__device__ __forceinline__ void softmax_rows(float* scores, uint32_t len, uint32_t groups, float* head_max,
                                             float* head_sum) {
  const int lane = threadIdx.x % RMR1_WARP;
  const int num_warps = blockDim.x / RMR1_WARP;
  for (uint32_t h = threadIdx.x / RMR1_WARP; h < groups; h += num_warps) {
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
                                uint32_t partition, float scale) {
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
  const uint32_t start = split * partition;
  const uint32_t end = min(ctx, start + partition);
  const size_t first_head = (size_t)token * num_heads + (size_t)kv_head * groups;

  if (start >= end) {
    // This partition lies beyond the token's context (shorter tokens share the launch with longer
    // ones): contribute nothing to the merge.
    write_empty_partition(part_out, part_max, part_sum, first_head, groups, D, split, num_splits);
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

  softmax_rows(scores, len, groups, head_max, head_sum);

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

// 16 bytes of T (8 bf16 / f16 or 4 f32 elements) as floats, in one vectorised load. `p` must be 16-byte
// aligned: head rows of 64 or 128 elements in a cudaMalloc'd cache are.
template <typename T>
__device__ __forceinline__ void load16(const T* __restrict__ p, float (&out)[16 / sizeof(T)]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < int(16 / sizeof(T)); ++i) out[i] = to_f32(e[i]);
}

// The same attention as `paged_attention`, for head size D and G query heads per kv head known at
// compile time (register arrays of exact size, loops unrolled). Scores: a group of D / VEC threads per
// position, each loading 16 bytes of the K row and holding the matching 16 bytes of all G queries in
// registers; the group's partial dots meet through xor shuffles. Weighted V: each thread owns VEC
// consecutive output dims of every head and a stride of positions, loading 16 bytes of V per position;
// the strides meet through shared-memory atomics. Same arguments and outputs as `paged_attention`.
template <typename T, int D, int G>
__device__ void paged_attention_fast(const T* __restrict__ q, const T* __restrict__ k_cache,
                                     const T* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                                     const uint32_t* __restrict__ token_seq, const uint32_t* __restrict__ token_ctx,
                                     T* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_max,
                                     float* __restrict__ part_sum, uint32_t num_heads, uint32_t num_kv_heads,
                                     uint32_t block_size, uint32_t max_blocks_per_seq, uint32_t partition,
                                     float scale) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int GROUP = D / VEC;  // threads per K row
  static_assert(D % VEC == 0 && GROUP <= RMR1_WARP && RMR1_WARP % GROUP == 0, "unsupported head size");
  constexpr int ROWS_PER_WARP = RMR1_WARP / GROUP;
  constexpr int WARPS = RMR1_ATTN_THREADS / RMR1_WARP;
  constexpr int POSITION_LANES = RMR1_ATTN_THREADS / GROUP;  // positions the V loop walks at once
  __shared__ float q_s[G * D];
  __shared__ float scores[G * RMR1_PARTITION];
  __shared__ float acc_s[G * D];
  __shared__ uint32_t slots[RMR1_PARTITION];
  __shared__ float head_max[G];
  __shared__ float head_sum[G];

  const uint32_t token = blockIdx.x;
  const uint32_t kv_head = blockIdx.y;
  const uint32_t split = blockIdx.z;
  const uint32_t num_splits = gridDim.z;
  const int lane = threadIdx.x % RMR1_WARP;
  const int warp = threadIdx.x / RMR1_WARP;

  const uint32_t ctx = token_ctx[token];
  const uint32_t start = split * partition;
  const uint32_t end = min(ctx, start + partition);
  const size_t first_head = (size_t)token * num_heads + (size_t)kv_head * G;

  if (start >= end) {
    write_empty_partition(part_out, part_max, part_sum, first_head, G, D, split, num_splits);
    return;
  }
  const uint32_t len = end - start;

  for (uint32_t i = threadIdx.x; i < G * D; i += blockDim.x) {
    q_s[i] = to_f32(q[first_head * D + i]) * scale;
    acc_s[i] = 0.0f;
  }
  const uint32_t* table = block_tables + (size_t)token_seq[token] * max_blocks_per_seq;
  for (uint32_t i = threadIdx.x; i < len; i += blockDim.x) {
    const uint32_t p = start + i;
    slots[i] = table[p / block_size] * block_size + p % block_size;
  }
  __syncthreads();

  // Scores. The loop bound depends on the warp only, so all 32 lanes reach every shuffle.
  {
    const int member = lane % GROUP;
    const int row = lane / GROUP;
    float qv[G][VEC];
#pragma unroll
    for (int h = 0; h < G; ++h) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) qv[h][v] = q_s[h * D + member * VEC + v];
    }
    for (uint32_t base = warp * ROWS_PER_WARP; base < len; base += WARPS * ROWS_PER_WARP) {
      const uint32_t i = base + row;
      const bool live = i < len;
      float kv[VEC];
      if (live) {
        load16(k_cache + ((size_t)slots[i] * num_kv_heads + kv_head) * D + member * VEC, kv);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) kv[v] = 0.0f;
      }
#pragma unroll
      for (int h = 0; h < G; ++h) {
        float dot = 0.0f;
#pragma unroll
        for (int v = 0; v < VEC; ++v) dot += qv[h][v] * kv[v];
#pragma unroll
        for (int offset = GROUP / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(RMR1_FULL_MASK, dot, offset);
        if (live && member == 0) scores[h * RMR1_PARTITION + i] = dot;
      }
    }
  }
  __syncthreads();

  softmax_rows(scores, len, G, head_max, head_sum);

  // Weighted V.
  {
    const int piece = threadIdx.x % GROUP;
    const int position_lane = threadIdx.x / GROUP;
    float acc[G][VEC];
#pragma unroll
    for (int h = 0; h < G; ++h) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[h][v] = 0.0f;
    }
    for (uint32_t i = position_lane; i < len; i += POSITION_LANES) {
      float vv[VEC];
      load16(v_cache + ((size_t)slots[i] * num_kv_heads + kv_head) * D + piece * VEC, vv);
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float p = scores[h * RMR1_PARTITION + i];
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[h][v] += p * vv[v];
      }
    }
#pragma unroll
    for (int h = 0; h < G; ++h) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) atomicAdd(&acc_s[h * D + piece * VEC + v], acc[h][v]);
    }
  }
  __syncthreads();

  for (uint32_t i = threadIdx.x; i < G * D; i += blockDim.x) {
    const uint32_t h = i / D, d = i % D;
    const float o = acc_s[i] / head_sum[h];
    if (num_splits == 1) {
      out[(first_head + h) * D + d] = from_f32<T>(o);
    } else {
      part_out[((first_head + h) * num_splits + split) * D + d] = o;
    }
  }
  if (num_splits > 1 && threadIdx.x < G) {
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

// The reduce for the specialised head sizes: D threads, one per output element. Each partition's weight
// sums[s] * exp(maxes[s] - m) is computed once (the generic reduce recomputes it for every element) into
// shared memory, D partitions at a time, and consecutive threads read consecutive partial outputs.
template <typename T, int D>
__device__ void paged_attention_reduce_fast(const float* __restrict__ part_out, const float* __restrict__ part_max,
                                            const float* __restrict__ part_sum, T* __restrict__ out,
                                            uint32_t num_heads, uint32_t num_splits) {
  __shared__ float weights[D];
  __shared__ float scratch[D / RMR1_WARP];
  const size_t head = (size_t)blockIdx.x * num_heads + blockIdx.y;
  const float* maxes = part_max + head * num_splits;
  const float* sums = part_sum + head * num_splits;
  float m = -INFINITY;
  for (uint32_t s = threadIdx.x; s < num_splits; s += D) m = fmaxf(m, maxes[s]);
  m = block_max(m, scratch);
  const float* part = part_out + head * num_splits * D + threadIdx.x;
  float total = 0.0f;
  float acc = 0.0f;
  for (uint32_t base = 0; base < num_splits; base += D) {
    const uint32_t s = base + threadIdx.x;
    // A partition past the context has max -inf and sum 0: weight 0.
    const float w = s < num_splits ? sums[s] * expf(maxes[s] - m) : 0.0f;
    weights[threadIdx.x] = w;
    total += w;
    __syncthreads();
    const uint32_t chunk = num_splits - base < (uint32_t)D ? num_splits - base : (uint32_t)D;
    for (uint32_t j = 0; j < chunk; ++j) acc += weights[j] * part[(size_t)(base + j) * D];
    __syncthreads();
  }
  total = block_sum(total, scratch);
  out[head * D + threadIdx.x] = from_f32<T>(acc / total);
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
      uint32_t max_blocks_per_seq, uint32_t partition, float scale) {                                     \
    paged_attention<T>(q, k_cache, v_cache, block_tables, token_seq, token_ctx, out, part_out, part_max,  \
                       part_sum, num_heads, num_kv_heads, head_dim, block_size, max_blocks_per_seq,       \
                       partition, scale);                                                                 \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(RMR1_ATTN_THREADS) rmr1_paged_attention_reduce_##SUFFIX(                                        \
      const float* part_out, const float* part_max, const float* part_sum, T* out, uint32_t num_heads,    \
      uint32_t head_dim, uint32_t num_splits) {                                                           \
    paged_attention_reduce<T>(part_out, part_max, part_sum, out, num_heads, head_dim, num_splits);        \
  }

RMR1_INSTANTIATE(__nv_bfloat16, bf16)
RMR1_INSTANTIATE(__half, f16)
RMR1_INSTANTIATE(float, f32)

// The specialised kernels: rmr1_paged_attention_fast_{dtype}_d{D}_g{G}, same arguments as the generic
// one minus head_dim. Qwen2.5 uses d64 (0.5B), d128 (1.5B and up) and 5 to 8 query heads per kv head;
// 1, 2 and 4 cover plain multi-head and other grouped models.
#define RMR1_FAST(T, SUFFIX, D, G)                                                                          \
  extern "C" __global__ void __launch_bounds__(RMR1_ATTN_THREADS) rmr1_paged_attention_fast_##SUFFIX##_d##D##_g##G( \
      const T* q, const T* k_cache, const T* v_cache, const uint32_t* block_tables, const uint32_t* token_seq, \
      const uint32_t* token_ctx, T* out, float* part_out, float* part_max, float* part_sum, uint32_t num_heads, \
      uint32_t num_kv_heads, uint32_t block_size, uint32_t max_blocks_per_seq, uint32_t partition, float scale) { \
    paged_attention_fast<T, D, G>(q, k_cache, v_cache, block_tables, token_seq, token_ctx, out, part_out,    \
                                  part_max, part_sum, num_heads, num_kv_heads, block_size, max_blocks_per_seq, \
                                  partition, scale);                                                         \
  }
#define RMR1_FAST_GROUPS(T, SUFFIX, D)                                                                       \
  RMR1_FAST(T, SUFFIX, D, 1)                                                                                 \
  RMR1_FAST(T, SUFFIX, D, 2)                                                                                 \
  RMR1_FAST(T, SUFFIX, D, 4)                                                                                 \
  RMR1_FAST(T, SUFFIX, D, 5)                                                                                 \
  RMR1_FAST(T, SUFFIX, D, 6)                                                                                 \
  RMR1_FAST(T, SUFFIX, D, 7)                                                                                 \
  RMR1_FAST(T, SUFFIX, D, 8)
// rmr1_paged_attention_reduce_fast_{dtype}_d{D}: the generic reduce's arguments minus head_dim, launched
// with D threads.
#define RMR1_REDUCE_FAST(T, SUFFIX, D)                                                                       \
  extern "C" __global__ void __launch_bounds__(D) rmr1_paged_attention_reduce_fast_##SUFFIX##_d##D(          \
      const float* part_out, const float* part_max, const float* part_sum, T* out, uint32_t num_heads,      \
      uint32_t num_splits) {                                                                                 \
    paged_attention_reduce_fast<T, D>(part_out, part_max, part_sum, out, num_heads, num_splits);             \
  }
RMR1_REDUCE_FAST(__nv_bfloat16, bf16, 64)
RMR1_REDUCE_FAST(__nv_bfloat16, bf16, 128)
RMR1_REDUCE_FAST(__half, f16, 64)
RMR1_REDUCE_FAST(__half, f16, 128)
RMR1_FAST_GROUPS(__nv_bfloat16, bf16, 64)
RMR1_FAST_GROUPS(__nv_bfloat16, bf16, 128)
RMR1_FAST_GROUPS(__half, f16, 64)
RMR1_FAST_GROUPS(__half, f16, 128)
