// L2 prefetch of the weights a decode step reads next, on a side stream (kernels.h, Prefetch).
#include <algorithm>

#include "ops/cuda/kernels.h"

namespace rwkv::cuda {
namespace {

constexpr int kMaxSpans = 8;
constexpr size_t kChunk = 16 << 10;  // bytes per bulk prefetch

struct Spans {
  const char* data[kMaxSpans];
  size_t bytes[kMaxSpans];
  int n;
};

// Thread g issues the bulk L2 prefetches of chunks g, g + threads, ... of every span (the copy
// engine of the SM does the loading; the thread does not wait). Tails below 16 bytes are left.
__global__ void prefetch_l2_kernel(const __grid_constant__ Spans s) {
  const size_t threads = size_t(gridDim.x) * blockDim.x, g = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  for (int i = 0; i < s.n; ++i) {
    const size_t chunks = (s.bytes[i] + kChunk - 1) / kChunk;
    for (size_t c = g; c < chunks; c += threads) {
      const size_t at = c * kChunk;
      const size_t left = s.bytes[i] - at;
      const unsigned size = unsigned((left < kChunk ? left : kChunk) & ~size_t(15));
      if (size == 0) continue;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(s.data[i] + at), "r"(size) : "memory");
#endif
    }
  }
}

}  // namespace

Prefetch prefetch_l2(Context& ctx, const Span* spans, int n) {
  Spans s{};
  for (int i = 0; i < n; ++i) {
    // Bulk copies need 16-byte aligned addresses; weights are 256-byte aligned.
    if (!spans[i].data || spans[i].bytes < 16 || (reinterpret_cast<uintptr_t>(spans[i].data) & 15)) continue;
    if (s.n == kMaxSpans) break;
    s.data[s.n] = static_cast<const char*>(spans[i].data);
    s.bytes[s.n++] = spans[i].bytes;
  }
  if (s.n == 0) return {};
  if (!ctx.side) RWKV_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx.side, cudaStreamNonBlocking));
  if (ctx.events.empty()) {
    ctx.events.resize(64);
    for (cudaEvent_t& e : ctx.events) RWKV_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  cudaEvent_t fork = ctx.events[ctx.next_event++ % ctx.events.size()];
  cudaEvent_t done = ctx.events[ctx.next_event++ % ctx.events.size()];
  RWKV_CUDA_CHECK(cudaEventRecord(fork, ctx.stream));
  RWKV_CUDA_CHECK(cudaStreamWaitEvent(ctx.side, fork, 0));
  prefetch_l2_kernel<<<64, 64, 0, ctx.side>>>(s);
  RWKV_CUDA_LAUNCHED("prefetch_l2");
  RWKV_CUDA_CHECK(cudaEventRecord(done, ctx.side));
  return {done};
}

void join(Context& ctx, const Prefetch& p) {
  if (p.done) RWKV_CUDA_CHECK(cudaStreamWaitEvent(ctx.stream, p.done, 0));
}

}  // namespace rwkv::cuda
