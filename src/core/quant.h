// ggml's 32-element quantized blocks (spec §7.1; layouts in rwkv/dtype.h). Scalar decode and
// encode, the reference for the SIMD kernels (ops/cpu/simd.cpp).
#pragma once
#include <cstddef>
#include <cstdint>

#include "rwkv/dtype.h"

namespace rwkv::quant {

constexpr size_t kBlock = 32;

struct BlockQ4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[16];
};
struct BlockQ4_1 {
  uint16_t d, m;  // fp16 scale and minimum
  uint8_t qs[16];
};
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];  // bit j: fifth bit of element j (little-endian u32)
  uint8_t qs[16];
};
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[16];
};
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[32];
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
              sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34);

// n_blocks blocks of `type` at src to 32·n_blocks floats.
void dequantize(DType type, const void* src, float* dst, size_t n_blocks);
// 32·n_blocks floats to blocks, as ggml's quantize_row_*_ref.
void quantize(DType type, const float* src, void* dst, size_t n_blocks);

}  // namespace rwkv::quant
