// The shape and helpers of the sliced matrix-state scans (WKV-7's inference scan in wkv7.cu and
// training forward in wkv7_train.cu, WKV-5/6's scan in rwkv456_kernels.cu), for when the heads
// are fewer than the SMs: a block takes a slice of 16 state rows of one head (N/16 blocks per
// head; for WKV-5/6, 16 value columns); each is split over kParts adjacent threads, each owning
// kCols entries (index kParts·c + part); the sequence rows' vectors are staged a chunk at a time
// in shared memory, permuted so that a thread's entries are contiguous and the parts hit
// different banks.
#pragma once
#include <cuda_runtime.h>

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

}  // namespace rwkv::cuda
