#include "core/quant.h"

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>

namespace rwkv::quant {
namespace {

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Blocks may sit at any byte offset in a file: copy each one out before reading it.
template <class Block>
Block load_block(const void* src, size_t i) {
  Block b;
  std::memcpy(&b, static_cast<const uint8_t*>(src) + i * sizeof(Block), sizeof(Block));
  return b;
}

template <class Block>
void store_block(void* dst, size_t i, const Block& b) {
  std::memcpy(static_cast<uint8_t*>(dst) + i * sizeof(Block), &b, sizeof(Block));
}

// Element j < 16: low nibble of qs[j] plus bit j of qh; j + 16: high nibble plus bit j + 16.
template <class Block>
void unpack5(const Block& b, int q[32]) {
  const uint32_t qh = load_u32(b.qh);
  for (int j = 0; j < 16; ++j) {
    q[j] = (b.qs[j] & 0x0f) | int(((qh >> j) & 1u) << 4);
    q[j + 16] = (b.qs[j] >> 4) | int(((qh >> (j + 16)) & 1u) << 4);
  }
}

template <class Block>
void pack5(const int q[32], Block& b) {
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    b.qs[j] = uint8_t((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
    qh |= uint32_t((q[j] >> 4) & 1) << j;
    qh |= uint32_t((q[j + 16] >> 4) & 1) << (j + 16);
  }
  std::memcpy(b.qh, &qh, 4);
}

// The value of largest magnitude (sign kept) of n values, and the minimum and maximum of a block.
float signed_absmax(const float* x, size_t n = kBlock) {
  float amax = 0, max = 0;
  for (size_t j = 0; j < n; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void min_max(const float* x, float& min, float& max) {
  min = max = x[0];
  for (size_t j = 1; j < kBlock; ++j) {
    min = std::min(min, x[j]);
    max = std::max(max, x[j]);
  }
}

// The symmetric types: one fp16 scale d, then int8 values (Q8_0, Q8_G*) or 4-bit levels
// (Q4_0, Q4_G*) with value d·(level − 8).
bool is_symmetric(DType t) {
  return t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q8_G64 || t == DType::Q8_G128 ||
         t == DType::Q4_G64 || t == DType::Q4_G128;
}


// Levels 0..15 of one 4-bit symmetric block into its quant bytes.
void pack_levels4(const BlockFormat& f, const int* level, uint8_t* q) {
  const int chunk = nibble_chunk(f), half = chunk / 2;
  for (int c = 0; c < f.group / chunk; ++c) {
    for (int j = 0; j < half; ++j) {
      q[half * c + j] = uint8_t(level[chunk * c + j] | level[chunk * c + j + half] << 4);
    }
  }
}

}  // namespace

int nibble_chunk(const BlockFormat& f) { return std::min(f.group, 64); }

void unpack_levels4(const BlockFormat& f, const uint8_t* q, uint8_t* level) {
  const int chunk = nibble_chunk(f), half = chunk / 2;
  for (int c = 0; c < f.group / chunk; ++c) {
    for (int j = 0; j < half; ++j) {
      level[chunk * c + j] = q[half * c + j] & 0x0f;
      level[chunk * c + j + half] = q[half * c + j] >> 4;
    }
  }
}

namespace {

void dequantize_symmetric(const BlockFormat& f, const uint8_t* blk, float* y) {
  uint16_t bits;
  std::memcpy(&bits, blk, 2);
  const float d = f16_to_f32(bits);
  const uint8_t* q = blk + f.quants;
  if (f.bits == 8) {
    for (int j = 0; j < f.group; ++j) y[j] = d * float(int8_t(q[j]));
    return;
  }
  uint8_t level[128];
  unpack_levels4(f, q, level);
  for (int j = 0; j < f.group; ++j) y[j] = d * float(int(level[j]) - 8);
}

// ggml's rules for Q8_0 and Q4_0 (quantize_row_q8_0_ref, quantize_row_q4_0_ref), at any group:
// d = absmax/127, or the value of largest magnitude / −8.
void quantize_symmetric(const BlockFormat& f, const float* x, uint8_t* blk) {
  uint8_t* q = blk + f.quants;
  float d;
  if (f.bits == 8) {
    float amax = 0;
    for (int j = 0; j < f.group; ++j) amax = std::max(amax, std::fabs(x[j]));
    d = amax / 127;
    const float id = d != 0 ? 1 / d : 0;
    for (int j = 0; j < f.group; ++j) q[j] = uint8_t(int8_t(std::lround(x[j] * id)));
  } else {
    d = signed_absmax(x, size_t(f.group)) / -8;
    const float id = d != 0 ? 1 / d : 0;
    int level[128];
    for (int j = 0; j < f.group; ++j) level[j] = std::min(15, int(int8_t(x[j] * id + 8.5f)));
    pack_levels4(f, level, q);
  }
  const uint16_t h = f32_to_f16(d);
  std::memcpy(blk, &h, 2);
}

// One 4-bit symmetric block with the scale of least squared error: for candidate inverse scales
// around the absmax rule's (the value of largest magnitude ↦ −8), the levels q = round(x·id) in
// [−8, 7], then the scale that fits them best, d = Σx·q / Σq², rounded to fp16; the pair with the
// smallest Σ(x − d·q)² wins.
void quantize_search4(const BlockFormat& f, const float* x, uint8_t* blk) {
  const int G = f.group;
  const float smax = signed_absmax(x, size_t(G));
  int level[128] = {}, trial[128];
  float best_d = 0;
  double best_err = 0;
  for (int j = 0; j < G; ++j) best_err += double(x[j]) * x[j];  // d = 0
  for (int k = -5; smax != 0 && k <= 5; ++k) {
    const float id = (-8.f + 0.25f * float(k)) / smax;
    double xq = 0, qq = 0;
    for (int j = 0; j < G; ++j) {
      const int q = std::clamp(int(std::lrint(x[j] * id)), -8, 7);
      trial[j] = q;
      xq += double(x[j]) * q;
      qq += double(q) * q;
    }
    if (qq == 0) continue;
    const float d = f16_to_f32(f32_to_f16(float(xq / qq)));
    double err = 0;
    for (int j = 0; j < G; ++j) {
      const double e = double(x[j]) - double(d) * trial[j];
      err += e * e;
    }
    if (err < best_err) {
      best_err = err;
      best_d = d;
      for (int j = 0; j < G; ++j) level[j] = trial[j];
    }
  }
  for (int j = 0; j < G; ++j) level[j] = best_d != 0 ? level[j] + 8 : 8;
  pack_levels4(f, level, blk + f.quants);
  const uint16_t h = f32_to_f16(best_d);
  std::memcpy(blk, &h, 2);
}

}  // namespace

void quantize_least_squares(DType type, const float* src, void* dst, size_t n) {
  if (type != DType::Q4_0 && type != DType::Q4_G64 && type != DType::Q4_G128) return quantize(type, src, dst, n);
  const BlockFormat f = block_format(type);
  auto* d = static_cast<uint8_t*>(dst);
  for (size_t i = 0; i < n / size_t(f.group); ++i) {
    quantize_search4(f, src + i * size_t(f.group), d + i * size_t(f.bytes));
  }
}

void dequantize(DType type, const void* src, float* dst, size_t n) {
  if (is_symmetric(type)) {
    const BlockFormat f = block_format(type);
    const auto* s = static_cast<const uint8_t*>(src);
    for (size_t i = 0; i < n / size_t(f.group); ++i) {
      dequantize_symmetric(f, s + i * size_t(f.bytes), dst + i * size_t(f.group));
    }
    return;
  }
  const size_t n_blocks = n / kBlock;
  for (size_t i = 0; i < n_blocks; ++i) {
    float* y = dst + i * kBlock;
    int q[32];
    switch (type) {
      case DType::Q4_1: {
        const auto b = load_block<BlockQ4_1>(src, i);
        const float d = f16_to_f32(b.d), m = f16_to_f32(b.m);
        for (int j = 0; j < 16; ++j) {
          y[j] = d * float(b.qs[j] & 0x0f) + m;
          y[j + 16] = d * float(b.qs[j] >> 4) + m;
        }
        break;
      }
      case DType::Q5_0: {
        const auto b = load_block<BlockQ5_0>(src, i);
        const float d = f16_to_f32(b.d);
        unpack5(b, q);
        for (int j = 0; j < 32; ++j) y[j] = d * float(q[j] - 16);
        break;
      }
      case DType::Q5_1: {
        const auto b = load_block<BlockQ5_1>(src, i);
        const float d = f16_to_f32(b.d), m = f16_to_f32(b.m);
        unpack5(b, q);
        for (int j = 0; j < 32; ++j) y[j] = d * float(q[j]) + m;
        break;
      }
      default: return;
    }
  }
}

void quantize(DType type, const float* src, void* dst, size_t n) {
  if (is_symmetric(type)) {
    const BlockFormat f = block_format(type);
    auto* d = static_cast<uint8_t*>(dst);
    for (size_t i = 0; i < n / size_t(f.group); ++i) {
      quantize_symmetric(f, src + i * size_t(f.group), d + i * size_t(f.bytes));
    }
    return;
  }
  const size_t n_blocks = n / kBlock;
  for (size_t i = 0; i < n_blocks; ++i) {
    const float* x = src + i * kBlock;
    int q[32];
    switch (type) {
      case DType::Q4_1: {
        float min, max;
        min_max(x, min, max);
        const float d = (max - min) / 15, id = d != 0 ? 1 / d : 0;
        BlockQ4_1 b;
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        for (int j = 0; j < 32; ++j) q[j] = std::min(15, int(int8_t((x[j] - min) * id + 0.5f)));
        for (int j = 0; j < 16; ++j) b.qs[j] = uint8_t(q[j] | (q[j + 16] << 4));
        store_block(dst, i, b);
        break;
      }
      case DType::Q5_0: {
        const float d = signed_absmax(x) / -16, id = d != 0 ? 1 / d : 0;
        BlockQ5_0 b;
        b.d = f32_to_f16(d);
        for (int j = 0; j < 32; ++j) q[j] = std::min(31, int(int8_t(x[j] * id + 16.5f)));
        pack5(q, b);
        store_block(dst, i, b);
        break;
      }
      case DType::Q5_1: {
        float min, max;
        min_max(x, min, max);
        const float d = (max - min) / 31, id = d != 0 ? 1 / d : 0;
        BlockQ5_1 b;
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        for (int j = 0; j < 32; ++j) q[j] = std::min(31, int(uint8_t((x[j] - min) * id + 0.5f)));
        pack5(q, b);
        store_block(dst, i, b);
        break;
      }
      default: return;
    }
  }
}

}  // namespace rwkv::quant
