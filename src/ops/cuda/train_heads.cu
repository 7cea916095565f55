// RWKV-7's per-head training ops on the GPU (see train_ops.h): the preparation before the WKV
// kernel and the output after it, forward and backward. Each needs sums over a head's N channels
// per row, and the backward ones also column sums over all rows (the gradients of per-channel
// parameters). So a warp walks kStripRows rows of one head, its lanes holding N / 32 consecutive
// channels each: every array of a row is read once into registers (vector loads), the head sums
// are warp shuffles, and the column sums accumulate in registers across the warp's rows. A
// block's 8 warps take kColSumRows consecutive rows of the same head and add their column sums in
// shared memory, in a fixed order, into one partial row per block; col_finish adds those in order.
// Deterministic, and without writing per-element terms to memory only to read them back.
#include <initializer_list>
#include <type_traits>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/vec_io.cuh"
#include "ops/cuda/train_ops.h"

namespace rwkv::cuda::train {
namespace {

constexpr float kNormEps = 1e-12f;  // F.normalize's default
constexpr int kWarps = 8, kStripRows = kColSumRows / kWarps;

// A lane's place: grid (row blocks of kColSumRows, H); warp w of block b takes rows
// b·kColSumRows + w·kStripRows …, lane l channels h·N + l·I … of them.
template <int N>
struct Strip {
  static constexpr int I = N / 32;
  int h, m0, m1, lane, c;
  __device__ explicit Strip(int M) {
    h = blockIdx.y, lane = threadIdx.x & 31, c = h * N + lane * I;
    m0 = blockIdx.x * kColSumRows + (threadIdx.x >> 5) * kStripRows;
    m1 = min(M, m0 + kStripRows);
  }
};

// S column sums of a block's rows into partial[s·chunks·C + blockIdx.x·C + c]: the 8 warps' sums
// added in warp order. Every thread of the block calls it (it has a barrier).
template <int N, int S>
__device__ void write_col_partials(const float (&acc)[S][N / 32], float* partial, int C) {
  constexpr int I = N / 32;
  __shared__ float red[kWarps][S][N];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, h = blockIdx.y;
#pragma unroll
  for (int s = 0; s < S; ++s) {
#pragma unroll
    for (int i = 0; i < I; ++i) red[warp][s][lane * I + i] = acc[s][i];
  }
  __syncthreads();
  const size_t chunks = gridDim.x;
  for (int e = threadIdx.x; e < S * N; e += blockDim.x) {
    const int s = e / N, j = e % N;
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t += red[w][s][j];
    partial[(s * chunks + blockIdx.x) * size_t(C) + size_t(h) * N + j] = t;
  }
}

template <int I>
__device__ __forceinline__ float lane_sum(const float (&v)[I]) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < I; ++i) s += v[i];
  return s;
}

template <int N>
__global__ void __launch_bounds__(32 * kWarps) prepare_forward_kernel(int M, int H, PrepareForward p) {
  constexpr int I = N / 32;
  const Strip<N> st(M);
  float k_k[I], k_a[I], a0[I], w0[I], v0[I] = {};
  load(p.k_k + st.c, k_k), load(p.k_a + st.c, k_a), load(p.a0 + st.c, a0), load(p.w0 + st.c, w0);
  if (!p.first_layer) load(p.v0 + st.c, v0);
  const size_t C = size_t(H) * N;
  for (int m = st.m0; m < st.m1; ++m) {
    const size_t o = m * C + st.c;
    float k[I], al[I], z[I], vr[I], gt[I] = {}, vf[I] = {}, r[I] = {};
    load(p.k_raw + o, k), load(p.alpha + o, al), load(p.z + o, z), load(p.v_raw + o, vr);
    if (!p.first_layer) load(p.gate + o, gt), load(p.v_first + o, vf);
    if (p.wkv16[0]) load(p.r + o, r);
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < I; ++i) ss += (k[i] * k_k[i]) * (k[i] * k_k[i]);
    const float inv = 1.f / fmaxf(sqrtf(warp_sum(ss)), kNormEps);
    float v[I], kn[I], k2[I], a[I], b[I];
#pragma unroll
    for (int i = 0; i < I; ++i) {
      al[i] = sigmoidf(a0[i] + al[i]);
      z[i] += w0[i];
      if (p.first_layer) {
        v[i] = vr[i];
      } else {
        gt[i] = sigmoidf(v0[i] + gt[i]);
        v[i] = vr[i] + (vf[i] - vr[i]) * gt[i];
      }
      kn[i] = k[i] * k_k[i] * inv;
      k2[i] = k[i] * (1.f + (al[i] - 1.f) * k_a[i]);
      a[i] = -kn[i], b[i] = kn[i] * al[i];
    }
    store(p.alpha + o, al), store(p.z + o, z), store(p.v + o, v), store(p.kn + o, kn), store(p.k2 + o, k2);
    if (p.first_layer) {
      store(p.v_first + o, v);
    } else {
      store(p.gate + o, gt);
    }
    if (p.wkv16[0]) {
      store(p.wkv16[0] + o, r), store(p.wkv16[1] + o, z), store(p.wkv16[2] + o, k2);
      store(p.wkv16[3] + o, v), store(p.wkv16[4] + o, a), store(p.wkv16[5] + o, b);
    }
  }
}

template <int N>
__global__ void __launch_bounds__(32 * kWarps) output_forward_kernel(int M, int H, float eps, OutputForward p) {
  constexpr int I = N / 32;
  const Strip<N> st(M);
  float ln_w[I], ln_b[I], r_k[I];
  load(p.ln_w + st.c, ln_w), load(p.ln_b + st.c, ln_b), load(p.r_k + st.c, r_k);
  const size_t C = size_t(H) * N;
  for (int m = st.m0; m < st.m1; ++m) {
    const size_t o = m * C + st.c;
    float y[I], r[I], k2[I], v[I], g[I];
    load(p.y + o, y), load(p.r + o, r), load(p.k2 + o, k2), load(p.v + o, v), load(p.g + o, g);
    float sb = 0.f;
#pragma unroll
    for (int i = 0; i < I; ++i) sb += r[i] * k2[i] * r_k[i];
    const float mean = warp_sum(lane_sum(y)) / float(N);
    sb = warp_sum(sb);
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < I; ++i) q += (y[i] - mean) * (y[i] - mean);
    const float rstd = rsqrtf(warp_sum(q) / float(N) + eps);
    float zo[I], x[I];
#pragma unroll
    for (int i = 0; i < I; ++i) {
      zo[i] = (y[i] - mean) * rstd * ln_w[i] + ln_b[i] + sb * v[i];
      x[i] = zo[i] * g[i];
    }
    store(p.zo + o, zo), store(p.x16 + o, x);
    if (st.lane == 0) p.mean[size_t(m) * H + st.h] = mean, p.rstd[size_t(m) * H + st.h] = rstd;
  }
}

template <int N>
__global__ void __launch_bounds__(32 * kWarps) output_backward_kernel(int M, int H, OutputBackward p, float* partial) {
  constexpr int I = N / 32;
  const Strip<N> st(M);
  float ln_w[I], r_k[I], acc[3][I] = {};  // Σ dz⊙ŷ, Σ dz, Σ dsb⊙r⊙k2
  load(p.ln_w + st.c, ln_w), load(p.r_k + st.c, r_k);
  const size_t C = size_t(H) * N;
  for (int m = st.m0; m < st.m1; ++m) {
    const size_t o = m * C + st.c;
    const float mean = p.mean[size_t(m) * H + st.h], rstd = p.rstd[size_t(m) * H + st.h];
    float dx[I], g[I], y[I], r[I], k2[I], v[I], zo[I];
    load(p.dx + o, dx), load(p.g + o, g), load(p.y + o, y), load(p.r + o, r), load(p.k2 + o, k2);
    load(p.v + o, v), load(p.zo + o, zo);
    float dz[I], yh[I], gy[I], sg = 0.f, sgy = 0.f, sb = 0.f, dsb = 0.f;
#pragma unroll
    for (int i = 0; i < I; ++i) {
      dz[i] = dx[i] * g[i];
      yh[i] = (y[i] - mean) * rstd;
      gy[i] = dz[i] * ln_w[i];
      sg += gy[i], sgy += gy[i] * yh[i], sb += r[i] * k2[i] * r_k[i], dsb += dz[i] * v[i];
    }
    const float mg = warp_sum(sg) / float(N), mgy = warp_sum(sgy) / float(N);
    sb = warp_sum(sb), dsb = warp_sum(dsb);
    float dg[I], dy[I], dv[I], dr[I], dk2[I];  // dg, dy stored in bf16
#pragma unroll
    for (int i = 0; i < I; ++i) {
      dg[i] = dx[i] * zo[i];
      dy[i] = rstd * (gy[i] - mg - yh[i] * mgy);
      dv[i] = dz[i] * sb;
      dr[i] = dsb * k2[i] * r_k[i];
      dk2[i] = dsb * r[i] * r_k[i];
      acc[0][i] += dz[i] * yh[i], acc[1][i] += dz[i], acc[2][i] += dsb * r[i] * k2[i];
    }
    store(p.dg16 + o, dg), store(p.dy16 + o, dy), store(p.dv + o, dv), store(p.dr + o, dr), store(p.dk2 + o, dk2);
  }
  write_col_partials<N>(acc, partial, int(C));
}

template <int N>
__global__ void __launch_bounds__(32 * kWarps) prepare_backward_kernel(int M, int H, PrepareBackward p, float* partial) {
  constexpr int I = N / 32;
  const Strip<N> st(M);
  float k_k[I], k_a[I], acc[5][I] = {};  // Σ over rows of the k_a, k_k, w0, a0, v0 terms
  load(p.k_k + st.c, k_k), load(p.k_a + st.c, k_a);
  const size_t C = size_t(H) * N;
  for (int m = st.m0; m < st.m1; ++m) {
    const size_t o = m * C + st.c;
    float dr16[I], dz16[I], dk16[I], dv16[I], da[I], db[I];
    load(p.dr16 + o, dr16), load(p.dz16 + o, dz16), load(p.dk16 + o, dk16), load(p.dv16 + o, dv16);
    load(p.da16 + o, da), load(p.db16 + o, db);
    float k[I], kn[I], alpha[I], dr[I], dk2[I], dv[I], dvfirst[I], vr[I] = {}, gate[I] = {}, vf[I] = {};
    load(p.k_raw + o, k), load(p.kn + o, kn), load(p.alpha + o, alpha);
    load(p.dr + o, dr), load(p.dk2 + o, dk2), load(p.dv + o, dv), load(p.dv_first + o, dvfirst);
    if (!p.first_layer) load(p.v_raw + o, vr), load(p.gate + o, gate), load(p.v_first + o, vf);
    // The head's ‖k⊙k_k‖ and Σ dkn⊙kn for the normalisation's backward.
    float ss = 0.f, dot = 0.f, dkn[I];
#pragma unroll
    for (int i = 0; i < I; ++i) {
      const float kk = k[i] * k_k[i];
      dkn[i] = db[i] * alpha[i] - da[i];
      ss += kk * kk, dot += dkn[i] * kn[i];
    }
    const float norm = sqrtf(warp_sum(ss));
    dot = warp_sum(dot);
    const bool clamped = !(norm > kNormEps);
    const float inv = clamped ? 1.f / kNormEps : 1.f / norm;
    float dalpha[I], dvf[I] = {};  // all outputs stored in bf16
#pragma unroll
    for (int i = 0; i < I; ++i) {
      const float d2 = dk2[i] + dk16[i];
      const float dkk = clamped ? dkn[i] * inv : (dkn[i] - kn[i] * dot) * inv;
      dr[i] += dr16[i];
      dk2[i] = d2 * (1.f + (alpha[i] - 1.f) * k_a[i]) + dkk * k_k[i];  // now ∂/∂k_raw
      acc[0][i] += d2 * k[i] * (alpha[i] - 1.f);
      acc[1][i] += dkk * k[i];
      dalpha[i] = (db[i] * kn[i] + d2 * k[i] * k_a[i]) * alpha[i] * (1.f - alpha[i]);
      acc[2][i] += dz16[i];
      acc[3][i] += dalpha[i];
      const float dvi = dv[i] + dv16[i];
      if (p.first_layer) {
        dv[i] = dvi + dvfirst[i];
      } else {
        const float g = gate[i];
        dvfirst[i] += dvi * g;
        dvf[i] = dvi * (vf[i] - vr[i]) * g * (1.f - g);
        dv[i] = dvi * (1.f - g);
        acc[4][i] += dvf[i];
      }
    }
    store(p.out_r + o, dr), store(p.out_k + o, dk2), store(p.out_alpha + o, dalpha), store(p.out_v + o, dv);
    if (!p.first_layer) store(p.dv_first + o, dvfirst), store(p.out_gate + o, dvf);
  }
  write_col_partials<N>(acc, partial, int(C));
}

// Launches kernel<N> over (row blocks, H) and returns the row blocks.
template <class Launch>
int launch_heads(int M, int H, int N, const char* what, Launch&& launch) {
  const dim3 grid((M + kColSumRows - 1) / kColSumRows, H);
  switch (N) {
    case 32: launch(std::integral_constant<int, 32>{}, grid); break;
    case 64: launch(std::integral_constant<int, 64>{}, grid); break;
    case 128: launch(std::integral_constant<int, 128>{}, grid); break;
    default: fail("CUDA ", what, ": head size ", N, " is not supported (32, 64 or 128)");
  }
  RWKV_CUDA_LAUNCHED(what);
  return int(grid.x);
}

// S partial rows per row block, in ctx.reduce.
float* partials(Context& ctx, int S, int M, int C) {
  const size_t chunks = (size_t(M) + kColSumRows - 1) / kColSumRows;
  ctx.reduce.ensure(size_t(S) * chunks * size_t(C) * sizeof(float));
  return ctx.reduce.as<float>();
}

}  // namespace

void rwkv7_prepare_forward(Context& ctx, int M, int H, int N, const PrepareForward& p) {
  if (M <= 0) return;
  launch_heads(M, H, N, "rwkv7_prepare_forward", [&](auto n, dim3 grid) {
    prepare_forward_kernel<decltype(n)::value><<<grid, 32 * kWarps, 0, ctx.stream>>>(M, H, p);
  });
}

void rwkv7_output_forward(Context& ctx, int M, int H, int N, float eps, const OutputForward& p) {
  if (M <= 0) return;
  launch_heads(M, H, N, "rwkv7_output_forward", [&](auto n, dim3 grid) {
    output_forward_kernel<decltype(n)::value><<<grid, 32 * kWarps, 0, ctx.stream>>>(M, H, eps, p);
  });
}

void rwkv7_output_backward(Context& ctx, int M, int H, int N, const OutputBackward& p) {
  if (M <= 0) return;
  const int C = H * N;
  float* partial = partials(ctx, 3, M, C);
  const int chunks = launch_heads(M, H, N, "rwkv7_output_backward", [&](auto n, dim3 grid) {
    output_backward_kernel<decltype(n)::value><<<grid, 32 * kWarps, 0, ctx.stream>>>(M, H, p, partial);
  });
  col_finish(ctx, partial, chunks, C, {p.d_ln_w, p.d_ln_b, p.d_rk});
}

void rwkv7_prepare_backward(Context& ctx, int M, int H, int N, const PrepareBackward& p) {
  if (M <= 0) return;
  const int C = H * N;
  float* partial = partials(ctx, 5, M, C);
  const int chunks = launch_heads(M, H, N, "rwkv7_prepare_backward", [&](auto n, dim3 grid) {
    prepare_backward_kernel<decltype(n)::value><<<grid, 32 * kWarps, 0, ctx.stream>>>(M, H, p, partial);
  });
  col_finish(ctx, partial, chunks, C, {p.d_ka, p.d_kk, p.d_w0, p.d_a0, p.first_layer ? nullptr : p.d_v0});
}

}  // namespace rwkv::cuda::train
