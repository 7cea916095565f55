// WKV-7, recurrent form on the GPU (spec §2.4): one block per (sequence, head), thread i owns row
// i of the value-major state in registers and walks the T rows. Decode (T = 1) and, until the
// chunked tensor-core form lands, prefill.
#include "ops/cuda/kernels.h"

namespace rwkv::cuda {
namespace {

template <int N>
__global__ void __launch_bounds__(N) wkv7_scan_kernel(int T, int H, const float* r, const float* w,
                                                      const float* k, const float* v, const float* a,
                                                      const float* b, float* y, StateRef st,
                                                      size_t offset) {
  const int h = blockIdx.x, seq = blockIdx.y, i = threadIdx.x;
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
  const size_t stride = C, o0 = size_t(seq) * T * C + size_t(h) * N + i;
  float nr = r[o0], nw = w[o0], nk = k[o0], nv = v[o0], na = a[o0], nb = b[o0];
  for (int t = 0; t < T; ++t) {
    const size_t o = o0 + size_t(t) * stride;
    __syncthreads();  // the previous row's reads of the shared inputs are done
    rs[i] = nr;
    ds[i] = expf(nw);
    ks[i] = nk;
    as[i] = na;
    bs[i] = nb;
    const float vi = nv;
    __syncthreads();
    if (t + 1 < T) {
      const size_t q = o + stride;
      nr = r[q], nw = w[q], nk = k[q], nv = v[q], na = a[q], nb = b[q];
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

}  // namespace

void wkv7_scan(Context& ctx, int B, int T, int H, int N, const float* r, const float* w,
               const float* k, const float* v, const float* a, const float* b, float* y,
               StateRef states, size_t offset) {
  if (B <= 0 || T <= 0) return;
  if ((states.floats | offset) % 4 != 0) fail("CUDA wkv7: state offsets must be multiples of 4 floats");
  const dim3 grid(H, B);
#define RWKV_WKV7_CASE(n)                                                                    \
  case n:                                                                                    \
    wkv7_scan_kernel<n><<<grid, n, 0, ctx.stream>>>(T, H, r, w, k, v, a, b, y, states, offset); \
    break;
  switch (N) {
    RWKV_WKV7_CASE(16)
    RWKV_WKV7_CASE(32)
    RWKV_WKV7_CASE(64)
    RWKV_WKV7_CASE(128)
    default: fail("CUDA wkv7: head size ", N, " is not supported (16, 32, 64 or 128)");
  }
#undef RWKV_WKV7_CASE
  RWKV_CUDA_LAUNCHED("wkv7_scan");
}

}  // namespace rwkv::cuda
