// The shape and helpers of the sliced matrix-state scans (WKV-7's inference scan in wkv7.cu and
// training forward in wkv7_train.cu, WKV-5/6's scan in rwkv456_kernels.cu), for when the heads
// are fewer than the SMs: a block takes a slice of 16 state rows of one head (N/16 blocks per
// head; for WKV-5/6, 16 value columns); each is split over kParts adjacent threads, each owning
// kCols entries (index kParts·c + part); the sequence rows' vectors are staged a chunk at a time
// in shared memory, permuted so that a thread's entries are contiguous and the parts hit
// different banks.
#pragma once
#include <cuda_runtime.h>

#include "ops/cuda/device_math.cuh"

namespace rwkv::cuda {

template <int N>
struct ScanShape {
  static constexpr int kRows = 16;                             // state rows per block
  static constexpr int kParts = 8;
  static constexpr int kCols = N / kParts;                     // 2 … 16
  static constexpr int kSlices = N / kRows;                    // blocks per head
  static constexpr int kThreads = kRows * kParts;              // 128
  static constexpr int kStride = kCols >= 8 ? kCols + 4 : kCols;  // a part's floats (bank skew)
  static constexpr int kLen = kParts * kStride;                // floats per permuted vector
  static constexpr int kChunk = N <= 64 ? 16 : 8;              // rows per chunk (shared < 48 KB)
  static constexpr int kPer = kChunk * N / kThreads;           // a thread's elements per vector
  static constexpr int kPerV = kChunk * kRows / kThreads;      // … of the slice's v
  // Where column j of a row's vector sits in shared memory.
  __device__ static int permuted(int j) { return (j % kParts) * kStride + j / kParts; }
};

// Whether heads go to slices: while they are fewer than the SMs. With heads enough to fill the
// GPU, one block per head and one thread per row does less work per row and wins (a 4096-row
// training forward of 8 × 64 heads: 5.6 ms against 10.4 with whole heads in this shape).
inline bool scan_slices(int heads, int sms) { return heads < sms; }

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

// A chunk's five WKV-7 vectors (r, the decay's input, k, a, b: the head's N entries of each
// sequence row, rows of C from `base`) loaded kPer per thread into registers (`fetch`), then
// moved into shared memory permuted, the second through `decay` (`put`).
template <int N>
struct Wkv7Chunk {
  using Sh = ScanShape<N>;
  int T;
  size_t base, C;

  template <typename TIn>
  __device__ void fetch(const TIn* r, const TIn* w, const TIn* k, const TIn* a, const TIn* b, int t0,
                        float (&pre)[5][Sh::kPer]) const {
#pragma unroll
    for (int u = 0; u < Sh::kPer; ++u) {
      const int e = threadIdx.x + Sh::kThreads * u, t = t0 + e / N;
      if (t < T) {
        const size_t o = base + size_t(t) * C + size_t(e % N);
        pre[0][u] = to_float(r[o]), pre[1][u] = to_float(w[o]), pre[2][u] = to_float(k[o]);
        pre[3][u] = to_float(a[o]), pre[4][u] = to_float(b[o]);
      }
    }
  }
  template <typename Decay>
  __device__ static void put(const float (&pre)[5][Sh::kPer], float (&vec)[5][Sh::kChunk][Sh::kLen], Decay decay) {
#pragma unroll
    for (int u = 0; u < Sh::kPer; ++u) {
      const int e = threadIdx.x + Sh::kThreads * u, row = e / N, pos = Sh::permuted(e % N);
      vec[0][row][pos] = pre[0][u];
      vec[1][row][pos] = decay(pre[1][u]);
      vec[2][row][pos] = pre[2][u];
      vec[3][row][pos] = pre[3][u];
      vec[4][row][pos] = pre[4][u];
    }
  }
};

// One WKV-7 row in the sliced shape, the chunk's vectors in `vec` (r, decay, k, a, b; permuted):
// a thread's entries s of its state row i ← s·diag(decay) + (S·a)_i·b + v_i·k. Returns (S·a)_i
// (before the update) and y_i (after), both summed over the row's parts.
template <int N>
__device__ __forceinline__ float2 wkv7_sliced_row(float (&s)[ScanShape<N>::kCols],
                                                  const float (&vec)[5][ScanShape<N>::kChunk][ScanShape<N>::kLen],
                                                  int row, float vi) {
  using Sh = ScanShape<N>;
  constexpr int K = Sh::kCols, P = Sh::kParts;
  const int at = int(threadIdx.x) % P * Sh::kStride;
  float av[K], rv[K], dv[K], kv[K], bv[K];
  read_cols<K>(&vec[3][row][at], av);
  read_cols<K>(&vec[0][row][at], rv);
  read_cols<K>(&vec[1][row][at], dv);
  read_cols<K>(&vec[2][row][at], kv);
  read_cols<K>(&vec[4][row][at], bv);
  float sa = 0.f;
#pragma unroll
  for (int c = 0; c < K; ++c) sa += s[c] * av[c];
  sa = parts_sum<P>(sa);
  float y = 0.f;
#pragma unroll
  for (int c = 0; c < K; ++c) {
    s[c] = s[c] * dv[c] + (sa * bv[c] + vi * kv[c]);  // one FMA on s's chain
    y += s[c] * rv[c];
  }
  return make_float2(sa, parts_sum<P>(y));
}

// The slice's own entry of each sequence row (v of its 16 state rows, or of its 16 value columns
// for WKV-5/6) in order: loaded kPerV per thread into registers (`fetch`), moved into shared
// memory (`put`); and its output y, written from shared memory back in order (`write`).
// Activations are rows of C floats (or bf16) from `base`, the slice's entries from `first`.
template <int N>
struct SliceRows {
  using Sh = ScanShape<N>;
  static constexpr int kRows = Sh::kRows, kChunk = Sh::kChunk;
  int T;
  size_t base, C;
  int first;

  template <typename TIn>
  __device__ void fetch(const TIn* x, int t0, float (&regs)[Sh::kPerV]) const {
#pragma unroll
    for (int q = 0; q < Sh::kPerV; ++q) {
      const int e = threadIdx.x + Sh::kThreads * q, t = t0 + e / kRows;
      if (t < T) regs[q] = to_float(x[base + size_t(t) * C + size_t(first + e % kRows)]);
    }
  }
  __device__ static void put(const float (&regs)[Sh::kPerV], float (&dst)[kChunk][kRows]) {
#pragma unroll
    for (int q = 0; q < Sh::kPerV; ++q) {
      const int e = threadIdx.x + Sh::kThreads * q;
      dst[e / kRows][e % kRows] = regs[q];
    }
  }
  template <typename TOut>
  __device__ void write(const float (&src)[kChunk][kRows], TOut* y, int t0) const {
#pragma unroll
    for (int q = 0; q < Sh::kPerV; ++q) {
      const int e = threadIdx.x + Sh::kThreads * q, t = t0 + e / kRows;
      if (t < T) store_as(y + base + size_t(t) * C + size_t(first + e % kRows), src[e / kRows][e % kRows]);
    }
  }
  __device__ static void store_as(float* p, float v) { *p = v; }
  __device__ static void store_as(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
};

// The walk over T rows in chunks: `fetch(t0)` loads a chunk's inputs into registers, `put()` moves
// them into shared memory, `row(t0, row)` computes one row, `done(t0)` ends a chunk (after a
// barrier: every row's outputs are in shared memory). The next chunk's loads are issued before
// the current chunk's rows run, so no row waits on global memory, and a chunk costs two barriers
// besides `done`'s.
template <int kChunk, typename Fetch, typename Put, typename Row, typename Done>
__device__ __forceinline__ void walk_chunks(int T, Fetch&& fetch, Put&& put, Row&& row, Done&& done) {
  fetch(0);
  for (int t0 = 0; t0 < T; t0 += kChunk) {
    __syncthreads();  // the previous chunk's vectors are read and its outputs written out
    put();
    __syncthreads();
    if (t0 + kChunk < T) fetch(t0 + kChunk);
    const int rows = min(kChunk, T - t0);
    for (int r = 0; r < rows; ++r) row(t0, r);
    __syncthreads();
    done(t0);
  }
}

}  // namespace rwkv::cuda
