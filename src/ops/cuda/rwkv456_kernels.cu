// The CUDA ops of RWKV-4, RWKV-5 and RWKV-6 (kernels_v456.h): the WKV-4 and WKV-5/6 scans, the
// gated GroupNorm, RWKV-6's ddlerp and two element-wise helpers. Deterministic: no atomics, every
// sum in a fixed order.
#include <algorithm>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/kernels_v456.h"
#include "ops/cuda/sliced_scan.cuh"

namespace rwkv::cuda {
namespace {

// WKV-5/6 (spec §2.2, §2.3): one block per (head, sequence), thread j owns column j of the
// key-major state in registers (s[i] = S[i][j]; a warp's loads of S[i][·] are one contiguous
// line, so decode needs no separate kernel). Row t + 1's inputs are loaded while row t computes;
// the output sum runs in four partial accumulators so the dependent chains are N/4 long.
template <int N>
__global__ void __launch_bounds__(N) wkv6_scan_kernel(int T, int H, const float* r, const float* k,
                                                      const float* v, const float* w,
                                                      const float* decay, const float* u, float* y,
                                                      StateRef st, size_t offset) {
  const int h = blockIdx.x, seq = blockIdx.y, j = threadIdx.x;
  const int c = h * N + j;
  const size_t A = size_t(H) * N;
  float* S = st.pool + size_t(st.slots[seq]) * st.floats + offset + size_t(h) * N * N + j;
  float s[N];
#pragma unroll
  for (int i = 0; i < N; ++i) s[i] = S[i * N];
  __shared__ float rs[N], ks[N], uks[N], ds[N];
  const float uc = u[c], dc = decay[c];
  const size_t o0 = size_t(seq) * size_t(T) * A + c;
  float nr = r[o0], nk = k[o0], nv = v[o0], nw = w ? w[o0] : 0.f;
  for (int t = 0; t < T; ++t) {
    const size_t o = o0 + size_t(t) * A;
    __syncthreads();  // the previous row's reads of the shared inputs are done
    rs[j] = nr;
    ks[j] = nk;
    uks[j] = uc * nk;
    ds[j] = expf(w ? -expf(dc + nw) : dc);
    const float vj = nv;
    __syncthreads();
    if (t + 1 < T) {
      const size_t q = o + A;
      nr = r[q], nk = k[q], nv = v[q];
      if (w) nw = w[q];
    }
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int i = 0; i < N; ++i) {
      acc[i % 4] += rs[i] * (uks[i] * vj + s[i]);
      s[i] = ds[i] * s[i] + ks[i] * vj;
    }
    y[o] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  }
#pragma unroll
  for (int i = 0; i < N; ++i) S[i * N] = s[i];
}

// WKV-5/6 for heads fewer than the SMs (a one-sequence prefill), in the sliced scan's shape
// (sliced_scan.cuh): a block takes 16 state columns j of one head (N/16 blocks per head) and thread
// (column, part) owns S[i][j] for i = 8·c + part; y_j is a shuffle sum over the 8 parts. Inputs
// are staged a chunk of rows at a time, the next chunk's loads in registers meanwhile. The sums
// are those of the kernel above, split in eight.
template <int N>
__global__ void __launch_bounds__(ScanShape<N>::kThreads)
    wkv6_scan_sliced_kernel(int T, int H, const float* r, const float* k, const float* v, const float* w,
                            const float* decay, const float* u, float* y, StateRef st, size_t offset) {
  using Sh = ScanShape<N>;
  constexpr int K = Sh::kCols, P = Sh::kParts, kThreads = Sh::kThreads, kChunk = Sh::kChunk, kCols = Sh::kRows;
  static_assert(kThreads % N == 0, "a thread stages the same channel in every chunk");
  const int h = blockIdx.x / Sh::kSlices, col0 = blockIdx.x % Sh::kSlices * kCols, seq = blockIdx.y;
  const int tid = threadIdx.x, part = tid % P, cj = tid / P;
  const size_t A = size_t(H) * N, base = size_t(seq) * T * A + size_t(h) * N;
  const SliceRows<N> slice{T, base, A, col0};
  float* S = st.pool + size_t(st.slots[seq]) * st.floats + offset + size_t(h) * N * N + col0 + cj;
  float s[K];
#pragma unroll
  for (int c = 0; c < K; ++c) s[c] = S[size_t(P * c + part) * N];
  // r, k, u·k and the decay of each row of the chunk, permuted by key index; the slice's v, y.
  __shared__ __align__(16) float vec[4][kChunk][Sh::kLen];
  __shared__ float vs[kChunk][kCols], ys[kChunk][kCols];
  const int ch = tid % N;  // the channel this thread stages, in every chunk
  const float uc = u[h * N + ch], dc = decay[h * N + ch];
  float pre[3][Sh::kPer], prev[Sh::kPerV];
  const auto fetch = [&](int t0) {
#pragma unroll
    for (int q = 0; q < Sh::kPer; ++q) {
      const int t = t0 + (tid + kThreads * q) / N;
      if (t < T) {
        const size_t o = base + size_t(t) * A + size_t(ch);
        pre[0][q] = r[o], pre[1][q] = k[o], pre[2][q] = w ? w[o] : 0.f;
      }
    }
    slice.fetch(v, t0, prev);
  };
  const auto put = [&]() {
    const int pos = Sh::permuted(ch);
#pragma unroll
    for (int q = 0; q < Sh::kPer; ++q) {
      const int row = (tid + kThreads * q) / N;
      vec[0][row][pos] = pre[0][q];
      vec[1][row][pos] = pre[1][q];
      vec[2][row][pos] = uc * pre[1][q];
      vec[3][row][pos] = expf(w ? -expf(dc + pre[2][q]) : dc);
    }
    slice.put(prev, vs);
  };
  const auto row = [&](int, int row) {
    const int at = part * Sh::kStride;
    float rv[K], kv[K], ukv[K], dv[K];
    read_cols<K>(&vec[0][row][at], rv);
    read_cols<K>(&vec[1][row][at], kv);
    read_cols<K>(&vec[2][row][at], ukv);
    read_cols<K>(&vec[3][row][at], dv);
    const float vj = vs[row][cj];
    float acc = 0.f;
#pragma unroll
    for (int c = 0; c < K; ++c) {
      acc += rv[c] * (ukv[c] * vj + s[c]);
      s[c] = dv[c] * s[c] + kv[c] * vj;
    }
    acc = parts_sum<P>(acc);
    if (part == 0) ys[row][cj] = acc;
  };
  walk_chunks<kChunk>(T, fetch, put, row, [&](int t0) { slice.write(ys, y, t0); });
#pragma unroll
  for (int c = 0; c < K; ++c) S[size_t(P * c + part) * N] = s[c];
}

// WKV-4 (spec §2.1, §3.1): thread (channel, sequence) walks the T rows with its (aa, bb, pp) in
// registers; the formulas and their order are ref::wkv4's, so pp (adds and maxima only) matches
// the CPU bit for bit and aa, bb within the exponentials' rounding.
__global__ void wkv4_scan_kernel(int T, int A, const float* k, const float* v, const float* r,
                                 const float* decay, const float* first, float* y, StateRef st,
                                 size_t offset) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x, seq = blockIdx.y;
  if (c >= A) return;
  float* state = st.pool + size_t(st.slots[seq]) * st.floats + offset;
  float aa = state[c], bb = state[A + c], pp = state[2 * size_t(A) + c];
  const float w = decay[c], u = first[c];
  const size_t o0 = size_t(seq) * size_t(T) * size_t(A) + c;
  for (int t = 0; t < T; ++t) {
    const size_t o = o0 + size_t(t) * size_t(A);
    const float kt = k[o], vt = v[o];
    float q = fmaxf(pp, u + kt);
    float e1 = expf(pp - q), e2 = expf(u + kt - q);
    y[o] = r[o] * ((e1 * aa + e2 * vt) / (e1 * bb + e2));
    q = fmaxf(pp + w, kt);
    e1 = expf(pp + w - q);
    e2 = expf(kt - q);
    aa = e1 * aa + e2 * vt;
    bb = e1 * bb + e2;
    pp = q;
  }
  state[c] = aa;
  state[A + c] = bb;
  state[2 * size_t(A) + c] = pp;
}

// One warp per (row, head): two passes over the head's N channels (mean, then variance about
// it, as the CPU does), then the affine and the gate. Warps of a block are independent.
constexpr int kNormWarps = 4;
__global__ void group_norm_gate_kernel(float* y, const float* g, size_t groups, int H, int N,
                                       const float* weight, const float* bias, float eps) {
  const size_t group = size_t(blockIdx.x) * kNormWarps + threadIdx.x / 32;  // m·H + h
  if (group >= groups) return;  // whole warps leave: the shuffles below see full warps
  const int lane = threadIdx.x & 31, h = int(group % size_t(H));
  float* x = y + group * size_t(N);
  float sum = 0.f;
  for (int i = lane; i < N; i += 32) sum += x[i];
  const float mean = warp_sum(sum) / float(N);
  float sq = 0.f;
  for (int i = lane; i < N; i += 32) {
    const float d = x[i] - mean;
    sq += d * d;
  }
  const float inv = rsqrtf(warp_sum(sq) / float(N) + eps);
  const float* gate = g ? g + group * size_t(N) : nullptr;
  for (int i = lane; i < N; i += 32) {
    const int c = h * N + i;
    const float out = (x[i] - mean) * inv * weight[c] + bias[c];
    x[i] = gate ? out * gate[i] : out;
  }
}

__global__ void mul_add_kernel(float* x, const float* a, const float* b, size_t n) {
  GRID_STRIDE(i, n) x[i] += a[i] * b[i];
}

__global__ void copy_columns_kernel(const float* src, int src_ld, int D, size_t n, float* dst) {
  GRID_STRIDE(i, n) {
    const size_t m = i / size_t(D), d = i % size_t(D);
    dst[i] = src[m * size_t(src_ld) + d];
  }
}

__global__ void ddlerp_kernel(int C, size_t n, const float* xn, const float* delta, const float* mix,
                              const float* offset, float* out) {
  GRID_STRIDE(i, n) {
    const float x = xn[i];
    out[i] = x + delta[i] * (mix[i % size_t(C)] + offset[i]);
  }
}

constexpr int kThreads = 256;

// The sliced scan while the heads are fewer than the SMs (head size 16 and up), else one block per
// head.
template <int N>
void launch_wkv6(Context& ctx, int B, int T, int H, const float* r, const float* k, const float* v, const float* w,
                 const float* decay, const float* u, float* y, StateRef states, size_t offset) {
  if constexpr (N >= 16) {
    if (scan_slices(B * H, ctx.sms)) {
      wkv6_scan_sliced_kernel<N><<<dim3(H * ScanShape<N>::kSlices, B), ScanShape<N>::kThreads, 0, ctx.stream>>>(
          T, H, r, k, v, w, decay, u, y, states, offset);
      return;
    }
  }
  wkv6_scan_kernel<N><<<dim3(H, B), N, 0, ctx.stream>>>(T, H, r, k, v, w, decay, u, y, states, offset);
}

}  // namespace

void wkv6_scan(Context& ctx, int B, int T, int H, int N, const float* r, const float* k,
               const float* v, const float* w, const float* decay, const float* u, float* y,
               StateRef states, size_t offset) {
  if (N != 8 && N != 16 && N != 32 && N != 64 && N != 128)
    fail("CUDA wkv6: head size ", N, " is not supported (8, 16, 32, 64 or 128)");
  if (B <= 0 || T <= 0 || H <= 0) return;
  switch (N) {
    case 8: launch_wkv6<8>(ctx, B, T, H, r, k, v, w, decay, u, y, states, offset); break;
    case 16: launch_wkv6<16>(ctx, B, T, H, r, k, v, w, decay, u, y, states, offset); break;
    case 32: launch_wkv6<32>(ctx, B, T, H, r, k, v, w, decay, u, y, states, offset); break;
    case 64: launch_wkv6<64>(ctx, B, T, H, r, k, v, w, decay, u, y, states, offset); break;
    case 128: launch_wkv6<128>(ctx, B, T, H, r, k, v, w, decay, u, y, states, offset); break;
  }
  RWKV_CUDA_LAUNCHED("wkv6_scan");
}

void wkv4_scan(Context& ctx, int B, int T, int A, const float* k, const float* v, const float* r,
               const float* decay, const float* first, float* y, StateRef states, size_t offset) {
  if (B <= 0 || T <= 0 || A <= 0) return;
  const int threads = 128;
  const dim3 grid((A + threads - 1) / threads, B);
  wkv4_scan_kernel<<<grid, threads, 0, ctx.stream>>>(T, A, k, v, r, decay, first, y, states, offset);
  RWKV_CUDA_LAUNCHED("wkv4_scan");
}

void group_norm_gate(Context& ctx, float* y, const float* g, int M, int H, int N,
                     const float* weight, const float* bias, float eps) {
  if (M <= 0 || H <= 0) return;
  if (N < 1) fail("CUDA group_norm_gate: head size ", N, " must be ≥ 1");
  const size_t groups = size_t(M) * size_t(H);
  const unsigned blocks = unsigned((groups + kNormWarps - 1) / kNormWarps);
  group_norm_gate_kernel<<<blocks, kNormWarps * 32, 0, ctx.stream>>>(y, g, groups, H, N, weight, bias, eps);
  RWKV_CUDA_LAUNCHED("group_norm_gate");
}

void mul_add(Context& ctx, float* x, const float* a, const float* b, size_t n) {
  if (n == 0) return;
  mul_add_kernel<<<grid_for(n, kThreads), kThreads, 0, ctx.stream>>>(x, a, b, n);
  RWKV_CUDA_LAUNCHED("mul_add");
}

void copy_columns(Context& ctx, const float* src, int src_ld, int M, int D, float* dst) {
  if (M <= 0 || D <= 0) return;
  if (src_ld < D) fail("CUDA copy_columns: leading dimension ", src_ld, " is below the ", D, " columns copied");
  const size_t n = size_t(M) * size_t(D);
  copy_columns_kernel<<<grid_for(n, kThreads), kThreads, 0, ctx.stream>>>(src, src_ld, D, n, dst);
  RWKV_CUDA_LAUNCHED("copy_columns");
}

void ddlerp(Context& ctx, int M, int C, const float* xn, const float* delta, const float* mix,
            const float* offset, float* out) {
  if (M <= 0 || C <= 0) return;
  const size_t n = size_t(M) * size_t(C);
  ddlerp_kernel<<<grid_for(n, kThreads), kThreads, 0, ctx.stream>>>(C, n, xn, delta, mix, offset, out);
  RWKV_CUDA_LAUNCHED("ddlerp");
}

}  // namespace rwkv::cuda
