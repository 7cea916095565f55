// Matrix products: a matrix-vector kernel for few rows (decode: weights streamed once, 16-byte
// loads, fp32 accumulation), cuBLASLt for many, and the element-wise activation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "ops/cuda/cublaslt.h"
#include "ops/cuda/device_math.cuh"
#include "ops/cuda/kernels.h"

namespace rwkv::cuda {
namespace {

constexpr int kWarps = 8;  // warps per block of the matrix-vector kernel

struct GemvJob {
  const void* W;
  const float* x;
  float* y;
  int rows, cols, act, accumulate, vectorized, first_block;
  int split;  // warps per output row (1, 2, 4 or 8), each summing a slice of the row
};

struct GemvJobs {
  GemvJob job[kMaxJobs];
  int n;
};

// `split` warps per output row, each over a contiguous slice of the row: lanes stride over the
// slice's weights (8 at a time when vectorized), each keeping MR partial sums, one per input row;
// a shuffle sum ends a warp's slice, and the row's first warp adds the slices in order (the same
// bits every run). Splitting rows keeps enough loads in flight on matrices of few rows.
template <typename TW, int MR>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const __grid_constant__ GemvJobs jobs) {
  int j = 0;
  while (j + 1 < jobs.n && int(blockIdx.x) >= jobs.job[j + 1].first_block) ++j;
  const GemvJob& job = jobs.job[j];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int split = job.split, part = warp % split;
  const int row = (int(blockIdx.x) - job.first_block) * (kWarps / split) + warp / split;
  const bool live = row < job.rows;
  const int K = job.cols;
  // This warp's slice [k0, k1): a multiple of 8 long, so vectorized loads stay aligned.
  const int slice = ((K + split - 1) / split + 7) / 8 * 8;
  const int k0 = min(K, part * slice), k1 = live ? min(K, k0 + slice) : k0;
  const TW* w = static_cast<const TW*>(job.W) + size_t(live ? row : 0) * size_t(K);
  float acc[MR];
#pragma unroll
  for (int m = 0; m < MR; ++m) acc[m] = 0.f;
  if (job.vectorized) {
#pragma unroll 4
    for (int k = k0 + lane * 8; k < k1; k += 32 * 8) {
      float wf[8];
      load8(w + k, wf);
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        const float4* xp = reinterpret_cast<const float4*>(job.x + size_t(m) * size_t(K) + k);
        const float4 x0 = __ldg(xp), x1 = __ldg(xp + 1);
        acc[m] += wf[0] * x0.x + wf[1] * x0.y + wf[2] * x0.z + wf[3] * x0.w + wf[4] * x1.x +
                  wf[5] * x1.y + wf[6] * x1.z + wf[7] * x1.w;
      }
    }
  } else {
    for (int k = k0 + lane; k < k1; k += 32) {
      const float wv = to_float(w[k]);
#pragma unroll
      for (int m = 0; m < MR; ++m) acc[m] += wv * __ldg(job.x + size_t(m) * size_t(K) + k);
    }
  }
  __shared__ float partial[kWarps][MR];
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    float s = warp_sum(acc[m]);
    if (split > 1) {
      if (lane == 0) partial[warp][m] = s;
      __syncthreads();  // the block's split is uniform: every warp gets here
      s = 0.f;
      for (int p = 0; p < split; ++p) s += partial[warp - part + p][m];
      __syncthreads();  // partial is read before the next m overwrites it
    }
    if (lane == 0 && part == 0 && live) {
      float* out = job.y + size_t(m) * size_t(job.rows) + row;
      *out = job.accumulate ? *out + s : apply_act(s, job.act);
    }
  }
}

template <typename TW>
void launch_gemv(Context& ctx, const GemvJobs& jobs, int blocks, int M) {
  using K = void (*)(const GemvJobs);
  static_assert(kGemvRows == 4);
  constexpr K kernels[kGemvRows] = {gemv_kernel<TW, 1>, gemv_kernel<TW, 2>, gemv_kernel<TW, 3>,
                                    gemv_kernel<TW, 4>};
  kernels[M - 1]<<<blocks, kWarps * 32, 0, ctx.stream>>>(jobs);
  RWKV_CUDA_LAUNCHED("gemv");
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Warps per row for a (rows × cols) matrix: enough warps to fill the GPU (about 8192 for 132
// SMs), each slice still at least 512 weights long. RWKV_CUDA_GEMV_SPLIT=0 keeps one warp per row
// (side-by-side timing).
int gemv_split(int rows, int cols) {
  static const bool enabled = [] {
    const char* v = std::getenv("RWKV_CUDA_GEMV_SPLIT");
    return !(v && std::string(v) == "0");
  }();
  int split = 1;
  while (enabled && split < kWarps && rows * split < 8192 && cols / (2 * split) >= 512) split *= 2;
  return split;
}

// Jobs of one weight dtype, M ≤ kGemvRows, in one launch.
void gemv(Context& ctx, const LinearJob* jobs, int n, int M) {
  GemvJobs g{};
  int blocks = 0;
  for (int i = 0; i < n; ++i) {
    const LinearJob& s = jobs[i];
    GemvJob& d = g.job[i];
    const int split = gemv_split(s.W.rows, s.W.cols);
    d = {s.W.data, s.x, s.y, s.W.rows, s.W.cols, int(s.act), s.accumulate ? 1 : 0, 0, blocks, split};
    d.vectorized = s.W.cols % 8 == 0 && aligned16(s.W.data) && aligned16(s.x);
    const int rows_per_block = kWarps / split;
    blocks += (s.W.rows + rows_per_block - 1) / rows_per_block;
  }
  g.n = n;
  if (blocks == 0) return;
  switch (jobs[0].W.dtype) {
    case DType::F32: return launch_gemv<float>(ctx, g, blocks, M);
    case DType::F16: return launch_gemv<__half>(ctx, g, blocks, M);
    case DType::BF16: return launch_gemv<__nv_bfloat16>(ctx, g, blocks, M);
    default: fail("CUDA linear: weights of type ", dtype_name(jobs[0].W.dtype), " are not supported");
  }
}

// Several element-wise tensors in one launch (a job batch's inputs to convert, or its outputs to
// activate — one launch instead of one per product, which at batch 64 is a sixth of a decode
// step): tensor j has start[j+1] − start[j] values; blocks (x, j) stride over tensor j.
struct Tensors {
  const float* in[kMaxJobs];
  void* out[kMaxJobs];
  int act[kMaxJobs];
  size_t start[kMaxJobs + 1];
  int n;
};

#define RWKV_FOR_TENSOR(t, j, i)                     \
  const int j = blockIdx.y;                          \
  const size_t count_ = t.start[j + 1] - t.start[j]; \
  GRID_STRIDE(i, count_)

// out_j = 16-bit(in_j).
template <typename T>
__global__ void convert_kernel(const __grid_constant__ Tensors t) {
  RWKV_FOR_TENSOR(t, j, i) {
    if constexpr (std::is_same_v<T, __half>) {
      static_cast<T*>(t.out[j])[i] = __float2half_rn(t.in[j][i]);
    } else {
      static_cast<T*>(t.out[j])[i] = __float2bfloat16_rn(t.in[j][i]);
    }
  }
}

// out_j ← act_j(out_j) (fp32, in place).
__global__ void activate_kernel(const __grid_constant__ Tensors t) {
  RWKV_FOR_TENSOR(t, j, i) {
    float* y = static_cast<float*>(t.out[j]) + i;
    *y = apply_act(*y, t.act[j]);
  }
}
#undef RWKV_FOR_TENSOR

// Blocks for the largest tensor of t, by tensors.
dim3 tensors_grid(const Tensors& t) {
  size_t most = 0;
  for (int j = 0; j < t.n; ++j) most = std::max(most, t.start[j + 1] - t.start[j]);
  return dim3(unsigned(std::min<size_t>((most + 255) / 256, 4096)), unsigned(t.n));
}


// y (M × R, row-major) = x (M × K) · Wᵀ through cuBLASLt, x already in ctx.x16 for 16-bit W (or
// at `x` for fp32 W). In column-major terms yᵀ = W·xᵀ: A is W stored K × R (transposed), B is xᵀ
// (K × M), D is yᵀ (R × M).
void gemm_lt_raw(Context& ctx, const ops::Matrix& W, const void* B, int M, float* y, bool accumulate) {
  const CublasLt& lt = cublaslt();
  const int R = W.rows, K = W.cols;
  const auto key = std::make_tuple(M, R, K, int(W.dtype), accumulate);
  auto it = ctx.plans.find(key);
  if (it == ctx.plans.end()) {
    const cudaDataType_t ab = W.dtype == DType::BF16 ? CUDA_R_16BF : W.dtype == DType::F16 ? CUDA_R_16F : CUDA_R_32F;
    Context::GemmPlan p;
    check_lt(lt.desc_create(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
    const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
    lt.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof transa);
    lt.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof transb);
    check_lt(lt.layout_create(&p.a, ab, uint64_t(K), uint64_t(R), int64_t(K)), "layout A");
    check_lt(lt.layout_create(&p.b, ab, uint64_t(K), uint64_t(M), int64_t(K)), "layout B");
    check_lt(lt.layout_create(&p.c, CUDA_R_32F, uint64_t(R), uint64_t(M), int64_t(R)), "layout C");
    if (!ctx.choose_algorithm(p)) {
      fail("cuBLASLt: no algorithm for ", M, "×", K, " · (", R, "×", K, ")ᵀ in ", dtype_name(W.dtype));
    }
    it = ctx.plans.emplace(key, p).first;
  }
  const Context::GemmPlan& p = it->second;
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  check_lt(lt.matmul(ctx.lt, p.desc, &alpha, W.data, p.a, B, p.b, &beta, y, p.c, y, p.c, &p.algo,
                     ctx.workspace.as(), ctx.workspace.bytes(), ctx.stream),
           "matmul");
}

void launch_activate(Context& ctx, const Tensors& t) {
  if (t.n == 0 || t.start[t.n] == 0) return;
  activate_kernel<<<tensors_grid(t), 256, 0, ctx.stream>>>(t);
  RWKV_CUDA_LAUNCHED("activate");
}

// The cuBLASLt path of a job batch (M > kGemvRows): every distinct input of the 16-bit jobs
// converted once, all in one launch per 16-bit type, into ctx.x16; the products; then every
// activation in one launch.
void gemm_jobs(Context& ctx, const LinearJob* jobs, int n, int M) {
  size_t x16_at[kMaxJobs] = {};  // where job i's converted input starts in ctx.x16
  Tensors conv[2] = {};  // bf16, fp16
  size_t offset[2][kMaxJobs] = {}, bytes = 0;
  for (int i = 0; i < n; ++i) {
    const ops::Matrix& W = jobs[i].W;
    if (W.dtype == DType::F32) continue;
    if (W.dtype != DType::BF16 && W.dtype != DType::F16) {
      fail("CUDA linear: weights of type ", dtype_name(W.dtype), " are not supported");
    }
    Tensors& t = conv[W.dtype == DType::F16];
    int j = 0;
    while (j < t.n && !(t.in[j] == jobs[i].x && t.start[j + 1] - t.start[j] == size_t(M) * size_t(W.cols))) ++j;
    if (j == t.n) {  // a new input: its place in x16 (256-byte aligned for cuBLASLt)
      const size_t count = size_t(M) * size_t(W.cols);
      t.in[j] = jobs[i].x;
      t.start[j + 1] = t.start[j] + count;
      offset[W.dtype == DType::F16][j] = bytes;
      bytes += (count * 2 + 255) / 256 * 256;
      ++t.n;
    }
    x16_at[i] = offset[W.dtype == DType::F16][j];
  }
  ctx.ensure_x16(bytes);
  char* base = ctx.x16.as<char>();
  for (int d = 0; d < 2; ++d) {
    Tensors& t = conv[d];
    for (int j = 0; j < t.n; ++j) t.out[j] = base + offset[d][j];
    if (t.n == 0) continue;
    if (d == 0) {
      convert_kernel<__nv_bfloat16><<<tensors_grid(t), 256, 0, ctx.stream>>>(t);
    } else {
      convert_kernel<__half><<<tensors_grid(t), 256, 0, ctx.stream>>>(t);
    }
    RWKV_CUDA_LAUNCHED("convert");
  }
  Tensors acts{};
  for (int i = 0; i < n; ++i) {
    const LinearJob& job = jobs[i];
    const void* B = job.W.dtype == DType::F32 ? static_cast<const void*>(job.x) : base + x16_at[i];
    gemm_lt_raw(ctx, job.W, B, M, job.y, job.accumulate);
    if (job.act != Act::None) {
      acts.out[acts.n] = job.y;
      acts.act[acts.n] = int(job.act);
      acts.start[acts.n + 1] = acts.start[acts.n] + size_t(M) * size_t(job.W.rows);
      ++acts.n;
    }
  }
  launch_activate(ctx, acts);
}

}  // namespace

void activate(Context& ctx, float* x, size_t n, Act act) {
  if (act == Act::None || n == 0) return;
  Tensors t{};
  t.out[0] = x, t.act[0] = int(act), t.start[1] = n, t.n = 1;
  launch_activate(ctx, t);
}

void linear_jobs(Context& ctx, const LinearJob* jobs, int n, int M) {
  if (n > kMaxJobs) fail("CUDA linear: ", n, " jobs in one call (at most ", kMaxJobs, ")");
  for (int i = 0; i < n; ++i) {
    if (jobs[i].accumulate && jobs[i].act != Act::None) fail("CUDA linear: accumulate with an activation");
  }
  if (M <= 0 || n == 0) return;
  if (M <= kGemvRows) {
    // One launch per run of jobs sharing a weight type (normally all of them).
    for (int i = 0; i < n;) {
      int e = i + 1;
      while (e < n && jobs[e].W.dtype == jobs[i].W.dtype) ++e;
      gemv(ctx, jobs + i, e - i, M);
      i = e;
    }
    return;
  }
  // RWKV_CUDA_JOB_BATCH=0: one conversion and one activation per product (side-by-side timing).
  static const bool batched = [] {
    const char* v = std::getenv("RWKV_CUDA_JOB_BATCH");
    return !(v && std::string(v) == "0");
  }();
  if (batched) return gemm_jobs(ctx, jobs, n, M);
  for (int i = 0; i < n; ++i) gemm_jobs(ctx, jobs + i, 1, M);
}

void linear(Context& ctx, const ops::Matrix& W, const float* x, int M, float* y, Act act,
            bool accumulate) {
  const LinearJob job{W, x, y, act, accumulate};
  linear_jobs(ctx, &job, 1, M);
}

}  // namespace rwkv::cuda

namespace rwkv::cuda {
namespace {

__global__ void fill_kernel(__nv_bfloat16* p, size_t n, uint32_t seed) {
  GRID_STRIDE(i, n) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    p[i] = __float2bfloat16(float(h & 0xffff) / 65536.f - 0.5f);  // random data: zeros run faster
  }
}

}  // namespace

double measure_gemm_tflops(Context& ctx, int n) {
  const size_t nn = size_t(n) * size_t(n);
  DeviceBuffer a(nn * 2), b(nn * 2), d(nn * 4);
  fill_kernel<<<1024, 256, 0, ctx.stream>>>(a.as<__nv_bfloat16>(), nn, 1);
  fill_kernel<<<1024, 256, 0, ctx.stream>>>(b.as<__nv_bfloat16>(), nn, 2);
  RWKV_CUDA_LAUNCHED("fill");
  // The path prefill takes: bf16 inputs, fp32 accumulation and output (x16 already converted).
  ctx.ensure_x16(nn * 2);
  RWKV_CUDA_CHECK(cudaMemcpyAsync(ctx.x16.as(), b.as(), nn * 2, cudaMemcpyDeviceToDevice, ctx.stream));
  const ops::Matrix W{DType::BF16, n, n, a.as()};
  cudaEvent_t start, stop;
  RWKV_CUDA_CHECK(cudaEventCreate(&start));
  RWKV_CUDA_CHECK(cudaEventCreate(&stop));
  const int reps = 10;
  for (int i = 0; i < reps + 3; ++i) {
    if (i == 3) RWKV_CUDA_CHECK(cudaEventRecord(start, ctx.stream));
    gemm_lt_raw(ctx, W, ctx.x16.as(), n, d.as<float>(), false);
  }
  RWKV_CUDA_CHECK(cudaEventRecord(stop, ctx.stream));
  RWKV_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  RWKV_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 2.0 * double(n) * double(n) * double(n) * reps / (double(ms) * 1e-3) / 1e12;
}

}  // namespace rwkv::cuda
