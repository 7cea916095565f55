// SIMD RWKV-4 and RWKV-5/6 WKV kernels, compiled once per instruction set by Highway and picked at
// run time (DESIGN §6). Plain-loop twins: ops/ref/wkv4.cpp, ops/ref/wkv6.cpp.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/cpu/simd_wkv46.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must follow foreach_target.h.
#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

#include <algorithm>
#include <type_traits>

#include "ops/cpu/simd.h"
#include "ops/cpu/simd_wkv46.h"

HWY_BEFORE_NAMESPACE();
namespace rwkv::ops::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Tokens per chunk of the chunked WKV-6. The pair terms cost O(chunk) per token, the state's
// share O(1/chunk). Measured at T = 64, N = 64 (AVX2): 8 and 16 equal, 32 1.3× slower.
constexpr size_t kChunk6 = 16;

HWY_INLINE float Sum(DF d, VF v) { return hn::GetLane(hn::SumOfLanes(d, v)); }

// Scratch floats reused across calls on one thread (aligned to the vector size).
float* Scratch(size_t n) {
  thread_local hwy::AlignedFreeUniquePtr<float[]> buf;
  thread_local size_t size = 0;
  if (size < n) {
    buf = hwy::AllocateAligned<float>(n);
    size = n;
  }
  return buf.get();
}

// ---------------------------------------------------------------------------------------------
// RWKV-4 (spec §2.1, §3.1).

// One token for one vector of channels: returns wkv and advances the state (a, b, p). Of the two
// exponentials in each max-trick pair one is e^0 = 1, so each pair costs one Exp: e^{−|x−z|} goes
// to the smaller side.
HWY_INLINE VF Wkv4Step(DF d, VF w, VF u, VF k, VF v, VF& a, VF& b, VF& p) {
  const VF one = hn::Set(d, 1.f);
  // Output: q = max(p, u + k); e1 = e^{p−q}, e2 = e^{u+k−q}.
  VF diff = hn::Sub(p, hn::Add(u, k));
  VF e = hn::Exp(d, hn::Neg(hn::Abs(diff)));
  auto state_wins = hn::Ge(diff, hn::Zero(d));
  VF e1 = hn::IfThenElse(state_wins, one, e), e2 = hn::IfThenElse(state_wins, e, one);
  const VF y = hn::Div(hn::MulAdd(e1, a, hn::Mul(e2, v)), hn::MulAdd(e1, b, e2));
  // State: q′ = max(p + w, k); the decayed state and the new token share it.
  const VF pw = hn::Add(p, w);
  diff = hn::Sub(pw, k);
  e = hn::Exp(d, hn::Neg(hn::Abs(diff)));
  state_wins = hn::Ge(diff, hn::Zero(d));
  e1 = hn::IfThenElse(state_wins, one, e);
  e2 = hn::IfThenElse(state_wins, e, one);
  a = hn::MulAdd(e1, a, hn::Mul(e2, v));
  b = hn::MulAdd(e1, b, e2);
  p = hn::Max(pw, k);
  return y;
}

// One token for one vector of channels, the state in memory.
HWY_INLINE void Wkv4Lanes(DF d, const float* k, const float* v, float* y, const float* w,
                          const float* u, float* aa, float* bb, float* pp) {
  VF a = hn::LoadU(d, aa), b = hn::LoadU(d, bb), p = hn::LoadU(d, pp);
  const VF out =
      Wkv4Step(d, hn::LoadU(d, w), hn::LoadU(d, u), hn::LoadU(d, k), hn::LoadU(d, v), a, b, p);
  hn::StoreU(out, d, y);
  hn::StoreU(a, d, aa);
  hn::StoreU(b, d, bb);
  hn::StoreU(p, d, pp);
}

// Token after token, all channels of a token before the next: the rows stream through the cache
// in order and the channel vectors are independent work for the core (a scan of one vector over
// T would wait on its own exponentials). The last channels that do not fill a vector go through
// a copy padded with harmless values (k = v = 0, zero state) that is never written back.
void Wkv4(const Wkv4Seq& s) {
  const DF d;
  const size_t NL = hn::Lanes(d), C = size_t(s.channels), stride = size_t(s.stride);
  const size_t full = C / NL * NL, n = C - full;
  float* tail = Scratch(8 * NL);
  float *k = tail, *v = k + NL, *y = v + NL, *w = y + NL, *u = w + NL, *aa = u + NL, *bb = aa + NL,
        *pp = bb + NL;
  if (n > 0) {
    std::fill(tail, tail + 8 * NL, 0.f);
    std::fill(pp, pp + NL, -1e30f);
    std::copy(s.w + full, s.w + C, w);
    std::copy(s.u + full, s.u + C, u);
    std::copy(s.aa + full, s.aa + C, aa);
    std::copy(s.bb + full, s.bb + C, bb);
    std::copy(s.pp + full, s.pp + C, pp);
  }
  // Locals, so that the compiler need not reload them after every store.
  const float *sk = s.k, *sv = s.v, *sw = s.w, *su = s.u;
  float *sy = s.y, *saa = s.aa, *sbb = s.bb, *spp = s.pp;
  for (size_t t = 0; t < size_t(s.T); ++t) {
    const size_t o = t * stride;
    for (size_t c = 0; c < full; c += NL)
      Wkv4Lanes(d, sk + o + c, sv + o + c, sy + o + c, sw + c, su + c, saa + c, sbb + c, spp + c);
    if (n > 0) {
      std::copy(sk + o + full, sk + o + C, k);
      std::copy(sv + o + full, sv + o + C, v);
      Wkv4Lanes(d, k, v, y, w, u, aa, bb, pp);
      std::copy(y, y + n, sy + o + full);
    }
  }
  if (n > 0) {
    std::copy(aa, aa + n, s.aa + full);
    std::copy(bb, bb + n, s.bb + full);
    std::copy(pp, pp + n, s.pp + full);
  }
}

// ---------------------------------------------------------------------------------------------
// RWKV-5/6 (spec §2.2, §2.3, §4.3). S is key-major: row i (key) holds N values, so every update
// is an axpy over a contiguous row and the value index j is the vector index.

// One token, JV vectors of values at column j: y_j = β v_j + Σ_i r_i S_ij with β = Σ_i r_i u_i k_i,
// and S_ij ← d_i S_ij + k_i v_j, one pass over the rows.
template <int JV>
HWY_INLINE void Wkv6TokenTile(size_t N, size_t j, const float* r, const float* decay,
                              const float* k, const float* v, float beta, float* S, float* y) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  VF vv[JV], acc[JV];
  for (int q = 0; q < JV; ++q) {
    vv[q] = hn::LoadU(d, v + j + q * NL);
    acc[q] = hn::Mul(hn::Set(d, beta), vv[q]);
  }
  for (size_t i = 0; i < N; ++i) {
    const VF ri = hn::Set(d, r[i]), di = hn::Set(d, decay[i]), ki = hn::Set(d, k[i]);
    float* Si = S + i * N + j;
    for (int q = 0; q < JV; ++q) {
      const VF s = hn::LoadU(d, Si + q * NL);
      acc[q] = hn::MulAdd(ri, s, acc[q]);
      hn::StoreU(hn::MulAdd(di, s, hn::Mul(ki, vv[q])), d, Si + q * NL);
    }
  }
  for (int q = 0; q < JV; ++q) hn::StoreU(acc[q], d, y + j + q * NL);
}

// Prefetches the N inputs r, w, k, v at row offset o.
HWY_INLINE void PrefetchRows(const Wkv6Head& h, size_t o, size_t N) {
  for (size_t i = 0; i < N; i += 64 / sizeof(float)) {
    hwy::Prefetch(h.r + o + i);
    hwy::Prefetch(h.w + o + i);
    hwy::Prefetch(h.k + o + i);
    hwy::Prefetch(h.v + o + i);
  }
}

// Tokens [t_begin, t_end) of the recurrent WKV-6 for one head. Needs N % lanes == 0.
void Wkv6Tokens(const Wkv6Head& h, size_t t_begin, size_t t_end) {
  const DF d;
  const size_t NL = hn::Lanes(d), N = size_t(h.N);
  HWY_ALIGN float decay[kMaxHeadSize];
  for (size_t t = t_begin; t < t_end; ++t) {
    const size_t o = t * size_t(h.stride);
    const float *r = h.r + o, *k = h.k + o, *v = h.v + o;
    VF bonus = hn::Zero(d);
    for (size_t i = 0; i < N; i += NL) {
      hn::Store(hn::Exp(d, hn::LoadU(d, h.w + o + i)), d, decay + i);
      bonus = hn::MulAdd(hn::Mul(hn::LoadU(d, r + i), hn::LoadU(d, h.u + i)), hn::LoadU(d, k + i),
                         bonus);
    }
    const float beta = Sum(d, bonus);
    // Rows sit a whole [C] row apart, a stride the hardware prefetchers do not follow across
    // pages: ask for the token after next now.
    if (t + 2 < t_end) PrefetchRows(h, o + 2 * size_t(h.stride), N);
    size_t j = 0;
    for (; j + 4 * NL <= N; j += 4 * NL) Wkv6TokenTile<4>(N, j, r, decay, k, v, beta, h.S, h.y + o);
    for (; j < N; j += NL) Wkv6TokenTile<1>(N, j, r, decay, k, v, beta, h.S, h.y + o);
  }
}

void Wkv6Recurrent(const Wkv6Head& h) { Wkv6Tokens(h, 0, size_t(h.T)); }

// Makes the compiler hold v in a register. Without it GCC folds the load of each B vector into
// every FMA that uses it (x86 FMAs take a memory operand): TR loads instead of one, and the tiles
// become bound by loads rather than FMAs (measured: the output tiles ran at 70% of FMA peak).
HWY_INLINE VF InRegister(VF v) {
#if HWY_ARCH_X86 && HWY_TARGET != HWY_EMU128 && HWY_TARGET != HWY_SCALAR
  auto raw = v.raw;
  asm("" : "+v"(raw));
  v.raw = raw;
#endif
  return v;
}

// acc[m][q] += Σ_{x<K} a[m·a_row + x·a_col] · B[x·b_row + q·lanes]: a TR×(JV·lanes) tile of a
// small matrix product, accumulators in registers, B read one row of JV vectors at a time.
template <int TR, int JV>
HWY_INLINE void MulAddTile(VF (&acc)[TR][JV], const float* a, size_t a_row, size_t a_col,
                           const float* B, size_t b_row, size_t K) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  for (size_t x = 0; x < K; ++x) {
    VF b[JV];
    for (int q = 0; q < JV; ++q) b[q] = InRegister(hn::LoadU(d, B + x * b_row + q * NL));
    for (int m = 0; m < TR; ++m) {
      const VF am = hn::Set(d, a[m * a_row + x * a_col]);
      for (int q = 0; q < JV; ++q) acc[m][q] = hn::MulAdd(am, b[q], acc[m][q]);
    }
  }
}

// Work arrays of one chunk (L ≤ kChunk6 tokens) of the chunked WKV-6.
struct Chunk6 {
  size_t L = 0;
  const float* v = nullptr;  // the chunk's first value row (row stride `stride`)
  size_t stride = 0;
  float* rt = nullptr;  // L×N: r_t ⊙ e^{Ĝ_t}
  float* kt = nullptr;  // L×N: k_s ⊙ e^{G_last − G_s}
  float* M = nullptr;   // kChunk6×kChunk6: intra-chunk matrix, zero above the diagonal
  float* eg = nullptr;  // N: e^{G_last}
};

// Rows t..t+TR of Y = [R̃ | M]·[S₀ ; V], columns j..j+JV·lanes.
template <int TR, int JV>
HWY_INLINE void ChunkOutputTile(const Chunk6& c, size_t N, size_t t, size_t j, const float* S0,
                                float* y, size_t y_stride) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  VF acc[TR][JV];
  for (int m = 0; m < TR; ++m)
    for (int q = 0; q < JV; ++q) acc[m][q] = hn::Zero(d);
  MulAddTile<TR, JV>(acc, c.rt + t * N, N, 1, S0 + j, N, N);
  // M is zero above the diagonal, so the rows below t + TR − 1 may run to its column.
  MulAddTile<TR, JV>(acc, c.M + t * kChunk6, kChunk6, 1, c.v + j, c.stride, t + TR);
  for (int m = 0; m < TR; ++m)
    for (int q = 0; q < JV; ++q) hn::StoreU(acc[m][q], d, y + (t + m) * y_stride + j + q * NL);
}

// Rows i..i+TR of S_next = diag(e^{G_last}) S₀ + K̃ᵀ V, columns j..j+JV·lanes, in place.
template <int TR, int JV>
HWY_INLINE void ChunkStateTile(const Chunk6& c, size_t N, size_t i, size_t j, float* S) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  VF acc[TR][JV];
  for (int m = 0; m < TR; ++m) {
    const VF e = hn::Set(d, c.eg[i + m]);
    for (int q = 0; q < JV; ++q) acc[m][q] = hn::Mul(e, hn::LoadU(d, S + (i + m) * N + j + q * NL));
  }
  MulAddTile<TR, JV>(acc, c.kt + i, 1, N, c.v + j, c.stride, c.L);
  for (int m = 0; m < TR; ++m)
    for (int q = 0; q < JV; ++q) hn::StoreU(acc[m][q], d, S + (i + m) * N + j + q * NL);
}

// Tiles of TR rows × JV vectors over rows [0, rows) and all N columns, leftovers in smaller
// tiles.
template <int N_>
using Int = std::integral_constant<int, N_>;

template <int TR, int JV, class Tile>
HWY_INLINE void ForTiles(size_t rows, size_t N, const Tile& tile) {
  const size_t NL = hn::Lanes(DF());
  size_t i = 0;
  for (; i + TR <= rows; i += TR) {
    size_t j = 0;
    for (; j + JV * NL <= N; j += JV * NL) tile(Int<TR>(), Int<JV>(), i, j);
    for (; j < N; j += NL) tile(Int<TR>(), Int<1>(), i, j);
  }
  for (; i < rows; ++i) {
    size_t j = 0;
    for (; j + JV * NL <= N; j += JV * NL) tile(Int<1>(), Int<JV>(), i, j);
    for (; j < N; j += NL) tile(Int<1>(), Int<1>(), i, j);
  }
}

// The share of channels [i, i + NV·lanes) in the pair terms of the intra-chunk matrix,
// M[t][s] += Σ_i r_t[i] k_s[i] Π_{s<τ<t} d_τ[i] for s < t: down column s, q = k_s ⊙ Π d_τ
// gains one decay per row, held in registers.
template <int NV>
HWY_INLINE void PairTerms(size_t L, size_t i, const float* r, const float* k, size_t stride,
                          const float* dd, size_t N, float* M) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  for (size_t s = 0; s + 1 < L; ++s) {
    VF q[NV];
    for (int v = 0; v < NV; ++v) q[v] = hn::LoadU(d, k + s * stride + i + v * NL);
    for (size_t t = s + 1; t < L; ++t) {
      VF dot = hn::Zero(d);
      for (int v = 0; v < NV; ++v) {
        dot = hn::MulAdd(hn::LoadU(d, r + t * stride + i + v * NL), q[v], dot);
        q[v] = hn::Mul(q[v], hn::Load(d, dd + t * N + i + v * NL));
      }
      M[t * kChunk6 + s] += Sum(d, dot);
    }
  }
}

// Chunked WKV-6 for one head (spec §4.3), chunks of kChunk6 tokens. Every decay factor is a
// product of per-step decays d = e^{λ} ≤ 1, never e^{−G}: the prefix e^{Ĝ_t}, the suffix
// e^{G_last − G_s} and, for the pair terms, e^{Ĝ_t − G_s} = Π_{s<τ<t} d_τ as a running product
// (§3.5: λ can be below −100 per step, and G_t − G_s in fp32 would lose digits to cancellation).
// Needs N % lanes == 0.
void Wkv6Chunked(const Wkv6Head& h) {
  const DF d;
  const size_t NL = hn::Lanes(d), N = size_t(h.N), stride = size_t(h.stride);
  constexpr size_t C = kChunk6;
  float* buf = Scratch(3 * C * N + C * C + 2 * N);
  float *dd = buf, *rt = dd + C * N, *kt = rt + C * N, *M = kt + C * N, *eg = M + C * C,
        *acc = eg + N;
  for (size_t t0 = 0; t0 < size_t(h.T); t0 += C) {
    const size_t L = std::min(C, size_t(h.T) - t0);
    // One or two tokens cost less one by one (measured: T = 1 ran 1.8×, T = 2 1.2× slower
    // chunked, T = 4 1.1× faster).
    if (L <= 2) {
      Wkv6Tokens(h, t0, t0 + L);
      continue;
    }
    const float *r = h.r + t0 * stride, *w = h.w + t0 * stride, *k = h.k + t0 * stride,
                *v = h.v + t0 * stride;
    // Decays, prefix products (eg ends as e^{G_last}), the bonus on the diagonal of M.
    std::fill(M, M + C * C, 0.f);
    for (size_t i = 0; i < N; i += NL) hn::Store(hn::Set(d, 1.f), d, eg + i);
    for (size_t t = 0; t < L; ++t) {
      // The next chunk's rows, while this one computes (see Wkv6Recurrent).
      if (t0 + C + t < size_t(h.T)) PrefetchRows(h, (t0 + C + t) * stride, N);
      VF bonus = hn::Zero(d);
      for (size_t i = 0; i < N; i += NL) {
        const VF dt = hn::Exp(d, hn::LoadU(d, w + t * stride + i)), e = hn::Load(d, eg + i);
        const VF rti = hn::LoadU(d, r + t * stride + i);
        hn::Store(dt, d, dd + t * N + i);
        hn::Store(hn::Mul(rti, e), d, rt + t * N + i);
        hn::Store(hn::Mul(e, dt), d, eg + i);
        const VF uk = hn::Mul(hn::LoadU(d, h.u + i), hn::LoadU(d, k + t * stride + i));
        bonus = hn::MulAdd(rti, uk, bonus);
      }
      M[t * C + t] = Sum(d, bonus);
    }
    // Suffix products.
    for (size_t i = 0; i < N; i += NL) hn::Store(hn::Set(d, 1.f), d, acc + i);
    for (size_t s = L; s-- > 0;) {
      for (size_t i = 0; i < N; i += NL) {
        const VF e = hn::Load(d, acc + i);
        hn::Store(hn::Mul(hn::LoadU(d, k + s * stride + i), e), d, kt + s * N + i);
        hn::Store(hn::Mul(e, hn::Load(d, dd + s * N + i)), d, acc + i);
      }
    }
    // The decayed pairs below the diagonal of M.
    size_t i = 0;
    for (; i + 8 * NL <= N; i += 8 * NL) PairTerms<8>(L, i, r, k, stride, dd, N, M);
    for (; i < N; i += NL) PairTerms<1>(L, i, r, k, stride, dd, N, M);
    const Chunk6 c{L, v, stride, rt, kt, M, eg};
    // Outputs first (they read S₀), then the state in place (row i reads only its own row of S₀).
    ForTiles<2, 4>(L, N, [&](auto tr, auto jv, size_t t, size_t j) {
      ChunkOutputTile<decltype(tr)::value, decltype(jv)::value>(c, N, t, j, h.S, h.y + t0 * stride,
                                                                stride);
    });
    ForTiles<2, 4>(N, N, [&](auto tr, auto jv, size_t i, size_t j) {
      ChunkStateTile<decltype(tr)::value, decltype(jv)::value>(c, N, i, j, h.S);
    });
  }
}

}  // namespace rwkv::ops::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace rwkv::ops::cpu {
HWY_EXPORT(Wkv4);
HWY_EXPORT(Wkv6Recurrent);
HWY_EXPORT(Wkv6Chunked);

void simd_wkv4(const Wkv4Seq& s) { HWY_DYNAMIC_DISPATCH(Wkv4)(s); }
void simd_wkv6_recurrent(const Wkv6Head& h) { HWY_DYNAMIC_DISPATCH(Wkv6Recurrent)(h); }
void simd_wkv6_chunked(const Wkv6Head& h) { HWY_DYNAMIC_DISPATCH(Wkv6Chunked)(h); }
}  // namespace rwkv::ops::cpu
#endif
