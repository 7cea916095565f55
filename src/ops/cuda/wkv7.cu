// WKV-7, recurrent form on the GPU (spec §2.4): blocks walk the T rows of a sequence with the
// value-major state in registers. Decode (T = 1) and, until the chunked tensor-core form lands,
// prefill.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/kernels.h"

namespace rwkv::cuda {
namespace {

// The scan's shape: a block walks the T rows for ROWS state rows of one head (a slice, or all N);
// a row is split over kParts adjacent threads, each owning kCols columns (j = kParts·c + part).
template <int N, int ROWS>
struct ScanShape {
  static constexpr int kRows = ROWS;                           // state rows per block
  static constexpr int kParts = 8;
  static constexpr int kCols = N / kParts;                     // 2 … 16
  static constexpr int kSlices = N / kRows;                    // blocks per head
  static constexpr int kThreads = kRows * kParts;              // 128 … 512
  static constexpr int kStride = kCols >= 8 ? kCols + 4 : kCols;  // a part's floats (bank skew)
  static constexpr int kLen = kParts * kStride;                // floats per permuted vector
  static constexpr int kChunk = N <= 64 ? 16 : 8;              // rows per chunk (shared < 48 KB)
  static constexpr int kPer = kChunk * N / kThreads;           // a thread's elements per vector
  static constexpr int kPerV = kChunk * kRows / kThreads;      // … of the slice's v
};

// Sum over the kParts lanes of a row (adjacent lanes), in every one of them.
template <int P>
__device__ __forceinline__ float parts_sum(float x) {
#pragma unroll
  for (int o = 1; o < P; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// K consecutive floats of shared memory (16- or 8-byte aligned) into registers.
template <int K>
__device__ __forceinline__ void read_cols(const float* p, float (&x)[K]) {
  if constexpr (K % 4 == 0) {
#pragma unroll
    for (int q = 0; q < K / 4; ++q) {
      const float4 v = reinterpret_cast<const float4*>(p)[q];
      x[4 * q] = v.x, x[4 * q + 1] = v.y, x[4 * q + 2] = v.z, x[4 * q + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int q = 0; q < K / 2; ++q) {
      const float2 v = reinterpret_cast<const float2*>(p)[q];
      x[2 * q] = v.x, x[2 * q + 1] = v.y;
    }
  }
}

// A row's time is a chain of latencies (shared-memory reads, the S·a sum's shuffles, the update),
// not of work, so each row is spread over 8 threads (a few dozen instructions each) and, when the
// heads are fewer than the multiprocessors (a one-sequence prefill), each head over N/16 blocks of
// 16 rows; with heads enough to fill the GPU a block takes a whole head (half of one at N = 128),
// which reads each row's vectors once instead of once per slice. The rows' inputs arrive a chunk at a time:
// every thread loads its share of the next chunk into registers while the current one computes,
// so a row waits on no global memory and on no block barrier (two per chunk). The vectors sit in
// shared memory permuted so a thread's columns are contiguous and the 8 parts of a row hit
// different banks. A one-sequence prefill (1.5B, 2048 rows, H200): 2× the one-thread-per-row
// scan it replaces (dev/NOTES.md).
template <int N, int ROWS>
__global__ void __launch_bounds__(ScanShape<N, ROWS>::kThreads)
    wkv7_scan_kernel(int T, int H, const float* r, const float* w, const float* k, const float* v, const float* a,
                     const float* b, float* y, StateRef st, size_t offset) {
  using Sh = ScanShape<N, ROWS>;
  constexpr int K = Sh::kCols, P = Sh::kParts, kThreads = Sh::kThreads, kChunk = Sh::kChunk, kRows = Sh::kRows;
  const int h = blockIdx.x / Sh::kSlices, row0 = blockIdx.x % Sh::kSlices * kRows, seq = blockIdx.y;
  const int tid = threadIdx.x, part = tid % P, ri = tid / P;
  const size_t C = size_t(H) * N, base = size_t(seq) * T * C + size_t(h) * N;
  float* S = st.pool + size_t(st.slots[seq]) * st.floats + offset + (size_t(h) * N + row0 + ri) * N + part;
  float s[K];
#pragma unroll
  for (int c = 0; c < K; ++c) s[c] = S[P * c];
  // r, exp(w), k, a, b of each row of the chunk, permuted; the slice's v and y, in order.
  __shared__ __align__(16) float vec[5][kChunk][Sh::kLen];
  __shared__ float vs[kChunk][kRows], ys[kChunk][kRows];
  float pre[5][Sh::kPer], prev[Sh::kPerV];
  const auto fetch = [&](int t0) {
#pragma unroll
    for (int u = 0; u < Sh::kPer; ++u) {
      const int e = tid + kThreads * u, t = t0 + e / N;
      if (t < T) {
        const size_t o = base + size_t(t) * C + size_t(e % N);
        pre[0][u] = r[o], pre[1][u] = w[o], pre[2][u] = k[o], pre[3][u] = a[o], pre[4][u] = b[o];
      }
    }
#pragma unroll
    for (int u = 0; u < Sh::kPerV; ++u) {
      const int e = tid + kThreads * u, t = t0 + e / kRows;
      if (t < T) prev[u] = v[base + size_t(t) * C + size_t(row0 + e % kRows)];
    }
  };
  const auto put = [&]() {
#pragma unroll
    for (int u = 0; u < Sh::kPer; ++u) {
      const int e = tid + kThreads * u, row = e / N, j = e % N, pos = (j % P) * Sh::kStride + j / P;
      vec[0][row][pos] = pre[0][u];
      vec[1][row][pos] = expf(pre[1][u]);
      vec[2][row][pos] = pre[2][u];
      vec[3][row][pos] = pre[3][u];
      vec[4][row][pos] = pre[4][u];
    }
#pragma unroll
    for (int u = 0; u < Sh::kPerV; ++u) {
      const int e = tid + kThreads * u;
      vs[e / kRows][e % kRows] = prev[u];
    }
  };
  fetch(0);
  for (int t0 = 0; t0 < T; t0 += kChunk) {
    __syncthreads();  // the previous chunk's vectors are read and its outputs written out
    put();
    __syncthreads();
    if (t0 + kChunk < T) fetch(t0 + kChunk);
    const int rows = min(kChunk, T - t0);
    for (int row = 0; row < rows; ++row) {
      const int at = part * Sh::kStride;
      float av[K], rv[K], dv[K], kv[K], bv[K];
      read_cols<K>(&vec[3][row][at], av);
      read_cols<K>(&vec[0][row][at], rv);
      read_cols<K>(&vec[1][row][at], dv);
      read_cols<K>(&vec[2][row][at], kv);
      read_cols<K>(&vec[4][row][at], bv);
      const float vi = vs[row][ri];
      float sa = 0.f;
#pragma unroll
      for (int c = 0; c < K; ++c) sa += s[c] * av[c];
      sa = parts_sum<P>(sa);
      float yi = 0.f;
#pragma unroll
      for (int c = 0; c < K; ++c) {
        s[c] = s[c] * dv[c] + sa * bv[c] + vi * kv[c];
        yi += s[c] * rv[c];
      }
      yi = parts_sum<P>(yi);
      if (part == 0) ys[row][ri] = yi;
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < Sh::kPerV; ++u) {
      const int e = tid + kThreads * u, t = t0 + e / kRows;
      if (t < T) y[base + size_t(t) * C + size_t(row0 + e % kRows)] = ys[e / kRows][e % kRows];
    }
  }
#pragma unroll
  for (int c = 0; c < K; ++c) S[P * c] = s[c];
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
  // Slices of 16 rows while the heads are fewer than the multiprocessors (N = 16: always one).
  const bool slices = B * H < ctx.sms;
#define RWKV_WKV7_CASE(n, rows)                                                                         \
  wkv7_scan_kernel<n, rows><<<dim3(H * ScanShape<n, rows>::kSlices, B), ScanShape<n, rows>::kThreads, 0, \
                              ctx.stream>>>(T, H, r, w, k, v, a, b, y, states, offset)
  if (N == 16) {
    RWKV_WKV7_CASE(16, 16);
  } else if (N == 32) {
    if (slices) RWKV_WKV7_CASE(32, 16); else RWKV_WKV7_CASE(32, 32);
  } else if (N == 64) {
    if (slices) RWKV_WKV7_CASE(64, 16); else RWKV_WKV7_CASE(64, 64);
  } else if (N == 128) {
    if (slices) RWKV_WKV7_CASE(128, 16); else RWKV_WKV7_CASE(128, 64);
  } else {
    fail("CUDA wkv7: head size ", N, " is not supported (16, 32, 64 or 128)");
  }
#undef RWKV_WKV7_CASE
  RWKV_CUDA_LAUNCHED("wkv7_scan");
}

}  // namespace rwkv::cuda
