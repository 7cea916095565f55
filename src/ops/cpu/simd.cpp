// SIMD kernels, compiled once per instruction set by Highway and picked at run time
// (DESIGN §6). Each has a plain-loop twin in ops/ref/ that the tests hold it to.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/cpu/simd.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must follow foreach_target.h.
#include "hwy/contrib/math/math-inl.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include <cstddef>
#include <cstring>

#include "core/quant.h"
#include "ops/cpu/simd.h"

// Shared by every target (this file is compiled once per target; the table once).
#ifndef RWKV_OPS_CPU_SIMD_ONCE
#define RWKV_OPS_CPU_SIMD_ONCE
namespace rwkv::ops::cpu {
// The fifth bits of 8 elements of a 5-bit block: kHighBits[b][j] = 16 if bit j of b is set.
// One load of 8 lanes replaces a variable shift, a mask and a broadcast (measured on Zen 3:
// q5_0 decode 20% faster than with shifts).
struct HighBitTable {
  alignas(64) int32_t v[256][8];
};
constexpr HighBitTable MakeHighBitTable() {
  HighBitTable t{};
  for (int b = 0; b < 256; ++b)
    for (int j = 0; j < 8; ++j) t.v[b][j] = ((b >> j) & 1) * 16;
  return t;
}
inline constexpr HighBitTable kHighBits = MakeHighBitTable();
}  // namespace rwkv::ops::cpu
#endif

HWY_BEFORE_NAMESPACE();
namespace rwkv::ops::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Weight element tags: how a row of stored weights becomes fp32 vectors.
struct F32W {
  using T = float;
  static HWY_INLINE VF Load(DF d, const T* p) { return hn::LoadU(d, p); }
  static HWY_INLINE float Scalar(T x) { return x; }
};
struct BF16W {
  using T = hwy::bfloat16_t;
  static HWY_INLINE VF Load(DF d, const T* p) {
    const hn::Rebind<T, DF> dh;
    return hn::PromoteTo(d, hn::LoadU(dh, p));
  }
  static HWY_INLINE float Scalar(T x) { return hwy::F32FromBF16(x); }
};
struct F16W {
  using T = hwy::float16_t;
  static HWY_INLINE VF Load(DF d, const T* p) {
    const hn::Rebind<T, DF> dh;
    return hn::PromoteTo(d, hn::LoadU(dh, p));
  }
  static HWY_INLINE float Scalar(T x) {
    uint16_t bits;
    std::memcpy(&bits, &x, 2);
    return f16_to_f32(bits);
  }
};

HWY_INLINE float Sum(DF d, VF v) { return hn::GetLane(hn::SumOfLanes(d, v)); }

// Rows read at once by the one-vector kernels (measured: 1 → 2 → 4 streams per core gave
// 8.0 → 10.2 → 12.8 GB/s on one core, 13 GB/s being a plain streaming read).
constexpr int kStreams = 4;

HWY_INLINE float Dot(const float* a, const float* b, size_t n) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  VF acc0 = hn::Zero(d), acc1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * NL <= n; i += 2 * NL) {
    acc0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), acc0);
    acc1 = hn::MulAdd(hn::LoadU(d, a + i + NL), hn::LoadU(d, b + i + NL), acc1);
  }
  for (; i + NL <= n; i += NL) acc0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), acc0);
  float s = Sum(d, hn::Add(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += alpha * x
HWY_INLINE void Axpy(float alpha, const float* x, float* y, size_t n) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  const VF va = hn::Set(d, alpha);
  size_t i = 0;
  for (; i + NL <= n; i += NL) hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, y + i);
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// Rows [r0, r1) of y[m][o] = Σ_i W[o][i] x[m][i] for M input vectors. Each weight row is read
// once for all M vectors: decode is bound by reading the weights.
// MatVecStreamsBF16's twin for fp32 and fp16 rows. Each row's sum is formed exactly as in
// MatVecRowsT (two accumulators over alternate vectors, then the scalar tail), so a product's
// result for one input vector does not depend on how many vectors share the call.
template <class W>
int MatVecStreamsT(const typename W::T* w_all, size_t n, const float* x, float* y, int r0,
                   int r1) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  const int slice = (r1 - r0) / kStreams;
  for (int o = r0; o < r0 + slice; ++o) {
    const typename W::T* w[kStreams];
    VF acc0[kStreams], acc1[kStreams];
    for (int k = 0; k < kStreams; ++k) {
      w[k] = w_all + size_t(o + k * slice) * n;
      acc0[k] = acc1[k] = hn::Zero(d);
    }
    size_t i = 0;
    for (; i + 2 * NL <= n; i += 2 * NL) {
      const VF x0 = hn::LoadU(d, x + i), x1 = hn::LoadU(d, x + i + NL);
      for (int k = 0; k < kStreams; ++k) {
        if constexpr (sizeof(typename W::T) == 2) __builtin_prefetch(w[k] + i + 2048);
        acc0[k] = hn::MulAdd(W::Load(d, w[k] + i), x0, acc0[k]);
        acc1[k] = hn::MulAdd(W::Load(d, w[k] + i + NL), x1, acc1[k]);
      }
    }
    for (int k = 0; k < kStreams; ++k) {
      float sum = Sum(d, hn::Add(acc0[k], acc1[k]));
      for (size_t j = i; j < n; ++j) sum += W::Scalar(w[k][j]) * x[j];
      y[o + k * slice] = sum;
    }
  }
  return r0 + kStreams * slice;
}

template <class W, int M>
void MatVecRowsT(const typename W::T* w_all, int cols, const float* x, float* y, int rows,
                 int r0, int r1) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  const size_t n = size_t(cols);
  int first = r0;
  if constexpr (M == 1) first = MatVecStreamsT<W>(w_all, n, x, y, r0, r1);
  for (int o = first; o < r1; ++o) {
    const typename W::T* w = w_all + size_t(o) * n;
    VF acc0[M], acc1[M];
    for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = hn::Zero(d);
    size_t i = 0;
    for (; i + 2 * NL <= n; i += 2 * NL) {
      // Software prefetch helps the 16-bit streams (measured); fp32 streams do as well without.
      if constexpr (sizeof(typename W::T) == 2) __builtin_prefetch(w + i + 2048);
      const VF w0 = W::Load(d, w + i), w1 = W::Load(d, w + i + NL);
      for (int m = 0; m < M; ++m) {
        acc0[m] = hn::MulAdd(w0, hn::LoadU(d, x + size_t(m) * n + i), acc0[m]);
        acc1[m] = hn::MulAdd(w1, hn::LoadU(d, x + size_t(m) * n + i + NL), acc1[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      float s = Sum(d, hn::Add(acc0[m], acc1[m]));
      for (size_t j = i; j < n; ++j) s += W::Scalar(w[j]) * x[size_t(m) * n + j];
      y[size_t(m) * size_t(rows) + size_t(o)] = s;
    }
  }
}

// bf16 rows, read 2·lanes at a time as u32 lanes: lane k holds elements 2k (low half) and
// 2k+1 (high half), and a bf16 is the top half of an fp32, so a shift and a mask decode both
// with no widening shuffles. x is permuted once to match (evens, then odds, per block).

// One input vector: rows taken kStreams at a time from kStreams equal, distant slices of
// [r0, r1), so that several DRAM streams (and prefetch streams) run at once; one stream alone
// leaves the memory bus idle part of the time. Returns the first row not done.
constexpr size_t kPrefetchBF16 = 2048;  // elements: 4 KiB ahead

HWY_INLINE int MatVecStreamsBF16(const uint16_t* w_all, size_t n, size_t full, const float* p,
                                 const float* x, float* y, int r0, int r1) {
  const DF d;
  const hn::RebindToUnsigned<DF> du;
  const size_t NL = hn::Lanes(d), block = 2 * NL;
  const auto high = hn::Set(du, 0xFFFF0000u);
  const int slice = (r1 - r0) / kStreams;
  for (int o = r0; o < r0 + slice; ++o) {
    const uint16_t* w[kStreams];
    VF even[kStreams], odd[kStreams];
    for (int k = 0; k < kStreams; ++k) {
      w[k] = w_all + size_t(o + k * slice) * n;
      even[k] = odd[k] = hn::Zero(d);
    }
    for (size_t i = 0; i < full; i += block) {
      const VF xe = hn::LoadU(d, p + i), xo = hn::LoadU(d, p + i + NL);
      for (int k = 0; k < kStreams; ++k) {
        __builtin_prefetch(w[k] + i + kPrefetchBF16);
        const auto v = hn::LoadU(du, reinterpret_cast<const uint32_t*>(w[k] + i));
        even[k] = hn::MulAdd(hn::BitCast(d, hn::ShiftLeft<16>(v)), xe, even[k]);
        odd[k] = hn::MulAdd(hn::BitCast(d, hn::And(v, high)), xo, odd[k]);
      }
    }
    for (int k = 0; k < kStreams; ++k) {
      float sum = Sum(d, hn::Add(even[k], odd[k]));
      for (size_t j = full; j < n; ++j) sum += bf16_to_f32(w[k][j]) * x[j];
      y[o + k * slice] = sum;
    }
  }
  return r0 + kStreams * slice;
}

template <int M>
void MatVecRowsBF16T(const uint16_t* w_all, int cols, const float* x, float* y, int rows, int r0,
                     int r1) {
  const DF d;
  const hn::RebindToUnsigned<DF> du;
  const size_t NL = hn::Lanes(d), block = 2 * NL, n = size_t(cols), full = n / block * block;
  thread_local std::vector<float> permuted;
  permuted.resize(size_t(M) * full);
  for (int m = 0; m < M; ++m) {
    const float* xm = x + size_t(m) * n;
    float* pm = permuted.data() + size_t(m) * full;
    for (size_t b = 0; b < full; b += block) {
      for (size_t k = 0; k < NL; ++k) {
        pm[b + k] = xm[b + 2 * k];
        pm[b + NL + k] = xm[b + 2 * k + 1];
      }
    }
  }
  const auto high = hn::Set(du, 0xFFFF0000u);
  int first = r0;
  if constexpr (M == 1) {
    first = MatVecStreamsBF16(w_all, n, full, permuted.data(), x, y, r0, r1);
  }
  for (int o = first; o < r1; ++o) {
    const uint16_t* w = w_all + size_t(o) * n;
    VF acc0[M], acc1[M];
    for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = hn::Zero(d);
    for (size_t i = 0; i < full; i += block) {
      __builtin_prefetch(w + i + kPrefetchBF16);
      const auto v = hn::LoadU(du, reinterpret_cast<const uint32_t*>(w + i));
      const VF even = hn::BitCast(d, hn::ShiftLeft<16>(v)), odd = hn::BitCast(d, hn::And(v, high));
      for (int m = 0; m < M; ++m) {
        const float* pm = permuted.data() + size_t(m) * full + i;
        acc0[m] = hn::MulAdd(even, hn::LoadU(d, pm), acc0[m]);
        acc1[m] = hn::MulAdd(odd, hn::LoadU(d, pm + NL), acc1[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      float s = Sum(d, hn::Add(acc0[m], acc1[m]));
      for (size_t j = full; j < n; ++j) s += bf16_to_f32(w[j]) * x[size_t(m) * n + j];
      y[size_t(m) * size_t(rows) + size_t(o)] = s;
    }
  }
}

void MatVecRowsBF16(const void* w, int cols, const float* x, int M, float* y, int rows, int r0,
                    int r1) {
  const auto* wt = static_cast<const uint16_t*>(w);
  for (int m = 0; m < M; m += 4) {
    const size_t xo = size_t(m) * size_t(cols), yo = size_t(m) * size_t(rows);
    switch (std::min(4, M - m)) {
      case 1: MatVecRowsBF16T<1>(wt, cols, x + xo, y + yo, rows, r0, r1); break;
      case 2: MatVecRowsBF16T<2>(wt, cols, x + xo, y + yo, rows, r0, r1); break;
      case 3: MatVecRowsBF16T<3>(wt, cols, x + xo, y + yo, rows, r0, r1); break;
      default: MatVecRowsBF16T<4>(wt, cols, x + xo, y + yo, rows, r0, r1);
    }
  }
}

template <class W>
void MatVecRowsW(const void* w, int cols, const float* x, int M, float* y, int rows, int r0,
                 int r1) {
  const auto* wt = static_cast<const typename W::T*>(w);
  switch (M) {
    case 1: return MatVecRowsT<W, 1>(wt, cols, x, y, rows, r0, r1);
    case 2: return MatVecRowsT<W, 2>(wt, cols, x, y, rows, r0, r1);
    case 3: return MatVecRowsT<W, 3>(wt, cols, x, y, rows, r0, r1);
    default:
      for (int m = 0; m < M; m += 4) {
        const int mm = std::min(4, M - m);
        if (mm == 4) {
          MatVecRowsT<W, 4>(wt, cols, x + size_t(m) * size_t(cols), y + size_t(m) * size_t(rows),
                            rows, r0, r1);
        } else {
          MatVecRowsW<W>(w, cols, x + size_t(m) * size_t(cols), mm, y + size_t(m) * size_t(rows),
                         rows, r0, r1);
        }
      }
  }
}

// Quantized blocks to fp32 (before sgemm): ggml's 32-element blocks and the group types (spec
// §7.1, layouts in rwkv/dtype.h and core/quant.h). Their products with a few vectors (decode) go
// through the integer kernels of ops/qdot.h instead.

// At most 16 lanes: a chunk of lanes comes from as many bytes of a block's 16 nibble bytes.
using DQ = hn::CappedTag<float, 16>;
using DQI = hn::RebindToSigned<DQ>;
using VQ = hn::Vec<DQ>;
using VQI = hn::Vec<DQI>;

// The fp16 value at any byte address, in every lane (one broadcast and one F16C conversion
// where the target has them).
HWY_INLINE VQ BroadcastHalf(const uint8_t* p) {
  const DQ d;
  const hn::Rebind<uint16_t, DQ> du16;
  const hn::Rebind<hwy::float16_t, DQ> dh;
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return hn::PromoteTo(d, hn::BitCast(dh, hn::Set(du16, bits)));
}

// Quants of elements k..k+lanes−1 (lo) and 16+k..16+k+lanes−1 (hi) of a block, as int32.
template <class L>
HWY_INLINE void DecodeChunk(const uint8_t* blk, uint32_t qh, size_t k, VQI& lo, VQI& hi) {
  const DQI di;
  if constexpr (L::kBits == 8) {
    const hn::Rebind<int8_t, DQI> d8;
    const auto* q = reinterpret_cast<const int8_t*>(blk + L::kQs);
    lo = hn::PromoteTo(di, hn::LoadU(d8, q + k));
    hi = hn::PromoteTo(di, hn::LoadU(d8, q + 16 + k));
  } else {
    const hn::Rebind<uint8_t, DQI> d8;
    const VQI bytes = hn::PromoteTo(di, hn::LoadU(d8, blk + L::kQs + k));
    lo = hn::And(bytes, hn::Set(di, 0x0f));
    hi = hn::ShiftRight<4>(bytes);
    if constexpr (L::kBits == 5) {
      if constexpr (hn::MaxLanes(DQI()) <= 8) {
        // Bits k.. and 16 + k.. of qh pick rows of the table (up to 8 lanes).
        lo = hn::Or(lo, hn::LoadU(di, kHighBits.v[(qh >> k) & 0xff]));
        hi = hn::Or(hi, hn::LoadU(di, kHighBits.v[(qh >> (16 + k)) & 0xff]));
      } else {
        // Wider vectors: bit j of qh lands on bit 4 (value 16) when lane j shifts qh·16 right
        // by j, and bit j + 16 when it shifts qh right by j + 12.
        const hn::RebindToUnsigned<DQI> du;
        const auto bits = hn::Set(du, qh), sixteen = hn::Set(du, 16u);
        const auto index = hn::BitCast(du, hn::Iota(di, int32_t(k)));
        const auto index_hi = hn::BitCast(du, hn::Iota(di, int32_t(k + 12)));
        lo = hn::Or(lo, hn::BitCast(di, hn::And(hn::Shr(hn::ShiftLeft<4>(bits), index), sixteen)));
        hi = hn::Or(hi, hn::BitCast(di, hn::And(hn::Shr(bits, index_hi), sixteen)));
      }
    }
  }
}

void MatVecRows(const Matrix& W, const float* x, int M, float* y, int r0, int r1) {
  switch (W.dtype) {
    case DType::F32: return MatVecRowsW<F32W>(W.data, W.cols, x, M, y, W.rows, r0, r1);
    case DType::BF16: return MatVecRowsBF16(W.data, W.cols, x, M, y, W.rows, r0, r1);
    case DType::F16: return MatVecRowsW<F16W>(W.data, W.cols, x, M, y, W.rows, r0, r1);
    default: return;  // quantized: ops/qdot.h
  }
}

// n elements of whole blocks to fp32. Bit-identical to quant::dequantize:
// d·(q − bias) is one rounding in both, and d·q + m is too, d·q being exact in fp32 (an 11-bit
// significand times at most 8 bits), so a fused multiply-add rounds the same as mul then add.
template <class L>
void ToF32Q(const void* src, float* dst, size_t n) {
  const DQ d;
  const DQI di;
  const size_t NL = hn::Lanes(d);
  const auto* s = static_cast<const uint8_t*>(src);
  for (size_t i = 0; i < n / quant::kBlock; ++i) {
    // Sub-block i % kSub of block i / kSub (Q8_G: 32 quants each): its quants sit where a lone
    // block's would if the block started kSubBytes·(i % kSub) bytes later.
    const uint8_t* blk = s + i / L::kSub * L::kBytes;
    const uint8_t* sub = blk + i % L::kSub * L::kSubBytes;
    float* out = dst + i * quant::kBlock;
    uint32_t qh = 0;
    if constexpr (L::kBits == 5) std::memcpy(&qh, blk + L::kQh, 4);
    const VQ dv = BroadcastHalf(blk);
    for (size_t k = 0; k < 16; k += NL) {
      VQI lo, hi;
      DecodeChunk<L>(sub, qh, k, lo, hi);
      if constexpr (L::kMin != 0) {
        const VQ mv = BroadcastHalf(blk + L::kMin);
        hn::StoreU(hn::MulAdd(dv, hn::ConvertTo(d, lo), mv), d, out + k);
        hn::StoreU(hn::MulAdd(dv, hn::ConvertTo(d, hi), mv), d, out + 16 + k);
      } else {
        const VQI bias = hn::Set(di, L::kBias);
        hn::StoreU(hn::Mul(dv, hn::ConvertTo(d, hn::Sub(lo, bias))), d, out + k);
        hn::StoreU(hn::Mul(dv, hn::ConvertTo(d, hn::Sub(hi, bias))), d, out + 16 + k);
      }
    }
  }
}

// Q4_G blocks: 32 bytes per 64 elements, element j < 32 the low nibble of byte j and j + 32 its
// high nibble. d·(q − 8) is one rounding, as in quant::dequantize.
template <class L>
void ToF32Q4G(const void* src, float* dst, size_t n) {
  const DQ d;
  const DQI di;
  const hn::Rebind<uint8_t, DQI> d8;
  const size_t NL = hn::Lanes(d), group = size_t(L::kSub) * 32;
  const auto* s = static_cast<const uint8_t*>(src);
  const VQI eight = hn::Set(di, 8), low = hn::Set(di, 0x0f);
  for (size_t b = 0; b < n / group; ++b) {
    const uint8_t* blk = s + b * L::kBytes;
    const VQ dv = BroadcastHalf(blk);
    for (size_t c = 0; c < group / 64; ++c) {
      float* out = dst + b * group + 64 * c;
      for (size_t k = 0; k < 32; k += NL) {
        const VQI bytes = hn::PromoteTo(di, hn::LoadU(d8, blk + L::kQs + 32 * c + k));
        hn::StoreU(hn::Mul(dv, hn::ConvertTo(d, hn::Sub(hn::And(bytes, low), eight))), d, out + k);
        hn::StoreU(hn::Mul(dv, hn::ConvertTo(d, hn::Sub(hn::ShiftRight<4>(bytes), eight))), d, out + 32 + k);
      }
    }
  }
}

template <class W>
void ToF32W(const void* src, float* dst, size_t n) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  const auto* s = static_cast<const typename W::T*>(src);
  size_t i = 0;
  for (; i + NL <= n; i += NL) hn::StoreU(W::Load(d, s + i), d, dst + i);
  for (; i < n; ++i) dst[i] = W::Scalar(s[i]);
}

void ToF32(DType dtype, const void* src, float* dst, size_t n) {
  switch (dtype) {
    case DType::F32: return ToF32W<F32W>(src, dst, n);
    case DType::BF16: return ToF32W<BF16W>(src, dst, n);
    case DType::F16: return ToF32W<F16W>(src, dst, n);
    case DType::Q4_0: return ToF32Q<quant::Format<DType::Q4_0>>(src, dst, n);
    case DType::Q4_1: return ToF32Q<quant::Format<DType::Q4_1>>(src, dst, n);
    case DType::Q5_0: return ToF32Q<quant::Format<DType::Q5_0>>(src, dst, n);
    case DType::Q5_1: return ToF32Q<quant::Format<DType::Q5_1>>(src, dst, n);
    case DType::Q8_0: return ToF32Q<quant::Format<DType::Q8_0>>(src, dst, n);
    case DType::Q8_G64: return ToF32Q<quant::Format<DType::Q8_G64>>(src, dst, n);
    case DType::Q8_G128: return ToF32Q<quant::Format<DType::Q8_G128>>(src, dst, n);
    case DType::Q4_G64: return ToF32Q4G<quant::Format<DType::Q4_G64>>(src, dst, n);
    case DType::Q4_G128: return ToF32Q4G<quant::Format<DType::Q4_G128>>(src, dst, n);
  }
}

constexpr int kScanAhead = 4;  // tokens ahead whose inputs the WKV scans prefetch

// One token of Wkv7Recurrent over all N rows of S: the update, y = S·r, and with kNext the next
// token's sa = S·a_next from the updated rows.
template <bool kNext>
HWY_INLINE void Wkv7Token(float* S, size_t N, const float* decay, const float* sa, const float* r,
                          const float* k, const float* v, const float* b, const float* a_next,
                          float* y, float* sa_next) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  for (size_t i = 0; i < N; i += 2) {
    float* S0 = S + i * N;
    float* S1 = S0 + N;
    const VF sa0 = hn::Set(d, sa[i]), sa1 = hn::Set(d, sa[i + 1]);
    const VF v0 = hn::Set(d, v[i]), v1 = hn::Set(d, v[i + 1]);
    VF y0 = hn::Zero(d), y1 = y0, n0 = y0, n1 = y0;
#pragma GCC unroll 4
    for (size_t j = 0; j < N; j += NL) {
      const VF dj = hn::Load(d, decay + j), bj = hn::LoadU(d, b + j), kj = hn::LoadU(d, k + j);
      VF s0 = hn::Mul(hn::LoadU(d, S0 + j), dj);
      VF s1 = hn::Mul(hn::LoadU(d, S1 + j), dj);
      s0 = hn::MulAdd(v0, kj, hn::MulAdd(sa0, bj, s0));
      s1 = hn::MulAdd(v1, kj, hn::MulAdd(sa1, bj, s1));
      hn::StoreU(s0, d, S0 + j);
      hn::StoreU(s1, d, S1 + j);
      const VF rj = hn::LoadU(d, r + j);
      y0 = hn::MulAdd(s0, rj, y0);
      y1 = hn::MulAdd(s1, rj, y1);
      if constexpr (kNext) {
        const VF aj = hn::LoadU(d, a_next + j);
        n0 = hn::MulAdd(s0, aj, n0);
        n1 = hn::MulAdd(s1, aj, n1);
      }
    }
    y[i] = Sum(d, y0);
    y[i + 1] = Sum(d, y1);
    if constexpr (kNext) {
      sa_next[i] = Sum(d, n0);
      sa_next[i + 1] = Sum(d, n1);
    }
  }
}

// Recurrent WKV-7 for one head (spec §2.4). Row i of S (value i) is updated with the key
// vectors: sa_i = S_i·a ; S_i ← S_i⊙d + sa_i b + v_i k ; y_i = S_i·r. Needs N % lanes == 0.
// One pass over S per token: the next token's sa_i = S_i·a′ is taken from the updated row
// while it is in registers, and two rows at a time share the loads of d, b, k, r and a′. (A dot
// with a, then the update, each ending in one row's horizontal sum, left the scan bound by
// those dependency chains: 2× slower at N = 64.)
void Wkv7Recurrent(const Wkv7Head& h) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  const size_t N = size_t(h.N);
  HWY_ALIGN float decay[kMaxHeadSize], sa[2][kMaxHeadSize];
  for (size_t i = 0; i < N; ++i) sa[0][i] = Dot(h.S + i * N, h.a, N);
  for (int t = 0; t < h.T; ++t) {
    const size_t o = size_t(t) * size_t(h.stride);
    // A token's inputs sit a row of the (T, C) activations apart (3 KiB at C = 768): fetched
    // ahead, the scan waits less for them (a 2048-token prefill: ~4% faster).
    if (t + kScanAhead < h.T) {
      const size_t ahead = o + size_t(kScanAhead) * size_t(h.stride);
      for (const float* p : {h.w, h.r, h.k, h.v, h.a, h.b}) {
        for (size_t j = 0; j < N; j += 16) hwy::Prefetch(p + ahead + j);
      }
    }
    for (size_t j = 0; j < N; j += NL) hn::Store(hn::Exp(d, hn::LoadU(d, h.w + o + j)), d, decay + j);
    const float* sa_t = sa[t & 1];
    float* sa_next = sa[(t + 1) & 1];
    if (t + 1 < h.T) {
      Wkv7Token<true>(h.S, N, decay, sa_t, h.r + o, h.k + o, h.v + o, h.b + o,
                      h.a + o + size_t(h.stride), h.y + o, sa_next);
    } else {
      Wkv7Token<false>(h.S, N, decay, sa_t, h.r + o, h.k + o, h.v + o, h.b + o, nullptr, h.y + o,
                       nullptr);
    }
  }
}

// out = Σ_i x[i] · ST[i][:] (= S x for ST = Sᵀ), four vectors of outputs at a time in registers.
HWY_INLINE void S0TimesVector(const float* ST, const float* x, float* out, size_t N) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  size_t j = 0;
  for (; j + 4 * NL <= N; j += 4 * NL) {
    VF a0 = hn::Zero(d), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < N; ++i) {
      const VF xi = hn::Set(d, x[i]);
      const float* row = ST + i * N + j;
      a0 = hn::MulAdd(xi, hn::LoadU(d, row), a0);
      a1 = hn::MulAdd(xi, hn::LoadU(d, row + NL), a1);
      a2 = hn::MulAdd(xi, hn::LoadU(d, row + 2 * NL), a2);
      a3 = hn::MulAdd(xi, hn::LoadU(d, row + 3 * NL), a3);
    }
    hn::StoreU(a0, d, out + j);
    hn::StoreU(a1, d, out + j + NL);
    hn::StoreU(a2, d, out + j + 2 * NL);
    hn::StoreU(a3, d, out + j + 3 * NL);
  }
  for (; j < N; j += NL) {
    VF a = hn::Zero(d);
    for (size_t i = 0; i < N; ++i) a = hn::MulAdd(hn::Set(d, x[i]), hn::LoadU(d, ST + i * N + j), a);
    hn::StoreU(a, d, out + j);
  }
}

// Chunked WKV-7 for one head (spec §4.5), chunks of kWkvChunk tokens. Decays are factorised
// relative to the chunk start (see ref::wkv7_chunked); everything else is dots and axpys over
// contiguous N-vectors. Needs N % lanes == 0.
void Wkv7Chunked(const Wkv7Head& h) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  const size_t N = size_t(h.N);
  constexpr int C = kWkvChunk;
  thread_local std::vector<float> buf;
  buf.resize(7 * C * N + 2 * N + N * N);
  float *rt = buf.data(), *at = rt + C * N, *kt = at + C * N, *bt = kt + C * N, *vv = bt + C * N,
        *sa = vv + C * N, *yy = sa + C * N, *G = yy + C * N, *eg = G + N, *S0T = eg + N;
  float A_rk[C][C], A_rb[C][C], A_ak[C][C], A_ab[C][C];
  for (int t0 = 0; t0 < h.T; t0 += C) {
    const int L = std::min(C, h.T - t0);
    // Decay-scaled copies of this chunk's inputs. eg holds e^{G_t}; e^{Ĝ_t} = e^{G_{t−1}} is the
    // previous token's, and e^{−G_t} its reciprocal: one exp per element.
    for (size_t i = 0; i < N; i += NL) hn::StoreU(hn::Set(d, 1.f), d, eg + i);
    for (size_t i = 0; i < N; i += NL) hn::StoreU(hn::Zero(d), d, G + i);
    for (int t = 0; t < L; ++t) {
      const size_t o = size_t(t0 + t) * size_t(h.stride), l = size_t(t) * N;
      for (size_t i = 0; i < N; i += NL) {
        const VF g = hn::Add(hn::LoadU(d, G + i), hn::LoadU(d, h.w + o + i));
        hn::StoreU(g, d, G + i);
        const VF e_excl = hn::LoadU(d, eg + i), e = hn::Exp(d, g);
        const VF e_neg = hn::Div(hn::Set(d, 1.f), e);
        hn::StoreU(e, d, eg + i);
        hn::StoreU(hn::Mul(hn::LoadU(d, h.r + o + i), e), d, rt + l + i);
        hn::StoreU(hn::Mul(hn::LoadU(d, h.a + o + i), e_excl), d, at + l + i);
        hn::StoreU(hn::Mul(hn::LoadU(d, h.k + o + i), e_neg), d, kt + l + i);
        hn::StoreU(hn::Mul(hn::LoadU(d, h.b + o + i), e_neg), d, bt + l + i);
        hn::StoreU(hn::LoadU(d, h.v + o + i), d, vv + l + i);
      }
    }
    // Pair terms within the chunk.
    for (int t = 0; t < L; ++t) {
      for (int s = 0; s <= t; ++s) {
        A_rk[t][s] = Dot(rt + t * N, kt + s * N, N);
        A_rb[t][s] = Dot(rt + t * N, bt + s * N, N);
        A_ak[t][s] = s < t ? Dot(at + t * N, kt + s * N, N) : 0.f;
        A_ab[t][s] = s < t ? Dot(at + t * N, bt + s * N, N) : 0.f;
      }
    }
    // The incoming state's share: sa_t ← S₀ ã_t, y_t ← S₀ r̃_t, as sums of rows of S₀ᵀ so that
    // accumulators stay in registers and no horizontal sums are needed.
    for (size_t j = 0; j < N; ++j)
      for (size_t i = 0; i < N; ++i) S0T[i * N + j] = h.S[j * N + i];
    for (int t = 0; t < L; ++t) {
      S0TimesVector(S0T, at + t * N, sa + t * N, N);
      S0TimesVector(S0T, rt + t * N, yy + t * N, N);
    }
    // Forward substitution for sa_t = S_{t−1} a_t, then the outputs.
    for (int t = 0; t < L; ++t) {
      for (int s = 0; s < t; ++s) {
        Axpy(A_ak[t][s], vv + s * N, sa + t * N, N);
        Axpy(A_ab[t][s], sa + s * N, sa + t * N, N);
      }
    }
    for (int t = 0; t < L; ++t) {
      float* y = yy + t * N;
      for (int s = 0; s <= t; ++s) {
        Axpy(A_rk[t][s], vv + s * N, y, N);
        Axpy(A_rb[t][s], sa + s * N, y, N);
      }
      std::copy(y, y + N, h.y + size_t(t0 + t) * size_t(h.stride));
    }
    // State after the chunk (eg = e^{G_last}).
    for (size_t j = 0; j < N; ++j) {
      float* Sj = h.S + j * N;
      for (size_t i = 0; i < N; i += NL) {
        VF acc = hn::LoadU(d, Sj + i);
        for (int s = 0; s < L; ++s) {
          acc = hn::MulAdd(hn::Set(d, vv[s * N + j]), hn::LoadU(d, kt + s * N + i), acc);
          acc = hn::MulAdd(hn::Set(d, sa[s * N + j]), hn::LoadU(d, bt + s * N + i), acc);
        }
        hn::StoreU(hn::Mul(acc, hn::LoadU(d, eg + i)), d, Sj + i);
      }
    }
  }
}

// Sum of n floats read as kStreams distant streams at once, as the matrix-vector kernels read:
// a pure streaming read, to measure the bandwidth they can reach.
float SumF32(const float* x, size_t n) {
  const DF d;
  const size_t NL = hn::Lanes(d), slice = n / kStreams / NL * NL;
  VF acc[kStreams];
  for (int k = 0; k < kStreams; ++k) acc[k] = hn::Zero(d);
  for (size_t i = 0; i < slice; i += NL) {
    for (int k = 0; k < kStreams; ++k) acc[k] = hn::Add(acc[k], hn::LoadU(d, x + k * slice + i));
  }
  VF total = acc[0];
  for (int k = 1; k < kStreams; ++k) total = hn::Add(total, acc[k]);
  float s = Sum(d, total);
  for (size_t i = kStreams * slice; i < n; ++i) s += x[i];
  return s;
}

// y[i] = f(x[i]) a vector at a time; the tail through a padded copy, so every element takes the
// same path.
template <class F>
HWY_INLINE void MapF32(const float* x, float* y, size_t n, F f) {
  const DF d;
  const size_t NL = hn::Lanes(d);
  size_t i = 0;
  for (; i + NL <= n; i += NL) hn::StoreU(f(hn::LoadU(d, x + i)), d, y + i);
  if (i < n) {
    HWY_ALIGN float tail[hn::MaxLanes(d)] = {};
    std::copy(x + i, x + n, tail);
    hn::Store(f(hn::Load(d, tail)), d, tail);
    std::copy(tail, tail + (n - i), y + i);
  }
}

// Highway's Exp and Tanh clamp their argument, NaN included: a NaN is passed through, as the
// scalar functions do.
void Sigmoid(const float* x, float* y, size_t n) {
  const DF d;
  const VF one = hn::Set(d, 1.f);
  MapF32(x, y, n, [&](VF v) {
    return hn::IfThenElse(hn::IsNaN(v), v, hn::Div(one, hn::Add(one, hn::Exp(d, hn::Neg(v)))));
  });
}

void Tanh(const float* x, float* y, size_t n) {
  const DF d;
  MapF32(x, y, n, [&](VF v) { return hn::IfThenElse(hn::IsNaN(v), v, hn::Tanh(d, v)); });
}

size_t LanesF32() { return hn::Lanes(DF()); }
const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace rwkv::ops::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace rwkv::ops::cpu {
HWY_EXPORT(MatVecRows);
HWY_EXPORT(ToF32);
HWY_EXPORT(Wkv7Recurrent);
HWY_EXPORT(Wkv7Chunked);
HWY_EXPORT(Sigmoid);
HWY_EXPORT(Tanh);
HWY_EXPORT(LanesF32);
HWY_EXPORT(SumF32);
HWY_EXPORT(TargetName);

void simd_matvec_rows(const Matrix& W, const float* x, int M, float* y, int r0, int r1) {
  HWY_DYNAMIC_DISPATCH(MatVecRows)(W, x, M, y, r0, r1);
}
void simd_to_f32(DType dtype, const void* src, float* dst, size_t n) {
  HWY_DYNAMIC_DISPATCH(ToF32)(dtype, src, dst, n);
}
void simd_wkv7_recurrent(const Wkv7Head& h) { HWY_DYNAMIC_DISPATCH(Wkv7Recurrent)(h); }
void simd_wkv7_chunked(const Wkv7Head& h) { HWY_DYNAMIC_DISPATCH(Wkv7Chunked)(h); }
void simd_sigmoid(const float* x, float* y, size_t n) { HWY_DYNAMIC_DISPATCH(Sigmoid)(x, y, n); }
void simd_tanh(const float* x, float* y, size_t n) { HWY_DYNAMIC_DISPATCH(Tanh)(x, y, n); }
float simd_sum_f32(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(SumF32)(x, n); }
size_t simd_lanes_f32() { return HWY_DYNAMIC_DISPATCH(LanesF32)(); }
const char* simd_target_name() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }
}  // namespace rwkv::ops::cpu
#endif
