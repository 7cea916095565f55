// A general row-major matrix product for training on the GPU: bf16 inputs, fp32 accumulation
// and output, either operand transposed, the result overwritten or accumulated (cuBLASLt).
#pragma once
#include <cuda_bf16.h>

#include "ops/cuda/kernels.h"

namespace rwkv::cuda {

// C[M, N] (+)= op(A)·op(B), all row-major with leading dimensions (elements):
//   A is M × K (trans_a: stored K × M), B is K × N (trans_b: stored N × K).
// The uses in training: nn.Linear forward y = x·Wᵀ (trans_b), its dx = dy·W, its
// dW = dyᵀ·x (trans_a); LoRA products x·A, dx = dy·Aᵀ, dA = xᵀ·dy.
struct Gemm {
  int M = 0, N = 0, K = 0;
  const __nv_bfloat16* A = nullptr;
  int lda = 0;
  bool trans_a = false;
  const __nv_bfloat16* B = nullptr;
  int ldb = 0;
  bool trans_b = false;
  float* C = nullptr;
  int ldc = 0;
  bool accumulate = false;
};
void gemm(Context& ctx, const Gemm& g);

// dst[i] = bf16(src[i]) over n values.
void to_bf16(Context& ctx, const float* src, size_t n, __nv_bfloat16* dst);

}  // namespace rwkv::cuda
