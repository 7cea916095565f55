#include "rwkv/dtype.h"

#include <algorithm>
#include <cctype>

#include "core/quant.h"
#include "rwkv/error.h"

namespace rwkv {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "fp32";
    case DType::F16: return "fp16";
    case DType::BF16: return "bf16";
    case DType::Q4_0: return "q4_0";
    case DType::Q4_1: return "q4_1";
    case DType::Q5_0: return "q5_0";
    case DType::Q5_1: return "q5_1";
    case DType::Q8_0: return "q8_0";
    case DType::Q8_G64: return "q8_g64";
    case DType::Q8_G128: return "q8_g128";
    case DType::Q4_G64: return "q4_g64";
    case DType::Q4_G128: return "q4_g128";
  }
  return "?";
}

DType parse_dtype(const std::string& text) {
  std::string name = text;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  if (name == "fp32" || name == "f32" || name == "float32") return DType::F32;
  if (name == "fp16" || name == "f16" || name == "float16") return DType::F16;
  if (name == "bf16" || name == "bfloat16") return DType::BF16;
  for (size_t i = size_t(DType::Q4_0); i < kDTypeCount; ++i) {
    if (name == dtype_name(DType(i))) return DType(i);
  }
  fail("unknown dtype '", text,
       "' (expected fp32, fp16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q8_g64, q8_g128, q4_g64 or "
       "q4_g128)");
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;       // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;      // overflow (incl. rounding up) -> inf
  if (abs < 0x38800000u) {                            // subnormal or zero in fp16
    if (abs < 0x33000000u) return sign;               // below half the smallest subnormal
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;                 // 14..24
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return sign | uint16_t(half);
  }
  uint32_t half = ((abs >> 13) - (112u << 10));
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;
  return sign | uint16_t(half);
}

void convert_to_f32(DType from, const void* src, float* dst, size_t n) {
  if (n == 0) return;  // src/dst may be null; memcpy must not see null
  const auto* h = static_cast<const uint16_t*>(src);
  switch (from) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::BF16: for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]); return;
    case DType::F16: for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(h[i]); return;
    default: quant::dequantize(from, src, dst, n); return;
  }
}

void convert_from_f32(DType to, const float* src, void* dst, size_t n) {
  if (n == 0) return;
  auto* h = static_cast<uint16_t*>(dst);
  switch (to) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::BF16: for (size_t i = 0; i < n; ++i) h[i] = f32_to_bf16(src[i]); return;
    case DType::F16: for (size_t i = 0; i < n; ++i) h[i] = f32_to_f16(src[i]); return;
    default: quant::quantize(to, src, dst, n); return;
  }
}

}  // namespace rwkv
