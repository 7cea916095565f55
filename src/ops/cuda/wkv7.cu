// WKV-7, recurrent form on the GPU (spec §2.4): one block per (sequence, head), thread i owns row
// i of the value-major state in registers and walks the T rows. Decode (T = 1) and, until the
// chunked tensor-core form lands, prefill.
#include "ops/cuda/device_math.cuh"
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

// A decode step (T = 1) of rwkv7_prepare, wkv7_scan and rwkv7_output in one block per
// (sequence, head): thread i owns channel i of the row and row i of the head's state; the
// prepared k, a, b, decay never leave the chip.
template <int N>
__global__ void __launch_bounds__(N) rwkv7_step_kernel(int H, Rwkv7Prepare p, Rwkv7Output o, float eps,
                                                       StateRef st, size_t offset) {
  __shared__ float scratch[32];
  __shared__ float rs[N], ds[N], ks[N], as[N], bs[N];
  const int h = blockIdx.x, seq = blockIdx.y, i = threadIdx.x, C = H * N, c = h * N + i;
  const size_t j = size_t(seq) * C + c;
  // rwkv7_prepare
  float v = p.v[j];
  if (p.v_lora) {
    v += (p.v_first[j] - v) * sigmoidf(p.v0[c] + p.v_lora[j]);
  } else {
    p.v_first[j] = v;
  }
  const float k = p.k[j], kk = k * p.k_k[c];
  const float kh = kk / fmaxf(sqrtf(block_sum(kk * kk, scratch)), 1e-12f);
  const float alpha = sigmoidf(p.a0[c] + p.a[j]);
  const float kw = k * (1.f + (alpha - 1.f) * p.k_a[c]), r = o.r[j];
  rs[i] = r;
  ds[i] = expf(-0.60653066f * sigmoidf(p.w0[c] + p.w[j]));
  ks[i] = kw;
  as[i] = -kh;
  bs[i] = kh * alpha;
  // wkv7_scan over one row
  float* S = st.pool + size_t(st.slots[seq]) * st.floats + offset + (size_t(h) * N + i) * N;
  float s[N];
#pragma unroll
  for (int q = 0; q < N; q += 4) {
    const float4 f = *reinterpret_cast<const float4*>(S + q);
    s[q] = f.x, s[q + 1] = f.y, s[q + 2] = f.z, s[q + 3] = f.w;
  }
  __syncthreads();
  float sa[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int q = 0; q < N; ++q) sa[q % 4] += s[q] * as[q];
  const float sat = (sa[0] + sa[1]) + (sa[2] + sa[3]);
  float yp[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int q = 0; q < N; ++q) {
    s[q] = s[q] * ds[q] + sat * bs[q] + v * ks[q];
    yp[q % 4] += s[q] * rs[q];
  }
#pragma unroll
  for (int q = 0; q < N; q += 4) *reinterpret_cast<float4*>(S + q) = make_float4(s[q], s[q + 1], s[q + 2], s[q + 3]);
  const float y = (yp[0] + yp[1]) + (yp[2] + yp[3]);
  // rwkv7_output
  const float mean = block_sum(y, scratch) / float(N);
  const float d = y - mean;
  const float var = block_sum(d * d, scratch) / float(N);
  const float bonus = block_sum(r * kw * o.r_k[c], scratch);
  o.y[j] = (d * rsqrtf(var + eps) * o.ln_w[c] + o.ln_b[c] + bonus * v) * o.g[j];
}

}  // namespace

bool rwkv7_step(Context& ctx, int B, int H, int N, const Rwkv7Prepare& p, const Rwkv7Output& o,
                float eps, StateRef states, size_t offset) {
  if (N % 32 != 0 || N > 128 || (states.floats | offset) % 4 != 0) return false;
  if (B <= 0) return true;
  const dim3 grid(H, B);
  switch (N) {
    case 32: rwkv7_step_kernel<32><<<grid, 32, 0, ctx.stream>>>(H, p, o, eps, states, offset); break;
    case 64: rwkv7_step_kernel<64><<<grid, 64, 0, ctx.stream>>>(H, p, o, eps, states, offset); break;
    case 128: rwkv7_step_kernel<128><<<grid, 128, 0, ctx.stream>>>(H, p, o, eps, states, offset); break;
    default: return false;
  }
  RWKV_CUDA_LAUNCHED("rwkv7_step");
  return true;
}

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
