// The backward of WKV-7 for training in its chunked form (spec §4.5; the fp64 plain-loop twin is
// ops/train/wkv7_chunked.cpp, whose header derives every product used here), on tensor cores; the
// forward is wkv7_chunked_forward.cu. One block of 16 warps per (sequence, head) walks the chunks
// of 16 rows from the last. Within a chunk every step is a handful of small matrix products
// (mma_tf32.cuh) between shared-memory operands, spread over the warps as 16×8 tiles, with one
// barrier between dependent steps. Per chunk, with λ the log-decays and G = cumsum λ: the
// forward's products up to SA = U + W S₀ᵀ from the saved state before the chunk S₀, then the
// reference's reverse-mode products, and the state gradient carried to the chunk before:
//   ∂S₀ = ∂S diag(e^{G_L}) + (B⊙F ∂Sᵀ)ᵀ W + ∂Yᵀ(A_rb W + ER)
// Products take TF32 operands (3xTF32 where it matters: kExact). Document resets are not handled
// here (wkv7_train.cu keeps the sequential kernels for them).
#include "ops/cuda/wkv7_chunked.h"
#include "ops/cuda/wkv7_chunked_common.cuh"

namespace rwkv::cuda {
namespace {

using namespace wkv7c;
constexpr int kWarps = 16, kThreads = 32 * kWarps;

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

// Asks L2 for the next chunk's rows (r, k, v, a, b, z, ∂y: one 128-byte line per row for N = 64)
// and the saved state before it, while this chunk's products run: a block per SM has nothing
// else to hide those round trips behind.
template <int N>
__device__ __forceinline__ void prefetch_chunk(const Wkv7Train& p, const Wkv7TrainGrads& g, const ChunkRows& cr,
                                               const float* s0) {
  int i = threadIdx.x;
  if (i < 7 * kL) {
    const int a = i / kL, t = i % kL;
    const bf16* rows = a == 0 ? p.r : a == 1 ? p.k : a == 2 ? p.v : a == 3 ? p.a : a == 4 ? p.b : a == 5 ? p.z : g.dy;
    if (t < cr.rows) prefetch_l2(rows + cr.at(t, 0));
    return;
  }
  i -= 7 * kL;
  if (s0 && i < N * N / 32) prefetch_l2(s0 + 32 * i);
}

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
  state_in<N, kThreads>(g.dsT ? g.dsT + state_offset<N>(head) : nullptr, m.dS);
  for (int c = chunks - 1; c >= 0; --c) {
    const ChunkRows cr{size_t(seq) * T * C + size_t(h) * N, C, c * kL, min(kL, T - c * kL)};
    __syncthreads();  // the chunk after is done; dS holds ∂L/∂(the state after this chunk)
    load_inputs<N, kThreads>(p, cr, m.ER, m.K, m.B, m.EA, m.V, m.lam);
    load_rows<N, kThreads>(g.dy, m.dY, cr);
    if (c > 0) {
      state_in_transposed<N, kThreads>(ckpt + size_t(c - 1) * N * N, m.S0);
    } else {
      state_in<N, kThreads>(p.s0 ? p.s0 + state_offset<N>(head) : nullptr, m.S0);
    }
    if (c > 0) {
      const ChunkRows next{cr.base, C, (c - 1) * kL, kL};
      prefetch_chunk<N>(p, g, next, c > 1 ? ckpt + size_t(c - 2) * N * N : nullptr);
    }
    __syncthreads();
    factorise<N, kThreads>(m.ER, m.EA, m.EK, m.EB, m.KF, m.BF, m.K, m.B, m.lam, m.eGL);
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
      const Elements<N, kThreads> el;
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
  // The rows are read up to 8 values (16 bytes) at a time.
  return aligned16({p.r, p.z, p.k, p.v, p.a, p.b});
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
