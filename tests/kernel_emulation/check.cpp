// Checks rmr1's CUDA kernels (kernels/*.cu), compiled as host C++ through the emulation shim in
// include/, against straightforward references written independently of the kernels. Fresh random
// inputs every run; the seed is printed and can be passed back as the first argument to replay a run.
// Exit status: 0 when every check passes, 1 otherwise (3 if the emulator caught a CUDA rule violation).
#include <sys/mman.h>

#include <chrono>
#include <cstdlib>

#include "fused.cu"
#include "paged_attention.cu"
#include "sampling.cu"

#include "harness.h"

using check::Rng;

// The extern "C" entry points per element type.
template <class T> struct Kernels;
#define RMR1_KERNELS(T, SUFFIX)                                     \
  template <> struct Kernels<T> {                                   \
    static constexpr auto write = rmr1_write_kv_cache_##SUFFIX;     \
    static constexpr auto copy = rmr1_copy_kv_blocks_##SUFFIX;      \
    static constexpr auto attend = rmr1_paged_attention_##SUFFIX;   \
    static constexpr auto reduce = rmr1_paged_attention_reduce_##SUFFIX; \
  };
RMR1_KERNELS(float, f32)
RMR1_KERNELS(__nv_bfloat16, bf16)
RMR1_KERNELS(__half, f16)

// The specialised attention kernels by (head size, query heads per kv head); nullptr where the
// launcher falls back to the generic kernel (as src/model/attention/cuda.rs does).
template <class T>
using FastAttention = void (*)(const T*, const T*, const T*, const uint32_t*, const uint32_t*, const uint32_t*, T*,
                               float*, float*, float*, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, float);
#define RMR1_FAST_CASE(SUFFIX, D, G) \
  if (dim == D && groups == G) return rmr1_paged_attention_fast_##SUFFIX##_d##D##_g##G;
#define RMR1_FAST_LOOKUP(T, SUFFIX)                                                                           \
  inline FastAttention<T> fast_attention(T*, uint32_t dim, uint32_t groups) {                                \
    RMR1_FAST_CASE(SUFFIX, 64, 1) RMR1_FAST_CASE(SUFFIX, 64, 2) RMR1_FAST_CASE(SUFFIX, 64, 4)                 \
    RMR1_FAST_CASE(SUFFIX, 64, 5) RMR1_FAST_CASE(SUFFIX, 64, 6) RMR1_FAST_CASE(SUFFIX, 64, 7)                 \
    RMR1_FAST_CASE(SUFFIX, 64, 8) RMR1_FAST_CASE(SUFFIX, 128, 1) RMR1_FAST_CASE(SUFFIX, 128, 2)               \
    RMR1_FAST_CASE(SUFFIX, 128, 4) RMR1_FAST_CASE(SUFFIX, 128, 5) RMR1_FAST_CASE(SUFFIX, 128, 6)              \
    RMR1_FAST_CASE(SUFFIX, 128, 7) RMR1_FAST_CASE(SUFFIX, 128, 8)                                             \
    return nullptr;                                                                                           \
  }
RMR1_FAST_LOOKUP(__nv_bfloat16, bf16)
RMR1_FAST_LOOKUP(__half, f16)
inline FastAttention<float> fast_attention(float*, uint32_t, uint32_t) { return nullptr; }

// The specialised reduce kernels by head size, for bf16 and f16 (the launcher's choice whenever the head
// size has one, whatever the group count).
template <class T>
using FastReduce = void (*)(const float*, const float*, const float*, T*, uint32_t, uint32_t);
#define RMR1_REDUCE_LOOKUP(T, SUFFIX)                                      \
  inline FastReduce<T> fast_reduce(T*, uint32_t dim) {                     \
    if (dim == 64) return rmr1_paged_attention_reduce_fast_##SUFFIX##_d64;   \
    if (dim == 128) return rmr1_paged_attention_reduce_fast_##SUFFIX##_d128; \
    return nullptr;                                                        \
  }
RMR1_REDUCE_LOOKUP(__nv_bfloat16, bf16)
RMR1_REDUCE_LOOKUP(__half, f16)
inline FastReduce<float> fast_reduce(float*, uint32_t) { return nullptr; }

#include "fused_check.h"
#include "sampling_check.h"

// ---------------------------------------------------------------------------------------------------
// KV cache writes and block copies: exact copies, so compared bit for bit; every element the kernel
// should not touch must still hold its poison (or, for copies, its old value).

template <class T>
void check_write_kv_cache(Rng& rng) {
  using check::store;
  const uint32_t num_blocks = 12, block_size = 16, kv_heads = 2, head_dim = 72;
  const uint32_t width = kv_heads * head_dim, num_slots = num_blocks * block_size, tokens = 37;
  std::vector<T> k(tokens * width), v(tokens * width);
  for (auto& x : k) x = store<T>(rng.normal());
  for (auto& x : v) x = store<T>(rng.normal());
  std::vector<uint32_t> slots = rng.permutation(num_slots);
  slots.resize(tokens);  // distinct slots, scattered over the cache

  std::vector<T> kc(num_slots * width), vc(num_slots * width);
  check::poison(kc);
  check::poison(vc);
  std::vector<T> want_k = kc, want_v = vc;
  for (uint32_t t = 0; t < tokens; ++t) {
    for (uint32_t i = 0; i < width; ++i) {
      want_k[size_t(slots[t]) * width + i] = k[t * width + i];
      want_v[size_t(slots[t]) * width + i] = v[t * width + i];
    }
  }
  // 64 threads for rows of 144 elements: the kernel's stride loop runs more than once.
  launch(Kernels<T>::write, dim3(tokens), dim3(64), k.data(), v.data(), kc.data(), vc.data(), slots.data(), width);
  size_t wrong = 0;
  for (size_t i = 0; i < kc.size(); ++i) {
    wrong += !check::same_bits(kc[i], want_k[i]);
    wrong += !check::same_bits(vc[i], want_v[i]);
  }
  check::record(std::string("write_kv_cache ") + check::dtype_name<T>() + " (wrong elements)", double(wrong), 0.0,
                wrong == 0);
}

template <class T>
void check_copy_kv_blocks(Rng& rng) {
  using check::store;
  const uint32_t layers = 3, num_blocks = 10, block_size = 16, width = 2 * 40;
  const size_t block_len = size_t(block_size) * width, layer_len = num_blocks * block_len;
  std::vector<T> kc(layers * layer_len), vc(layers * layer_len);
  for (auto& x : kc) x = store<T>(rng.normal());
  for (auto& x : vc) x = store<T>(rng.normal());
  // Disjoint sources and destinations (copy-on-write never chains copies within one step).
  const std::vector<uint32_t> ids = rng.permutation(num_blocks);
  std::vector<uint32_t> pairs;
  for (uint32_t i = 0; i < 4; ++i) pairs.insert(pairs.end(), {ids[i], ids[4 + i]});
  for (size_t p = 1; p < pairs.size(); p += 2) {
    for (uint32_t l = 0; l < layers; ++l) {
      // Destinations start as NaN so a partially copied block shows.
      std::memset(static_cast<void*>(&kc[l * layer_len + pairs[p] * block_len]), 0xff, block_len * sizeof(T));
      std::memset(static_cast<void*>(&vc[l * layer_len + pairs[p] * block_len]), 0xff, block_len * sizeof(T));
    }
  }
  std::vector<T> want_k = kc, want_v = vc;
  for (size_t p = 0; p < pairs.size(); p += 2) {
    for (uint32_t l = 0; l < layers; ++l) {
      for (size_t i = 0; i < block_len; ++i) {
        want_k[l * layer_len + pairs[p + 1] * block_len + i] = kc[l * layer_len + pairs[p] * block_len + i];
        want_v[l * layer_len + pairs[p + 1] * block_len + i] = vc[l * layer_len + pairs[p] * block_len + i];
      }
    }
  }
  launch(Kernels<T>::copy, dim3(uint32_t(pairs.size() / 2), layers), dim3(128), kc.data(), vc.data(), pairs.data(),
         block_len, layer_len);
  size_t wrong = 0;
  for (size_t i = 0; i < kc.size(); ++i) {
    wrong += !check::same_bits(kc[i], want_k[i]);
    wrong += !check::same_bits(vc[i], want_v[i]);
  }
  check::record(std::string("copy_kv_blocks ") + check::dtype_name<T>() + " (wrong elements)", double(wrong), 0.0,
                wrong == 0);
}

// ---------------------------------------------------------------------------------------------------
// Paged attention. A batch is a list of sequences, each contributing `fresh` query tokens at positions
// cached..cached+fresh-1 (a decode has fresh == 1, a prefill chunk more); token i of a sequence
// attends to positions 0..=cached+i. Every cache element outside the sequences' valid positions, and
// the block used to pad block tables, is NaN, so a read past a context poisons the output.

struct SeqSpec {
  uint32_t cached, fresh;
};

struct AttnCase {
  std::string name;
  uint32_t heads, kv_heads, dim;
  std::vector<SeqSpec> seqs;
  uint32_t block_size = 16;
  // Block ids start here: a large value puts the sequences' K/V more than 4 GiB into the pool, where
  // an index computed in 32 bits would wrap.
  uint32_t first_block = 0;
  // Positions per CUDA block (the launcher picks 512 down to 64 per step).
  uint32_t partition = 512;
  // Run the generic kernel even where a specialised one exists.
  bool generic = false;
};

// One K or V pool. Past 1 GiB it is a mapping the kernel touches only where the sequences' blocks
// are, so a pool beyond 4 GiB costs only the pages in use.
template <class T>
struct CachePool {
  T* ptr = nullptr;
  size_t len = 0;
  bool mapped = false;
  explicit CachePool(size_t n) : len(n), mapped(n * sizeof(T) > (size_t(1) << 30)) {
    if (mapped) {
      void* p = mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) {
        std::perror("mmap");
        std::exit(2);
      }
      ptr = static_cast<T*>(p);
    } else {
      ptr = new T[n];
      std::memset(static_cast<void*>(ptr), 0xff, n * sizeof(T));  // NaN everywhere
    }
  }
  ~CachePool() {
    if (mapped) {
      munmap(ptr, len * sizeof(T));
    } else {
      delete[] ptr;
    }
  }
  CachePool(const CachePool&) = delete;
  CachePool& operator=(const CachePool&) = delete;
  T* data() { return ptr; }
  T& operator[](size_t i) { return ptr[i]; }
  // A mapped pool is poisoned block by block (the rest is never touched, and reads as zeros).
  void poison_block(uint32_t block, size_t block_len) {
    if (mapped) std::memset(static_cast<void*>(ptr + size_t(block) * block_len), 0xff, block_len * sizeof(T));
  }
};


template <class T>
void check_attention(const AttnCase& c, Rng& rng) {
  using check::load;
  using check::store;
  const uint32_t bs = c.block_size, D = c.dim, groups = c.heads / c.kv_heads, width = c.kv_heads * D;
  uint32_t needed = 0, max_blocks = 0;
  for (const SeqSpec& s : c.seqs) {
    const uint32_t nb = (s.cached + s.fresh + bs - 1) / bs;
    needed += nb;
    max_blocks = std::max(max_blocks, nb);
  }
  max_blocks += 1;  // every table row has padding past its last block
  const uint32_t num_blocks = c.first_block + needed + 4;
  std::vector<uint32_t> pool = rng.permutation(needed + 4);  // scrambled block ids
  for (uint32_t& b : pool) b += c.first_block;
  const uint32_t pad_block = pool.back();  // never assigned: stays NaN
  std::vector<uint32_t> tables(c.seqs.size() * max_blocks, pad_block);
  CachePool<T> kc(size_t(num_blocks) * bs * width), vc(size_t(num_blocks) * bs * width);
  for (uint32_t b : pool) {
    kc.poison_block(b, size_t(bs) * width);
    vc.poison_block(b, size_t(bs) * width);
  }
  size_t next = 0;
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    const uint32_t total = c.seqs[s].cached + c.seqs[s].fresh;
    for (uint32_t b = 0; b < (total + bs - 1) / bs; ++b) tables[s * max_blocks + b] = pool[next++];
    for (uint32_t p = 0; p < total; ++p) {
      const size_t slot = size_t(tables[s * max_blocks + p / bs]) * bs + p % bs;
      for (uint32_t j = 0; j < width; ++j) {
        kc[slot * width + j] = store<T>(rng.normal());
        vc[slot * width + j] = store<T>(rng.normal());
      }
    }
  }
  // Query tokens in a shuffled order: the kernel must follow token_seq / token_ctx, not batch order.
  std::vector<uint32_t> token_seq, token_ctx;
  for (uint32_t s = 0; s < c.seqs.size(); ++s) {
    for (uint32_t i = 0; i < c.seqs[s].fresh; ++i) {
      token_seq.push_back(s);
      token_ctx.push_back(c.seqs[s].cached + i + 1);
    }
  }
  const uint32_t tokens = uint32_t(token_seq.size());
  const std::vector<uint32_t> order = rng.permutation(tokens);
  std::vector<uint32_t> seq_of(tokens), ctx_of(tokens);
  for (uint32_t t = 0; t < tokens; ++t) {
    seq_of[t] = token_seq[order[t]];
    ctx_of[t] = token_ctx[order[t]];
  }
  std::vector<T> q(size_t(tokens) * c.heads * D);
  const uint32_t sharp = rng.below(tokens);  // one token with large scores: softmax must subtract the max
  for (size_t i = 0; i < q.size(); ++i) q[i] = store<T>(rng.normal(i / (c.heads * D) == sharp ? 8.0f : 1.0f));

  // Host launch logic, mirrored: one partition per `c.partition` positions of the longest context; with
  // more than one, the attention kernel writes partials and the reduce kernel writes `out`.
  const uint32_t max_ctx = *std::max_element(ctx_of.begin(), ctx_of.end());
  const uint32_t splits = (max_ctx + c.partition - 1) / c.partition;
  const FastAttention<T> fast = c.generic ? nullptr : fast_attention(static_cast<T*>(nullptr), D, groups);
  const float scale = 1.0f / std::sqrt(float(D));
  std::vector<T> out(q.size());
  check::poison(out);
  std::vector<float> part_out, part_max, part_sum;
  if (splits > 1) {
    part_out.resize(size_t(tokens) * c.heads * splits * D);
    part_max.resize(size_t(tokens) * c.heads * splits);
    part_sum.resize(part_max.size());
    check::poison(part_out);
    check::poison(part_max);
    check::poison(part_sum);
  }
  float* const po = splits > 1 ? part_out.data() : nullptr;
  float* const pm = splits > 1 ? part_max.data() : nullptr;
  float* const ps = splits > 1 ? part_sum.data() : nullptr;
  if (fast) {
    launch(fast, dim3(tokens, c.kv_heads, splits), dim3(128), q.data(), kc.data(), vc.data(), tables.data(),
           seq_of.data(), ctx_of.data(), out.data(), po, pm, ps, c.heads, c.kv_heads, bs, max_blocks, c.partition,
           scale);
  } else {
    launch(Kernels<T>::attend, dim3(tokens, c.kv_heads, splits), dim3(128), q.data(), kc.data(), vc.data(),
           tables.data(), seq_of.data(), ctx_of.data(), out.data(), po, pm, ps, c.heads, c.kv_heads, D, bs,
           max_blocks, c.partition, scale);
  }
  const FastReduce<T> fast_merge = c.generic ? nullptr : fast_reduce(static_cast<T*>(nullptr), D);
  if (splits > 1 && fast_merge) {
    launch(fast_merge, dim3(tokens, c.heads), dim3(D), part_out.data(), part_max.data(), part_sum.data(), out.data(),
           c.heads, splits);
  } else if (splits > 1) {
    launch(Kernels<T>::reduce, dim3(tokens, c.heads), dim3(128), part_out.data(), part_max.data(), part_sum.data(),
           out.data(), c.heads, D, splits);
  }

  // Reference: plain softmax(q k^T / sqrt(D)) v in double over the same stored values.
  double worst = 0.0;
  std::string where;
  std::vector<double> w;
  for (uint32_t t = 0; t < tokens; ++t) {
    const uint32_t* table = &tables[size_t(seq_of[t]) * max_blocks];
    for (uint32_t h = 0; h < c.heads; ++h) {
      const uint32_t kvh = h / groups;
      const T* qh = &q[(size_t(t) * c.heads + h) * D];
      w.assign(ctx_of[t], 0.0);
      double m = -INFINITY;
      for (uint32_t p = 0; p < ctx_of[t]; ++p) {
        const size_t slot = size_t(table[p / bs]) * bs + p % bs;
        double dot = 0.0;
        for (uint32_t d = 0; d < D; ++d) dot += double(load(qh[d])) * load(kc[(slot * c.kv_heads + kvh) * D + d]);
        w[p] = dot / std::sqrt(double(D));
        m = std::max(m, w[p]);
      }
      double sum = 0.0;
      for (double& x : w) sum += (x = std::exp(x - m));
      for (uint32_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (uint32_t p = 0; p < ctx_of[t]; ++p) {
          const size_t slot = size_t(table[p / bs]) * bs + p % bs;
          acc += w[p] * load(vc[(slot * c.kv_heads + kvh) * D + d]);
        }
        const double err = check::rel_err(load(out[(size_t(t) * c.heads + h) * D + d]), acc / sum);
        if (!(err <= worst)) {
          worst = err;
          where = "token ctx " + std::to_string(ctx_of[t]) + " head " + std::to_string(h) + " d " + std::to_string(d);
        }
      }
    }
  }
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-2;
  const bool pass = worst <= tol;
  const bool merged_fast = splits > 1 && fast_merge;
  check::record("attention " + std::string(fast ? "fast " : "") + std::string(merged_fast ? "+ fast reduce " : "") +
                    check::dtype_name<T>() + " " + c.name + " (" +
                    std::to_string(splits) + " x " + std::to_string(c.partition) + ")",
                worst, tol, pass, pass ? "" : "worst at " + where);
}

// Batches mixing short decodes (including contexts on block boundaries), one long decode, a prefill
// chunk with a cached prefix and one straddling a partition boundary: with several partitions in the
// launch, the short tokens' later partitions take the "beyond the context" path.
AttnCase mixed_case(Rng& rng, uint32_t heads, uint32_t kv_heads, uint32_t dim, uint32_t long_ctx) {
  AttnCase c{"", heads, kv_heads, dim, {}};
  c.name = std::to_string(heads) + ":" + std::to_string(kv_heads) + " d" + std::to_string(dim) + " mixed, long ctx " +
           std::to_string(long_ctx);
  c.seqs = {{0, 1}, {15, 1}, {16, 1}, {rng.between(2, 60), 1}, {long_ctx - 1, 1}, {rng.between(20, 80), 6},
            {rng.between(505, 510), 6}};
  return c;
}

// Batches whose longest context fits one partition: the attention kernel writes `out` itself.
AttnCase single_case(Rng& rng, uint32_t heads, uint32_t kv_heads, uint32_t dim) {
  AttnCase c{"", heads, kv_heads, dim, {}};
  c.name = std::to_string(heads) + ":" + std::to_string(kv_heads) + " d" + std::to_string(dim) + " one partition";
  c.seqs = {{0, 1}, {rng.between(1, 40), 1}, {rng.between(1, 40), 1}, {rng.between(100, 200), 8}, {511, 1}};
  return c;
}

// The kernel's limits (8 query heads per kv head, head_dim 256) and a head_dim that is not a multiple
// of the warp, in a cache of 32-position blocks.
AttnCase limits_case(Rng& rng) {
  AttnCase c = mixed_case(rng, 8, 1, 256, rng.between(513, 1100));
  c.name = "8:1 d256 mixed, long ctx " + std::to_string(c.seqs[4].cached + 1);
  return c;
}
AttnCase odd_dim_case(Rng& rng) {
  AttnCase c = single_case(rng, 6, 2, 80);
  c.name = "6:2 d80 block size 32, one partition";
  c.block_size = 32;
  return c;
}

// The served models' shapes at long contexts (bf16, as served): a decode at 16k, a prefill chunk
// near 10k and a short decode in one launch (32 partitions, most of them empty for the short token).
AttnCase production_case(Rng& rng, const char* model, uint32_t heads, uint32_t kv_heads, uint32_t dim) {
  AttnCase c{"", heads, kv_heads, dim, {}};
  c.name = std::string(model) + " " + std::to_string(heads) + ":" + std::to_string(kv_heads) + " d" +
           std::to_string(dim) + ", ctx 16k + 10k chunk";
  c.seqs = {{16383, 1}, {rng.between(9990, 10100), 3}, {rng.between(1, 600), 1}};
  return c;
}

AttnCase with_partition(AttnCase c, uint32_t partition) {
  c.partition = partition;
  return c;
}

// The 7B's shape with every block more than 2^32 elements (8 GiB of bf16) into the pool, where an
// element index computed in 32 bits wraps (512 elements per slot: block 524,288 starts at 2^32).
AttnCase far_pool_case(Rng& rng) {
  AttnCase c{"7B 28:4 d128, K/V past 2^32 elements into the pool", 28, 4, 128, {}};
  c.seqs = {{rng.between(1000, 1500), 1}, {rng.between(300, 600), 4}};
  c.first_block = 524288 + rng.below(1000);
  return c;
}

template <class T>
void check_all_attention(Rng& rng) {
  check_attention<T>(mixed_case(rng, 14, 2, 128, rng.between(1100, 1500)), rng);
  check_attention<T>(mixed_case(rng, 4, 4, 64, 1024), rng);
  check_attention<T>(single_case(rng, 7, 1, 64), rng);
  check_attention<T>(single_case(rng, 2, 2, 128), rng);
  check_attention<T>(limits_case(rng), rng);
  check_attention<T>(odd_dim_case(rng), rng);
}

int main(int argc, char** argv) {
  const uint64_t seed =
      argc > 1 ? std::strtoull(argv[1], nullptr, 10)
               : uint64_t(std::chrono::high_resolution_clock::now().time_since_epoch().count()) & 0xffffffffffffull;
  std::printf("kernel emulation checks, seed %llu (replay: tests/kernel_emulation/run.sh %llu)\n",
              (unsigned long long)seed, (unsigned long long)seed);
  std::fflush(stdout);
  emu::set_seed(seed ^ 0x9e3779b97f4a7c15ull);
  Rng rng(seed);
  const auto t0 = std::chrono::steady_clock::now();
  check::last_record() = t0;

  check_write_kv_cache<float>(rng);
  check_write_kv_cache<__nv_bfloat16>(rng);
  check_write_kv_cache<__half>(rng);
  check_copy_kv_blocks<float>(rng);
  check_copy_kv_blocks<__nv_bfloat16>(rng);
  check_copy_kv_blocks<__half>(rng);
  check_all_attention<float>(rng);
  check_all_attention<__nv_bfloat16>(rng);
  check_attention<__half>(single_case(rng, 7, 1, 64), rng);
  // The served shapes at 16k, through the specialised kernels at the partitions the launcher picks
  // (512 for a busy step, 128 and 64 for small decode batches), and once through the generic one.
  check_attention<__nv_bfloat16>(production_case(rng, "0.5B", 14, 2, 64), rng);
  check_attention<__nv_bfloat16>(with_partition(production_case(rng, "7B", 28, 4, 128), 128), rng);
  check_attention<__nv_bfloat16>(with_partition(production_case(rng, "14B/32B", 40, 8, 128), 64), rng);
  check_attention<__half>(with_partition(mixed_case(rng, 28, 4, 128, rng.between(1100, 1500)), 256), rng);
  AttnCase generic = mixed_case(rng, 28, 4, 128, rng.between(1100, 1500));
  generic.generic = true;
  check_attention<__nv_bfloat16>(with_partition(generic, 128), rng);
  check_attention<__nv_bfloat16>(far_pool_case(rng), rng);
  AttnCase far_generic = far_pool_case(rng);
  far_generic.generic = true;
  check_attention<__nv_bfloat16>(far_generic, rng);
  // Every specialised group size, short contexts, small partitions (more splits, empty tails).
  for (uint32_t g : {1u, 2u, 4u, 5u, 6u, 7u, 8u}) {
    check_attention<__nv_bfloat16>(with_partition(mixed_case(rng, 2 * g, 2, 64, rng.between(300, 700)), 64), rng);
  }
  check_sampling(rng);
  check_fused(rng);

  const bool ok = check::print_table();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\n%s in %.1f s (seed %llu)\n", ok ? "all checks passed" : "SOME CHECKS FAILED", secs,
              (unsigned long long)seed);
  return ok ? 0 : 1;
}
