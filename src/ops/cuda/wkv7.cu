// WKV-7, recurrent form on the GPU (spec §2.4): blocks walk the T rows of a sequence with the
// value-major state in registers. Decode (T = 1) and, until the chunked tensor-core form lands,
// prefill.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/kernels.h"
#include "ops/cuda/sliced_scan.cuh"

namespace rwkv::cuda {
namespace {

// The sliced scan, for heads fewer than the SMs (a one-sequence prefill). A row's time is a chain
// of latencies (shared-memory reads, the S·a sum's shuffles, the update), not of work, so each
// row is spread over 8 threads (a few dozen instructions each) and each head over N/16 blocks of
// 16 rows, filling the GPU. The rows' inputs arrive a chunk at a time:
// every thread loads its share of the next chunk into registers while the current one computes,
// so a row waits on no global memory and on no block barrier (two per chunk). The vectors sit in
// shared memory permuted so a thread's columns are contiguous and the 8 parts of a row hit
// different banks. A one-sequence prefill (1.5B, 2048 rows, H200): 2× the one-thread-per-row
// scan it replaces (dev/NOTES.md).
template <int N>
__global__ void __launch_bounds__(ScanShape<N>::kThreads)
    wkv7_scan_kernel(int T, int H, const float* r, const float* w, const float* k, const float* v, const float* a,
                     const float* b, float* y, StateRef st, size_t offset) {
  using Sh = ScanShape<N>;
  constexpr int K = Sh::kCols, P = Sh::kParts, kChunk = Sh::kChunk, kRows = Sh::kRows;
  const int h = blockIdx.x / Sh::kSlices, row0 = blockIdx.x % Sh::kSlices * kRows, seq = blockIdx.y;
  const int tid = threadIdx.x, part = tid % P, ri = tid / P;
  const size_t C = size_t(H) * N, base = size_t(seq) * T * C + size_t(h) * N;
  const SliceRows<N> slice{T, base, C, row0};
  float* S = st.pool + size_t(st.slots[seq]) * st.floats + offset + (size_t(h) * N + row0 + ri) * N + part;
  float s[K];
#pragma unroll
  for (int c = 0; c < K; ++c) s[c] = S[P * c];
  // r, exp(w), k, a, b of each row of the chunk, permuted; the slice's v and y, in order.
  __shared__ __align__(16) float vec[5][kChunk][Sh::kLen];
  __shared__ float vs[kChunk][kRows], ys[kChunk][kRows];
  float pre[5][Sh::kPer], prev[Sh::kPerV];
  const Wkv7Chunk<N> chunk{T, base, C};
  const auto fetch = [&](int t0) {
    chunk.fetch(r, w, k, a, b, t0, pre);
    slice.fetch(v, t0, prev);
  };
  const auto put = [&]() {
    chunk.put(pre, vec, [](float x) { return expf(x); });
    slice.put(prev, vs);
  };
  const auto row = [&](int, int row) {
    const float2 sy = wkv7_sliced_row<N>(s, vec, row, vs[row][ri]);
    if (part == 0) ys[row][ri] = sy.y;
  };
  walk_chunks<kChunk>(T, fetch, put, row, [&](int t0) { slice.write(ys, y, t0); });
#pragma unroll
  for (int c = 0; c < K; ++c) S[P * c] = s[c];
}

// The scan for heads enough to fill the GPU (scan_slices): one block per (sequence, head), thread i
// owns row i of the state and walks the T rows.
template <int N>
__global__ void __launch_bounds__(N) wkv7_scan_rows_kernel(int T, int H, const float* r, const float* w,
                                                           const float* k, const float* v, const float* a,
                                                           const float* b, float* y, StateRef st,
                                                           size_t offset) {
  const int h = blockIdx.x, seq = blockIdx.y, i = threadIdx.x;
  const size_t C = size_t(H) * N;
  float* S = st.pool + size_t(st.slots[seq]) * st.floats + offset + (size_t(h) * N + i) * N;
  float s[N];
#pragma unroll
  for (int j = 0; j < N; j += 4) {
    const float4 q = *reinterpret_cast<const float4*>(S + j);
    s[j] = q.x, s[j + 1] = q.y, s[j + 2] = q.z, s[j + 3] = q.w;
  }
  __shared__ float rs[N], ds[N], ks[N], as[N], bs[N];
  // Row t's inputs are loaded while row t − 1 computes (they are independent of the state);
  // the sums run in four partial accumulators, so the dependent chains are N/4 long.
  const size_t stride = C, o0 = size_t(seq) * T * C + size_t(h) * N + i;
  float nr = r[o0], nw = w[o0], nk = k[o0], nv = v[o0], na = a[o0], nb = b[o0];
  for (int t = 0; t < T; ++t) {
    const size_t o = o0 + size_t(t) * stride;
    __syncthreads();  // the previous row's reads of the shared inputs are done
    rs[i] = nr;
    ds[i] = expf(nw);
    ks[i] = nk;
    as[i] = na;
    bs[i] = nb;
    const float vi = nv;
    __syncthreads();
    if (t + 1 < T) {
      const size_t q = o + stride;
      nr = r[q], nw = w[q], nk = k[q], nv = v[q], na = a[q], nb = b[q];
    }
    float sa[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < N; ++j) sa[j % 4] += s[j] * as[j];
    const float sat = (sa[0] + sa[1]) + (sa[2] + sa[3]);
    float yi[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < N; ++j) {
      s[j] = s[j] * ds[j] + sat * bs[j] + vi * ks[j];
      yi[j % 4] += s[j] * rs[j];
    }
    y[o] = (yi[0] + yi[1]) + (yi[2] + yi[3]);
  }
#pragma unroll
  for (int j = 0; j < N; j += 4) *reinterpret_cast<float4*>(S + j) = make_float4(s[j], s[j + 1], s[j + 2], s[j + 3]);
}

// One decode row (T = 1) per sequence, for N a multiple of 32: a step's time is its B·H·N² state
// bytes (batched decode), which the scan above, built to stage many rows, does not spend its
// effort on. Here warp w owns
// rows 16w … 16w + 15 and its lanes span the columns, so every state load and store is one
// contiguous 128-byte line per warp; all 16 rows are loaded before any is used.
template <int N>
__global__ void __launch_bounds__(N / 16 * 32) wkv7_step_kernel(int H, const float* r, const float* w,
                                                               const float* k, const float* v, const float* a,
                                                               const float* b, float* y, StateRef st,
                                                               size_t offset) {
  constexpr int kRows = 16, kCols = N / 32;
  const int h = blockIdx.x, seq = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const size_t o = (size_t(seq) * H + h) * N;
  float* S = st.pool + size_t(st.slots[seq]) * st.floats + offset + size_t(h) * N * N +
             size_t(warp) * kRows * N + lane;
  float s[kRows][kCols];
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) s[q][c] = S[q * N + 32 * c];
  }
  float vi[kRows];
#pragma unroll
  for (int q = 0; q < kRows; ++q) vi[q] = v[o + warp * kRows + q];
  __shared__ float rs[N], ds[N], ks[N], as[N], bs[N];
  if (threadIdx.x < N) {
    const int i = threadIdx.x;
    rs[i] = r[o + i];
    ds[i] = expf(w[o + i]);
    ks[i] = k[o + i];
    as[i] = a[o + i];
    bs[i] = b[o + i];
  }
  __syncthreads();
  float sa[kRows], yv[kRows];
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    sa[q] = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) sa[q] += s[q][c] * as[lane + 32 * c];
  }
#pragma unroll
  for (int q = 0; q < kRows; ++q) sa[q] = warp_sum(sa[q]);
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    yv[q] = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int j = lane + 32 * c;
      s[q][c] = s[q][c] * ds[j] + sa[q] * bs[j] + vi[q] * ks[j];
      yv[q] += s[q][c] * rs[j];
    }
  }
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    yv[q] = warp_sum(yv[q]);
#pragma unroll
    for (int c = 0; c < kCols; ++c) S[q * N + 32 * c] = s[q][c];
  }
  if (lane == 0) {
#pragma unroll
    for (int q = 0; q < kRows; ++q) y[o + warp * kRows + q] = yv[q];
  }
}

// RWKV_CUDA_WKV_STEP=0 sends decode rows through the scan kernel too (side-by-side timing).
bool step_kernel_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("RWKV_CUDA_WKV_STEP");
    return !(v && std::string(v) == "0");
  }();
  return on;
}

}  // namespace

void wkv7_scan(Context& ctx, int B, int T, int H, int N, const float* r, const float* w,
               const float* k, const float* v, const float* a, const float* b, float* y,
               StateRef states, size_t offset) {
  if (B <= 0 || T <= 0) return;
  if ((states.floats | offset) % 4 != 0) fail("CUDA wkv7: state offsets must be multiples of 4 floats");
  const dim3 grid(H, B);
  if (T == 1 && (N == 32 || N == 64 || N == 128) && step_kernel_enabled()) {
    if (N == 32) wkv7_step_kernel<32><<<grid, 64, 0, ctx.stream>>>(H, r, w, k, v, a, b, y, states, offset);
    if (N == 64) wkv7_step_kernel<64><<<grid, 128, 0, ctx.stream>>>(H, r, w, k, v, a, b, y, states, offset);
    if (N == 128) wkv7_step_kernel<128><<<grid, 256, 0, ctx.stream>>>(H, r, w, k, v, a, b, y, states, offset);
    RWKV_CUDA_LAUNCHED("wkv7_step");
    return;
  }
  const bool slices = scan_slices(B * H, ctx.sms);
#define RWKV_WKV7_CASE(n)                                                                            \
  case n:                                                                                            \
    if (slices) {                                                                                    \
      wkv7_scan_kernel<n><<<dim3(H * ScanShape<n>::kSlices, B), ScanShape<n>::kThreads, 0, ctx.stream>>>( \
          T, H, r, w, k, v, a, b, y, states, offset);                                                \
    } else {                                                                                         \
      wkv7_scan_rows_kernel<n><<<grid, n, 0, ctx.stream>>>(T, H, r, w, k, v, a, b, y, states, offset); \
    }                                                                                                \
    break;
  switch (N) {
    RWKV_WKV7_CASE(16)
    RWKV_WKV7_CASE(32)
    RWKV_WKV7_CASE(64)
    RWKV_WKV7_CASE(128)
    default: fail("CUDA wkv7: head size ", N, " is not supported (16, 32, 64 or 128)");
  }
#undef RWKV_WKV7_CASE
  RWKV_CUDA_LAUNCHED("wkv7_scan");
}

}  // namespace rwkv::cuda
