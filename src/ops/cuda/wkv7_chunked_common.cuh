// Shared pieces of the chunked WKV-7 kernels (wkv7_chunked_forward.cu, wkv7_chunked.cu): shapes
// of the shared-memory operands, loads of a chunk's rows, the factorised inputs of spec §4.5 and
// the chunk's small (L, L) products. Each kernel file includes it once.
#pragma once
#include "ops/cuda/mma_tf32.cuh"
#include "ops/cuda/rwkv7_math.cuh"
#include "ops/cuda/wkv7_train.h"

namespace rwkv::cuda::wkv7c {

using bf16 = __nv_bfloat16;
constexpr int kL = kWkv7TrainChunk;  // rows per chunk
constexpr float kScale = -kRwkv7DecayScale;
// The log-decay λ = −e^{−1/2}·σ(z) of the decay's pre-activation z.
__device__ __forceinline__ float log_decay(float z) { return kScale / (1.f + __expf(-z)); }
// Products in 3xTF32 (kExact): the forward's that carry the state from chunk to chunk (A_ak, A_ab,
// Z, U, W, SA, S_next); the backward's whose outputs meet the e^{±G} factors in ∂G (∂ER·ER −
// ∂EK·EK − …, and ∂F⊙F): ∂λ's sums over the chunk cancel most of those terms, and with TF32 alone
// the remainder carried 5× the decay gradient's error of the sequential kernels (and moved a
// 50-step training run measurably further from the CPU's).
constexpr bool kExact = true;

// Shared-memory shapes: (L, N) chunk matrices and (N, N) states with leading dimension N + 4,
// (L, L) matrices with L + 4 (tile reads of either orientation stay within two-way conflicts).
template <int N>
struct Dims {
  static constexpr int LD = N + 4, LS = kL + 4;
  static constexpr int kRow = kL * LD, kSquare = N * LD, kSmall = kL * LS;
  static constexpr int NT = N / 8;  // 8-wide column tiles of an (L, N) matrix
};

// Hands out consecutive pieces of the dynamic shared memory.
struct Carve {
  float* p;
  __device__ float* take(int floats) {
    float* r = p;
    p += floats;
    return r;
  }
};

// What store_tile keeps: the lower triangle with or without the diagonal, or everything.
struct Tril {
  __device__ float operator()(int m, int n, float x) const { return n <= m ? x : 0.f; }
};
struct Stril {
  __device__ float operator()(int m, int n, float x) const { return n < m ? x : 0.f; }
};
struct Keep {
  __device__ float operator()(int, int, float x) const { return x; }
};
constexpr Tril kTril;
constexpr Stril kStril;
constexpr Keep kKeep;

// Where a chunk's rows are: row t of channel c is at base + (t0 + t)·C + c.
struct ChunkRows {
  size_t base, C;
  int t0, rows;
  __device__ size_t at(int t, int c) const { return base + size_t(t0 + t) * C + size_t(c); }
};

// The elements of a chunk's (L, N) matrices a thread of a block of Threads takes in loads and
// element-wise steps: row t, columns c … c + E − 1 (E = 1, 2, 4 or 8).
template <int N, int Threads>
struct Elements {
  static constexpr int E = kL * N / Threads;
  int t, c;
  __device__ Elements() : t(threadIdx.x * E / N), c(threadIdx.x * E % N) {}
};

// Loads a chunk's (L, N) bf16 rows as floats (rows past the sequence's end: zero).
template <int N, int Threads>
__device__ __forceinline__ void load_rows(const bf16* src, float* dst, const ChunkRows& cr) {
  constexpr int E = Elements<N, Threads>::E;
  const Elements<N, Threads> el;
  float v[E];
  if (el.t < cr.rows) {
    const bf16* q = src + cr.at(el.t, el.c);
    if constexpr (E == 8) {
      unpack8(*reinterpret_cast<const uint4*>(q), q, v);
    } else if constexpr (E == 4) {
      const uint2 u = *reinterpret_cast<const uint2*>(q);
      const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
      const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
      v[0] = lo.x, v[1] = lo.y, v[2] = hi.x, v[3] = hi.y;
    } else if constexpr (E == 2) {
      const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(q));
      v[0] = x.x, v[1] = x.y;
    } else {
      v[0] = __bfloat162float(*q);
    }
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) v[e] = 0.f;
  }
#pragma unroll
  for (int e = 0; e < E; ++e) dst[el.t * Dims<N>::LD + el.c + e] = v[e];
}

// Writes a 16×8 tile at column n0 of a chunk's rows to global memory through put(address,
// value pair) (rows past the sequence's end are left alone).
template <class T, class Put>
__device__ __forceinline__ void write_rows(const float (&c)[4], T* dst, const ChunkRows& cr, int n0, Put put) {
  const TileLane l;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = l.g + 8 * half;
    if (row < cr.rows) put(dst + cr.at(row, n0 + 2 * l.q), c[2 * half], c[2 * half + 1]);
  }
}

// The log-decays λ = −e^{−1/2}·σ(z) of a chunk (padding rows: 0, so they decay nothing).
template <int N, int Threads>
__device__ __forceinline__ void load_decays(const bf16* z, float* lam, const ChunkRows& cr) {
  load_rows<N, Threads>(z, lam, cr);
  const Elements<N, Threads> el;
  if (el.t < cr.rows) {
#pragma unroll
    for (int e = 0; e < el.E; ++e) {
      float& x = lam[el.t * Dims<N>::LD + el.c + e];
      x = log_decay(x);
    }
  }
}

// A chunk's r, k, b, a, v and log-decays.
template <int N, int Threads>
__device__ __forceinline__ void load_inputs(const Wkv7Train& p, const ChunkRows& cr, float* R, float* K, float* B,
                                            float* A, float* V, float* lam) {
  load_rows<N, Threads>(p.r, R, cr);
  load_rows<N, Threads>(p.k, K, cr);
  load_rows<N, Threads>(p.b, B, cr);
  load_rows<N, Threads>(p.a, A, cr);
  load_rows<N, Threads>(p.v, V, cr);
  load_decays<N, Threads>(p.z, lam, cr);
}

// G_t and G_L of channel j: the sums of its log-decays over rows 0 … t and over the chunk.
template <int N>
__device__ __forceinline__ float2 decay_sums(const float* lam, int t, int j) {
  float g = 0.f, gl = 0.f;
#pragma unroll
  for (int s = 0; s < kL; ++s) {
    const float x = lam[s * Dims<N>::LD + j];
    gl += x;
    g += s <= t ? x : 0.f;
  }
  return {g, gl};
}

// The chunk's factorised inputs, in place of the raw ones: ER = R⊙e^G, EA = A⊙e^Ĝ (Ĝ = G − λ),
// EK = K⊙e^−G, EB = B⊙e^−G, and K⊙F, B⊙F with F = e^{G_L − G}; eGL = e^{G_L}. A kernel that needs
// only some of them passes null for the others (EA; EK with EB; KF with BF; eGL). LD: the leading
// dimension of the (L, N) arrays. A thread takes one channel j and L·N/Threads consecutive rows of
// it, reading the channel's L log-decays once (G as a running sum, in the order decay_sums adds).
template <int N, int Threads, int LD = Dims<N>::LD>
__device__ __forceinline__ void factorise(float* ER, float* EA, float* EK, float* EB, float* KF, float* BF,
                                          const float* K, const float* B, const float* lam, float* eGL) {
  constexpr int R = kL * N / Threads;
  static_assert(R >= 1 && kL % R == 0, "whole rows of a channel per thread");
  const int j = threadIdx.x % N, t0 = threadIdx.x / N * R;
  float x[kL], gl = 0.f;
#pragma unroll
  for (int s = 0; s < kL; ++s) x[s] = lam[s * LD + j], gl += x[s];
  float g = 0.f;
#pragma unroll
  for (int s = 0; s < kL; ++s) {
    g += s <= t0 ? x[s] : 0.f;  // G_{t0}
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int t = t0 + r, o = t * LD + j;
    if (r > 0) g += x[t0 + r];  // G_t
    const float eg = __expf(g);
    const float k = K[o], b = B[o];
    ER[o] *= eg;
    if (EA) EA[o] *= __expf(g - x[t0 + r]);
    if (EK) {
      const float em = __expf(-g);
      EK[o] = k * em, EB[o] = b * em;
    }
    if (KF) {
      const float f = __expf(gl - g);
      KF[o] = k * f, BF[o] = b * f;
    }
  }
  if (eGL && t0 == 0) eGL[j] = __expf(gl);
}

// Γ = (I − A_ab)⁻¹ by forward substitution, lane j < L computing column j in registers (one
// warp): starting from the unit column e_j, each row k, once final, is added into the rows below
// it. The chain is L steps of independent FMAs (the sums over k run in place), not L dot products
// in sequence; rows above j stay zero by themselves.
__device__ __forceinline__ void unit_lower_inverse(const float* Aab, float* Gam) {
  constexpr int LS = kL + 4;
  const int j = threadIdx.x & 31;
  if (j >= kL) return;
  float col[kL];
#pragma unroll
  for (int i = 0; i < kL; ++i) col[i] = i == j ? 1.f : 0.f;
#pragma unroll
  for (int k = 0; k < kL; ++k) {
#pragma unroll
    for (int i = k + 1; i < kL; ++i) col[i] += Aab[i * LS + k] * col[k];
  }
#pragma unroll
  for (int i = 0; i < kL; ++i) Gam[i * LS + j] = col[i];
}

// The four (L, L) products of the factorised inputs: A_rk = tril(ER EKᵀ), A_rb = tril(ER EBᵀ),
// A_ak = stril(EA EKᵀ), A_ab = stril(EA EBᵀ); jobs 0 … 7 (product, half). kExactA: A_ak and A_ab
// in 3xTF32.
template <int N, bool kExactA>
__device__ __forceinline__ void chunk_products(int job, const float* ER, const float* EA, const float* EK,
                                               const float* EB, float* Ark, float* Arb, float* Aak, float* Aab) {
  using D = Dims<N>;
  const int which = job / 2, n0 = job % 2 * 8;
  const float* left = which < 2 ? ER : EA;
  const float* right = which % 2 == 0 ? EK : EB;
  float* out = which == 0 ? Ark : which == 1 ? Arb : which == 2 ? Aak : Aab;
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  if (kExactA && which >= 2) {
    mma_tile<N, kExact>(c, as_is(left, D::LD), 0, transposed(right, D::LD), n0);
  } else {
    mma_tile<N>(c, as_is(left, D::LD), 0, transposed(right, D::LD), n0);
  }
  if (which < 2) {
    store_tile(c, out, D::LS, 0, n0, kTril);
  } else {
    store_tile(c, out, D::LS, 0, n0, kStril);
  }
}

// The tile at (m0, n0) of S diag(e^{G_L}) for a state (or state gradient) S in shared memory:
// the part of the next one that the chunk's decay carries over.
template <int N>
__device__ __forceinline__ void decayed_state_tile(float (&c)[4], const float* S, const float* eGL, int m0, int n0) {
  const TileLane l;
#pragma unroll
  for (int e = 0; e < 4; ++e) c[e] = S[(m0 + l.row(e)) * Dims<N>::LD + n0 + l.col(e)] * eGL[n0 + l.col(e)];
}

template <int N>
__device__ __forceinline__ size_t state_offset(size_t head) {
  return head * size_t(N) * size_t(N);
}

// Copies an (N, N) state between global memory (dense) and shared memory (leading dim LD), by a
// block of Threads threads: every thread's loads are issued before its stores (a loop over
// blockDim.x issued them one round trip at a time).
template <int N, int Threads>
__device__ __forceinline__ void state_in(const float* g, float* s) {
  constexpr int LD = Dims<N>::LD, K = (N * N / 4 + Threads - 1) / Threads;
  float4 v[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int e = 4 * (threadIdx.x + k * Threads);
    v[k] = g && e < N * N ? *reinterpret_cast<const float4*>(g + e) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int e = 4 * (threadIdx.x + k * Threads);
    if (e < N * N) *reinterpret_cast<float4*>(s + (e / N) * LD + e % N) = v[k];
  }
}
// The checkpoints' layout (wkv7_train.h): column-major, g[j·N + i] = S[i, j].
template <int N, int Threads>
__device__ __forceinline__ void state_in_transposed(const float* g, float* s) {
  constexpr int LD = Dims<N>::LD, K = N * N / Threads;
  static_assert(N * N % Threads == 0, "whole elements per thread");
  float v[K];
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = g[threadIdx.x + k * Threads];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int e = threadIdx.x + k * Threads;
    s[(e % N) * LD + e / N] = v[k];
  }
}
template <int N>
__device__ __forceinline__ void state_out(const float* s, float* g) {
  constexpr int LD = Dims<N>::LD;
  for (int e = threadIdx.x * 4; e < N * N; e += int(blockDim.x) * 4) {
    *reinterpret_cast<float4*>(g + e) = *reinterpret_cast<const float4*>(s + (e / N) * LD + e % N);
  }
}

}  // namespace rwkv::cuda::wkv7c
