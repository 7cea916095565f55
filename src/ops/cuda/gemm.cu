// The general bf16 matrix product (gemm.h) through cuBLASLt with one cached plan per shape.
#include <algorithm>

#include "ops/cuda/cublaslt.h"
#include "ops/cuda/device_math.cuh"
#include "ops/cuda/gemm.h"
#include "ops/cuda/vec_io.cuh"

namespace rwkv::cuda {
namespace {

// W values per thread: 4 (16-byte reads) where n and the pointers allow, else 1.
template <int W>
__global__ void to_bf16_kernel(const float* in, __nv_bfloat16* out, size_t n) {
  GRID_STRIDE(q, n / W) {
    float v[W];
    load(in + q * W, v);
    store(out + q * W, v);
  }
}

}  // namespace

void to_bf16(Context& ctx, const float* src, size_t n, __nv_bfloat16* dst) {
  if (n == 0) return;
  if (n % 4 == 0 && aligned16({src, dst})) {
    to_bf16_kernel<4><<<grid_for(n / 4), 256, 0, ctx.stream>>>(src, dst, n);
  } else {
    to_bf16_kernel<1><<<grid_for(n), 256, 0, ctx.stream>>>(src, dst, n);
  }
  RWKV_CUDA_LAUNCHED("to_bf16");
}

void gemm(Context& ctx, const Gemm& g) {
  if (g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0) fail("CUDA gemm: inner dimension ", g.K);
  const CublasLt& lt = cublaslt();
  // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLASLt's first operand is
  // B's memory (N × K after its op), the second A's (K × M after its op).
  const Context::GemmKey key{g.M, g.N, g.K, g.lda, g.ldb, g.ldc, int(g.trans_a), int(g.trans_b),
                             int(g.accumulate)};
  auto it = ctx.gemm_plans.find(key);
  if (it == ctx.gemm_plans.end()) {
    Context::GemmPlan p;
    check_lt(lt.desc_create(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
    const cublasOperation_t op1 = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op2 = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    lt.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof op1);
    lt.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof op2);
    // Layouts of the stored matrices, column-major (rows, cols, ld).
    if (g.trans_b) {
      check_lt(lt.layout_create(&p.a, CUDA_R_16BF, uint64_t(g.K), uint64_t(g.N), g.ldb), "layout A");
    } else {
      check_lt(lt.layout_create(&p.a, CUDA_R_16BF, uint64_t(g.N), uint64_t(g.K), g.ldb), "layout A");
    }
    if (g.trans_a) {
      check_lt(lt.layout_create(&p.b, CUDA_R_16BF, uint64_t(g.M), uint64_t(g.K), g.lda), "layout B");
    } else {
      check_lt(lt.layout_create(&p.b, CUDA_R_16BF, uint64_t(g.K), uint64_t(g.M), g.lda), "layout B");
    }
    check_lt(lt.layout_create(&p.c, CUDA_R_32F, uint64_t(g.N), uint64_t(g.M), g.ldc), "layout C");
    if (!ctx.choose_algorithm(p)) {
      fail("cuBLASLt: no algorithm for a ", g.M, "×", g.K, " · ", g.K, "×", g.N, " bf16 product");
    }
    it = ctx.gemm_plans.emplace(key, p).first;
  }
  const Context::GemmPlan& p = it->second;
  const float alpha = 1.f, beta = g.accumulate ? 1.f : 0.f;
  check_lt(lt.matmul(ctx.lt, p.desc, &alpha, g.B, p.a, g.A, p.b, &beta, g.C, p.c, g.C, p.c, &p.algo,
                     ctx.workspace.as(), ctx.workspace.bytes(), ctx.stream),
           "matmul");
}

}  // namespace rwkv::cuda
