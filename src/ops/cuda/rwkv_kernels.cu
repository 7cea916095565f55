// The element-wise and per-row ops of the models: embedding, LayerNorm, token shift with mixes,
// and RWKV-7's per-head preparation and output of the WKV.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/rwkv7_math.cuh"
#include "ops/cuda/kernels.h"

namespace rwkv::cuda {
namespace {

template <typename T>
__global__ void embed_kernel(const int* tokens, const T* emb, int C, float* x) {
  const T* row = emb + size_t(tokens[blockIdx.x]) * size_t(C);
  float* out = x + size_t(blockIdx.x) * size_t(C);
  for (int c = threadIdx.x; c < C; c += blockDim.x) out[c] = to_float(row[c]);
}

// One block per row; two passes over the row (mean, then variance about it) as the CPU does.
// mean/rstd (training's statistics) may be null.
__global__ void layer_norm_kernel(const float* in, int in_ld, float* out, int C, const float* w,
                                  const float* b, float eps, float* mean_out, float* rstd_out) {
  __shared__ float scratch[32];
  const float* x = in + size_t(blockIdx.x) * size_t(in_ld);
  float* y = out + size_t(blockIdx.x) * size_t(C);
  float s = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += x[c];
  const float mean = block_sum(s, scratch) / float(C);
  float q = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = x[c] - mean;
    q += d * d;
  }
  const float inv = rsqrtf(block_sum(q, scratch) / float(C) + eps);
  __syncthreads();  // y may alias x: every read above is done
  for (int c = threadIdx.x; c < C; c += blockDim.x) y[c] = (x[c] - mean) * inv * w[c] + b[c];
  if (threadIdx.x == 0 && mean_out) mean_out[blockIdx.x] = mean, rstd_out[blockIdx.x] = inv;
}

// Thread (b, chunk of rows, c). The thread of a sequence's first chunk is the only one that reads
// the shift state, and it writes the new one after reading: no other thread touches it.
constexpr int kShiftRows = 16;
__global__ void token_shift_mix_kernel(const float* xn, int B, int T, int C, StateRef st,
                                       size_t offset, ShiftMix mixes) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int chunk = blockIdx.y, b = blockIdx.z;
  if (c >= C) return;
  const int t0 = chunk * kShiftRows, t1 = min(T, t0 + kShiftRows);
  float* shift = st.pool + size_t(st.slots[b]) * st.floats + offset;
  const size_t base = size_t(b) * size_t(T);
  float prev = t0 == 0 ? shift[c] : xn[(base + t0 - 1) * size_t(C) + c];
  for (int t = t0; t < t1; ++t) {
    const size_t i = (base + t) * size_t(C) + c;
    const float x = xn[i], d = prev - x;
    for (int j = 0; j < mixes.n; ++j) mixes.out[j][i] = mixes.mix[j] ? x + d * mixes.mix[j][c] : d;
    prev = x;
  }
  if (t0 == 0) shift[c] = xn[(base + T - 1) * size_t(C) + c];
}

// One block per (row, head): thread i < N owns channel i; blockDim is N rounded up to whole warps
// (the extra threads only join the sums).
__global__ void rwkv7_prepare_kernel(int H, int N, Rwkv7Prepare p) {
  __shared__ float scratch[32];
  const int m = blockIdx.x / H, h = blockIdx.x % H, i = threadIdx.x;
  const bool live = i < N;
  const int C = H * N, c = h * N + (live ? i : 0);
  const size_t j = size_t(m) * size_t(C) + c;
  float kk = 0.f;
  if (live) {
    float v = p.v[j];
    if (p.v_lora) {
      v = rwkv7_value(v, p.v_first[j], p.v0[c] + p.v_lora[j]);
      p.v[j] = v;
    } else {
      p.v_first[j] = v;
    }
    kk = p.k[j] * p.k_k[c];
  }
  const float norm = sqrtf(block_sum(kk * kk, scratch));
  if (!live) return;
  const float kh = kk / fmaxf(norm, 1e-12f);
  const Rwkv7Channel ch = rwkv7_channel(p.k[j], kh, p.w0[c] + p.w[j], p.a0[c] + p.a[j], p.k_a[c]);
  p.w[j] = ch.w;
  p.k[j] = ch.k;
  p.a[j] = ch.a;
  p.b[j] = ch.b;
}

__global__ void rwkv7_output_kernel(int H, int N, Rwkv7Output o, float eps) {
  __shared__ float scratch[32];
  const int m = blockIdx.x / H, h = blockIdx.x % H, i = threadIdx.x;
  const bool live = i < N;
  const int C = H * N, c = h * N + (live ? i : 0);
  const size_t j = size_t(m) * size_t(C) + c;
  const float y = live ? o.y[j] : 0.f;
  const float mean = block_sum(y, scratch) / float(N);
  const float d = live ? y - mean : 0.f;
  const float var = block_sum(d * d, scratch) / float(N);
  const float bonus = block_sum(live ? o.r[j] * o.k[j] * o.r_k[c] : 0.f, scratch);
  if (live) o.y[j] = (d * rsqrtf(var + eps) * o.ln_w[c] + o.ln_b[c] + bonus * o.v[j]) * o.g[j];
}

int row_threads(int C) { return C >= 1024 ? 512 : C >= 256 ? 256 : 128; }

int head_threads(int N) {
  if (N < 1 || N > 1024) fail("CUDA: head size ", N, " is not supported (1 … 1024)");
  return (N + 31) / 32 * 32;
}

}  // namespace

void embed(Context& ctx, const int* tokens, int M, const ops::Matrix& emb, float* x) {
  if (M <= 0) return;
  const int threads = row_threads(emb.cols);
  switch (emb.dtype) {
    case DType::F32:
      embed_kernel<<<M, threads, 0, ctx.stream>>>(tokens, static_cast<const float*>(emb.data), emb.cols, x);
      break;
    case DType::F16:
      embed_kernel<<<M, threads, 0, ctx.stream>>>(tokens, static_cast<const __half*>(emb.data), emb.cols, x);
      break;
    case DType::BF16:
      embed_kernel<<<M, threads, 0, ctx.stream>>>(tokens, static_cast<const __nv_bfloat16*>(emb.data), emb.cols, x);
      break;
    default: fail("CUDA embed: type ", dtype_name(emb.dtype), " is not supported");
  }
  RWKV_CUDA_LAUNCHED("embed");
}

void layer_norm(Context& ctx, const float* in, int in_ld, float* out, int M, int C,
                const float* weight, const float* bias, float eps, float* mean, float* rstd) {
  if (M <= 0) return;
  layer_norm_kernel<<<M, row_threads(C), 0, ctx.stream>>>(in, in_ld, out, C, weight, bias, eps, mean, rstd);
  RWKV_CUDA_LAUNCHED("layer_norm");
}

void token_shift_mix(Context& ctx, const float* xn, int B, int T, int C, StateRef states,
                     size_t offset, const ShiftMix& mixes) {
  if (B <= 0 || T <= 0) return;
  if (mixes.n < 1 || mixes.n > 6) fail("CUDA token_shift_mix: ", mixes.n, " mixes");
  const int threads = 128;
  const dim3 grid((C + threads - 1) / threads, (T + kShiftRows - 1) / kShiftRows, B);
  token_shift_mix_kernel<<<grid, threads, 0, ctx.stream>>>(xn, B, T, C, states, offset, mixes);
  RWKV_CUDA_LAUNCHED("token_shift_mix");
}

void rwkv7_prepare(Context& ctx, int M, int H, int N, const Rwkv7Prepare& p) {
  if (M <= 0) return;
  rwkv7_prepare_kernel<<<M * H, head_threads(N), 0, ctx.stream>>>(H, N, p);
  RWKV_CUDA_LAUNCHED("rwkv7_prepare");
}

void rwkv7_output(Context& ctx, int M, int H, int N, const Rwkv7Output& o, float eps) {
  if (M <= 0) return;
  rwkv7_output_kernel<<<M * H, head_threads(N), 0, ctx.stream>>>(H, N, o, eps);
  RWKV_CUDA_LAUNCHED("rwkv7_output");
}

}  // namespace rwkv::cuda
