// WKV-7 for training in its chunked form (spec §4.5; the fp64 plain-loop twin is
// ops/train/wkv7_chunked.cpp, whose header derives every product used here), on tensor cores.
// One block of 16 warps per (sequence, head) walks the chunks of 16 rows: the forward from the
// first, the backward from the last. Within a chunk every step is a handful of small matrix
// products (mma_tf32.cuh) between shared-memory operands, spread over the warps as 16×8 tiles,
// with one barrier between dependent steps. Per chunk, with λ the log-decays and G = cumsum λ:
//   forward   A_rk, A_rb, A_ak, A_ab (16×16) → Γ = (I − A_ab)⁻¹, Z = A_ak V → U = ΓZ, W = Γ·EA →
//             SA = U + W S₀ᵀ → Y = A_rk V + A_rb SA + ER S₀ᵀ and
//             S_next = S₀ diag(e^{G_L}) + Vᵀ(K⊙F) + SAᵀ(B⊙F)
//   backward  the same up to SA from the saved S₀, then the reference's reverse-mode products,
//             and the state gradient carried to the chunk before:
//             ∂S₀ = ∂S diag(e^{G_L}) + (B⊙F ∂Sᵀ)ᵀ W + ∂Yᵀ(A_rb W + ER)
// The forward saves the state after every chunk (the checkpoints, transposed as the sequential
// kernels save them) and S·a per row; the backward reads the state before each chunk back.
// Products take TF32 operands (3xTF32 where it matters, below). Document resets are not
// handled here (wkv7_train.cu keeps the sequential kernels for them).
#include "ops/cuda/mma_tf32.cuh"
#include "ops/cuda/rwkv7_math.cuh"
#include "ops/cuda/wkv7_chunked.h"

namespace rwkv::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kL = kWkv7TrainChunk;  // rows per chunk
constexpr int kWarps = 16, kThreads = 32 * kWarps;
constexpr float kScale = -kRwkv7DecayScale;
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

// The elements of a chunk's (L, N) matrices a thread takes in loads and element-wise steps: row
// t, columns c … c + E − 1 (E = 1, 2 or 4).
template <int N>
struct Elements {
  static constexpr int E = kL * N / kThreads;
  int t, c;
  __device__ Elements() : t(threadIdx.x * E / N), c(threadIdx.x * E % N) {}
};

// Loads a chunk's (L, N) bf16 rows as floats (rows past the sequence's end: zero).
template <int N>
__device__ __forceinline__ void load_rows(const bf16* src, float* dst, const ChunkRows& cr) {
  constexpr int E = Elements<N>::E;
  const Elements<N> el;
  float v[E];
  if (el.t < cr.rows) {
    const bf16* q = src + cr.at(el.t, el.c);
    if constexpr (E == 4) {
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
template <int N>
__device__ __forceinline__ void load_decays(const bf16* z, float* lam, const ChunkRows& cr) {
  load_rows<N>(z, lam, cr);
  const Elements<N> el;
  if (el.t < cr.rows) {
#pragma unroll
    for (int e = 0; e < el.E; ++e) {
      float& x = lam[el.t * Dims<N>::LD + el.c + e];
      x = kScale / (1.f + __expf(-x));
    }
  }
}

// A chunk's r, k, b, a, v and log-decays.
template <int N>
__device__ __forceinline__ void load_inputs(const Wkv7Train& p, const ChunkRows& cr, float* R, float* K, float* B,
                                            float* A, float* V, float* lam) {
  load_rows<N>(p.r, R, cr);
  load_rows<N>(p.k, K, cr);
  load_rows<N>(p.b, B, cr);
  load_rows<N>(p.a, A, cr);
  load_rows<N>(p.v, V, cr);
  load_decays<N>(p.z, lam, cr);
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
// EK = K⊙e^−G, EB = B⊙e^−G, and K⊙F, B⊙F with F = e^{G_L − G}; eGL = e^{G_L}.
template <int N>
__device__ __forceinline__ void factorise(float* ER, float* EA, float* EK, float* EB, float* KF, float* BF,
                                          const float* K, const float* B, const float* lam, float* eGL) {
  const Elements<N> el;
#pragma unroll
  for (int e = 0; e < el.E; ++e) {
    const int j = el.c + e, o = el.t * Dims<N>::LD + j;
    const float2 g = decay_sums<N>(lam, el.t, j);
    const float eg = __expf(g.x), em = __expf(-g.x), f = __expf(g.y - g.x);
    const float k = K[o], b = B[o];
    ER[o] *= eg;
    EA[o] *= __expf(g.x - lam[o]);
    EK[o] = k * em, KF[o] = k * f;
    EB[o] = b * em, BF[o] = b * f;
    if (el.t == 0) eGL[j] = __expf(g.y);
  }
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

// Copies an (N, N) state between global memory (dense) and shared memory (leading dim LD).
template <int N>
__device__ __forceinline__ void state_in(const float* g, float* s) {
  constexpr int LD = Dims<N>::LD;
  for (int e = threadIdx.x * 4; e < N * N; e += kThreads * 4) {
    const float4 v = g ? *reinterpret_cast<const float4*>(g + e) : make_float4(0.f, 0.f, 0.f, 0.f);
    *reinterpret_cast<float4*>(s + (e / N) * LD + e % N) = v;
  }
}
// The checkpoints' layout (wkv7_train.h): column-major, g[j·N + i] = S[i, j].
template <int N>
__device__ __forceinline__ void state_in_transposed(const float* g, float* s) {
  constexpr int LD = Dims<N>::LD;
  for (int e = threadIdx.x; e < N * N; e += kThreads) s[(e % N) * LD + e / N] = g[e];
}
template <int N>
__device__ __forceinline__ void state_out_transposed(const float* s, float* g) {
  constexpr int LD = Dims<N>::LD;
  for (int e = threadIdx.x; e < N * N; e += kThreads) g[e] = s[(e % N) * LD + e / N];
}
template <int N>
__device__ __forceinline__ void state_out(const float* s, float* g) {
  constexpr int LD = Dims<N>::LD;
  for (int e = threadIdx.x * 4; e < N * N; e += kThreads * 4) {
    *reinterpret_cast<float4*>(g + e) = *reinterpret_cast<const float4*>(s + (e / N) * LD + e % N);
  }
}

template <int N>
struct ForwardSmem {
  using D = Dims<N>;
  float *ER, *EK, *EB, *EA, *KF, *BF, *V, *lam, *Z, *U, *W, *SA;  // (L, N)
  float *S, *S2;                                                  // (N, N): before, after
  float *Ark, *Arb, *Aak, *Aab, *Gam;                             // (L, L)
  float* eGL;                                                     // (N)
  static constexpr int kFloats = 12 * D::kRow + 2 * D::kSquare + 5 * D::kSmall + N;
  __device__ explicit ForwardSmem(float* base) {
    Carve c{base};
    float** rows[] = {&ER, &EK, &EB, &EA, &KF, &BF, &V, &lam, &Z, &U, &W, &SA};
    for (float** m : rows) *m = c.take(D::kRow);
    S = c.take(D::kSquare), S2 = c.take(D::kSquare);
    float** small[] = {&Ark, &Arb, &Aak, &Aab, &Gam};
    for (float** m : small) *m = c.take(D::kSmall);
    eGL = c.take(N);
  }
};

template <int N>
__global__ void __launch_bounds__(kThreads, 1) wkv7_chunked_forward_kernel(Wkv7Train p, int chunks) {
  using D = Dims<N>;
  constexpr int LD = D::LD, LS = D::LS, NT = D::NT;
  extern __shared__ __align__(16) float smem[];
  ForwardSmem<N> m(smem);
  const int h = blockIdx.x, seq = blockIdx.y, warp = threadIdx.x / 32, H = p.H, T = p.T;
  const size_t head = size_t(seq) * H + h, C = size_t(H) * N;
  float* ckpt = p.checkpoints + head * size_t(chunks) * N * N;
  state_in<N>(p.s0 ? p.s0 + state_offset<N>(head) : nullptr, m.S);
  for (int c = 0; c < chunks; ++c) {
    const ChunkRows cr{size_t(seq) * T * C + size_t(h) * N, C, c * kL, min(kL, T - c * kL)};
    __syncthreads();  // the previous chunk is done with every array; S holds its S_next
    load_inputs<N>(p, cr, m.ER, m.EK, m.EB, m.EA, m.V, m.lam);
    if (c > 0) state_out_transposed<N>(m.S, ckpt + size_t(c - 1) * N * N);  // the state after chunk c − 1
    __syncthreads();
    factorise<N>(m.ER, m.EA, m.EK, m.EB, m.KF, m.BF, m.EK, m.EB, m.lam, m.eGL);
    __syncthreads();
    if (warp < 8) chunk_products<N, kExact>(warp, m.ER, m.EA, m.EK, m.EB, m.Ark, m.Arb, m.Aak, m.Aab);
    __syncthreads();
    if (warp == 0) {
      unit_lower_inverse(m.Aab, m.Gam);
    } else {
      for (int job = warp - 1; job < NT; job += kWarps - 1) {  // Z = A_ak V
        float t[4] = {0.f, 0.f, 0.f, 0.f};
        mma_tile<kL, kExact>(t, as_is(m.Aak, LS), 0, as_is(m.V, LD), 8 * job);
        store_tile(t, m.Z, LD, 0, 8 * job, kKeep);
      }
    }
    __syncthreads();
    for (int job = warp; job < 2 * NT; job += kWarps) {  // U = ΓZ, W = Γ·EA
      const int n0 = job % NT * 8;
      float t[4] = {0.f, 0.f, 0.f, 0.f};
      mma_tile<kL, kExact>(t, as_is(m.Gam, LS), 0, as_is(job < NT ? m.Z : m.EA, LD), n0);
      store_tile(t, job < NT ? m.U : m.W, LD, 0, n0, kKeep);
    }
    __syncthreads();
    for (int job = warp; job < NT; job += kWarps) {  // SA = U + W S₀ᵀ: row t's S_{t−1}·a_t
      const int n0 = 8 * job;
      float t[4];
      load_tile(t, m.U, LD, 0, n0);
      mma_tile<N, kExact>(t, as_is(m.W, LD), 0, transposed(m.S, LD), n0);
      store_tile(t, m.SA, LD, 0, n0, kKeep);
      write_rows(t, p.sa, cr, n0, [](float* q, float x, float y) { *reinterpret_cast<float2*>(q) = {x, y}; });
    }
    __syncthreads();
    // Y = A_rk V + A_rb SA + ER S₀ᵀ (jobs < NT), S_next = S₀ diag(e^{G_L}) + Vᵀ(K⊙F) + SAᵀ(B⊙F).
    for (int job = warp; job < NT + (N / 16) * NT; job += kWarps) {
      float t[4] = {0.f, 0.f, 0.f, 0.f};
      if (job < NT) {
        const int n0 = 8 * job;
        mma_tile<kL>(t, as_is(m.Ark, LS), 0, as_is(m.V, LD), n0);
        mma_tile<kL>(t, as_is(m.Arb, LS), 0, as_is(m.SA, LD), n0);
        mma_tile<N>(t, as_is(m.ER, LD), 0, transposed(m.S, LD), n0);
        write_rows(t, p.y, cr, n0, [](bf16* q, float x, float y) {
          *reinterpret_cast<__nv_bfloat162*>(q) = __floats2bfloat162_rn(x, y);
        });
      } else {
        const int m0 = (job - NT) / NT * 16, n0 = (job - NT) % NT * 8;
        decayed_state_tile<N>(t, m.S, m.eGL, m0, n0);
        mma_tile<kL, kExact>(t, transposed(m.V, LD), m0, as_is(m.KF, LD), n0);
        mma_tile<kL, kExact>(t, transposed(m.SA, LD), m0, as_is(m.BF, LD), n0);
        store_tile(t, m.S2, LD, m0, n0, kKeep);
      }
    }
    float* s = m.S;
    m.S = m.S2, m.S2 = s;
  }
  __syncthreads();
  state_out_transposed<N>(m.S, ckpt + size_t(chunks - 1) * N * N);
  if (p.sT) state_out<N>(m.S, p.sT + state_offset<N>(head));
}

template <int N>
struct BackwardSmem {
  using D = Dims<N>;
  // (L, N): the raw K, B kept beside their factorised forms (∂F needs them); ER and EA replace R, A.
  float *ER, *EK, *KF, *K, *EB, *BF, *B, *EA, *V, *lam, *dY, *Z, *U, *W, *SA;
  float *dSAs, *dSA, *dZ, *dW, *dV, *dER, *dEA, *dEK, *dEB, *VdS, *SAdS, *Q2;
  float *S0, *dS, *dS2;                                                   // (N, N)
  float *Ark, *Arb, *Aak, *Aab, *Gam, *dArk, *dArb, *dAak, *dAab, *dGam, *T1;  // (L, L)
  float* eGL;
  static constexpr int kFloats = 27 * D::kRow + 3 * D::kSquare + 11 * D::kSmall + N;
  __device__ explicit BackwardSmem(float* base) {
    Carve c{base};
    float** rows[] = {&ER, &EK, &KF, &K,  &EB,   &BF,  &B,  &EA, &V,  &lam, &dY,  &Z,   &U,   &W,
                      &SA, &dSAs, &dSA, &dZ, &dW, &dV, &dER, &dEA, &dEK, &dEB, &VdS, &SAdS, &Q2};
    for (float** m : rows) *m = c.take(D::kRow);
    S0 = c.take(D::kSquare), dS = c.take(D::kSquare), dS2 = c.take(D::kSquare);
    float** small[] = {&Ark, &Arb, &Aak, &Aab, &Gam, &dArk, &dArb, &dAak, &dAab, &dGam, &T1};
    for (float** m : small) *m = c.take(D::kSmall);
    eGL = c.take(N);
  }
};

template <int N>
__global__ void __launch_bounds__(kThreads, 1) wkv7_chunked_backward_kernel(Wkv7Train p, Wkv7TrainGrads g,
                                                                         int chunks) {
  using D = Dims<N>;
  constexpr int LD = D::LD, LS = D::LS, NT = D::NT;
  extern __shared__ __align__(16) float smem[];
  BackwardSmem<N> m(smem);
  const int h = blockIdx.x, seq = blockIdx.y, warp = threadIdx.x / 32, H = p.H, T = p.T;
  const size_t head = size_t(seq) * H + h, C = size_t(H) * N;
  const float* ckpt = p.checkpoints + head * size_t(chunks) * N * N;
  state_in<N>(g.dsT ? g.dsT + state_offset<N>(head) : nullptr, m.dS);
  for (int c = chunks - 1; c >= 0; --c) {
    const ChunkRows cr{size_t(seq) * T * C + size_t(h) * N, C, c * kL, min(kL, T - c * kL)};
    __syncthreads();  // the chunk after is done; dS holds ∂L/∂(the state after this chunk)
    load_inputs<N>(p, cr, m.ER, m.K, m.B, m.EA, m.V, m.lam);
    load_rows<N>(g.dy, m.dY, cr);
    if (c > 0) {
      state_in_transposed<N>(ckpt + size_t(c - 1) * N * N, m.S0);
    } else {
      state_in<N>(p.s0 ? p.s0 + state_offset<N>(head) : nullptr, m.S0);
    }
    __syncthreads();
    factorise<N>(m.ER, m.EA, m.EK, m.EB, m.KF, m.BF, m.K, m.B, m.lam, m.eGL);
    __syncthreads();
    // A_rk, A_rb, A_ak, A_ab; ∂SA_s = (B⊙F) ∂Sᵀ (the state's part of ∂SA); V ∂S; ∂ER = ∂Y S₀ (first
    // part); ∂V = (K⊙F) ∂Sᵀ (first part); ∂A_rk = tril(∂Y Vᵀ).
    for (int job = warp; job < 8 + 4 * NT + 2; job += kWarps) {
      if (job < 8) {
        chunk_products<N, false>(job, m.ER, m.EA, m.EK, m.EB, m.Ark, m.Arb, m.Aak, m.Aab);
        continue;
      }
      float t[4] = {0.f, 0.f, 0.f, 0.f};
      const int q = job - 8;
      if (q >= 4 * NT) {
        const int n0 = (q - 4 * NT) * 8;
        mma_tile<N>(t, as_is(m.dY, LD), 0, transposed(m.V, LD), n0);
        store_tile(t, m.dArk, LS, 0, n0, kTril);
        continue;
      }
      const int which = q / NT, n0 = q % NT * 8;
      const float* left = which == 0 ? m.BF : which == 1 ? m.V : which == 2 ? m.dY : m.KF;
      const SmemMat right = which == 0 || which == 3 ? transposed(m.dS, LD) : as_is(which == 1 ? m.dS : m.S0, LD);
      float* out = which == 0 ? m.dSAs : which == 1 ? m.VdS : which == 2 ? m.dER : m.dV;
      if (which == 1) {
        mma_tile<N, kExact>(t, as_is(left, LD), 0, right, n0);
      } else {
        mma_tile<N>(t, as_is(left, LD), 0, right, n0);
      }
      store_tile(t, out, LD, 0, n0, kKeep);
    }
    __syncthreads();
    if (warp == 0) {
      unit_lower_inverse(m.Aab, m.Gam);
    } else {
      for (int job = warp - 1; job < 2 * NT; job += kWarps - 1) {
        const int n0 = job % NT * 8;
        float t[4] = {0.f, 0.f, 0.f, 0.f};
        if (job < NT) {  // Z = A_ak V
          mma_tile<kL>(t, as_is(m.Aak, LS), 0, as_is(m.V, LD), n0);
          store_tile(t, m.Z, LD, 0, n0, kKeep);
        } else {  // ∂SA = ∂SA_s + A_rbᵀ ∂Y
          load_tile(t, m.dSAs, LD, 0, n0);
          mma_tile<kL>(t, transposed(m.Arb, LS), 0, as_is(m.dY, LD), n0);
          store_tile(t, m.dSA, LD, 0, n0, kKeep);
        }
      }
    }
    __syncthreads();
    // U = ΓZ, W = Γ·EA, ∂Z = Γᵀ ∂SA, ∂W = ∂SA S₀.
    for (int job = warp; job < 4 * NT; job += kWarps) {
      const int which = job / NT, n0 = job % NT * 8;
      float t[4] = {0.f, 0.f, 0.f, 0.f};
      if (which < 3) {
        const SmemMat left = which < 2 ? as_is(m.Gam, LS) : transposed(m.Gam, LS);
        mma_tile<kL>(t, left, 0, as_is(which == 0 ? m.Z : which == 1 ? m.EA : m.dSA, LD), n0);
      } else {
        mma_tile<N>(t, as_is(m.dSA, LD), 0, as_is(m.S0, LD), n0);
      }
      store_tile(t, which == 0 ? m.U : which == 1 ? m.W : which == 2 ? m.dZ : m.dW, LD, 0, n0, kKeep);
    }
    __syncthreads();
    // SA = U + W S₀ᵀ; ∂V += A_rkᵀ ∂Y + A_akᵀ ∂Z; ∂EA = Γᵀ ∂W (first part); Q2 = A_rb W + ER;
    // ∂A_ak = stril(∂Z Vᵀ); ∂Γ = ∂SA Zᵀ + ∂W EAᵀ.
    for (int job = warp; job < 4 * NT + 4; job += kWarps) {
      float t[4] = {0.f, 0.f, 0.f, 0.f};
      if (job >= 4 * NT) {
        const int n0 = (job - 4 * NT) % 2 * 8;
        if (job - 4 * NT < 2) {
          mma_tile<N>(t, as_is(m.dZ, LD), 0, transposed(m.V, LD), n0);
          store_tile(t, m.dAak, LS, 0, n0, kStril);
        } else {
          mma_tile<N>(t, as_is(m.dSA, LD), 0, transposed(m.Z, LD), n0);
          mma_tile<N>(t, as_is(m.dW, LD), 0, transposed(m.EA, LD), n0);
          store_tile(t, m.dGam, LS, 0, n0, kKeep);
        }
        continue;
      }
      const int which = job / NT, n0 = job % NT * 8;
      if (which == 0) {
        load_tile(t, m.U, LD, 0, n0);
        mma_tile<N>(t, as_is(m.W, LD), 0, transposed(m.S0, LD), n0);
        store_tile(t, m.SA, LD, 0, n0, kKeep);
      } else if (which == 1) {
        load_tile(t, m.dV, LD, 0, n0);
        mma_tile<kL>(t, transposed(m.Ark, LS), 0, as_is(m.dY, LD), n0);
        mma_tile<kL>(t, transposed(m.Aak, LS), 0, as_is(m.dZ, LD), n0);
        store_tile(t, m.dV, LD, 0, n0, kKeep);
      } else if (which == 2) {
        mma_tile<kL, kExact>(t, transposed(m.Gam, LS), 0, as_is(m.dW, LD), n0);
        store_tile(t, m.dEA, LD, 0, n0, kKeep);
      } else {
        load_tile(t, m.ER, LD, 0, n0);
        mma_tile<kL>(t, as_is(m.Arb, LS), 0, as_is(m.W, LD), n0);
        store_tile(t, m.Q2, LD, 0, n0, kKeep);
      }
    }
    __syncthreads();
    // ∂A_rb = tril(∂Y SAᵀ); SA ∂S; T1 = Γᵀ ∂Γ; ∂EK = ∂A_rkᵀ ER + ∂A_akᵀ EA;
    // the carried ∂S₀ = ∂S diag(e^{G_L}) + ∂SA_sᵀ W + ∂Yᵀ Q2 (into dS2: dS is still read).
    for (int job = warp; job < 4 + 2 * NT + (N / 16) * NT; job += kWarps) {
      float t[4] = {0.f, 0.f, 0.f, 0.f};
      if (job < 4) {
        const int n0 = job % 2 * 8;
        if (job < 2) {
          mma_tile<N>(t, as_is(m.dY, LD), 0, transposed(m.SA, LD), n0);
          store_tile(t, m.dArb, LS, 0, n0, kTril);
        } else {
          mma_tile<kL>(t, transposed(m.Gam, LS), 0, as_is(m.dGam, LS), n0);
          store_tile(t, m.T1, LS, 0, n0, kKeep);
        }
        continue;
      }
      const int q = job - 4;
      if (q < 2 * NT) {
        const int n0 = q % NT * 8;
        if (q < NT) {
          mma_tile<N, kExact>(t, as_is(m.SA, LD), 0, as_is(m.dS, LD), n0);
          store_tile(t, m.SAdS, LD, 0, n0, kKeep);
        } else {
          mma_tile<kL, kExact>(t, transposed(m.dArk, LS), 0, as_is(m.ER, LD), n0);
          mma_tile<kL, kExact>(t, transposed(m.dAak, LS), 0, as_is(m.EA, LD), n0);
          store_tile(t, m.dEK, LD, 0, n0, kKeep);
        }
        continue;
      }
      const int m0 = (q - 2 * NT) / NT * 16, n0 = (q - 2 * NT) % NT * 8;
      decayed_state_tile<N>(t, m.dS, m.eGL, m0, n0);
      mma_tile<kL>(t, transposed(m.dSAs, LD), m0, as_is(m.W, LD), n0);
      mma_tile<kL>(t, transposed(m.dY, LD), m0, as_is(m.Q2, LD), n0);
      store_tile(t, m.dS2, LD, m0, n0, kKeep);
    }
    __syncthreads();
    // ∂A_ab = stril(T1 Γᵀ); ∂ER += ∂A_rk EK + ∂A_rb EB.
    for (int job = warp; job < 2 + NT; job += kWarps) {
      float t[4] = {0.f, 0.f, 0.f, 0.f};
      if (job < 2) {
        mma_tile<kL>(t, as_is(m.T1, LS), 0, transposed(m.Gam, LS), 8 * job);
        store_tile(t, m.dAab, LS, 0, 8 * job, kStril);
      } else {
        const int n0 = (job - 2) * 8;
        load_tile(t, m.dER, LD, 0, n0);
        mma_tile<kL, kExact>(t, as_is(m.dArk, LS), 0, as_is(m.EK, LD), n0);
        mma_tile<kL, kExact>(t, as_is(m.dArb, LS), 0, as_is(m.EB, LD), n0);
        store_tile(t, m.dER, LD, 0, n0, kKeep);
      }
    }
    __syncthreads();
    // ∂EB = ∂A_rbᵀ ER + ∂A_abᵀ EA; ∂EA += ∂A_ak EK + ∂A_ab EB.
    for (int job = warp; job < 2 * NT; job += kWarps) {
      const int n0 = job % NT * 8;
      float t[4] = {0.f, 0.f, 0.f, 0.f};
      if (job < NT) {
        mma_tile<kL, kExact>(t, transposed(m.dArb, LS), 0, as_is(m.ER, LD), n0);
        mma_tile<kL, kExact>(t, transposed(m.dAab, LS), 0, as_is(m.EA, LD), n0);
        store_tile(t, m.dEB, LD, 0, n0, kKeep);
      } else {
        load_tile(t, m.dEA, LD, 0, n0);
        mma_tile<kL, kExact>(t, as_is(m.dAak, LS), 0, as_is(m.EK, LD), n0);
        mma_tile<kL, kExact>(t, as_is(m.dAab, LS), 0, as_is(m.EB, LD), n0);
        store_tile(t, m.dEA, LD, 0, n0, kKeep);
      }
    }
    __syncthreads();
    // Per element: the factorised gradients back to the inputs; ∂G + ∂Ĝ, ∂Ĝ and ∂F⊙F (into the free
    // U, Z, ∂Z) and parts of Σ_i S₀[i, j] ∂S[i, j] (into ∂W) for the per-channel sums below.
    {
      float *dGsum = m.U, *dGh = m.Z, *dFF = m.dZ, *parts = m.dW;
      const Elements<N> el;
#pragma unroll
      for (int e = 0; e < el.E; ++e) {
        const int t = el.t, j = el.c + e, o = t * LD + j;
        const float2 gs = decay_sums<N>(m.lam, t, j);
        const float eg = __expf(gs.x), em = __expf(-gs.x), f = __expf(gs.y - gs.x), egh = __expf(gs.x - m.lam[o]);
        const float vds = m.VdS[o], sads = m.SAdS[o];
        const float df = vds * m.K[o] + sads * m.B[o];
        const float dgh = m.dEA[o] * m.EA[o];
        dGsum[o] = m.dER[o] * m.ER[o] - m.dEK[o] * m.EK[o] - m.dEB[o] * m.EB[o] - df * f + dgh;
        dGh[o] = dgh;
        dFF[o] = df * f;
        if (t < cr.rows) {
          const size_t at = cr.at(t, j);
          g.dr[at] = __float2bfloat16_rn(m.dER[o] * eg);
          g.dk[at] = __float2bfloat16_rn(vds * f + m.dEK[o] * em);
          g.db[at] = __float2bfloat16_rn(sads * f + m.dEB[o] * em);
          g.da[at] = __float2bfloat16_rn(m.dEA[o] * egh);
          g.dv[at] = __float2bfloat16_rn(m.dV[o]);
        }
      }
      constexpr int P = kThreads / N;  // ≤ L parts of N / P rows each
      const int part = threadIdx.x / N, j = threadIdx.x % N;
      float sum = 0.f;
      for (int i = part; i < N; i += P) sum += m.S0[i * LD + j] * m.dS[i * LD + j];
      parts[part * LD + j] = sum;
      __syncthreads();
      // Per channel: ∂G_L = e^{G_L}·Σ_i S₀ ∂S + Σ_t ∂F⊙F enters at the last row, and
      // ∂λ_s = Σ_{t≥s} (∂G_t + ∂Ĝ_t) − ∂Ĝ_s.
      if (threadIdx.x < N) {
        float sp = 0.f, suffix = 0.f;
        for (int q = 0; q < P; ++q) sp += parts[q * LD + j];
#pragma unroll
        for (int t = 0; t < kL; ++t) suffix += dFF[t * LD + j];
        suffix += sp * m.eGL[j];
#pragma unroll
        for (int t = kL - 1; t >= 0; --t) {
          suffix += dGsum[t * LD + j];
          if (t < cr.rows) {
            const float sig = m.lam[t * LD + j] / kScale;
            g.dz[cr.at(t, j)] = __float2bfloat16_rn((suffix - dGh[t * LD + j]) * kScale * sig * (1.f - sig));
          }
        }
      }
    }
    float* s = m.dS;
    m.dS = m.dS2, m.dS2 = s;
  }
  __syncthreads();
  if (g.ds0) state_out<N>(m.dS, g.ds0 + state_offset<N>(head));
}

}  // namespace

bool wkv7_chunked_applies(const Wkv7Train& p) {
  if (p.reset != nullptr || (p.N != 32 && p.N != 64)) return false;
  // The rows are read 4 values (8 bytes) at a time.
  for (const void* q : {static_cast<const void*>(p.r), static_cast<const void*>(p.z),
                        static_cast<const void*>(p.k), static_cast<const void*>(p.v),
                        static_cast<const void*>(p.a), static_cast<const void*>(p.b)}) {
    if (reinterpret_cast<uintptr_t>(q) % 8 != 0) return false;
  }
  return true;
}

namespace {

// Launches one of the kernels above with `floats` of dynamic shared memory, a block per head.
template <class... Args>
void launch(Context& ctx, void (*kernel)(Args...), int floats, const Wkv7Train& p, Args... args) {
  const int bytes = floats * int(sizeof(float));
  RWKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  kernel<<<dim3(p.H, p.B), kThreads, bytes, ctx.stream>>>(args...);
}

int chunks_of(int T) { return (T + kL - 1) / kL; }

}  // namespace

void wkv7_chunked_forward(Context& ctx, const Wkv7Train& p) {
  if (p.N == 32) {
    launch(ctx, wkv7_chunked_forward_kernel<32>, ForwardSmem<32>::kFloats, p, p, chunks_of(p.T));
  } else if (p.N == 64) {
    launch(ctx, wkv7_chunked_forward_kernel<64>, ForwardSmem<64>::kFloats, p, p, chunks_of(p.T));
  } else {
    fail("CUDA wkv7 chunked: head size ", p.N, " is not supported (32 or 64)");
  }
  RWKV_CUDA_LAUNCHED("wkv7_chunked_forward");
}

void wkv7_chunked_backward(Context& ctx, const Wkv7Train& p, const Wkv7TrainGrads& g) {
  if (p.N == 32) {
    launch(ctx, wkv7_chunked_backward_kernel<32>, BackwardSmem<32>::kFloats, p, p, g, chunks_of(p.T));
  } else if (p.N == 64) {
    launch(ctx, wkv7_chunked_backward_kernel<64>, BackwardSmem<64>::kFloats, p, p, g, chunks_of(p.T));
  } else {
    fail("CUDA wkv7 chunked: head size ", p.N, " is not supported (32 or 64)");
  }
  RWKV_CUDA_LAUNCHED("wkv7_chunked_backward");
}

}  // namespace rwkv::cuda
