// CPU emulation of the slice of CUDA that rmr1's kernels use, force-included (g++ -include emu.h) so
// that kernels/*.cu compile unmodified as host C++ and can be checked against plain references.
//
// Execution model. A launch runs its blocks one after another (in a shuffled order: blocks must not
// depend on each other). Because blocks never overlap, `__shared__` can simply be `static`: a
// function-static array is exactly one block's shared memory. (It is not poisoned between blocks:
// GCC ignores section attributes on statics of template instantiations, so there is no reliable way
// to find them all. A kernel that reads shared memory it did not write sees whatever a random earlier
// block left there, which the output comparisons usually catch, but not as reliably as NaN would.)
//
// Threads of a block run in one of two ways:
//   - default: as fibers on the launching OS thread. A fiber runs until it reaches
//     __syncthreads or a warp shuffle, then yields; when the whole block (or warp) has arrived, the
//     waiting fibers are released in random order and the next fiber is always picked at random, so
//     code that relies on an unsynchronised order between threads gives varying results. The
//     schedule comes from a seeded generator, so a run replays exactly. This is also what makes the
//     checks fast: with 128 to 1024 OS threads per block blocking in barriers, the same checks take
//     about 40 times longer (over three minutes on a 2-core machine instead of about five seconds).
//   - with -DEMU_OS_THREADS: as real std::threads with std::barrier (the block) and one std::barrier per
//     warp, which also exposes races *between* barriers (e.g. a non-atomic read-modify-write of shared
//     memory). Slow; meant for an occasional stress run (run.sh --os-threads).
// The fiber mode also checks the rules its scheduler can see: all threads of a block wait at the same
// __syncthreads, all 32 lanes of a warp reach the same shuffle, no thread waits at a barrier that a
// returned thread will never reach, and the block does not deadlock. A violation prints where and
// exits with status 3. (With EMU_OS_THREADS only the shuffle check remains; a divergent barrier hangs.)
#pragma once

#include <math.h>
#include <stdint.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <source_location>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#define __global__
// Register budgeting is a compiler hint with nothing to emulate.
#define __launch_bounds__(...)
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
// __restrict__ is already a GCC keyword.

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
// The 16-byte vector type kernels load through (run.sh builds with -fno-strict-aliasing, as reading
// one through a pointer to other elements is what CUDA code does).
struct alignas(16) uint4 {
  unsigned x = 0, y = 0, z = 0, w = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace emu {

constexpr unsigned kWarp = 32;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emu: %s (block %u,%u,%u thread %u,%u,%u)\n", what, blockIdx.x, blockIdx.y, blockIdx.z,
               threadIdx.x, threadIdx.y, threadIdx.z);
  std::fflush(stderr);
  std::_Exit(3);
}

inline unsigned linear_thread() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// Randomness of the schedule and block order; the driver seeds it with its run seed so a failing run
// can be replayed.
inline std::mt19937_64& rng() {
  static std::mt19937_64 r(1);
  return r;
}
inline void set_seed(uint64_t s) { rng().seed(s); }

// Shuffle exchange area of one warp, double-buffered: a lane can only get two shuffles ahead of a
// slower lane by passing the barrier of the shuffle in between, which the slower lane must reach
// after reading, so one barrier per shuffle is enough.
struct WarpSlots {
  uint64_t value[2][kWarp];
  int tag[2][kWarp];
};

#ifndef EMU_OS_THREADS

// Switching between fibers. glibc's swapcontext makes a sigprocmask system call per switch, which
// dominated the run time (every warp shuffle switches 32 fibers in and out), so x86-64 gets a plain
// stack switch; other targets fall back to ucontext.
#if defined(__x86_64__)
// emu_switch(save, load): pushes the callee-saved registers and the SSE/x87 control words, stores the
// stack pointer in *save, switches to `load` and pops the same frame from there.
asm(R"(
  .pushsection .text
  .weak emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
  .popsection
)");
extern "C" void emu_switch(void** save, void* load);

struct Context {
  void* sp = nullptr;
};
inline void switch_context(Context& from, Context& to) { emu_switch(&from.sp, to.sp); }
// Builds the frame emu_switch pops: control words, six zeroed registers, then `entry` as the return
// address, with a null fake return address above it so `entry` starts with the ABI's alignment.
inline void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
  auto* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15));
  uint64_t* sp = top - 9;
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  sp[0] = uint64_t(mxcsr) | (uint64_t(fpcw) << 32);
  for (int i = 1; i <= 6; ++i) sp[i] = 0;
  sp[7] = reinterpret_cast<uint64_t>(entry);
  sp[8] = 0;
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;  // entry never returns
  makecontext(&c.uc, entry, 0);
}
#endif

struct Fiber {
  Context ctx;
  uint3 tid;
  unsigned linear = 0;
  unsigned shuffles = 0;
  bool done = false;
};

struct Gate {
  unsigned expected = 0, arrived = 0;
  std::vector<Fiber*> waiting;
  std::source_location site;  // where the first waiter called __syncthreads
};

struct FiberBlock {
  std::function<void()> body;
  Context sched;
  std::vector<Fiber> fibers;
  std::vector<Fiber*> runnable;
  Gate block_gate;
  std::vector<Gate> warp_gates;
  std::vector<WarpSlots> slots;
  std::vector<unsigned> warp_done;
  unsigned done = 0;
  Fiber* cur = nullptr;
};
inline FiberBlock* g_block = nullptr;

constexpr size_t kStack = 256 * 1024;
constexpr size_t kGuard = 4096;

// Fiber stacks, kept across launches; each has a PROT_NONE guard page below it so an overflow faults.
inline char* fiber_stack(size_t i) {
  static std::vector<char*> pool;
  while (pool.size() <= i) {
    void* p = mmap(nullptr, kStack + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("cannot map a fiber stack");
    mprotect(p, kGuard, PROT_NONE);
    pool.push_back(static_cast<char*>(p) + kGuard);
  }
  return pool[i];
}

inline void fiber_entry() {
  FiberBlock& b = *g_block;
  b.body();
  Fiber* f = b.cur;
  const unsigned w = f->linear / kWarp;
  if (b.block_gate.arrived) fail("thread returned while others wait at __syncthreads");
  if (b.warp_gates[w].arrived) fail("thread returned while its warp waits in a shuffle");
  f->done = true;
  ++b.done;
  ++b.warp_done[w];
  switch_context(f->ctx, b.sched);  // never resumed
  fail("a finished fiber was resumed");
}

inline void wait_at(Gate& g) {
  FiberBlock& b = *g_block;
  Fiber* f = b.cur;
  g.waiting.push_back(f);
  if (++g.arrived == g.expected) {
    for (Fiber* w : g.waiting) b.runnable.push_back(w);
    g.waiting.clear();
    g.arrived = 0;
  }
  switch_context(f->ctx, b.sched);
}

// CUDA leaves a block whose threads wait at different __syncthreads calls undefined (the hardware
// would silently pair them up), so that is an error here.
inline void sync_block(const std::source_location& where) {
  Gate& g = g_block->block_gate;
  if (g_block->done) fail("__syncthreads after some threads of the block returned");
  if (g.arrived == 0) {
    g.site = where;
  } else if (g.site.line() != where.line() || std::strcmp(g.site.file_name(), where.file_name()) != 0) {
    std::fprintf(stderr, "emu: threads wait at __syncthreads in %s:%u and in %s:%u\n", g.site.file_name(),
                 g.site.line(), where.file_name(), where.line());
    fail("divergent __syncthreads");
  }
  wait_at(g);
}

inline uint64_t exchange(unsigned mask, uint64_t value, unsigned src_lane, int tag) {
  if (mask != 0xffffffffu) fail("only full-warp shuffles are emulated");
  FiberBlock& b = *g_block;
  Fiber* f = b.cur;
  const unsigned w = f->linear / kWarp, lane = f->linear % kWarp;
  if (b.warp_done[w]) fail("shuffle after some lanes of the warp returned");
  WarpSlots& s = b.slots[w];
  const unsigned par = f->shuffles++ & 1u;
  s.value[par][lane] = value;
  s.tag[par][lane] = tag;
  wait_at(b.warp_gates[w]);
  if (s.tag[par][0] != tag) fail("lanes of one warp are in different shuffles (divergent control flow)");
  return s.value[par][src_lane];
}

inline void run_block(FiberBlock& b, unsigned n) {
  auto& r = rng();
  b.done = 0;
  b.runnable.clear();
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.done = false;
    f.shuffles = 0;
    make_context(f.ctx, fiber_stack(i), kStack, fiber_entry);
    b.runnable.push_back(&f);
  }
  std::fill(b.warp_done.begin(), b.warp_done.end(), 0u);
  while (!b.runnable.empty()) {
    // Any runnable fiber may go next: no order between threads is promised between barriers.
    const size_t pick = r() % b.runnable.size();
    std::swap(b.runnable[pick], b.runnable.back());
    b.cur = b.runnable.back();
    b.runnable.pop_back();
    threadIdx = b.cur->tid;
    switch_context(b.sched, b.cur->ctx);
  }
  if (b.done != n) fail("deadlock: threads wait at a barrier that the others never reach");
}

inline void run_grid(dim3 grid, dim3 block, std::vector<uint3> blocks, std::function<void()> body) {
  const unsigned n = block.x * block.y * block.z;
  FiberBlock b;
  b.body = std::move(body);
  b.fibers.resize(n);
  for (unsigned i = 0; i < n; ++i) {
    b.fibers[i].linear = i;
    b.fibers[i].tid = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
  }
  b.block_gate.expected = n;
  b.warp_gates.resize(n / kWarp);
  for (Gate& g : b.warp_gates) g.expected = kWarp;
  b.slots.resize(n / kWarp);
  b.warp_done.resize(n / kWarp);
  FiberBlock* outer = g_block;
  g_block = &b;
  gridDim = grid;
  blockDim = block;
  for (const uint3& id : blocks) {
    blockIdx = id;
    run_block(b, n);
  }
  g_block = outer;
}

#else  // EMU_OS_THREADS

struct ThreadBlock {
  std::unique_ptr<std::barrier<>> block_bar, end_bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
  std::vector<WarpSlots> slots;
};
inline ThreadBlock* g_threads = nullptr;
inline thread_local unsigned t_shuffles = 0;

inline void sync_block(const std::source_location&) { g_threads->block_bar->arrive_and_wait(); }

inline uint64_t exchange(unsigned mask, uint64_t value, unsigned src_lane, int tag) {
  if (mask != 0xffffffffu) fail("only full-warp shuffles are emulated");
  const unsigned me = linear_thread(), w = me / kWarp, lane = me % kWarp;
  WarpSlots& s = g_threads->slots[w];
  const unsigned par = t_shuffles++ & 1u;
  s.value[par][lane] = value;
  s.tag[par][lane] = tag;
  g_threads->warp_bars[w]->arrive_and_wait();
  if (s.tag[par][0] != tag) fail("lanes of one warp are in different shuffles (divergent control flow)");
  return s.value[par][src_lane];
}

inline void run_grid(dim3 grid, dim3 block, std::vector<uint3> blocks, std::function<void()> body) {
  const unsigned n = block.x * block.y * block.z;
  ThreadBlock tb;
  tb.block_bar = std::make_unique<std::barrier<>>(n);
  tb.end_bar = std::make_unique<std::barrier<>>(n);
  for (unsigned w = 0; w < n / kWarp; ++w) tb.warp_bars.push_back(std::make_unique<std::barrier<>>(kWarp));
  tb.slots.resize(n / kWarp);
  g_threads = &tb;
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      gridDim = grid;
      blockDim = block;
      threadIdx = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
      t_shuffles = 0;
      for (const uint3& id : blocks) {
        blockIdx = id;
        body();
        // Nobody may start the next block (and reuse the static shared memory) before all are done.
        tb.end_bar->arrive_and_wait();
      }
    });
  }
  for (auto& t : threads) t.join();
  g_threads = nullptr;
}

#endif  // EMU_OS_THREADS

// Runs `kernel` over `grid` x `block` like kernel<<<grid, block>>>(args...). Arguments are converted to
// the kernel's parameter types once, as a real launch does.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
  const unsigned n = block.x * block.y * block.z;
  if (n == 0 || n % kWarp != 0 || n > 1024) fail("block size must be a multiple of 32 and at most 1024");
  std::tuple<P...> params(static_cast<P>(args)...);
  std::vector<uint3> blocks;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) blocks.push_back({x, y, z});
  std::shuffle(blocks.begin(), blocks.end(), rng());
  run_grid(grid, block, std::move(blocks), [&] { std::apply(kernel, params); });
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of an unsupported type");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <class T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace emu

using emu::launch;

inline void __syncthreads(std::source_location where = std::source_location::current()) { emu::sync_block(where); }

// Tags identify the shuffle kind and offset so lanes that diverged into different shuffles are caught.
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  if (width != 32) emu::fail("sub-warp shuffle widths are not emulated");
  const unsigned lane = emu::linear_thread() % emu::kWarp;
  return emu::from_bits<T>(
      emu::exchange(mask, emu::to_bits(var), lane ^ unsigned(lane_mask & 31), (1 << 8) | (lane_mask & 31)));
}

template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  if (width != 32) emu::fail("sub-warp shuffle widths are not emulated");
  const unsigned lane = emu::linear_thread() % emu::kWarp;
  const unsigned src = lane >= delta ? lane - delta : lane;  // lanes below delta keep their own value
  return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(var), src, (2 << 8) | int(delta & 31)));
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  emu::exchange(mask, 0, emu::linear_thread() % emu::kWarp, 3 << 8);
}

// Shared-memory atomics. Atomicity only matters with EMU_OS_THREADS, but both modes use the same code.
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned atomicMin(unsigned* p, unsigned v) {
  std::atomic_ref<unsigned> a(*p);
  unsigned old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
  std::atomic_ref<unsigned> a(*p);
  unsigned old = a.load();
  while (v > old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}

inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }

// CUDA's integer min/max take mixed operands through the usual arithmetic conversions.
template <class A, class B>
auto min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(a) : C(b);
}
template <class A, class B>
auto max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(b) : C(a);
}
