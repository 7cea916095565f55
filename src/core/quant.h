// Quantized blocks: ggml's 32-element ones (spec §7.1) and the symmetric group types of
// `rwkv quantize` (layouts in rwkv/dtype.h). Scalar decode and encode, the reference for the
// SIMD kernels (ops/cpu/simd.cpp, ops/cpu/qdot_kernel.inl).
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

// Where a block's parts sit and what its quants mean:
//   x = d·(q − bias) + m   (d at byte 0; m only where min != 0; 8-bit quants are signed; 4/5-bit
//   ones packed as in rwkv/dtype.h: 16 B per 32 elements for ggml's types, 32 B per 64 for Q4_G)
struct BlockFormat {
  int group;      // elements per block (one d): 32, 64 or 128
  int bytes;      // bytes per block
  int quants;     // byte offset of the quants
  int min;        // byte offset of the fp16 minimum m, 0 if none
  int high_bits;  // byte offset of the u32 of fifth bits, 0 if none
  int bits;       // 4, 5 or 8
  int bias;       // 0, 8 or 16
};
constexpr BlockFormat block_format(DType t) {
  switch (t) {
    case DType::Q4_0: return {32, 18, 2, 0, 0, 4, 8};
    case DType::Q4_1: return {32, 20, 4, 2, 0, 4, 0};
    case DType::Q5_0: return {32, 22, 6, 0, 2, 5, 16};
    case DType::Q5_1: return {32, 24, 8, 2, 4, 5, 0};
    case DType::Q8_0: return {32, 34, 2, 0, 0, 8, 0};
    case DType::Q8_G64: return {64, 66, 2, 0, 0, 8, 0};
    case DType::Q8_G128: return {128, 130, 2, 0, 0, 8, 0};
    case DType::Q4_G64: return {64, 34, 2, 0, 0, 4, 8};
    case DType::Q4_G128: return {128, 66, 2, 0, 0, 4, 8};
    default: return {1, 0, 0, 0, 0, 0, 0};
  }
}

// A dtype's block format as compile-time constants, for kernels templated on it (the SIMD
// conversions in ops/cpu/simd.cpp, the integer products in ops/cpu/qdot_kernel.inl). A block
// holds kSub sub-blocks of 32 elements sharing its scale; kSubBytes holds one's quants.
template <DType T>
struct Format {
  static constexpr BlockFormat f = block_format(T);
  static constexpr int kGroup = f.group, kBytes = f.bytes, kQs = f.quants, kMin = f.min,
                       kQh = f.high_bits, kBits = f.bits, kBias = f.bias, kSub = f.group / 32;
  static constexpr int kSubBytes = kBits == 8 ? 32 : 16;
};

// 4-bit levels sit in chunks of min(group, 64) elements: the first half of a chunk in the low
// nibbles of its bytes, the second half in the high nibbles (Q4_0: j and j + 16 share byte j;
// Q4_G: j and j + 32). The chunk's length.
int nibble_chunk(const BlockFormat& f);
// The levels 0..15 (value = d·(level − 8)) of one Q4_0/Q4_G block's quant bytes q.
void unpack_levels4(const BlockFormat& f, const uint8_t* q, uint8_t* level);

// n elements (a multiple of the block's) of `type` at src to floats.
void dequantize(DType type, const void* src, float* dst, size_t n);
// n floats to blocks: ggml's quantize_row_*_ref for its types; the group types follow Q8_0's
// rule (d = absmax/127) and Q4_0's (d = the signed value of largest magnitude / −8).
void quantize(DType type, const float* src, void* dst, size_t n);
// quantize(), except that the 4-bit symmetric types (Q4_0, Q4_G64, Q4_G128) search each block's
// scale for the least squared error (about 10% less error than the absmax rule; 11 trials per
// block, so slower: `rwkv quantize` uses it, conversions at load do not).
void quantize_least_squares(DType type, const float* src, void* dst, size_t n);

}  // namespace rwkv::quant
