// RWKV-7 training ops on the GPU (see train_ops.h). Per-row ops run one block per row,
// element-wise ops a grid-stride loop; column sums are two-pass (partials per block of rows, then
// in order). The per-head ops are in train_heads.cu.
#include <algorithm>
#include <type_traits>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/vec_io.cuh"
#include "ops/cuda/train_ops.h"

namespace rwkv::cuda::train {
namespace {

__device__ __forceinline__ bf16 b16(float x) { return __float2bfloat16_rn(x); }


// ---- LayerNorm ----

__global__ void ln_backward_kernel(const float* dout, const float* x, int C, const float* w,
                                   const float* mean_in, const float* rstd_in, float* dx,
                                   float* xhat_dout) {
  __shared__ float scratch[32];
  const size_t row = blockIdx.x, o = row * size_t(C);
  const float mean = mean_in[row], rstd = rstd_in[row];
  float sg = 0.f, sgx = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float xh = (x[o + c] - mean) * rstd, g = dout[o + c] * w[c];
    sg += g;
    sgx += g * xh;
    xhat_dout[o + c] = dout[o + c] * xh;
  }
  const float mg = block_sum(sg, scratch) / float(C);
  const float mgx = block_sum(sgx, scratch) / float(C);
  if (!dx) return;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float xh = (x[o + c] - mean) * rstd, g = dout[o + c] * w[c];
    dx[o + c] += rstd * (g - mg - xh * mgx);
  }
}

// Rows of C ≤ 1024 (C % 4 == 0) in registers: a warp per kRowStrip rows, lane l holding float4
// groups at channels 4·(l + 32·i), i < V = ⌈C/128⌉; a block's 8 warps take kColSumRows
// consecutive rows. One read of each row (the block-per-row kernel above re-reads it), and the
// backward's column sums added in registers, then per block in shared memory in warp order.
constexpr int kRowStrip = kColSumRows / 8, kMaxRowGroups = 8;

__device__ __forceinline__ float4 f4(float a) { return make_float4(a, a, a, a); }
__device__ __forceinline__ float4 operator+(float4 a, float4 b) { return {a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w}; }
__device__ __forceinline__ float4 operator-(float4 a, float4 b) { return {a.x - b.x, a.y - b.y, a.z - b.z, a.w - b.w}; }
__device__ __forceinline__ float4 operator*(float4 a, float4 b) { return {a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w}; }
__device__ __forceinline__ float hsum(float4 a) { return (a.x + a.y) + (a.z + a.w); }

template <int V>
struct RowLanes {
  int lane, m0, m1;
  __device__ RowLanes(int M) : lane(threadIdx.x & 31) {
    m0 = blockIdx.x * kColSumRows + (threadIdx.x >> 5) * kRowStrip;
    m1 = min(M, m0 + kRowStrip);
  }
  __device__ int col(int i) const { return 4 * (lane + 32 * i); }
  // Channels past C read as zeros.
  __device__ void load(const float* row, int C, float4 (&v)[V]) const {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = col(i) < C ? *reinterpret_cast<const float4*>(row + col(i)) : f4(0.f);
  }
  __device__ void store(float* row, int C, const float4 (&v)[V]) const {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (col(i) < C) *reinterpret_cast<float4*>(row + col(i)) = v[i];
    }
  }
};

template <int V>
__global__ void __launch_bounds__(256) ln_forward_rows_kernel(const float* x, int M, int C, const float* w,
                                                              const float* b, float eps, float* out,
                                                              float* mean_out, float* rstd_out) {
  const RowLanes<V> rl(M);
  float4 wv[V], bv[V];
  rl.load(w, C, wv), rl.load(b, C, bv);
  for (int m = rl.m0; m < rl.m1; ++m) {
    const size_t o = size_t(m) * size_t(C);
    float4 xv[V];
    rl.load(x + o, C, xv);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i) s += hsum(xv[i]);
    const float mean = warp_sum(s) / float(C);
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (rl.col(i) < C) q += hsum((xv[i] - f4(mean)) * (xv[i] - f4(mean)));
    }
    const float inv = rsqrtf(warp_sum(q) / float(C) + eps);
    float4 y[V];
#pragma unroll
    for (int i = 0; i < V; ++i) y[i] = (xv[i] - f4(mean)) * f4(inv) * wv[i] + bv[i];
    rl.store(out + o, C, y);
    if (rl.lane == 0) mean_out[m] = mean, rstd_out[m] = inv;
  }
}

// dx += ∂/∂x (dx may be null); partial rows of Σ dout·x̂ and Σ dout per block (for col_finish).
template <int V>
__global__ void __launch_bounds__(256) ln_backward_rows_kernel(const float* dout, const float* x, int M, int C,
                                                               const float* w, const float* mean_in,
                                                               const float* rstd_in, float* dx, float* partial) {
  extern __shared__ float red[];  // [8 warps][C]
  const RowLanes<V> rl(M);
  float4 wv[V], tw[V], tb[V];
  rl.load(w, C, wv);
#pragma unroll
  for (int i = 0; i < V; ++i) tw[i] = f4(0.f), tb[i] = f4(0.f);
  for (int m = rl.m0; m < rl.m1; ++m) {
    const size_t o = size_t(m) * size_t(C);
    const float mean = mean_in[m], rstd = rstd_in[m];
    float4 xv[V], dv[V], xh[V], g[V];
    rl.load(x + o, C, xv), rl.load(dout + o, C, dv);
    float sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      xh[i] = (xv[i] - f4(mean)) * f4(rstd), g[i] = dv[i] * wv[i];
      sg += hsum(g[i]), sgx += hsum(g[i] * xh[i]);
      tw[i] = tw[i] + dv[i] * xh[i], tb[i] = tb[i] + dv[i];
    }
    const float mg = warp_sum(sg) / float(C), mgx = warp_sum(sgx) / float(C);
    if (!dx) continue;
    float4 d[V];
    rl.load(dx + o, C, d);
#pragma unroll
    for (int i = 0; i < V; ++i) d[i] = d[i] + f4(rstd) * (g[i] - f4(mg) - xh[i] * f4(mgx));
    rl.store(dx + o, C, d);
  }
  const int warp = threadIdx.x >> 5;
  for (int s = 0; s < 2; ++s) {
    rl.store(red + warp * C, C, s == 0 ? tw : tb);
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      float t = 0.f;
#pragma unroll
      for (int q = 0; q < 8; ++q) t += red[q * C + c];
      partial[(size_t(s) * gridDim.x + blockIdx.x) * size_t(C) + c] = t;
    }
    __syncthreads();
  }
}

template <class Launch>
void dispatch_row_groups(int C, Launch&& launch) {
  switch ((C + 127) / 128) {
    case 1: launch(std::integral_constant<int, 1>{}); break;
    case 2: launch(std::integral_constant<int, 2>{}); break;
    case 3: launch(std::integral_constant<int, 3>{}); break;
    case 4: launch(std::integral_constant<int, 4>{}); break;
    case 5: launch(std::integral_constant<int, 5>{}); break;
    case 6: launch(std::integral_constant<int, 6>{}); break;
    case 7: launch(std::integral_constant<int, 7>{}); break;
    default: launch(std::integral_constant<int, 8>{}); break;
  }
}

bool rows_fit(int C) { return C % 4 == 0 && C <= 128 * kMaxRowGroups; }

// ---- column sums ----

// Block (32, 8): the sum over threadIdx.y of each column's values s, added in y order; valid in
// the threads with threadIdx.y == 0.
__device__ __forceinline__ float sum_over_rows_of_8(float s) {
  __shared__ float sums[8][32];
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  float t = 0.f;
  if (threadIdx.y == 0) {
#pragma unroll
    for (int y = 0; y < 8; ++y) t += sums[y][threadIdx.x];
  }
  return t;
}

__global__ void col_partial_kernel(const float* a, const float* b, int M, int C, float* partial) {
  const int c = blockIdx.x * 32 + threadIdx.x, chunk = blockIdx.y;
  const int m0 = chunk * kColSumRows, m1 = min(M, m0 + kColSumRows);
  float s = 0.f;
  if (c < C) {
    for (int m = m0 + threadIdx.y; m < m1; m += 8) {
      const size_t i = size_t(m) * size_t(C) + c;
      s += b ? a[i] * b[i] : a[i];
    }
  }
  const float t = sum_over_rows_of_8(s);
  if (threadIdx.y == 0 && c < C) partial[size_t(chunk) * size_t(C) + c] = t;
}

// Threads (32, 8) per 32 columns and output (blockIdx.y): thread y adds partial rows y, y + 8, …
// in order, then the 8 sums are added in order.
struct ColOutputs {
  float* out[8];
};
__global__ void col_finish_kernel(const float* partial, int chunks, int C, ColOutputs outs) {
  float* out = outs.out[blockIdx.y];
  if (!out) return;
  const int c = blockIdx.x * 32 + threadIdx.x;
  const float* part = partial + size_t(blockIdx.y) * chunks * size_t(C);
  float s = 0.f;
  if (c < C) {
    for (int k = threadIdx.y; k < chunks; k += 8) s += part[size_t(k) * size_t(C) + c];
  }
  const float t = sum_over_rows_of_8(s);
  if (threadIdx.y == 0 && c < C) out[c] += t;
}

// ---- token shift and mixes ----

__global__ void token_shift_backward_kernel(const float* ddelta, int T, int C, size_t n, float* dx,
                                            MutRows dprev, const unsigned char* reset) {
  GRID_STRIDE(i, n) {
    const size_t m = i / size_t(C);
    const int c = int(i % size_t(C)), t = int(m % size_t(T));
    const bool next_uses = t + 1 < T && !(reset && reset[m + 1]);
    dx[i] += (next_uses ? ddelta[i + size_t(C)] : 0.f) - ddelta[i];
    if (t == 0 && dprev.base) {
      dprev.base[(m / size_t(T)) * dprev.stride + c] = reset && reset[m] ? 0.f : ddelta[i];
    }
  }
}

// Four channels at a time where C and the pointers allow.
__global__ void token_shift_backward4_kernel(const float4* ddelta, int T, int C4, size_t n4, float4* dx,
                                             MutRows dprev, const unsigned char* reset) {
  GRID_STRIDE(q, n4) {
    const size_t m = q / size_t(C4);
    const int c = 4 * int(q - m * size_t(C4)), t = int(m % size_t(T));
    const bool next_uses = t + 1 < T && !(reset && reset[m + 1]);
    const float4 d = ddelta[q], n = next_uses ? ddelta[q + size_t(C4)] : make_float4(0.f, 0.f, 0.f, 0.f);
    float4 x = dx[q];
    x.x += n.x - d.x, x.y += n.y - d.y, x.z += n.z - d.z, x.w += n.w - d.w;
    dx[q] = x;
    if (t == 0 && dprev.base) {
      float* p = dprev.base + (m / size_t(T)) * dprev.stride + c;
      const bool zero = reset && reset[m];
      p[0] = zero ? 0.f : d.x, p[1] = zero ? 0.f : d.y, p[2] = zero ? 0.f : d.z, p[3] = zero ? 0.f : d.w;
    }
  }
}

// The token shift and the mixes in one pass, W channels per thread: 4 (16-byte accesses) where C
// and every pointer allow, else 1. (Per-value kernels with 64-bit index divisions ran at about a
// third of the copy bandwidth on an H200; a separate shift then mix wrote and re-read δ.)
template <int W>
__global__ void shift_mix_kernel(const float* x, Rows prev, int T, int CW, size_t nW, Mixes mixes, float* delta,
                                 const unsigned char* reset) {
  GRID_STRIDE(q, nW) {
    const size_t m = q / size_t(CW);
    const int c = W * int(q - m * size_t(CW)), t = int(m % size_t(T));
    float p[W] = {}, v[W], d[W];  // p stays zero at a new document
    load(x + q * W, v);
    if (!(reset && reset[m])) {
      if (t > 0) {
        load(x + (q - CW) * W, p);
      } else if (prev.base) {
        const float* s = prev.base + (m / size_t(T)) * prev.stride + c;
#pragma unroll
        for (int i = 0; i < W; ++i) p[i] = s[i];
      }
    }
#pragma unroll
    for (int i = 0; i < W; ++i) d[i] = p[i] - v[i];
    if (delta) store(delta + q * W, d);
#pragma unroll
    for (int j = 0; j < 6; ++j) {  // unrolled: the mixes' pointers stay in registers
      if (j >= mixes.n) break;
      float mu[W], o[W];
      load(mixes.mu[j] + c, mu);
#pragma unroll
      for (int i = 0; i < W; ++i) o[i] = v[i] + d[i] * mu[i];
      store(mixes.out[j] + q * W, o);
    }
  }
}

// The backward of n mixes over a block of kColSumRows rows and 32·W channels (W = 4: 16-byte
// accesses, where C and the pointers allow; else 1): threads (32, 8), thread y taking every 8th
// row; its Σ dout_j⊙δ per channel added over y in order into one partial row per block.
template <int W>
__global__ void mix_backward_kernel(MixGrads g, const float* delta, int M, int C, float* dh, float* ddelta,
                                    float* partial) {
  using Vec = std::conditional_t<W == 4, float4, float>;
  __shared__ float red[8][6][32 * W];
  const int c = (blockIdx.x * 32 + threadIdx.x) * W, chunk = blockIdx.y;
  const int m1 = min(M, (chunk + 1) * kColSumRows);
  float dmu[6][W] = {};
  if (c < C) {
    for (int m = chunk * kColSumRows + threadIdx.y; m < m1; m += 8) {
      const size_t o = size_t(m) * size_t(C) + c;
      float d[W], a[W] = {}, b[W] = {};
      *reinterpret_cast<Vec*>(d) = *reinterpret_cast<const Vec*>(delta + o);
#pragma unroll
      for (int j = 0; j < 6; ++j) {  // unrolled: dmu stays in registers
        if (j >= g.n) break;
        float x[W], mu[W];
        *reinterpret_cast<Vec*>(x) = *reinterpret_cast<const Vec*>(g.dout[j] + o);
        *reinterpret_cast<Vec*>(mu) = *reinterpret_cast<const Vec*>(g.mu[j] + c);
#pragma unroll
        for (int i = 0; i < W; ++i) a[i] += x[i], b[i] += x[i] * mu[i], dmu[j][i] += x[i] * d[i];
      }
      *reinterpret_cast<Vec*>(dh + o) = *reinterpret_cast<Vec*>(a);
      *reinterpret_cast<Vec*>(ddelta + o) = *reinterpret_cast<Vec*>(b);
    }
  }
#pragma unroll
  for (int j = 0; j < 6; ++j) {
    if (j >= g.n) break;
#pragma unroll
    for (int i = 0; i < W; ++i) red[threadIdx.y][j][threadIdx.x * W + i] = dmu[j][i];
  }
  __syncthreads();
  const int t = threadIdx.y * 32 + threadIdx.x, c0 = blockIdx.x * 32 * W;
  for (int e = t; e < g.n * 32 * W; e += 256) {
    const int j = e / (32 * W), q = e % (32 * W);
    if (c0 + q >= C) continue;
    float sum = 0.f;
#pragma unroll
    for (int y = 0; y < 8; ++y) sum += red[y][j][q];
    partial[(size_t(j) * gridDim.y + chunk) * size_t(C) + c0 + q] = sum;
  }
}

__global__ void add_rows_kernel(Rows src, int C, size_t n, MutRows dst) {
  GRID_STRIDE(i, n) {
    const size_t b = i / size_t(C), c = i % size_t(C);
    dst.base[b * dst.stride + c] += src.base[b * src.stride + c];
  }
}

// ---- activations ----

__global__ void activate_bf16_kernel(float* x, size_t n, int act, bf16* out) {
  GRID_STRIDE(i, n) {
    const float y = apply_act(x[i], act);
    x[i] = y;
    out[i] = b16(y);
  }
}

__global__ void activation_backward_kernel(const float* dy, const float* h, size_t n, int act, bf16* out) {
  GRID_STRIDE(i, n) {
    float g = dy[i];
    if (act == int(Act::Tanh)) g *= 1.f - h[i] * h[i];
    if (act == int(Act::Sigmoid)) g *= h[i] * (1.f - h[i]);
    out[i] = b16(g);
  }
}

// The element-wise ops below take W values per thread: 4 (16-byte float accesses) where n and the
// pointers allow (wide()), else 1.
template <int W>
__global__ void sqrelu_kernel(const float* pre, size_t n, bf16* out) {
  GRID_STRIDE(q, n / W) {
    float x[W];
    load(pre + q * W, x);
#pragma unroll
    for (int i = 0; i < W; ++i) x[i] = fmaxf(x[i], 0.f) * fmaxf(x[i], 0.f);
    store(out + q * W, x);
  }
}

template <int W>
__global__ void sqrelu_backward_kernel(const float* dy, const float* pre, size_t n, bf16* out) {
  GRID_STRIDE(q, n / W) {
    float g[W], x[W];
    load(dy + q * W, g), load(pre + q * W, x);
#pragma unroll
    for (int i = 0; i < W; ++i) g[i] = g[i] * 2.f * fmaxf(x[i], 0.f);
    store(out + q * W, g);
  }
}

template <int W>
__global__ void wkv_inputs_kernel(size_t n, WkvInputs p) {
  GRID_STRIDE(q, n / W) {
    const size_t o = q * W;
    float r[W], z[W], k2[W], v[W], kn[W], alpha[W], a[W], b[W];
    load(p.r + o, r), load(p.z + o, z), load(p.k2 + o, k2), load(p.v + o, v), load(p.kn + o, kn);
    load(p.alpha + o, alpha);
#pragma unroll
    for (int i = 0; i < W; ++i) a[i] = -kn[i], b[i] = kn[i] * alpha[i];
    store(p.r16 + o, r), store(p.z16 + o, z), store(p.k16 + o, k2), store(p.v16 + o, v);
    store(p.a16 + o, a), store(p.b16 + o, b);
  }
}

template <int W>
__global__ void gate_kernel(const float* zo, const float* g, size_t n, bf16* x16) {
  GRID_STRIDE(q, n / W) {
    float x[W], y[W];
    load(zo + q * W, x), load(g + q * W, y);
#pragma unroll
    for (int i = 0; i < W; ++i) x[i] *= y[i];
    store(x16 + q * W, x);
  }
}

bool wide(size_t n, std::initializer_list<const void*> pointers) { return n % 4 == 0 && aligned16(pointers); }

// ---- loss ----

// The running maximum (its first index: torch.max's argmax) and Σ e^{x − max} of a share of a row.
struct SoftmaxPart {
  float best = -INFINITY, sum = 0.f;
  int arg = 0x7fffffff;
  __device__ void add(float x, int i) {
    if (x > best) {
      sum = sum * __expf(best - x) + 1.f, best = x, arg = i;
    } else {
      sum += __expf(x - best);
    }
  }
  __device__ void merge(float ob, float os, int oa) {
    const float b = ob > best || (ob == best && oa < arg) ? ob : best;
    const int a = ob > best || (ob == best && oa < arg) ? oa : arg;
    sum = (sum > 0.f ? sum * __expf(best - b) : 0.f) + (os > 0.f ? os * __expf(ob - b) : 0.f);
    best = b, arg = a;
  }
};

// One block per row, two passes over it: the maximum and the sum together (online softmax),
// then the gradient. W = 4: 16-byte reads and 8-byte writes where V and the pointers allow.
template <int W>
__global__ void cross_entropy_kernel(const float* logits, const int* targets, int V, float scale,
                                     float l2wrap, float* loss, bf16* dlogits) {
  __shared__ float sbest[32], ssum[32];
  __shared__ int sarg[32];
  const size_t m = blockIdx.x;
  const float* x = logits + m * size_t(V);
  bf16* d = dlogits + m * size_t(V);
  const int target = targets[m], n = V / W;
  if (target < 0) {
    for (int i = threadIdx.x; i < V; i += blockDim.x) d[i] = b16(0.f);
    if (threadIdx.x == 0) loss[m] = 0.f;
    return;
  }
  SoftmaxPart part;
  for (int q = threadIdx.x; q < n; q += blockDim.x) {
    if constexpr (W == 4) {
      const float4 v = reinterpret_cast<const float4*>(x)[q];
      part.add(v.x, 4 * q), part.add(v.y, 4 * q + 1), part.add(v.z, 4 * q + 2), part.add(v.w, 4 * q + 3);
    } else {
      part.add(x[q], q);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    part.merge(__shfl_xor_sync(0xffffffffu, part.best, o), __shfl_xor_sync(0xffffffffu, part.sum, o),
               __shfl_xor_sync(0xffffffffu, part.arg, o));
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  if (lane == 0) sbest[warp] = part.best, ssum[warp] = part.sum, sarg[warp] = part.arg;
  __syncthreads();
  SoftmaxPart all;
  for (int w = 0; w < warps; ++w) all.merge(sbest[w], ssum[w], sarg[w]);
  const float best = all.best, p_scale = scale / all.sum;
  const int arg = all.arg;
  const auto grad = [&](float v, int i) {
    float g = __expf(v - best) * p_scale;
    if (i == target) g -= scale;
    if (i == arg && l2wrap > 0.f) g += l2wrap * best;
    return g;
  };
  for (int q = threadIdx.x; q < n; q += blockDim.x) {
    if constexpr (W == 4) {
      const float4 v = reinterpret_cast<const float4*>(x)[q];
      const __nv_bfloat162 lo = __floats2bfloat162_rn(grad(v.x, 4 * q), grad(v.y, 4 * q + 1));
      const __nv_bfloat162 hi = __floats2bfloat162_rn(grad(v.z, 4 * q + 2), grad(v.w, 4 * q + 3));
      uint2 out;
      out.x = *reinterpret_cast<const uint32_t*>(&lo), out.y = *reinterpret_cast<const uint32_t*>(&hi);
      reinterpret_cast<uint2*>(d)[q] = out;
    } else {
      d[q] = b16(grad(x[q], q));
    }
  }
  if (threadIdx.x == 0) loss[m] = logf(all.sum) + best - x[target];
}

// One block per token in the batch; its rows summed in order, column by column.
__global__ void embed_backward_kernel(const int* ids, const int* starts, const int* rows,
                                      const float* dx, int C, float* demb) {
  const int u = blockIdx.x, begin = starts[u], end = starts[u + 1];
  float* out = demb + size_t(ids[u]) * size_t(C);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float s = 0.f;
    for (int i = begin; i < end; ++i) s += dx[size_t(rows[i]) * size_t(C) + c];
    out[c] += s;
  }
}

// ---- optimizer ----

// Block b's Σg² over its grid-stride share into partial[b]; then one block adds the partials in
// order (no atomics: the same bits every run, so a clipped step repeats exactly).
__global__ void sum_squares_kernel(const float* g, size_t n, double* partial) {
  __shared__ double part[32];
  double s = 0;
  GRID_STRIDE(i, n) s += double(g[i]) * double(g[i]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) part[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < int(blockDim.x >> 5); ++w) t += part[w];
    partial[blockIdx.x] = t;
  }
}

__global__ void sum_partials_kernel(const double* partial, int n, double* out) {
  double t = 0;
  for (int i = 0; i < n; ++i) t += partial[i];
  *out = t;
}

__global__ void adamw_kernel(float* p, const float* g, float* m1, float* m2, bf16* p16, size_t n,
                             float lr, float wd, float b1, float b2, float eps, float c1, float c2,
                             float grad_scale) {
  GRID_STRIDE(i, n) {
    const float gi = g[i] * grad_scale;
    const float mi = b1 * m1[i] + (1.f - b1) * gi;
    const float vi = b2 * m2[i] + (1.f - b2) * gi * gi;
    m1[i] = mi;
    m2[i] = vi;
    const float update = (mi / c1) / (sqrtf(vi / c2) + eps) + wd * p[i];
    const float np = p[i] - lr * update;
    p[i] = np;
    p16[i] = b16(np);
  }
}

}  // namespace

void layer_norm_forward(Context& ctx, const float* x, int M, int C, const float* w, const float* b,
                        float eps, float* out, float* mean, float* rstd) {
  if (M <= 0) return;
  if (!rows_fit(C) || !aligned16({x, w, b, out})) {
    layer_norm(ctx, x, C, out, M, C, w, b, eps, mean, rstd);
    return;
  }
  const int blocks = (M + kColSumRows - 1) / kColSumRows;
  dispatch_row_groups(C, [&](auto v) {
    ln_forward_rows_kernel<decltype(v)::value><<<blocks, 256, 0, ctx.stream>>>(x, M, C, w, b, eps, out, mean, rstd);
  });
  RWKV_CUDA_LAUNCHED("train layer_norm_forward");
}

void layer_norm_backward(Context& ctx, const float* dout, const float* x, int M, int C, const float* w,
                         const float* mean, const float* rstd, float* dx, float* dw, float* db,
                         float* scratch) {
  if (M <= 0) return;
  if (rows_fit(C) && aligned16({dout, x, w, dx})) {
    const int chunks = (M + kColSumRows - 1) / kColSumRows;
    ctx.reduce.ensure(2 * size_t(chunks) * size_t(C) * sizeof(float));
    float* partial = ctx.reduce.as<float>();
    dispatch_row_groups(C, [&](auto v) {
      ln_backward_rows_kernel<decltype(v)::value><<<chunks, 256, 8 * C * sizeof(float), ctx.stream>>>(
          dout, x, M, C, w, mean, rstd, dx, partial);
    });
    RWKV_CUDA_LAUNCHED("train layer_norm_backward");
    col_finish(ctx, partial, chunks, C, {dw, db});
    return;
  }
  ln_backward_kernel<<<M, 256, 0, ctx.stream>>>(dout, x, C, w, mean, rstd, dx, scratch);
  RWKV_CUDA_LAUNCHED("train layer_norm_backward");
  if (dw) col_sum(ctx, scratch, nullptr, M, C, dw);
  if (db) col_sum(ctx, dout, nullptr, M, C, db);
}

void col_sum(Context& ctx, const float* a, const float* b, int M, int C, float* out) {
  if (M <= 0 || C <= 0) return;
  const int chunks = (M + kColSumRows - 1) / kColSumRows;
  ctx.reduce.ensure(size_t(chunks) * size_t(C) * sizeof(float));
  float* partial = ctx.reduce.as<float>();
  col_partial_kernel<<<dim3((C + 31) / 32, chunks), dim3(32, 8), 0, ctx.stream>>>(a, b, M, C, partial);
  RWKV_CUDA_LAUNCHED("col_sum partial");
  col_finish(ctx, partial, chunks, C, {out});
}

void col_finish(Context& ctx, const float* partial, int chunks, int C, std::initializer_list<float*> outs) {
  if (chunks <= 0 || C <= 0 || outs.size() == 0) return;
  if (outs.size() > 8) fail("col_finish: ", outs.size(), " outputs (at most 8)");
  ColOutputs o{};
  std::copy(outs.begin(), outs.end(), o.out);
  col_finish_kernel<<<dim3((C + 31) / 32, unsigned(outs.size())), dim3(32, 8), 0, ctx.stream>>>(partial, chunks, C, o);
  RWKV_CUDA_LAUNCHED("col_sum finish");
}

void shift_mix_bf16(Context& ctx, const float* x, Rows prev, int B, int T, int C, const Mixes& mixes, float* delta,
                    const unsigned char* reset) {
  const size_t n = size_t(B) * size_t(T) * size_t(C);
  if (n == 0) return;
  if (mixes.n < 0 || mixes.n > 6) fail("shift_mix_bf16: ", mixes.n, " mixes (0 to 6)");
  bool wide = C % 4 == 0 && aligned16({x, delta});
  for (int j = 0; j < mixes.n; ++j) wide = wide && aligned16({mixes.mu[j], mixes.out[j]});
  if (wide) {
    shift_mix_kernel<4><<<grid_for(n / 4), 256, 0, ctx.stream>>>(x, prev, T, C / 4, n / 4, mixes, delta, reset);
  } else {
    shift_mix_kernel<1><<<grid_for(n), 256, 0, ctx.stream>>>(x, prev, T, C, n, mixes, delta, reset);
  }
  RWKV_CUDA_LAUNCHED("shift_mix_bf16");
}

void token_shift_backward(Context& ctx, const float* ddelta, int B, int T, int C, float* dx,
                          MutRows dprev, const unsigned char* reset) {
  const size_t n = size_t(B) * size_t(T) * size_t(C);
  if (n == 0) return;
  if (C % 4 == 0 && aligned16({ddelta, dx})) {
    token_shift_backward4_kernel<<<grid_for(n / 4), 256, 0, ctx.stream>>>(
        reinterpret_cast<const float4*>(ddelta), T, C / 4, n / 4, reinterpret_cast<float4*>(dx), dprev, reset);
  } else {
    token_shift_backward_kernel<<<grid_for(n), 256, 0, ctx.stream>>>(ddelta, T, C, n, dx, dprev, reset);
  }
  RWKV_CUDA_LAUNCHED("token_shift_backward");
}

void mix_backward(Context& ctx, const MixGrads& g, const float* delta, int M, int C, float* dh, float* ddelta) {
  if (M <= 0 || C <= 0) return;
  if (g.n < 1 || g.n > 6) fail("mix_backward: ", g.n, " mixes (1 to 6)");
  const int chunks = (M + kColSumRows - 1) / kColSumRows;
  ctx.reduce.ensure(size_t(g.n) * size_t(chunks) * size_t(C) * sizeof(float));
  float* partial = ctx.reduce.as<float>();
  bool wide = C % 4 == 0 && aligned16({delta, dh, ddelta});
  for (int j = 0; j < g.n; ++j) wide = wide && aligned16({g.dout[j], g.mu[j]});
  const int W = wide ? 4 : 1;
  const dim3 grid((C + 32 * W - 1) / (32 * W), chunks), block(32, 8);
  if (wide) {
    mix_backward_kernel<4><<<grid, block, 0, ctx.stream>>>(g, delta, M, C, dh, ddelta, partial);
  } else {
    mix_backward_kernel<1><<<grid, block, 0, ctx.stream>>>(g, delta, M, C, dh, ddelta, partial);
  }
  RWKV_CUDA_LAUNCHED("mix_backward");
  ColOutputs o{};
  std::copy_n(g.dmu, g.n, o.out);
  col_finish_kernel<<<dim3((C + 31) / 32, unsigned(g.n)), dim3(32, 8), 0, ctx.stream>>>(partial, chunks, C, o);
  RWKV_CUDA_LAUNCHED("col_sum finish");
}

void add_rows(Context& ctx, Rows src, int B, int C, MutRows dst) {
  const size_t n = size_t(B) * size_t(C);
  if (n == 0) return;
  add_rows_kernel<<<grid_for(n), 256, 0, ctx.stream>>>(src, C, n, dst);
  RWKV_CUDA_LAUNCHED("add_rows");
}

void activation_backward_bf16(Context& ctx, const float* dy, const float* h, size_t n, Act act, bf16* out) {
  if (n == 0) return;
  activation_backward_kernel<<<grid_for(n), 256, 0, ctx.stream>>>(dy, h, n, int(act), out);
  RWKV_CUDA_LAUNCHED("activation_backward_bf16");
}

void activate_bf16(Context& ctx, float* x, size_t n, Act act, bf16* out) {
  if (n == 0) return;
  activate_bf16_kernel<<<grid_for(n), 256, 0, ctx.stream>>>(x, n, int(act), out);
  RWKV_CUDA_LAUNCHED("activate_bf16");
}

void sqrelu_bf16(Context& ctx, const float* pre, size_t n, bf16* out) {
  if (n == 0) return;
  if (wide(n, {pre, out})) {
    sqrelu_kernel<4><<<grid_for(n / 4), 256, 0, ctx.stream>>>(pre, n, out);
  } else {
    sqrelu_kernel<1><<<grid_for(n), 256, 0, ctx.stream>>>(pre, n, out);
  }
  RWKV_CUDA_LAUNCHED("sqrelu_bf16");
}

void sqrelu_backward_bf16(Context& ctx, const float* dy, const float* pre, size_t n, bf16* out) {
  if (n == 0) return;
  if (wide(n, {dy, pre, out})) {
    sqrelu_backward_kernel<4><<<grid_for(n / 4), 256, 0, ctx.stream>>>(dy, pre, n, out);
  } else {
    sqrelu_backward_kernel<1><<<grid_for(n), 256, 0, ctx.stream>>>(dy, pre, n, out);
  }
  RWKV_CUDA_LAUNCHED("sqrelu_backward_bf16");
}

void rwkv7_wkv_inputs(Context& ctx, size_t n, const WkvInputs& p) {
  if (n == 0) return;
  if (wide(n, {p.r, p.z, p.k2, p.v, p.kn, p.alpha, p.r16, p.z16, p.k16, p.v16, p.a16, p.b16})) {
    wkv_inputs_kernel<4><<<grid_for(n / 4), 256, 0, ctx.stream>>>(n, p);
  } else {
    wkv_inputs_kernel<1><<<grid_for(n), 256, 0, ctx.stream>>>(n, p);
  }
  RWKV_CUDA_LAUNCHED("rwkv7_wkv_inputs");
}

void gate_bf16(Context& ctx, const float* zo, const float* g, size_t n, bf16* x16) {
  if (n == 0) return;
  if (wide(n, {zo, g, x16})) {
    gate_kernel<4><<<grid_for(n / 4), 256, 0, ctx.stream>>>(zo, g, n, x16);
  } else {
    gate_kernel<1><<<grid_for(n), 256, 0, ctx.stream>>>(zo, g, n, x16);
  }
  RWKV_CUDA_LAUNCHED("gate_bf16");
}

void cross_entropy(Context& ctx, const float* logits, const int* targets, int M, int V, float scale,
                   float l2wrap, float* loss, bf16* dlogits16) {
  if (M <= 0) return;
  if (V % 4 == 0 && aligned16({logits, dlogits16})) {
    cross_entropy_kernel<4><<<M, 1024, 0, ctx.stream>>>(logits, targets, V, scale, l2wrap, loss, dlogits16);
  } else {
    cross_entropy_kernel<1><<<M, 1024, 0, ctx.stream>>>(logits, targets, V, scale, l2wrap, loss, dlogits16);
  }
  RWKV_CUDA_LAUNCHED("cross_entropy");
}

TokenRows group_rows_by_token(const int* tokens, size_t M, int V) {
  // A counting sort: stable, so each token's rows stay in increasing order.
  std::vector<int> count(size_t(V) + 1, 0);
  for (size_t m = 0; m < M; ++m) ++count[size_t(tokens[m]) + 1];
  TokenRows g;
  for (int v = 0; v < V; ++v) g.unique += count[size_t(v) + 1] > 0;
  const size_t U = size_t(g.unique);
  g.data.assign(U + (U + 1) + M, 0);
  int* ids = g.data.data();
  int* starts = ids + U;
  int* rows = starts + U + 1;
  size_t u = 0;
  for (int v = 0; v < V; ++v) {
    if (count[size_t(v) + 1] > 0) ids[u] = v, starts[u + 1] = starts[u] + count[size_t(v) + 1], ++u;
    count[size_t(v) + 1] += count[size_t(v)];  // now: where token v's rows begin
  }
  for (size_t m = 0; m < M; ++m) rows[count[size_t(tokens[m])]++] = int(m);
  return g;
}

void embed_backward(Context& ctx, const int* grouped, int unique, const float* dx, int M, int C,
                    float* demb) {
  if (M <= 0 || unique <= 0) return;
  const int* starts = grouped + unique;
  embed_backward_kernel<<<unique, 256, 0, ctx.stream>>>(grouped, starts, starts + unique + 1, dx, C, demb);
  RWKV_CUDA_LAUNCHED("embed_backward");
}

void sum_squares(Context& ctx, const float* g, size_t n, double* out) {
  RWKV_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), ctx.stream));
  if (n == 0) return;
  const int blocks = std::min(grid_for(n), 1024);
  ctx.reduce.ensure(size_t(blocks) * sizeof(double));
  double* partial = ctx.reduce.as<double>();
  sum_squares_kernel<<<blocks, 256, 0, ctx.stream>>>(g, n, partial);
  RWKV_CUDA_LAUNCHED("sum_squares");
  sum_partials_kernel<<<1, 1, 0, ctx.stream>>>(partial, blocks, out);
  RWKV_CUDA_LAUNCHED("sum_partials");
}

void adamw(Context& ctx, float* params, const float* grads, float* m, float* v, bf16* params16,
           const AdamWGroup& group, float beta1, float beta2, float eps, float correction1,
           float correction2, float grad_scale) {
  if (group.count == 0) return;
  const size_t o = group.offset;
  adamw_kernel<<<grid_for(group.count), 256, 0, ctx.stream>>>(
      params + o, grads + o, m + o, v + o, params16 + o, group.count, group.lr, group.weight_decay,
      beta1, beta2, eps, correction1, correction2, grad_scale);
  RWKV_CUDA_LAUNCHED("adamw");
}

}  // namespace rwkv::cuda::train
