// Element types of weights and their scalar conversions. Math is always fp32 (DESIGN §10);
// bf16/fp16 are storage formats converted inside kernels.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace rwkv {

enum class DType : uint8_t { F32, F16, BF16 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
const char* dtype_name(DType t);
// "fp32"/"f32"/"float32", "fp16"/"f16"/"float16", "bf16"/"bfloat16"; throws rwkv::Error otherwise.
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

// Converts n elements of type `from` at src to fp32.
void convert_to_f32(DType from, const void* src, float* dst, size_t n);
// Converts n fp32 values to `to` (rounding to nearest even).
void convert_from_f32(DType to, const float* src, void* dst, size_t n);

}  // namespace rwkv
