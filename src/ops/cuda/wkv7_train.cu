// WKV-7 forward and backward for training (see wkv7_train.h), the sequential kernels and the choice
// of form (the chunked kernels are wkv7_chunked_forward.cu and wkv7_chunked.cu). Forward: the
// sliced scan's shape (sliced_scan.cuh) while the heads are fewer than the SMs, else one thread per
// state row.
// Backward: one block per (sequence, head); thread i owns column i (key index)
// of S and of ∂S, and row i of ∂S too (∂v and ∂(S·a) are row sums, ∂r, ∂k, ∂b, ∂decay column
// sums), so every sum is over a thread's own registers against shared vectors.
#include "ops/cuda/wkv7_train.h"

#include <cstdlib>

#include "ops/cuda/rwkv7_math.cuh"
#include "ops/cuda/sliced_scan.cuh"
#include "ops/cuda/wkv7_chunked.h"

namespace rwkv::cuda {
namespace {

constexpr float kScale = -kRwkv7DecayScale;
using bf16 = __nv_bfloat16;

__device__ __forceinline__ float f(bf16 x) { return __bfloat162float(x); }

// A chunk's rows are loaded into shared memory at once (one barrier pair per 16 rows instead of
// per row: the loads' latency overlaps, as in RWKV-LM's v3 kernels).
constexpr int kChunk = kWkv7TrainChunk;

// Forward while the heads are fewer than the SMs (the 0.1B model's 12 heads × 8 sequences): the
// sliced scan's shape (sliced_scan.cuh): thread (row i, part) owns columns j = 8·c + part of row i
// of S in a block of 16 rows; a row's S·a and y are shuffle sums over its 8 parts. The next
// chunk's inputs load into registers while the current one computes.
template <int N>
__global__ void __launch_bounds__(ScanShape<N>::kThreads) wkv7_train_forward_kernel(Wkv7Train p, int chunks) {
  using Sh = ScanShape<N>;
  constexpr int K = Sh::kCols, P = Sh::kParts, kRows = Sh::kRows;
  static_assert(Sh::kChunk == kChunk, "checkpoints are every kChunk rows");
  const int h = blockIdx.x / Sh::kSlices, row0 = blockIdx.x % Sh::kSlices * kRows, seq = blockIdx.y;
  const int tid = threadIdx.x, part = tid % P, ri = tid / P, i = row0 + ri, H = p.H, T = p.T;
  const size_t head = size_t(seq) * H + h, C = size_t(H) * N, base = size_t(seq) * T * C + size_t(h) * N;
  const SliceRows<N> slice{T, base, C, row0};
  float s[K];
#pragma unroll
  for (int c = 0; c < K; ++c) s[c] = p.s0 ? p.s0[(head * N + i) * N + P * c + part] : 0.f;
  float* ckpt = p.checkpoints + head * chunks * N * N;
  // r, decay, k, a, b of each row of the chunk, permuted; the slice's v and y, in order.
  __shared__ __align__(16) float vec[5][kChunk][Sh::kLen];
  __shared__ float vs[kChunk][kRows], ys[kChunk][kRows];
  float pre[5][Sh::kPer], prev[Sh::kPerV];
  const Wkv7Chunk<N> chunk{T, base, C};
  const auto fetch = [&](int t0) {
    chunk.fetch(p.r, p.z, p.k, p.a, p.b, t0, pre);
    slice.fetch(p.v, t0, prev);
  };
  const auto put = [&]() {
    chunk.put(pre, vec, [](float z) { return __expf(kScale / (1.f + __expf(-z))); });
    slice.put(prev, vs);
  };
  const auto row = [&](int t0, int row) {
    if (p.reset && p.reset[size_t(seq) * T + t0 + row]) {  // a new document (uniform over the block)
#pragma unroll
      for (int c = 0; c < K; ++c) s[c] = 0.f;
    }
    const float2 sy = wkv7_sliced_row<N>(s, vec, row, vs[row][ri]);
    if (part == 0) {
      p.sa[base + size_t(t0 + row) * C + size_t(i)] = sy.x;
      ys[row][ri] = sy.y;
    }
  };
  const auto done = [&](int t0) {
    // The state after the chunk, stored transposed (column-major): the backward's thread i
    // reads column i contiguously.
    float* cp = ckpt + size_t(t0 / kChunk) * N * N + i;
#pragma unroll
    for (int c = 0; c < K; ++c) cp[size_t(P * c + part) * N] = s[c];
    slice.write(ys, p.y, t0);
  };
  walk_chunks<kChunk>(T, fetch, put, row, done);
  if (p.sT) {
#pragma unroll
    for (int c = 0; c < K; ++c) p.sT[(head * N + i) * N + P * c + part] = s[c];
  }
}

// Asks L2 for a chunk's rows of head h in the given bf16 arrays, in the fp32 array sa (if not
// null) and for the saved state `state` (if not null) while the current chunk computes: with two
// N-thread blocks per SM the next chunk's loads otherwise start from DRAM with nothing to hide
// them behind. row0: the chunk's first row's offset (elements) in every array; C: the row pitch.
template <int N, int A>
__device__ __forceinline__ void prefetch_rows(const bf16* const (&arrays)[A], const float* sa, size_t row0,
                                              size_t C, int rows, const float* state) {
  constexpr int kLines = (N * 2 + 127) / 128, kFloatLines = (N * 4 + 127) / 128;
  const int n = rows * (A * kLines + (sa ? kFloatLines : 0)), states = state ? N * N / 32 : 0;
  for (int q = threadIdx.x; q < n + states; q += N) {
    if (q >= n) {
      prefetch_l2(state + 32 * (q - n));
      continue;
    }
    const int t = q % rows, k = q / rows;
    const size_t at = row0 + size_t(t) * C;
    if (k < A * kLines) {
      prefetch_l2(arrays[k / kLines] + at + k % kLines * 64);
    } else {
      prefetch_l2(sa + at + (k - A * kLines) * 32);
    }
  }
}

// Forward with heads enough to fill the GPU: one block per (sequence, head), thread i owns row i of
// S (value index).
template <int N>
__global__ void __launch_bounds__(N, 2) wkv7_train_rows_forward_kernel(Wkv7Train p, int chunks) {
  const int h = blockIdx.x, seq = blockIdx.y, i = threadIdx.x, H = p.H, T = p.T;
  const size_t head = size_t(seq) * H + h;
  float s[N];
#pragma unroll
  for (int j = 0; j < N; ++j) s[j] = p.s0 ? p.s0[(head * N + i) * N + j] : 0.f;
  float* ckpt = p.checkpoints + head * chunks * N * N;
  __shared__ float rs[kChunk][N], ds[kChunk][N], ks[kChunk][N], vs[kChunk][N], as[kChunk][N], bs[kChunk][N];
  for (int t0 = 0; t0 < T; t0 += kChunk) {
    const int rows = min(kChunk, T - t0);
    __syncthreads();  // the previous chunk's rows are read
    const auto load = [&](int tt) {
      const size_t o = ((size_t(seq) * T + t0 + tt) * H + h) * N + i;
      rs[tt][i] = f(p.r[o]);
      ds[tt][i] = __expf(kScale / (1.f + __expf(-f(p.z[o]))));
      ks[tt][i] = f(p.k[o]);
      vs[tt][i] = f(p.v[o]);
      as[tt][i] = f(p.a[o]);
      bs[tt][i] = f(p.b[o]);
    };
    if (rows == kChunk) {  // unrolled: every load of the chunk in flight at once
#pragma unroll
      for (int tt = 0; tt < kChunk; ++tt) load(tt);
    } else {
      for (int tt = 0; tt < rows; ++tt) load(tt);
    }
    if (t0 + kChunk < T) {
      const bf16* const next[] = {p.r, p.z, p.k, p.v, p.a, p.b};
      prefetch_rows<N>(next, nullptr, ((size_t(seq) * T + t0 + kChunk) * H + h) * N, size_t(H) * N,
                       min(kChunk, T - t0 - kChunk), nullptr);
    }
    __syncthreads();
    for (int tt = 0; tt < rows; ++tt) {
      const size_t o = ((size_t(seq) * T + t0 + tt) * H + h) * N + i;
      if (p.reset && p.reset[size_t(seq) * T + t0 + tt]) {  // a new document (uniform over the block)
#pragma unroll
        for (int j = 0; j < N; ++j) s[j] = 0.f;
      }
      float sa[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int j = 0; j < N; ++j) sa[j % 4] += s[j] * as[tt][j];
      const float sat = (sa[0] + sa[1]) + (sa[2] + sa[3]);
      p.sa[o] = sat;
      const float vi = vs[tt][i];
      float y[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int j = 0; j < N; ++j) {
        s[j] = s[j] * ds[tt][j] + (sat * bs[tt][j] + vi * ks[tt][j]);  // one FMA on s's chain
        y[j % 4] += s[j] * rs[tt][j];
      }
      p.y[o] = __float2bfloat16_rn((y[0] + y[1]) + (y[2] + y[3]));
    }
    // The state after the chunk, stored transposed (column-major): the backward's thread i
    // reads column i contiguously.
    float* c = ckpt + size_t(t0 / kChunk) * N * N;
#pragma unroll
    for (int j = 0; j < N; ++j) c[j * N + i] = s[j];
  }
  if (p.sT) {
#pragma unroll
    for (int j = 0; j < N; ++j) p.sT[(head * N + i) * N + j] = s[j];
  }
}

template <int N>
__global__ void __launch_bounds__(N, 2) wkv7_train_backward_kernel(Wkv7Train p, Wkv7TrainGrads g,
                                                                   int chunks) {
  const int h = blockIdx.x, seq = blockIdx.y, i = threadIdx.x, H = p.H, T = p.T;
  const size_t head = size_t(seq) * H + h;
  const float* ckpt = p.checkpoints + head * chunks * N * N;
  float s[N], drow[N], dcol[N];  // S[:, i] (the state after the current row), ∂S[i, :], ∂S[:, i]
#pragma unroll
  for (int j = 0; j < N; ++j) {
    drow[j] = g.dsT ? g.dsT[(head * N + i) * N + j] : 0.f;
    dcol[j] = g.dsT ? g.dsT[(head * N + j) * N + i] : 0.f;
  }
  __shared__ float rs[kChunk][N], ds[kChunk][N], ks[kChunk][N], vs[kChunk][N], as[kChunk][N],
      bs[kChunk][N], dys[kChunk][N], sas[kChunk][N], sgs[kChunk][N];
  __shared__ float dsas[N];
  for (int c0 = (chunks - 1) * kChunk; c0 >= 0; c0 -= kChunk) {
    const int rows = min(kChunk, T - c0);
    __syncthreads();  // the previous chunk's rows are read
    const auto load = [&](int tt) {
      const size_t o = ((size_t(seq) * T + c0 + tt) * H + h) * N + i;
      const float sig = 1.f / (1.f + __expf(-f(p.z[o])));
      rs[tt][i] = f(p.r[o]);
      sgs[tt][i] = sig;
      ds[tt][i] = __expf(kScale * sig);
      ks[tt][i] = f(p.k[o]);
      vs[tt][i] = f(p.v[o]);
      as[tt][i] = f(p.a[o]);
      bs[tt][i] = f(p.b[o]);
      dys[tt][i] = f(g.dy[o]);
      sas[tt][i] = p.sa[o];
    };
    if (rows == kChunk) {
#pragma unroll
      for (int tt = 0; tt < kChunk; ++tt) load(tt);
    } else {
      for (int tt = 0; tt < rows; ++tt) load(tt);
    }
    if (c0 > 0) {  // the chunk before: its rows and the state after it
      const bf16* const next[] = {p.r, p.z, p.k, p.v, p.a, p.b, g.dy};
      prefetch_rows<N>(next, p.sa, ((size_t(seq) * T + c0 - kChunk) * H + h) * N, size_t(H) * N, kChunk,
                       ckpt + size_t(c0 / kChunk - 1) * N * N);
    }
    {  // the state after the chunk's last row
      const float4* c = reinterpret_cast<const float4*>(ckpt + size_t(c0 / kChunk) * N * N + size_t(i) * N);
#pragma unroll
      for (int j = 0; j < N; j += 4) {
        const float4 q = c[j / 4];
        s[j] = q.x, s[j + 1] = q.y, s[j + 2] = q.z, s[j + 3] = q.w;
      }
    }
    __syncthreads();
    for (int tt = rows - 1; tt >= 0; --tt) {
      const size_t o = ((size_t(seq) * T + c0 + tt) * H + h) * N + i;
      const float ri = rs[tt][i], di = ds[tt][i], ki = ks[tt][i], ai = as[tt][i], bi = bs[tt][i];
      const float dyi = dys[tt][i], sig = sgs[tt][i];
      // A reset row saw a zero state (uniform over the block).
      const bool restart = p.reset && p.reset[size_t(seq) * T + c0 + tt];
      // ∂r_i = Σ_j ∂y_j S_t[j, i]; then S_t → S_{t−1} by undoing the row's update.
      float dr = 0.f;
      const float inv = restart ? 0.f : 1.f / di;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        dr += s[j] * dys[tt][j];
        s[j] = (s[j] - ki * vs[tt][j] - bi * sas[tt][j]) * inv;
        drow[j] += dyi * rs[tt][j];
        dcol[j] += ri * dys[tt][j];
      }
      float dd = 0.f, dk = 0.f, db = 0.f, dv = 0.f, dsa = 0.f;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        dd += dcol[j] * s[j];
        dk += dcol[j] * vs[tt][j];
        db += dcol[j] * sas[tt][j];
        dv += drow[j] * ks[tt][j];
        dsa += drow[j] * bs[tt][j];
      }
      g.dr[o] = __float2bfloat16_rn(dr);
      g.dk[o] = __float2bfloat16_rn(dk);
      g.db[o] = __float2bfloat16_rn(db);
      g.dv[o] = __float2bfloat16_rn(dv);
      // decay = exp(kScale·σ(z)): ∂decay/∂z = decay·kScale·σ(1 − σ).
      g.dz[o] = __float2bfloat16_rn(dd * di * kScale * sig * (1.f - sig));
      __syncthreads();  // every thread has read dsas of the row before
      dsas[i] = dsa;
      __syncthreads();
      float da = 0.f;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        da += s[j] * dsas[j];
        drow[j] = drow[j] * ds[tt][j] + dsa * as[tt][j];
        dcol[j] = dcol[j] * di + ai * dsas[j];
      }
      g.da[o] = __float2bfloat16_rn(da);
      if (restart) {
        // Nothing flows into the state before a document; and that state (the previous
        // document's, after row tt − 1) is recomputed from the one before the chunk.
#pragma unroll
        for (int j = 0; j < N; ++j) drow[j] = dcol[j] = 0.f;
        if (tt > 0) {
          if (c0 > 0) {
            const float4* c = reinterpret_cast<const float4*>(ckpt + size_t(c0 / kChunk - 1) * N * N + size_t(i) * N);
#pragma unroll
            for (int j = 0; j < N; j += 4) {
              const float4 q = c[j / 4];
              s[j] = q.x, s[j + 1] = q.y, s[j + 2] = q.z, s[j + 3] = q.w;
            }
          } else {
#pragma unroll
            for (int j = 0; j < N; ++j) s[j] = p.s0 ? p.s0[(head * N + j) * N + i] : 0.f;
          }
          for (int u = 0; u < tt; ++u) {
            const bool zero = p.reset[size_t(seq) * T + c0 + u];
            const float du = ds[u][i], ku = ks[u][i], bu = bs[u][i];
#pragma unroll
            for (int j = 0; j < N; ++j) s[j] = (zero ? 0.f : s[j] * du) + (sas[u][j] * bu + vs[u][j] * ku);
          }
        }
      }
    }
  }
  if (g.ds0) {
#pragma unroll
    for (int j = 0; j < N; ++j) g.ds0[(head * N + i) * N + j] = drow[j];
  }
}

int chunks_of(int T) { return (T + kWkv7TrainChunk - 1) / kWkv7TrainChunk; }

}  // namespace

bool wkv7_train_chunked(const Context& ctx, const Wkv7Train& p, bool backward) {
  if (!wkv7_chunked_applies(p)) return false;
  switch (p.form) {
    case Wkv7Form::Sequential: return false;
    case Wkv7Form::Chunked: return true;
    case Wkv7Form::Auto: {
      static const bool forward_too = [] {
        const char* v = std::getenv("RWKV_CUDA_WKV7_CHUNKED_FORWARD");
        return !(v && v[0] == '0');
      }();
      return (backward || forward_too) && p.B * p.H <= ctx.sms;
    }
  }
  return false;
}

size_t wkv7_train_checkpoint_floats(int B, int T, int H, int N) {
  return size_t(B) * size_t(H) * size_t(chunks_of(T)) * size_t(N) * size_t(N);
}

void wkv7_train_forward(Context& ctx, const Wkv7Train& p) {
  if (p.B <= 0 || p.T <= 0) return;
  if (wkv7_train_chunked(ctx, p, false)) return wkv7_chunked_forward(ctx, p);
  const bool slices = scan_slices(p.B * p.H, ctx.sms);
  const int chunks = chunks_of(p.T);
#define RWKV_WKV7_FORWARD(n)                                                                         \
  case n:                                                                                            \
    if (slices) {                                                                                    \
      wkv7_train_forward_kernel<n><<<dim3(p.H * ScanShape<n>::kSlices, p.B), ScanShape<n>::kThreads, 0, \
                                     ctx.stream>>>(p, chunks);                                       \
    } else {                                                                                         \
      wkv7_train_rows_forward_kernel<n><<<dim3(p.H, p.B), n, 0, ctx.stream>>>(p, chunks);             \
    }                                                                                                \
    break;
  switch (p.N) {
    RWKV_WKV7_FORWARD(32)
    RWKV_WKV7_FORWARD(64)
    default: fail("CUDA wkv7 training: head size ", p.N, " is not supported (32 or 64)");
  }
#undef RWKV_WKV7_FORWARD
  RWKV_CUDA_LAUNCHED("wkv7_train_forward");
}

void wkv7_train_backward(Context& ctx, const Wkv7Train& p, const Wkv7TrainGrads& g) {
  if (p.B <= 0 || p.T <= 0) return;
  if (wkv7_train_chunked(ctx, p, true)) return wkv7_chunked_backward(ctx, p, g);
  const dim3 grid(p.H, p.B);
  switch (p.N) {
    case 32: wkv7_train_backward_kernel<32><<<grid, 32, 0, ctx.stream>>>(p, g, chunks_of(p.T)); break;
    case 64: wkv7_train_backward_kernel<64><<<grid, 64, 0, ctx.stream>>>(p, g, chunks_of(p.T)); break;
    default: fail("CUDA wkv7 training: head size ", p.N, " is not supported (32 or 64)");
  }
  RWKV_CUDA_LAUNCHED("wkv7_train_backward");
}

}  // namespace rwkv::cuda
