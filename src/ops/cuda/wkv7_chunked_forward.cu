// The forward of WKV-7 for training in its chunked form (spec §4.5; the fp64 plain-loop twin is
// ops/train/wkv7_chunked.cpp, whose header derives every product used here), on tensor cores, as
// the two kinds of work it splits into:
//   prepare  every chunk at once (a block per chunk and head): what does not depend on the state,
//            A_rk = tril(ER EKᵀ), A_rb = tril(ER EBᵀ), A_ak = stril(EA EKᵀ), A_ab = stril(EA EBᵀ),
//            Γ = (I − A_ab)⁻¹, U = Γ A_ak V, W = Γ·EA, into a scratch buffer;
//   scan     a block per (sequence, head) walks its chunks, each of its N/16 warps holding 16 rows
//            of the state in registers (as mma accumulators):
//              SA = U + W S₀ᵀ, Y = A_rk V + A_rb SA + ER S₀ᵀ,
//              S_next = S₀ diag(e^{G_L}) + Vᵀ(K⊙F) + SAᵀ(B⊙F)
//            with no barrier between the warps but the chunk's staging, the next chunk's inputs
//            loaded into registers while this one's products run.
// The scan saves the state after every chunk (the checkpoints, transposed as the sequential
// kernels save them) and S·a per row. Long sequences go through in windows of chunks so that the
// scratch stays within kScratchBytes; a window's scan starts from the checkpoint before it.
// Products take TF32 operands, in 3xTF32 on the path that carries the state (A_ak, A_ab, Z, U, W,
// SA, S_next) as wkv7_chunked_common.cuh's kExact says.
#include <algorithm>

#include "ops/cuda/wkv7_chunked.h"
#include "ops/cuda/wkv7_chunked_common.cuh"

namespace rwkv::cuda {
namespace {

using namespace wkv7c;
constexpr size_t kScratchBytes = size_t(512) << 20;

// A chunk's share of the scratch: U and W (L, N), A_rk and A_rb (L, L), dense.
template <int N>
struct Scratch {
  static constexpr int kU = 0, kW = kL * N, kArk = 2 * kL * N, kArb = kArk + kL * kL, kFloats = kArb + kL * kL;
};

// ---- prepare -----------------------------------------------------------------------------------

constexpr int kPrepareWarps = 4, kPrepareThreads = 32 * kPrepareWarps;

template <int N>
struct PrepareSmem {
  using D = Dims<N>;
  float *ER, *EK, *EB, *EA, *V, *lam, *Z;       // (L, N)
  float *Ark, *Arb, *Aak, *Aab, *Gam;           // (L, L)
  static constexpr int kFloats = 7 * D::kRow + 5 * D::kSmall;
  __device__ explicit PrepareSmem(float* base) {
    Carve c{base};
    float** rows[] = {&ER, &EK, &EB, &EA, &V, &lam, &Z};
    for (float** m : rows) *m = c.take(D::kRow);
    float** small[] = {&Ark, &Arb, &Aak, &Aab, &Gam};
    for (float** m : small) *m = c.take(D::kSmall);
  }
};

// Grid (chunks of the window, H, B). Chunk c0 + blockIdx.x of head (blockIdx.z, blockIdx.y).
template <int N>
__global__ void __launch_bounds__(kPrepareThreads) wkv7_prepare_kernel(Wkv7Train p, int c0, int span,
                                                                       float* scratch) {
  using D = Dims<N>;
  constexpr int LD = D::LD, LS = D::LS, NT = D::NT;
  extern __shared__ __align__(16) float smem[];
  PrepareSmem<N> m(smem);
  const int c = c0 + int(blockIdx.x), h = blockIdx.y, seq = blockIdx.z, warp = threadIdx.x / 32;
  const size_t C = size_t(p.H) * N;
  const ChunkRows cr{size_t(seq) * p.T * C + size_t(h) * N, C, c * kL, min(kL, p.T - c * kL)};
  float* out = scratch + ((size_t(seq) * p.H + h) * span + blockIdx.x) * Scratch<N>::kFloats;
  load_inputs<N, kPrepareThreads>(p, cr, m.ER, m.EK, m.EB, m.EA, m.V, m.lam);
  __syncthreads();
  factorise<N, kPrepareThreads>(m.ER, m.EA, m.EK, m.EB, nullptr, nullptr, m.EK, m.EB, m.lam, nullptr);
  __syncthreads();
  for (int job = warp; job < 8; job += kPrepareWarps) {
    chunk_products<N, kExact>(job, m.ER, m.EA, m.EK, m.EB, m.Ark, m.Arb, m.Aak, m.Aab);
  }
  __syncthreads();
  if (warp == 0) {
    unit_lower_inverse(m.Aab, m.Gam);
  } else {
    for (int job = warp - 1; job < NT; job += kPrepareWarps - 1) {  // Z = A_ak V
      float t[4] = {0.f, 0.f, 0.f, 0.f};
      mma_tile<kL, kExact>(t, as_is(m.Aak, LS), 0, as_is(m.V, LD), 8 * job);
      store_tile(t, m.Z, LD, 0, 8 * job, kKeep);
    }
  }
  __syncthreads();
  for (int job = warp; job < 2 * NT; job += kPrepareWarps) {  // U = ΓZ, W = Γ·EA
    const int n0 = job % NT * 8;
    float t[4] = {0.f, 0.f, 0.f, 0.f};
    mma_tile<kL, kExact>(t, as_is(m.Gam, LS), 0, as_is(job < NT ? m.Z : m.EA, LD), n0);
    store_tile(t, out + (job < NT ? Scratch<N>::kU : Scratch<N>::kW), N, 0, n0, kKeep);
  }
  for (int e = threadIdx.x; e < 2 * kL * kL; e += kPrepareThreads) {
    const int which = e / (kL * kL), i = e % (kL * kL) / kL, j = e % kL;
    out[Scratch<N>::kArk + e] = (which == 0 ? m.Ark : m.Arb)[i * LS + j];
  }
}

// ---- scan --------------------------------------------------------------------------------------

// The scan's (L, N) arrays have leading dimension N + 8 (≡ 8 mod 32 banks): the fragment reads
// below, float2 along a row at lanes (g, q) and scalars down a column at (q, g), are then free of
// bank conflicts.
template <int N>
struct ScanDims {
  static constexpr int kThreads = 2 * N;  // a warp per 16 rows of the state
  static constexpr int LD = N + 8, kRow = kL * LD;
};

template <int N>
struct ScanSmem {
  using D = ScanDims<N>;
  float *U, *W, *ER, *KF, *BF, *V, *SA, *lam;  // (L, N); ER, KF, BF hold R, K, B until factorised
  float *Ark, *Arb;                            // (L, L), leading dimension Dims::LS
  float* eGL;                                  // (N)
  static constexpr int kFloats = 8 * D::kRow + 2 * Dims<N>::kSmall + N;
  __device__ explicit ScanSmem(float* base) {
    Carve c{base};
    float** rows[] = {&U, &W, &ER, &KF, &BF, &V, &SA, &lam};
    for (float** m : rows) *m = c.take(D::kRow);
    Ark = c.take(Dims<N>::kSmall), Arb = c.take(Dims<N>::kSmall);
    eGL = c.take(N);
  }
};

// A thread's share of one chunk's inputs to the scan, held in registers from the moment they are
// loaded (during the chunk before) until they are staged: eight consecutive columns of one row of
// each (L, N) array, and a slice of A_rk | A_rb.
template <int N>
struct ScanInputs {
  using D = ScanDims<N>;
  static constexpr int kAB = 2 * kL * kL / (4 * D::kThreads);  // float4 of A_rk | A_rb per thread
  float4 u[2], w[2], ab[kAB];
  uint4 r, k, v, b, z;

  __device__ static int row() { return threadIdx.x * 8 / N; }
  __device__ static int col() { return threadIdx.x * 8 % N; }

  __device__ void load(const Wkv7Train& p, const ChunkRows& cr, const float* chunk) {
    const int t = row(), c = col();
    const float4* U = reinterpret_cast<const float4*>(chunk + Scratch<N>::kU + t * N + c);
    const float4* W = reinterpret_cast<const float4*>(chunk + Scratch<N>::kW + t * N + c);
    u[0] = U[0], u[1] = U[1], w[0] = W[0], w[1] = W[1];
    const float4* AB = reinterpret_cast<const float4*>(chunk + Scratch<N>::kArk);
#pragma unroll
    for (int i = 0; i < kAB; ++i) ab[i] = AB[threadIdx.x + i * D::kThreads];
    const uint4 zero = make_uint4(0, 0, 0, 0);
    const bool in = t < cr.rows;
    const size_t at = cr.at(t, c);
    r = in ? *reinterpret_cast<const uint4*>(p.r + at) : zero;
    k = in ? *reinterpret_cast<const uint4*>(p.k + at) : zero;
    v = in ? *reinterpret_cast<const uint4*>(p.v + at) : zero;
    b = in ? *reinterpret_cast<const uint4*>(p.b + at) : zero;
    z = in ? *reinterpret_cast<const uint4*>(p.z + at) : zero;
  }

  // Into shared memory as the scan's arrays take them; the log-decays λ = −e^{−1/2}·σ(z), 0 on
  // padding rows (they decay nothing).
  __device__ void stage(const ScanSmem<N>& m, int rows) const {
    const int t = row(), c = col(), o = t * D::LD + c;
    reinterpret_cast<float4*>(m.U + o)[0] = u[0], reinterpret_cast<float4*>(m.U + o)[1] = u[1];
    reinterpret_cast<float4*>(m.W + o)[0] = w[0], reinterpret_cast<float4*>(m.W + o)[1] = w[1];
    const bf16* as_bf16 = nullptr;  // picks unpack8's overload
    unpack8(r, as_bf16, m.ER + o), unpack8(k, as_bf16, m.KF + o), unpack8(b, as_bf16, m.BF + o);
    unpack8(v, as_bf16, m.V + o);
    float z8[8];
    unpack8(z, as_bf16, z8);
#pragma unroll
    for (int i = 0; i < 8; ++i) m.lam[o + i] = t < rows ? log_decay(z8[i]) : 0.f;
#pragma unroll
    for (int i = 0; i < kAB; ++i) {
      const int e = 4 * (threadIdx.x + i * D::kThreads), which = e / (kL * kL), q = e % (kL * kL);
      *reinterpret_cast<float4*>((which == 0 ? m.Ark : m.Arb) + q / kL * Dims<N>::LS + q % kL) = ab[i];
    }
  }
};

// The state block of a warp: rows i0 … i0 + 15 of S (value-major) as NT accumulator tiles of 8
// columns: s[n] holds S[i0 + g, 8n + 2q (+1)] and S[i0 + g + 8, 8n + 2q (+1)].
//
// SA[:, i0 …] = U[:, i0 …] + W S₀ᵀ and Y[:, i0 …] = ER S₀ᵀ (+ A_rk V + A_rb SA below) take the
// state as their B operands straight from those registers: numbering the k index of a k-step over
// columns 8n … 8n + 7 as 2q ↦ q and 2q + 1 ↦ q + 4, lane (g, q)'s B fragment of value rows
// i0 … i0 + 7 is (s[n][0], s[n][1]) and of i0 + 8 … i0 + 15 is (s[n][2], s[n][3]); the A operand
// (W or ER) is read in the same order, a float2 per row.
template <int N>
__device__ __forceinline__ void state_products(const float (&s)[N / 8][4], const ScanSmem<N>& m, int i0,
                                               float (&sa)[2][4], float (&y)[2][4]) {
  constexpr int LD = ScanDims<N>::LD, NT = N / 8;
  const TileLane l;
  float low[2][2][4] = {};
#pragma unroll
  for (int vt = 0; vt < 2; ++vt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) sa[vt][e] = m.U[l.row(e) * LD + i0 + 8 * vt + l.col(e)], y[vt][e] = 0.f;
  }
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int k = 8 * n + 2 * l.q;
    const float2 w0 = *reinterpret_cast<const float2*>(m.W + l.g * LD + k);
    const float2 w1 = *reinterpret_cast<const float2*>(m.W + (l.g + 8) * LD + k);
    const float2 r0 = *reinterpret_cast<const float2*>(m.ER + l.g * LD + k);
    const float2 r1 = *reinterpret_cast<const float2*>(m.ER + (l.g + 8) * LD + k);
    const float wa[4] = {w0.x, w1.x, w0.y, w1.y}, ra[4] = {r0.x, r1.x, r0.y, r1.y};
    uint32_t wh[4], wl[4], rh[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) split_tf32<kExact>(wa[e], wh[e], wl[e]), rh[e] = to_tf32(ra[e]);
#pragma unroll
    for (int vt = 0; vt < 2; ++vt) {
      uint32_t bh[2], bl[2];
      split_tf32<kExact>(s[n][2 * vt], bh[0], bl[0]);
      split_tf32<kExact>(s[n][2 * vt + 1], bh[1], bl[1]);
      mma_m16n8k8(sa[vt], wh, bh);
      if constexpr (kExact) {
        mma_m16n8k8(low[vt][n % 2], wl, bh);
        mma_m16n8k8(low[vt][n % 2], wh, bl);
      }
      mma_m16n8k8(y[vt], rh, bh);
    }
  }
#pragma unroll
  for (int vt = 0; vt < 2; ++vt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) sa[vt][e] += low[vt][0][e] + low[vt][1][e];
  }
}

// S ← S diag(e^{G_L}) + Vᵀ(K⊙F) + SAᵀ(B⊙F) on the warp's rows: the A operands (Vᵀ and SAᵀ, rows
// i0 …, the chunk's L rows as k) are read once, the B operands per column tile.
template <int N>
__device__ __forceinline__ void update_state(float (&s)[N / 8][4], const ScanSmem<N>& m, int i0) {
  constexpr int LD = ScanDims<N>::LD, NT = N / 8;
  const TileLane l;
  // V holds bf16 values, exact in TF32: its low part is zero and its products take one mma.
  uint32_t vh[2][4], ah[2][4], al[2][4];
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      // A fragment element e: row (value) g + 8·(e & 1), column (row t of the chunk) q + 4·(e >> 1).
      const int o = (8 * ks + l.q + 4 * (e >> 1)) * LD + i0 + l.g + 8 * (e & 1);
      vh[ks][e] = to_tf32(m.V[o]);
      split_tf32<kExact>(m.SA[o], ah[ks][e], al[ks][e]);
    }
  }
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    float acc[4], low[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[e] = s[n][e] * m.eGL[8 * n + l.col(e)];
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t kh[2], kl[2], bh[2], bl[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int o = (8 * ks + l.q + 4 * e) * LD + 8 * n + l.g;
        split_tf32<kExact>(m.KF[o], kh[e], kl[e]);
        split_tf32<kExact>(m.BF[o], bh[e], bl[e]);
      }
      mma_m16n8k8(acc, vh[ks], kh);
      mma_m16n8k8(acc, ah[ks], bh);
      if constexpr (kExact) {
        mma_m16n8k8(low, vh[ks], kl);
        mma_m16n8k8(low, al[ks], bh);
        mma_m16n8k8(low, ah[ks], bl);
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = acc[e] + low[e];
  }
}

// Grid (H, B), ScanDims::kThreads threads: chunks c0 … c0 + count − 1 of head (blockIdx.y,
// blockIdx.x), from s0 (c0 = 0) or the checkpoint after chunk c0 − 1.
template <int N, int MinBlocks>
__global__ void __launch_bounds__(ScanDims<N>::kThreads, MinBlocks) wkv7_scan_kernel(Wkv7Train p, int c0, int count,
                                                                          int span, int chunks,
                                                                          const float* scratch) {
  constexpr int NT = N / 8;
  extern __shared__ __align__(16) float smem[];
  const ScanSmem<N> m(smem);
  const int h = blockIdx.x, seq = blockIdx.y, i0 = 16 * (threadIdx.x / 32);
  const size_t head = size_t(seq) * p.H + h, C = size_t(p.H) * N;
  const float* window = scratch + head * span * Scratch<N>::kFloats;
  float* ckpt = p.checkpoints + head * size_t(chunks) * N * N;
  const TileLane l;

  float s[NT][4];
  if (c0 > 0) {  // the checkpoints are transposed: ck[j·N + i] = S[i, j]
    const float* ck = ckpt + size_t(c0 - 1) * N * N;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = ck[(8 * n + l.col(e)) * N + i0 + l.row(e)];
    }
  } else {
    const float* s0 = p.s0 ? p.s0 + head * N * N : nullptr;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = s0 ? s0[(i0 + l.row(e)) * N + 8 * n + l.col(e)] : 0.f;
    }
  }

  const auto rows_of = [&](int c) {
    return ChunkRows{size_t(seq) * p.T * C + size_t(h) * N, C, c * kL, min(kL, p.T - c * kL)};
  };
  ScanInputs<N> next;
  next.load(p, rows_of(c0), window);
  for (int i = 0; i < count; ++i) {
    const int c = c0 + i;
    const ChunkRows cr = rows_of(c);
    __syncthreads();  // every warp is done with the previous chunk's arrays
    next.stage(m, cr.rows);
    if (i + 1 < count) next.load(p, rows_of(c + 1), window + size_t(i + 1) * Scratch<N>::kFloats);
    __syncthreads();
    factorise<N, ScanDims<N>::kThreads, ScanDims<N>::LD>(m.ER, nullptr, nullptr, nullptr, m.KF, m.BF, m.KF, m.BF,
                                                          m.lam, m.eGL);
    __syncthreads();

    float sa[2][4], y[2][4];
    state_products<N>(s, m, i0, sa, y);
#pragma unroll
    for (int vt = 0; vt < 2; ++vt) {
      const int n0 = i0 + 8 * vt;
      store_tile(sa[vt], m.SA, ScanDims<N>::LD, 0, n0, kKeep);
      write_rows(sa[vt], p.sa, cr, n0, [](float* q, float x, float y) { *reinterpret_cast<float2*>(q) = {x, y}; });
    }
    __syncwarp();
#pragma unroll
    for (int vt = 0; vt < 2; ++vt) {  // Y += A_rk V + A_rb SA
      const int n0 = i0 + 8 * vt;
      mma_tile<kL>(y[vt], as_is(m.Ark, Dims<N>::LS), 0, as_is(m.V, ScanDims<N>::LD), n0);
      mma_tile<kL>(y[vt], as_is(m.Arb, Dims<N>::LS), 0, as_is(m.SA, ScanDims<N>::LD), n0);
      write_rows(y[vt], p.y, cr, n0, [](bf16* q, float x, float y) {
        *reinterpret_cast<__nv_bfloat162*>(q) = __floats2bfloat162_rn(x, y);
      });
    }
    update_state<N>(s, m, i0);
    float* ck = ckpt + size_t(c) * N * N;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) ck[(8 * n + l.col(e)) * N + i0 + l.row(e)] = s[n][e];
    }
  }
  if (p.sT && c0 + count == chunks) {
    float* sT = p.sT + head * N * N;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        *reinterpret_cast<float2*>(sT + (i0 + l.g + 8 * half) * N + 8 * n + 2 * l.q) = {s[n][2 * half],
                                                                                     s[n][2 * half + 1]};
      }
    }
  }
}

template <int N>
void forward(Context& ctx, const Wkv7Train& p) {
  const int chunks = (p.T + kL - 1) / kL;
  const size_t per_chunk = size_t(p.B) * p.H * Scratch<N>::kFloats * sizeof(float);
  const int span = int(std::clamp<size_t>(kScratchBytes / per_chunk, 1, size_t(chunks)));
  ctx.wkv7_chunks.ensure(per_chunk * size_t(span));
  float* scratch = ctx.wkv7_chunks.as<float>();
  const int prepare_bytes = PrepareSmem<N>::kFloats * int(sizeof(float));
  const int scan_bytes = ScanSmem<N>::kFloats * int(sizeof(float));
  RWKV_CUDA_CHECK(cudaFuncSetAttribute(wkv7_prepare_kernel<N>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       prepare_bytes));
  // The scan holds the state in registers; limited to 128 of them (a few spilled) it fits four
  // blocks on a multiprocessor instead of two or three: faster where the heads need more than one
  // wave of the unlimited kernel, slower where they do not (H200, B 8, T 4096: 512 heads 4.75 vs
  // 5.01 ms, 96 heads 1.82 vs 1.59 ms).
  constexpr int kDense = 512 / ScanDims<N>::kThreads;
  int resident = 0;
  RWKV_CUDA_CHECK(cudaFuncSetAttribute(wkv7_scan_kernel<N, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       scan_bytes));
  RWKV_CUDA_CHECK(cudaFuncSetAttribute(wkv7_scan_kernel<N, kDense>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       scan_bytes));
  RWKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, wkv7_scan_kernel<N, 1>,
                                                                ScanDims<N>::kThreads, scan_bytes));
  const bool dense = size_t(p.B) * p.H > size_t(resident) * size_t(ctx.sms);
  const auto scan = dense ? wkv7_scan_kernel<N, kDense> : wkv7_scan_kernel<N, 1>;
  for (int c0 = 0; c0 < chunks; c0 += span) {
    const int count = std::min(span, chunks - c0);
    wkv7_prepare_kernel<N><<<dim3(count, p.H, p.B), kPrepareThreads, prepare_bytes, ctx.stream>>>(p, c0, span,
                                                                                                  scratch);
    scan<<<dim3(p.H, p.B), ScanDims<N>::kThreads, scan_bytes, ctx.stream>>>(p, c0, count, span, chunks, scratch);
  }
}

}  // namespace

void wkv7_chunked_forward(Context& ctx, const Wkv7Train& p) {
  if (p.N == 32) {
    forward<32>(ctx, p);
  } else if (p.N == 64) {
    forward<64>(ctx, p);
  } else {
    fail("CUDA wkv7 chunked: head size ", p.N, " is not supported (32 or 64)");
  }
  RWKV_CUDA_LAUNCHED("wkv7_chunked_forward");
}

}  // namespace rwkv::cuda
