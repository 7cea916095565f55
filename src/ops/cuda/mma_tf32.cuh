// Warp-level matrix products on tensor cores from fp32 operands in shared memory, for kernels
// made of many small products (the chunked WKV-7): one 16×8 output tile per call, operands read
// through strides so that any operand may be used transposed without a copy.
//
// Precision: TF32 keeps 10 mantissa bits of each operand (rounded: unit roundoff 2^-11 ≈ 4.9e-4);
// products accumulate in fp32. 3xTF32 (kSplit) is about fp32's.
#pragma once
#include <cstdint>

namespace rwkv::cuda {

// Element (r, c) of a matrix in shared memory at p[r·rs + c·cs].
struct SmemMat {
  const float* p;
  int rs, cs;
  __device__ __forceinline__ float operator()(int r, int c) const { return p[r * rs + c * cs]; }
};
// A row-major matrix with leading dimension ld, as stored, and transposed.
__device__ __forceinline__ SmemMat as_is(const float* p, int ld) { return {p, ld, 1}; }
__device__ __forceinline__ SmemMat transposed(const float* p, int ld) { return {p, 1, ld}; }

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// x as TF32 parts hi + lo for 3xTF32 (lo only when kSplit).
template <bool kSplit>
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(x);
  if constexpr (kSplit) lo = to_tf32(x - __uint_as_float(hi));
}

__device__ __forceinline__ void mma_m16n8k8(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The lane's place in a tile: row group g = lane / 4 and quad q = lane % 4. The accumulator of
// a 16×8 tile at (m0, n0) holds (m0+g, n0+2q), (m0+g, n0+2q+1), (m0+g+8, n0+2q), (m0+g+8, n0+2q+1).
struct TileLane {
  int g, q;
  __device__ __forceinline__ TileLane() : g((threadIdx.x & 31) >> 2), q(threadIdx.x & 3) {}
  __device__ __forceinline__ int row(int e) const { return g + (e >> 1) * 8; }
  __device__ __forceinline__ int col(int e) const { return 2 * q + (e & 1); }
};

// c += A[m0 : m0+16, 0 : K] · B[0 : K, n0 : n0+8]. Alternate k-steps accumulate into two
// partial sums, added to c at the end, so that consecutive mma instructions do not wait on each
// other. kSplit: three TF32 products (3xTF32: x = hi + lo, hi·hi + hi·lo + lo·hi), within a few
// fp32 ulps of an fp32 product, for sums that cancel afterwards.
template <int K, bool kSplit = false>
__device__ __forceinline__ void mma_tile(float (&c)[4], SmemMat A, int m0, SmemMat B, int n0) {
  static_assert(K % 8 == 0, "K is a multiple of 8");
  constexpr int kChains = K >= 16 ? 2 : 1;
  const TileLane l;
  float acc[kChains][4] = {}, low[4] = {};
#pragma unroll
  for (int k0 = 0; k0 < K; k0 += 8) {
    const float a[4] = {A(m0 + l.g, k0 + l.q), A(m0 + l.g + 8, k0 + l.q), A(m0 + l.g, k0 + l.q + 4),
                        A(m0 + l.g + 8, k0 + l.q + 4)};
    const float b[2] = {B(k0 + l.q, n0 + l.g), B(k0 + l.q + 4, n0 + l.g)};
    uint32_t ah[4], bh[2], al[4], bl[2];
#pragma unroll
    for (int e = 0; e < 4; ++e) split_tf32<kSplit>(a[e], ah[e], al[e]);
#pragma unroll
    for (int e = 0; e < 2; ++e) split_tf32<kSplit>(b[e], bh[e], bl[e]);
    mma_m16n8k8(acc[(k0 / 8) % kChains], ah, bh);
    if constexpr (kSplit) {
      mma_m16n8k8(low, al, bh);
      mma_m16n8k8(low, ah, bl);
    }
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    float s = low[e];
#pragma unroll
    for (int ch = 0; ch < kChains; ++ch) s += acc[ch][e];
    c[e] += s;
  }
}

// Stores a 16×8 tile at (m0, n0) of a row-major matrix with leading dimension ld, each value
// through keep(row, col, value) (masks, sums with another matrix).
template <class Keep>
__device__ __forceinline__ void store_tile(const float (&c)[4], float* D, int ld, int m0, int n0, Keep keep) {
  const TileLane l;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int m = m0 + l.row(e), n = n0 + l.col(e);
    D[m * ld + n] = keep(m, n, c[e]);
  }
}

// Loads the tile's current values (to accumulate onto a stored matrix).
__device__ __forceinline__ void load_tile(float (&c)[4], const float* D, int ld, int m0, int n0) {
  const TileLane l;
#pragma unroll
  for (int e = 0; e < 4; ++e) c[e] = D[(m0 + l.row(e)) * ld + n0 + l.col(e)];
}

}  // namespace rwkv::cuda
