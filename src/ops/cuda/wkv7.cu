// WKV-7, recurrent form on the GPU (spec §2.4): one block per (sequence, head, group of state
// rows), thread i owns row i of the value-major state in registers and walks the T rows. Decode
// (T = 1) and, until the chunked tensor-core form lands, prefill.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/kernels.h"

namespace rwkv::cuda {
namespace {

// Rows of S are independent given a token's shared vectors (S a, S r and the update of row i read
// only row i), so a head's N rows may be split over N/R blocks of R threads: a prefill of one
// sequence then runs on H·N/R blocks instead of H. Each block stages the token's N-wide vectors
// (R threads, N/R values each); thread i owns state row i0 + i.
template <int N, int R>
__global__ void __launch_bounds__(R) wkv7_scan_kernel(int T, int H, const float* r, const float* w,
                                                      const float* k, const float* v, const float* a,
                                                      const float* b, float* y, StateRef st,
                                                      size_t offset) {
  constexpr int kPer = N / R;  // staged values per thread
  const int h = blockIdx.x / kPer, seq = blockIdx.y, tid = threadIdx.x;
  const int i = (blockIdx.x % kPer) * R + tid;  // this thread's state row
  const size_t C = size_t(H) * N;
  float* S = st.pool + size_t(st.slots[seq]) * st.floats + offset + (size_t(h) * N + i) * N;
  float s[N];
#pragma unroll
  for (int j = 0; j < N; j += 4) {
    const float4 q = *reinterpret_cast<const float4*>(S + j);
    s[j] = q.x, s[j + 1] = q.y, s[j + 2] = q.z, s[j + 3] = q.w;
  }
  __shared__ float rs[N], ds[N], ks[N], as[N], bs[N];
  // Row t's inputs are loaded while row t − 1 computes (they are independent of the state);
  // the sums run in four partial accumulators, so the dependent chains are N/4 long.
  const size_t stride = C, head0 = size_t(seq) * T * C + size_t(h) * N;
  float nr[kPer], nw[kPer], nk[kPer], na[kPer], nb[kPer];
  const auto prefetch = [&](size_t row) {
#pragma unroll
    for (int e = 0; e < kPer; ++e) {
      const size_t q = row + size_t(e * R + tid);
      nr[e] = r[q], nw[e] = w[q], nk[e] = k[q], na[e] = a[q], nb[e] = b[q];
    }
  };
  prefetch(head0);
  float nv = v[head0 + i];
  for (int t = 0; t < T; ++t) {
    const size_t o = head0 + size_t(t) * stride + i;
    __syncthreads();  // the previous row's reads of the shared inputs are done
#pragma unroll
    for (int e = 0; e < kPer; ++e) {
      const int j = e * R + tid;
      rs[j] = nr[e];
      ds[j] = expf(nw[e]);
      ks[j] = nk[e];
      as[j] = na[e];
      bs[j] = nb[e];
    }
    const float vi = nv;
    __syncthreads();
    if (t + 1 < T) {
      prefetch(head0 + size_t(t + 1) * stride);
      nv = v[o + stride];
    }
    float sa[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < N; ++j) sa[j % 4] += s[j] * as[j];
    const float sat = (sa[0] + sa[1]) + (sa[2] + sa[3]);
    float yi[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < N; ++j) {
      s[j] = s[j] * ds[j] + sat * bs[j] + vi * ks[j];
      yi[j % 4] += s[j] * rs[j];
    }
    y[o] = (yi[0] + yi[1]) + (yi[2] + yi[3]);
  }
#pragma unroll
  for (int j = 0; j < N; j += 4) *reinterpret_cast<float4*>(S + j) = make_float4(s[j], s[j + 1], s[j + 2], s[j + 3]);
}

// One decode row (T = 1) per sequence, for N a multiple of 32: the scan above reads each
// thread's state row on its own (a warp touches 32 rows at once), which wastes most of each
// memory transaction once B·H·N² state bytes dominate a step (batched decode). Here warp w owns
// rows 16w … 16w + 15 and its lanes span the columns, so every state load and store is one
// contiguous 128-byte line per warp; all 16 rows are loaded before any is used.
template <int N>
__global__ void __launch_bounds__(N / 16 * 32) wkv7_step_kernel(int H, const float* r, const float* w,
                                                               const float* k, const float* v, const float* a,
                                                               const float* b, float* y, StateRef st,
                                                               size_t offset) {
  constexpr int kRows = 16, kCols = N / 32;
  const int h = blockIdx.x, seq = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const size_t o = (size_t(seq) * H + h) * N;
  float* S = st.pool + size_t(st.slots[seq]) * st.floats + offset + size_t(h) * N * N +
             size_t(warp) * kRows * N + lane;
  float s[kRows][kCols];
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) s[q][c] = S[q * N + 32 * c];
  }
  float vi[kRows];
#pragma unroll
  for (int q = 0; q < kRows; ++q) vi[q] = v[o + warp * kRows + q];
  __shared__ float rs[N], ds[N], ks[N], as[N], bs[N];
  if (threadIdx.x < N) {
    const int i = threadIdx.x;
    rs[i] = r[o + i];
    ds[i] = expf(w[o + i]);
    ks[i] = k[o + i];
    as[i] = a[o + i];
    bs[i] = b[o + i];
  }
  __syncthreads();
  float sa[kRows], yv[kRows];
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    sa[q] = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) sa[q] += s[q][c] * as[lane + 32 * c];
  }
#pragma unroll
  for (int q = 0; q < kRows; ++q) sa[q] = warp_sum(sa[q]);
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    yv[q] = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int j = lane + 32 * c;
      s[q][c] = s[q][c] * ds[j] + sa[q] * bs[j] + vi[q] * ks[j];
      yv[q] += s[q][c] * rs[j];
    }
  }
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    yv[q] = warp_sum(yv[q]);
#pragma unroll
    for (int c = 0; c < kCols; ++c) S[q * N + 32 * c] = s[q][c];
  }
  if (lane == 0) {
#pragma unroll
    for (int q = 0; q < kRows; ++q) y[o + warp * kRows + q] = yv[q];
  }
}

// How many blocks share a head's rows in the scan: doubling while there are fewer than two
// blocks per SM and each block keeps at least 16 rows. RWKV_CUDA_WKV_SPLIT=0: one block per head.
int scan_split(int heads, int N) {
  static const int sms = [] {
    int device = 0, n = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
    return std::max(n, 1);
  }();
  static const bool enabled = [] {
    const char* v = std::getenv("RWKV_CUDA_WKV_SPLIT");
    return !(v && std::string(v) == "0");
  }();
  int split = 1;
  while (enabled && heads * split < 2 * sms && N / (2 * split) >= 16) split *= 2;
  return split;
}

// RWKV_CUDA_WKV_STEP=0 sends decode rows through the scan kernel too (side-by-side timing).
bool step_kernel_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("RWKV_CUDA_WKV_STEP");
    return !(v && std::string(v) == "0");
  }();
  return on;
}

}  // namespace

void wkv7_scan(Context& ctx, int B, int T, int H, int N, const float* r, const float* w,
               const float* k, const float* v, const float* a, const float* b, float* y,
               StateRef states, size_t offset) {
  if (B <= 0 || T <= 0) return;
  if ((states.floats | offset) % 4 != 0) fail("CUDA wkv7: state offsets must be multiples of 4 floats");
  const dim3 grid(H, B);
  if (T == 1 && (N == 32 || N == 64 || N == 128) && step_kernel_enabled()) {
    if (N == 32) wkv7_step_kernel<32><<<grid, 64, 0, ctx.stream>>>(H, r, w, k, v, a, b, y, states, offset);
    if (N == 64) wkv7_step_kernel<64><<<grid, 128, 0, ctx.stream>>>(H, r, w, k, v, a, b, y, states, offset);
    if (N == 128) wkv7_step_kernel<128><<<grid, 256, 0, ctx.stream>>>(H, r, w, k, v, a, b, y, states, offset);
    RWKV_CUDA_LAUNCHED("wkv7_step");
    return;
  }
  // Rows per block: split heads until there are two blocks per SM, down to 16 rows a block.
  const int split = scan_split(B * H, N);
  const dim3 scan_grid(H * split, B);
#define RWKV_WKV7_CASE(n, parts)                                                                       \
  if (N == n && split == parts) {                                                                      \
    wkv7_scan_kernel<n, n / parts><<<scan_grid, n / parts, 0, ctx.stream>>>(T, H, r, w, k, v, a, b, y, \
                                                                          states, offset);             \
    RWKV_CUDA_LAUNCHED("wkv7_scan");                                                                   \
    return;                                                                                            \
  }
  RWKV_WKV7_CASE(16, 1)
  RWKV_WKV7_CASE(32, 1)
  RWKV_WKV7_CASE(32, 2)
  RWKV_WKV7_CASE(64, 1)
  RWKV_WKV7_CASE(64, 2)
  RWKV_WKV7_CASE(64, 4)
  RWKV_WKV7_CASE(128, 1)
  RWKV_WKV7_CASE(128, 2)
  RWKV_WKV7_CASE(128, 4)
  RWKV_WKV7_CASE(128, 8)
#undef RWKV_WKV7_CASE
  fail("CUDA wkv7: head size ", N, " is not supported (16, 32, 64 or 128)");
}

}  // namespace rwkv::cuda
