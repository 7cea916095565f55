// SIMD WKV-7 forward and backward for training (spec §4.4), compiled once per instruction set
// by Highway and picked at run time (DESIGN §6). Plain-loop twin: ops/train/wkv7.cpp, whose
// contract and checkpointing scheme this follows exactly.
//
// Layout. The state is value-major: row i (value i) holds the N keys contiguously, and every
// operation is a dot of a row with a key vector (sa_i = S_i·a, y_i = S_i·r, ∂v_i = dS_i·k,
// ∂sa_i = dS_i·b), an update of a row by key vectors, or a sum over rows into a key vector
// (∂r = Sᵀ∂y, ∂k = dSᵀv, ...). So the key index j is the vector index. Within a step the rows
// are independent of each other: they go a block of a few at a time, which shares the loads of
// the key vectors and of the key-indexed sums between the rows, and gives the core independent
// chains of additions to overlap (a row's update waits on its own dot: a chain of dependent
// additions, then a horizontal sum). Measured: 1 row per block ran 2× slower than 4; starting
// the next block's dot during this block's update (a software pipeline) gained nothing, the
// out-of-order core already overlaps consecutive blocks.
//
// Any N: internally rows are Np = N rounded up to the vector length long, the padding lanes of
// the state are 0 and those of the key vectors 0 (d: 1), so they stay 0 and add nothing to any
// dot. Inputs are copied into padded buffers once per step (6N floats against ~9N² flops);
// when N is a multiple of the vector length and the caller's state is vector-aligned, the
// forward updates it in place.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/cpu/simd_wkv7_train.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must follow foreach_target.h.
#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "ops/cpu/wkv7_train.h"

HWY_BEFORE_NAMESPACE();
namespace rwkv::ops::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
namespace {  // helpers: internal to this file's copy for each target

// Rows per block. Measured (AVX2, N = 64, 12 heads of T = 512, best of interleaved runs on a
// busy 2-core machine): forward 2 / 4 / 8 rows 1.08 / 0.92 / 1.07 µs per step (8 run out of
// registers); backward 1 / 2 / 4 rows 3.24 / 2.76 / 2.69 µs.
constexpr int kRowsForward = 4;
constexpr int kRowsBackward = 4;

// Steps ahead whose rows are prefetched (a step takes ~1 µs, well over memory's latency).
constexpr size_t kAhead = 4;

template <int N_>
using Int = std::integral_constant<int, N_>;

HWY_INLINE float ReduceSum(DF d, VF v) { return hn::GetLane(hn::SumOfLanes(d, v)); }

// Per-thread scratch floats, aligned to the vector size and reused across calls (and heads).
float* Wkv7TrainScratch(size_t n) {
  thread_local hwy::AlignedFreeUniquePtr<float[]> buf;
  thread_local size_t size = 0;
  if (size < n) {
    buf = hwy::AllocateAligned<float>(n);
    size = n;
  }
  return buf.get();
}

// Rounds N up to the vector length.
HWY_INLINE size_t Padded(size_t N) {
  const size_t NL = hn::Lanes(DF());
  return (N + NL - 1) / NL * NL;
}

// dst[0, n) = src[0, n), then dst[n, Np) = pad.
HWY_INLINE void CopyPadded(const float* src, size_t n, float* dst, size_t Np, float pad) {
  const DF df;
  const size_t NL = hn::Lanes(df);
  size_t j = 0;
  for (; j + NL <= n; j += NL) hn::StoreU(hn::LoadU(df, src + j), df, dst + j);
  for (; j < n; ++j) dst[j] = src[j];
  for (; j < Np; ++j) dst[j] = pad;
}

// `rows` rows of n floats from row stride `from` to row stride `to`; columns [n, to) of the
// destination (padding, when to > n) become 0.
void CopyRows(const float* src, size_t from, float* dst, size_t to, size_t rows, size_t n) {
  if (from == n && to == n) {
    std::memcpy(dst, src, rows * n * sizeof(float));
    return;
  }
  for (size_t i = 0; i < rows; ++i) CopyPadded(src + i * from, n, dst + i * to, to, 0.f);
}

// dst[0, n) = src[0, n) with non-temporal stores where dst is vector-aligned. For checkpoints:
// only the backward reads them, long after (other layers run in between), so they skip the
// cache rather than evict the state, and skip the read of lines about to be overwritten
// (measured: the forward 1.07× faster than with memcpy, AVX2, N = 64).
void StreamCopy(const float* src, float* dst, size_t n) {
  const DF df;
  const size_t NL = hn::Lanes(df);
  size_t i = 0;
  for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % (NL * sizeof(float)) != 0; ++i)
    dst[i] = src[i];
  for (; i + NL <= n; i += NL) hn::Stream(hn::LoadU(df, src + i), df, dst + i);
  for (; i < n; ++i) dst[i] = src[i];
}

// Prefetches N floats at p + o for each non-null p. The head's rows sit a whole [C] row apart,
// a stride the hardware prefetchers do not follow across pages: inputs would wait on memory,
// and so would outputs, whose lines a store must read first (measured: without it forward and
// backward 1.1–1.2× slower, AVX2, 12 heads of 64).
HWY_INLINE void PrefetchRows(std::initializer_list<const float*> rows, size_t o, size_t N) {
  for (const float* p : rows) {
    if (p == nullptr) continue;
    for (size_t i = 0; i < N; i += 64 / sizeof(float)) hwy::Prefetch(p + o + i);
  }
}

// One step's key vectors, padded to Np: d = e^w (padding 1), k, a, b, r (padding 0).
struct KeyVectors {
  float *d, *k, *a, *b, *r;
};

// Carves a KeyVectors out of 5·Np floats at p.
HWY_INLINE KeyVectors KeyVectorsAt(float* p, size_t Np) {
  return {p, p + Np, p + 2 * Np, p + 3 * Np, p + 4 * Np};
}

// Fills `kv` from the head's row at offset o.
void LoadKeyVectors(const train::Wkv7Train<float>& h, size_t o, size_t N, size_t Np,
                    const KeyVectors& kv) {
  const DF df;
  const size_t NL = hn::Lanes(df);
  CopyPadded(h.w + o, N, kv.d, Np, 0.f);  // padding w = 0 → d = 1
  for (size_t j = 0; j < Np; j += NL) hn::Store(hn::Exp(df, hn::Load(df, kv.d + j)), df, kv.d + j);
  CopyPadded(h.k + o, N, kv.k, Np, 0.f);
  CopyPadded(h.a + o, N, kv.a, Np, 0.f);
  CopyPadded(h.b + o, N, kv.b, Np, 0.f);
  CopyPadded(h.r + o, N, kv.r, Np, 0.f);
}

// Calls block(Int<R>, i) for the rows [i, i + R) of N, then block(Int<1>, i) for the rest.
template <int R, class Block>
HWY_INLINE void ForRowBlocks(size_t N, const Block& block) {
  size_t i = 0;
  for (; i + R <= N; i += R) block(Int<R>(), i);
  for (; i < N; ++i) block(Int<1>(), i);
}

// dots[m] = rows[m]·x for the R rows at `rows` (row stride Np).
template <int R>
HWY_INLINE void RowDots(const float* rows, size_t Np, const float* x, float* dots) {
  const DF df;
  const size_t NL = hn::Lanes(df);
  VF acc[R];
  for (int m = 0; m < R; ++m) acc[m] = hn::Zero(df);
  for (size_t j = 0; j < Np; j += NL) {
    const VF xj = hn::Load(df, x + j);
    for (int m = 0; m < R; ++m) acc[m] = hn::MulAdd(hn::LoadU(df, rows + m * Np + j), xj, acc[m]);
  }
  for (int m = 0; m < R; ++m) dots[m] = ReduceSum(df, acc[m]);
}

// One recurrence step (spec §2.4) of the R rows at `prev` into `next` (the same rows or others):
// sa_i = S_i·a into sa[0, R), then S_i ← S_i⊙d + sa_i b + v_i k. The R updated vectors at column
// j go to use(j, s) while in registers, for the caller's read-out.
template <int R, class Use>
HWY_INLINE void StepRows(const float* prev, float* next, size_t Np, const KeyVectors& kv,
                         const float* v, float* sa, const Use& use) {
  const DF df;
  const size_t NL = hn::Lanes(df);
  RowDots<R>(prev, Np, kv.a, sa);
  VF sam[R], vm[R];
  for (int m = 0; m < R; ++m) {
    sam[m] = hn::Set(df, sa[m]);
    vm[m] = hn::Set(df, v[m]);
  }
  for (size_t j = 0; j < Np; j += NL) {
    const VF dj = hn::Load(df, kv.d + j), bj = hn::Load(df, kv.b + j), kj = hn::Load(df, kv.k + j);
    VF s[R];
    for (int m = 0; m < R; ++m) {
      s[m] = hn::Mul(hn::LoadU(df, prev + m * Np + j), dj);
      s[m] = hn::MulAdd(sam[m], bj, s[m]);
      s[m] = hn::MulAdd(vm[m], kj, s[m]);
      hn::StoreU(s[m], df, next + m * Np + j);
    }
    use(j, s);
  }
}

}  // namespace

void Wkv7TrainForward(const train::Wkv7Train<float>& h) {
  const DF df;
  const size_t N = size_t(h.N), Np = Padded(N), NN = N * N, st = size_t(h.stride);
  float* buf = Wkv7TrainScratch(5 * Np + N * Np);
  const KeyVectors kv = KeyVectorsAt(buf, Np);
  // The caller's state in place when its rows need no padding and it is vector-aligned, else
  // an aligned padded copy (measured: a state 16 bytes off alignment, where half the vectors
  // straddle two cache lines, made the forward up to 1.2× slower, AVX2).
  const bool in_place =
      Np == N && reinterpret_cast<uintptr_t>(h.S) % (hn::Lanes(df) * sizeof(float)) == 0;
  float* S = in_place ? h.S : buf + 5 * Np;
  if (S != h.S) CopyRows(h.S, N, S, Np, N, N);
  for (size_t t = 0; t < size_t(h.T); ++t) {
    if (t % size_t(h.chunk) == 0) {
      float* checkpoint = h.checkpoints + t / size_t(h.chunk) * NN;
      if (Np == N) {  // rows without padding: one contiguous copy
        StreamCopy(S, checkpoint, NN);
      } else {
        CopyRows(S, Np, checkpoint, N, N, N);
      }
    }
    if (h.reset && h.reset[t]) std::fill(S, S + N * Np, 0.f);  // a new document
    const size_t o = t * st;
    if (t + kAhead < size_t(h.T))
      PrefetchRows({h.r, h.w, h.k, h.v, h.a, h.b, h.y}, o + kAhead * st, N);
    LoadKeyVectors(h, o, N, Np, kv);
    const float* v = h.v + o;
    float* y = h.y + o;
    // y_i = S_i·r with the updated row, while it is in registers.
    ForRowBlocks<kRowsForward>(N, [&](auto rows, size_t i) {
      constexpr int R = decltype(rows)::value;
      VF acc[R];
      for (int m = 0; m < R; ++m) acc[m] = hn::Zero(df);
      float sa[R];
      StepRows<R>(S + i * Np, S + i * Np, Np, kv, v + i, sa, [&](size_t j, VF* s) {
        const VF rj = hn::Load(df, kv.r + j);
        for (int m = 0; m < R; ++m) acc[m] = hn::MulAdd(s[m], rj, acc[m]);
      });
      for (int m = 0; m < R; ++m) y[i + size_t(m)] = ReduceSum(df, acc[m]);
    });
  }
  if (S != h.S) CopyRows(S, Np, h.S, N, N, N);
  hwy::FlushStream();  // the streamed checkpoints, before another thread may read them
}

namespace {

// ---------------------------------------------------------------------------------------------
// Backward (spec §4.4). Per chunk, newest first: recompute the chunk's states from its
// checkpoint (and ∂r_t = S_tᵀ∂y_t on the way, while S_t is in registers: dy is known up front),
// then walk the steps back. Each step is two passes over each row of dS, which is all a row
// needs (rows of dS, like rows of S, never mix):
//   A: dS_i += ∂y_i r ;  ∂k += v_i dS_i ; ∂b += sa_i dS_i ; ∂d += dS_i ⊙ S_{t−1,i} ;
//      ∂v_i = dS_i·k ; ∂sa_i = dS_i·b
//   B: ∂a += ∂sa_i S_{t−1,i} ;  dS_i ← dS_i ⊙ d + ∂sa_i a
// B needs the whole of A's ∂sa_i. The key-indexed sums over rows (∂k, ∂b, ∂d, ∂a, ∂r) live in
// padded buffers, loaded and stored once per block of rows.

// Key-indexed gradient sums of one step, padded to Np.
struct KeyGrads {
  float *r, *k, *b, *d, *a;
};

// Passes A and B of one backward step for the R rows at dS and prev (their S_{t−1}); v, g (∂y),
// sa: the rows' v_t, ∂y_t, sa_t; dv: the rows' ∂v_t (written).
template <int R>
HWY_INLINE void BackwardRows(float* dS, const float* prev, size_t Np, const KeyVectors& kv,
                             const float* v, const float* g, const float* sa, float* dv,
                             const KeyGrads& kg) {
  const DF df;
  const size_t NL = hn::Lanes(df);
  VF gm[R], vm[R], sam[R], acc_v[R], acc_sa[R];
  for (int m = 0; m < R; ++m) {
    gm[m] = hn::Set(df, g[m]);
    vm[m] = hn::Set(df, v[m]);
    sam[m] = hn::Set(df, sa[m]);
    acc_v[m] = acc_sa[m] = hn::Zero(df);
  }
  for (size_t j = 0; j < Np; j += NL) {
    const VF rj = hn::Load(df, kv.r + j), kj = hn::Load(df, kv.k + j), bj = hn::Load(df, kv.b + j);
    VF gk = hn::Load(df, kg.k + j), gb = hn::Load(df, kg.b + j), gd = hn::Load(df, kg.d + j);
    for (int m = 0; m < R; ++m) {
      float* row = dS + m * Np + j;
      const VF ds = hn::MulAdd(gm[m], rj, hn::LoadU(df, row));
      hn::StoreU(ds, df, row);
      gk = hn::MulAdd(vm[m], ds, gk);
      gb = hn::MulAdd(sam[m], ds, gb);
      gd = hn::MulAdd(ds, hn::LoadU(df, prev + m * Np + j), gd);
      acc_v[m] = hn::MulAdd(ds, kj, acc_v[m]);
      acc_sa[m] = hn::MulAdd(ds, bj, acc_sa[m]);
    }
    hn::Store(gk, df, kg.k + j);
    hn::Store(gb, df, kg.b + j);
    hn::Store(gd, df, kg.d + j);
  }
  VF dsa[R];
  for (int m = 0; m < R; ++m) {
    dv[m] = ReduceSum(df, acc_v[m]);
    dsa[m] = hn::Set(df, ReduceSum(df, acc_sa[m]));
  }
  for (size_t j = 0; j < Np; j += NL) {
    const VF dj = hn::Load(df, kv.d + j), aj = hn::Load(df, kv.a + j);
    VF ga = hn::Load(df, kg.a + j);
    for (int m = 0; m < R; ++m) {
      float* row = dS + m * Np + j;
      ga = hn::MulAdd(dsa[m], hn::LoadU(df, prev + m * Np + j), ga);
      hn::StoreU(hn::MulAdd(dsa[m], aj, hn::Mul(hn::LoadU(df, row), dj)), df, row);
    }
    hn::Store(ga, df, kg.a + j);
  }
}

// dst[0, n) = src[0, n) (⊙ scale[0, n) when given).
HWY_INLINE void CopyOut(const float* src, const float* scale, float* dst, size_t n) {
  const DF df;
  const size_t NL = hn::Lanes(df);
  size_t j = 0;
  for (; j + NL <= n; j += NL) {
    VF x = hn::Load(df, src + j);
    if (scale) x = hn::Mul(x, hn::Load(df, scale + j));
    hn::StoreU(x, df, dst + j);
  }
  for (; j < n; ++j) dst[j] = scale ? src[j] * scale[j] : src[j];
}

}  // namespace

void Wkv7TrainBackward(const train::Wkv7Train<float>& h, const float* dy, const float* dS_T,
                       float* dr, float* dw, float* dk, float* dv, float* da, float* db,
                       float* dS0) {
  const DF df;
  const size_t N = size_t(h.N), Np = Padded(N), NN = N * N, SP = N * Np, st = size_t(h.stride);
  const size_t chunk = size_t(h.chunk), T = size_t(h.T);
  float* states = Wkv7TrainScratch((chunk + 3) * SP + 5 * chunk * Np + 5 * Np + chunk * N);
  // Every buffer but the last starts at a multiple of Np floats: aligned for vector loads.
  float* dS = states + (chunk + 1) * SP;  // ∂L/∂S_t, padded rows
  float* zeros = dS + SP;                 // S_{t−1} of a row that starts a new document
  float* keys = zeros + SP;               // (chunk, 5·Np): each step's KeyVectors
  float* grads = keys + 5 * chunk * Np;   // 5·Np: KeyGrads of the current step
  float* sas = grads + 5 * Np;            // (chunk, N): sa_t of each step of the chunk
  const KeyGrads kg{grads, grads + Np, grads + 2 * Np, grads + 3 * Np, grads + 4 * Np};
  if (h.reset) std::fill(zeros, zeros + SP, 0.f);
  if (dS_T) {
    CopyRows(dS_T, N, dS, Np, N, N);
  } else {
    std::fill(dS, dS + SP, 0.f);
  }
  const size_t n_chunks = (T + chunk - 1) / chunk;
  for (size_t c = n_chunks; c-- > 0;) {
    const size_t t0 = c * chunk, len = std::min(chunk, T - t0);
    CopyRows(h.checkpoints + c * NN, N, states, Np, N, N);
    for (size_t s = 0; s < len; ++s) {
      const size_t o = (t0 + s) * st;
      if (s + kAhead < len)
        PrefetchRows({h.r, h.w, h.k, h.v, h.a, h.b, dy, dr}, o + kAhead * st, N);
      const KeyVectors kv = KeyVectorsAt(keys + s * 5 * Np, Np);
      LoadKeyVectors(h, o, N, Np, kv);
      const bool restart = h.reset && h.reset[t0 + s];
      const float *prev = restart ? zeros : states + s * SP, *v = h.v + o, *g = dy + o;
      float *next = states + (s + 1) * SP, *sa = sas + s * N;
      std::fill(kg.r, kg.r + Np, 0.f);
      // ∂r_t += ∂y_i S_{t,i} with the updated row, while it is in registers.
      ForRowBlocks<kRowsForward>(N, [&](auto rows, size_t i) {
        constexpr int R = decltype(rows)::value;
        VF gm[R];
        for (int m = 0; m < R; ++m) gm[m] = hn::Set(df, g[i + size_t(m)]);
        StepRows<R>(prev + i * Np, next + i * Np, Np, kv, v + i, sa + i, [&](size_t j, VF* x) {
          VF gr = hn::Load(df, kg.r + j);
          for (int m = 0; m < R; ++m) gr = hn::MulAdd(gm[m], x[m], gr);
          hn::Store(gr, df, kg.r + j);
        });
      });
      CopyOut(kg.r, nullptr, dr + o, N);
    }
    for (size_t s = len; s-- > 0;) {
      const size_t o = (t0 + s) * st;
      // The previous chunk's rows (one of its steps per step of this walk), this walk's outputs.
      if (t0 >= chunk)
        PrefetchRows({h.r, h.w, h.k, h.v, h.a, h.b, dy, dr}, (t0 - chunk + s) * st, N);
      if (s >= kAhead) PrefetchRows({dk, db, dw, da, dv}, o - kAhead * st, N);
      const KeyVectors kv = KeyVectorsAt(keys + s * 5 * Np, Np);
      const bool restart = h.reset && h.reset[t0 + s];
      const float *prev = restart ? zeros : states + s * SP, *v = h.v + o, *g = dy + o,
                  *sa = sas + s * N;
      std::fill(kg.k, kg.k + 4 * Np, 0.f);  // k, b, d, a
      ForRowBlocks<kRowsBackward>(N, [&](auto rows, size_t i) {
        BackwardRows<decltype(rows)::value>(dS + i * Np, prev + i * Np, Np, kv, v + i, g + i,
                                            sa + i, dv + o + i, kg);
      });
      CopyOut(kg.k, nullptr, dk + o, N);
      CopyOut(kg.b, nullptr, db + o, N);
      CopyOut(kg.d, kv.d, dw + o, N);  // ∂/∂w = ∂/∂d · d (d = e^w)
      CopyOut(kg.a, nullptr, da + o, N);
      if (restart) std::fill(dS, dS + SP, 0.f);  // S_{t−1} was not used: no gradient into it
    }
  }
  if (dS0) CopyRows(dS, Np, dS0, N, N, N);
}

}  // namespace rwkv::ops::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace rwkv::ops::cpu {
HWY_EXPORT(Wkv7TrainForward);
HWY_EXPORT(Wkv7TrainBackward);

void wkv7_train_forward(const train::Wkv7Train<float>& head) {
  HWY_DYNAMIC_DISPATCH(Wkv7TrainForward)(head);
}
void wkv7_train_backward(const train::Wkv7Train<float>& head, const float* dy, const float* dS_T,
                         float* dr, float* dw, float* dk, float* dv, float* da, float* db,
                         float* dS0, float* /*scratch*/) {
  HWY_DYNAMIC_DISPATCH(Wkv7TrainBackward)(head, dy, dS_T, dr, dw, dk, dv, da, db, dS0);
}
}  // namespace rwkv::ops::cpu
#endif
