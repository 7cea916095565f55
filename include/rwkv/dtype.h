// Element types of weights and their conversions. Math is always fp32 (DESIGN §10); bf16/fp16
// and the quantized block formats are storage formats decoded inside kernels.
// Quantized types are ggml's 32-element blocks (spec §7.1), each with an fp16 scale:
//   Q4_0 18 B: d, 16 B nibbles           x = d·(q − 8)
//   Q4_1 20 B: d, m, 16 B nibbles        x = d·q + m
//   Q5_0 22 B: d, u32 high bits, 16 B    x = d·(q − 16)
//   Q5_1 24 B: d, m, u32 high bits, 16 B x = d·q + m
//   Q8_0 34 B: d, 32 int8                x = d·q
// Element j < 16 of a 4/5-bit block is the low nibble of byte j (and bit j of the high bits),
// element j + 16 the high nibble of byte j (and bit j + 16).
// The symmetric group types written by `rwkv quantize` have one fp16 scale per 64 or 128 weights:
//   Q8_G64 66 B, Q8_G128 130 B: d, then int8 q                       x = d·q
//   Q4_G64 34 B, Q4_G128 66 B:  d, then 32 B per 64 elements: element x = d·(q − 8)
//                               j < 32 the low nibble of byte j, j + 32 its high nibble
// int8 and int4 with a group of 32 are Q8_0 and Q4_0.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace rwkv {

enum class DType : uint8_t { F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_G64, Q8_G128, Q4_G64, Q4_G128 };
constexpr size_t kDTypeCount = 12;

inline bool is_quantized(DType t) { return t >= DType::Q4_0; }
// Elements per block: 1 for fp32/fp16/bf16, 32, 64 or 128 for the quantized types.
inline size_t dtype_block_elems(DType t) {
  constexpr size_t kElems[kDTypeCount] = {1, 1, 1, 32, 32, 32, 32, 32, 64, 128, 64, 128};
  return kElems[size_t(t)];
}
// Bytes per block.
inline size_t dtype_block_bytes(DType t) {
  constexpr size_t kBytes[kDTypeCount] = {4, 2, 2, 18, 20, 22, 24, 34, 66, 130, 34, 66};
  return kBytes[size_t(t)];
}
// Bytes of n elements; n must be a multiple of dtype_block_elems(t).
inline size_t dtype_nbytes(DType t, size_t n) {
  return n / dtype_block_elems(t) * dtype_block_bytes(t);
}
const char* dtype_name(DType t);
// "fp32"/"f32"/"float32", "fp16"/"f16"/"float16", "bf16"/"bfloat16", "q4_0", "q4_1", "q5_0",
// "q5_1", "q8_0", "q8_g64", "q8_g128", "q4_g64", "q4_g128" (any case); throws rwkv::Error
// otherwise.
DType parse_dtype(const std::string& name);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of type `from` at src to fp32. For quantized types src must start at a
// block and n must be a multiple of the block's elements.
void convert_to_f32(DType from, const void* src, float* dst, size_t n);
// Converts n fp32 values to `to`: rounding to nearest even for fp16/bf16; for quantized types
// ggml's reference quantization (per block scale from the block's extremes; n a multiple of the
// block's elements), extended to the group types.
void convert_from_f32(DType to, const float* src, void* dst, size_t n);

}  // namespace rwkv
