// Entry points of the runtime-dispatched SIMD kernels (ops/cpu/simd.cpp).
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>

#include "ops/ops.h"

namespace rwkv::ops::cpu {

constexpr int kMaxHeadSize = 256;
constexpr int kWkvChunk = 16;

// fp32, fp16 and bf16 weights (quantized ones: ops/qdot.h).
void simd_matvec_rows(const Matrix& W, const float* x, int M, float* y, int r0, int r1);
void simd_to_f32(DType dtype, const void* src, float* dst, size_t n);
// Need h.N % simd_lanes_f32() == 0 and h.N <= kMaxHeadSize.
void simd_wkv7_recurrent(const Wkv7Head& h);
void simd_wkv7_chunked(const Wkv7Head& h);
void simd_sigmoid(const float* x, float* y, size_t n);
void simd_tanh(const float* x, float* y, size_t n);
size_t simd_lanes_f32();
float simd_sum_f32(const float* x, size_t n);
const char* simd_target_name();

}  // namespace rwkv::ops::cpu
