// Quantized blocks (spec §7.1; ggml's and the group types of `rwkv quantize`): the scalar decode
// against hand-built blocks, the reference quantizer's error bounds, and the CPU products (integer
// kernels with 8-bit inputs for a few vectors, conversion to fp32 + sgemm for more) against the
// plain-loop reference, with blocks at odd byte offsets as they sit in memory-mapped rwkv.cpp
// files. The integer kernels themselves are held to their own reference in test_qdot.cpp.
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <random>
#include <vector>

#include "core/quant.h"
#include "hwy/targets.h"
#include "ops/cpu/simd.h"
#include "ops/ops.h"
#include "ops/qdot.h"
#include "testing.h"

namespace rwkv {
namespace {

constexpr DType kQuantTypes[] = {DType::Q4_0,   DType::Q4_1,    DType::Q5_0,   DType::Q5_1,
                                 DType::Q8_0,   DType::Q8_G64,  DType::Q8_G128, DType::Q4_G64,
                                 DType::Q4_G128};

std::vector<float> random_vec(size_t n, std::mt19937& rng, float lo = -1, float hi = 1) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

void put_u16(std::vector<uint8_t>& b, size_t at, uint16_t v) { std::memcpy(&b[at], &v, 2); }
void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) { std::memcpy(&b[at], &v, 4); }
float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Quantizes v (a multiple of the block's values) into a buffer whose blocks start at `offset`.
std::vector<uint8_t> quantize_at(DType t, const std::vector<float>& v, size_t offset) {
  std::vector<uint8_t> buf(offset + dtype_nbytes(t, v.size()));
  quant::quantize(t, v.data(), buf.data() + offset, v.size());
  return buf;
}

// ---- (a) decode of hand-built blocks, byte by byte as spec §7.1 lays them out ----

// Element j < 16: low nibble of byte j (+ bit j of qh); j + 16: high nibble (+ bit j + 16).
// Q4_G: per 64 elements, j < 32 the low nibble of byte j, j + 32 its high nibble.
struct HandBlock {
  std::vector<uint8_t> bytes;
  std::vector<float> want;
};

HandBlock hand_block(DType t) {
  const uint16_t d_bits = 0x3800;  // 0.5
  const uint16_t m_bits = 0xBE00;  // −1.5
  const float d = 0.5f, m = -1.5f;
  const uint32_t qh = 0xA5C30F96u;
  const int n = int(dtype_block_elems(t));
  HandBlock h;
  h.bytes.assign(dtype_block_bytes(t), 0);
  h.want.assign(size_t(n), 0.f);
  put_u16(h.bytes, 0, d_bits);
  if (t == DType::Q8_0 || t == DType::Q8_G64 || t == DType::Q8_G128) {
    for (int j = 0; j < n; ++j) {
      const int8_t q = int8_t(j % 32 == 31 ? 127 : (j * 8 + j / 32) % 256 - 128);  // −128 … 127
      h.bytes[size_t(2 + j)] = uint8_t(q);
      h.want[size_t(j)] = d * float(q);
    }
    return h;
  }
  if (t == DType::Q4_G64 || t == DType::Q4_G128) {
    for (int c = 0; c < n / 64; ++c) {
      for (int j = 0; j < 32; ++j) {
        const int lo = (j + c) % 16, hi = (j * 7 + 3 + c) % 16;  // every nibble value
        h.bytes[size_t(2 + 32 * c + j)] = uint8_t(lo | (hi << 4));
        h.want[size_t(64 * c + j)] = d * float(lo - 8);
        h.want[size_t(64 * c + j + 32)] = d * float(hi - 8);
      }
    }
    return h;
  }
  const bool has_min = t == DType::Q4_1 || t == DType::Q5_1;
  const bool five = t == DType::Q5_0 || t == DType::Q5_1;
  size_t qs = 2;
  if (has_min) {
    put_u16(h.bytes, 2, m_bits);
    qs += 2;
  }
  if (five) {
    put_u32(h.bytes, qs, qh);
    qs += 4;
  }
  for (int j = 0; j < 16; ++j) {
    const int lo = j, hi = (j * 7 + 3) % 16;  // every nibble value in each half
    h.bytes[qs + size_t(j)] = uint8_t(lo | (hi << 4));
    int q_lo = lo, q_hi = hi;
    if (five) {
      q_lo |= int((qh >> j) & 1u) << 4;
      q_hi |= int((qh >> (j + 16)) & 1u) << 4;
    }
    switch (t) {
      case DType::Q4_0: h.want[j] = d * float(q_lo - 8), h.want[j + 16] = d * float(q_hi - 8); break;
      case DType::Q5_0: h.want[j] = d * float(q_lo - 16), h.want[j + 16] = d * float(q_hi - 16); break;
      default: h.want[j] = d * float(q_lo) + m, h.want[j + 16] = d * float(q_hi) + m;
    }
  }
  return h;
}

TEST(Quant, DequantizeHandBuiltBlocks) {
  for (DType t : kQuantTypes) {
    const HandBlock h = hand_block(t);
    for (size_t offset : {0, 1, 3}) {
      std::vector<uint8_t> buf(offset + h.bytes.size());
      std::memcpy(buf.data() + offset, h.bytes.data(), h.bytes.size());
      const size_t n = h.want.size();
      std::vector<float> scalar(n), simd(n);
      convert_to_f32(t, buf.data() + offset, scalar.data(), n);
      ops::cpu::simd_to_f32(t, buf.data() + offset, simd.data(), n);
      for (size_t j = 0; j < n; ++j) {
        EXPECT_EQ(scalar[j], h.want[j]) << dtype_name(t) << " element " << j;
        EXPECT_EQ(simd[j], h.want[j]) << dtype_name(t) << " element " << j << " (SIMD)";
      }
    }
  }
  // A few literal values. Q4_0, d = 0.25: byte 0 = 0x1F → element 0 = 0.25·(15 − 8),
  // element 16 = 0.25·(1 − 8).
  std::vector<uint8_t> q40(18, 0x88);
  put_u16(q40, 0, 0x3400);
  q40[2] = 0x1F;
  float y[32];
  convert_to_f32(DType::Q4_0, q40.data(), y, 32);
  EXPECT_EQ(y[0], 1.75f);
  EXPECT_EQ(y[16], -1.75f);
  EXPECT_EQ(y[1], 0.f);
  // Q5_1, d = 1, m = −16: nibbles 0, qh bit 0 and bit 31 set → element 0 = 16 − 16, element 31
  // = 16 − 16, element 1 = −16.
  std::vector<uint8_t> q51(24, 0);
  put_u16(q51, 0, 0x3C00);
  put_u16(q51, 2, 0xCC00);
  put_u32(q51, 4, 0x80000001u);
  convert_to_f32(DType::Q5_1, q51.data(), y, 32);
  EXPECT_EQ(y[0], 0.f);
  EXPECT_EQ(y[31], 0.f);
  EXPECT_EQ(y[1], -16.f);
  EXPECT_EQ(y[16], -16.f);
}

// ---- (b) quantize → dequantize error bounds ----

// Per element: how far the reference quantizer may land from x. With the block scale d (fp32,
// as computed) and its stored fp16 value d16, x is rounded to a grid step of |d| (error ≤ |d|/2)
// except where the 4/5-bit symmetric types clamp the top code (q = 15 / 31 stands for up to
// 16 / 32 steps: error ≤ |d|); storing d (and m) in fp16 adds |d − d16|·|q − bias| (+ |m − m16|).
// `slack` covers fp32 rounding of x·(1/d).
void check_roundtrip(DType t, const std::vector<float>& x) {
  const size_t G = dtype_block_elems(t), nb = x.size() / G;
  const auto buf = quantize_at(t, x, 0);
  std::vector<float> y(x.size());
  convert_to_f32(t, buf.data(), y.data(), y.size());
  const size_t bb = dtype_block_bytes(t);
  for (size_t b = 0; b < nb; ++b) {
    const float* xb = x.data() + b * G;
    const uint8_t* blk = buf.data() + b * bb;
    float amax = 0, smax = 0, mn = xb[0], mx = xb[0];
    for (size_t j = 0; j < G; ++j) {
      if (std::fabs(xb[j]) > amax) amax = std::fabs(xb[j]), smax = xb[j];
      mn = std::min(mn, xb[j]);
      mx = std::max(mx, xb[j]);
    }
    const float d16 = half_at(blk);
    float d = 0, dm = 0;
    int bias = 0, qmax = 0;
    switch (t) {
      case DType::Q4_0:
      case DType::Q4_G64:
      case DType::Q4_G128: d = smax / -8, bias = 8, qmax = 15; break;
      case DType::Q5_0: d = smax / -16, bias = 16, qmax = 31; break;
      case DType::Q4_1: d = (mx - mn) / 15, qmax = 15, dm = std::fabs(mn - half_at(blk + 2)); break;
      case DType::Q5_1: d = (mx - mn) / 31, qmax = 31, dm = std::fabs(mn - half_at(blk + 2)); break;
      default: d = amax / 127, qmax = 127;
    }
    const float dd = std::fabs(d - d16);
    const float slack = 1e-6f * amax;
    for (size_t j = 0; j < G; ++j) {
      float step = 0.5f * std::fabs(d);
      // The clamped top code of Q4_0/Q5_0: x·(1/d) ≥ bias − 0.5 becomes q − bias = bias − 1.
      if (bias != 0 && d != 0 && xb[j] / d >= float(bias) - 0.5f - 1e-4f) step = std::fabs(d);
      const float bound = step + dd * float(bias != 0 ? bias : qmax) + dm + slack;
      ASSERT_LE(std::fabs(y[b * G + j] - xb[j]), bound)
          << dtype_name(t) << " block " << b << " element " << j << " x=" << xb[j] << " d=" << d;
    }
  }
}

TEST(Quant, QuantizeDequantizeErrorBounds) {
  std::mt19937 rng(7);
  for (DType t : kQuantTypes) {
    for (float scale : {1.f, 1e-3f, 50.f, 1e-5f}) {  // 1e-5: fp16 scales go subnormal
      auto x = random_vec(64 * 32, rng, -scale, scale);
      check_roundtrip(t, x);
      // Skewed blocks (all positive, offset) exercise the minimum of Q4_1/Q5_1.
      for (float& v : x) v = std::fabs(v) + 0.5f * scale;
      check_roundtrip(t, x);
    }
  }
}

TEST(Quant, QuantizeZeroAndConstantBlocks) {
  for (DType t : kQuantTypes) {
    const size_t G = dtype_block_elems(t);
    std::vector<float> zero(G, 0.f), y(G, 1.f);
    const auto zb = quantize_at(t, zero, 0);
    convert_to_f32(t, zb.data(), y.data(), G);
    for (size_t j = 0; j < G; ++j) EXPECT_EQ(y[j], 0.f) << dtype_name(t) << " zero block";
    for (float c : {0.7f, -3.25f, 0.01f}) {
      std::vector<float> cst(G, c);
      const auto cb = quantize_at(t, cst, 0);
      convert_to_f32(t, cb.data(), y.data(), G);
      // One grid point is c itself up to the fp16 rounding of the scale (≤ 2^−11 relative) or,
      // for the types with a minimum (d = 0), exactly fp16(c).
      const bool has_min = t == DType::Q4_1 || t == DType::Q5_1;
      for (size_t j = 0; j < G; ++j) {
        if (has_min) {
          EXPECT_EQ(y[j], f16_to_f32(f32_to_f16(c))) << dtype_name(t) << " c=" << c;
        } else {
          EXPECT_NEAR(y[j], c, std::fabs(c) * 0x1p-11f) << dtype_name(t) << " c=" << c;
        }
        EXPECT_EQ(y[j], y[0]) << dtype_name(t) << " c=" << c;
      }
    }
  }
}

// rwkv quantize's 4-bit search: never worse in total than the absmax rule, values on the grid.
TEST(Quant, LeastSquaresScalesBeatTheAbsmaxRule) {
  std::mt19937 rng(9);
  for (DType t : {DType::Q4_0, DType::Q4_G64, DType::Q4_G128}) {
    for (float tail : {0.f, 4.f}) {  // plain uniform, and with an outlier per 128 values
      auto x = random_vec(128 * 256, rng);
      for (size_t i = 0; i < x.size(); i += 128) x[i] *= 1 + tail;
      std::vector<uint8_t> a(dtype_nbytes(t, x.size())), b(a.size());
      quant::quantize(t, x.data(), a.data(), x.size());
      quant::quantize_least_squares(t, x.data(), b.data(), x.size());
      std::vector<float> ya(x.size()), yb(x.size());
      convert_to_f32(t, a.data(), ya.data(), x.size());
      convert_to_f32(t, b.data(), yb.data(), x.size());
      double ea = 0, eb = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        ea += std::pow(double(ya[i]) - x[i], 2);
        eb += std::pow(double(yb[i]) - x[i], 2);
      }
      std::printf("%s (outliers x%.0f): squared error %.4g least squares vs %.4g absmax\n",
                  dtype_name(t), 1 + tail, eb, ea);
      EXPECT_LT(eb, ea * 0.98) << dtype_name(t);
    }
  }
  // Other types fall through to quantize().
  const auto x = random_vec(64, rng);
  std::vector<uint8_t> a(dtype_nbytes(DType::Q8_G64, 64)), b(a.size());
  quant::quantize(DType::Q8_G64, x.data(), a.data(), 64);
  quant::quantize_least_squares(DType::Q8_G64, x.data(), b.data(), 64);
  EXPECT_EQ(a, b);
}

// ---- (c) ops::cpu::linear against ops::ref::linear ----

// Error bound per output, against the reference's fp64 sum over the dequantized weights:
// - up to 4 vectors, and for more with 4-bit weights where cpu::qgemm runs (the integer kernels,
//   ops/qdot.h), the inputs are rounded to 8 bits per
//   group g of the weights' block size: |x_j − x̂_j| ≤ d_g/2 = absmax_g/254, so the product moves
//   by at most Σ_g absmax_g/254 · Σ_{j∈g} |w_j| (fp32 roundings of x·(127/absmax) move x̂_j by
//   one step at most where x·inv lands within an ulp of a half: covered by the 1.01 factor);
// - rounding: 1e-4·Σ_j |w_j x_j|. The kernels sum exact integers per block, then scale each
//   block sum once and add it to the row's lane accumulator (≤ cols/32 additions), then reduce
//   the lanes (qgemm: adds each block's scaled sum to its row's accumulator): every term passes
//   fewer than ~100 fp32 roundings, ≤ ~1e-5 of the magnitudes added (d·Σq·x̂ and the
//   bias/minimum terms, ≤ ~3× Σ|w x| with weights around zero). The sgemm path (M > 4, other
//   types) converts the weights exactly and OpenBLAS accumulates in blocked fp32.
// 1e-4 leaves margin over both while any wrong block, nibble, bit, scale or offset is an O(1)
// error.
// Σ|w_i x_i| in independent partial sums (a bound only: its own rounding does not matter).
double abs_dot(const float* w, const float* x, int n) {
  double part[8] = {};
  for (int i = 0; i < n; ++i) part[i % 8] += std::fabs(double(w[i]) * double(x[i]));
  double s = 0;
  for (double p : part) s += p;
  return s;
}

// Σ_g absmax_g(x)/254 · Σ_{j∈g} |w_j|: the most the 8-bit inputs can move the product.
double input_rounding_bound(const float* w, const float* x, int n, int group) {
  double total = 0;
  for (int g = 0; g < n; g += group) {
    double amax = 0, wsum = 0;
    for (int j = g; j < g + group; ++j) {
      amax = std::max(amax, std::fabs(double(x[j])));
      wsum += std::fabs(double(w[j]));
    }
    total += amax / 254 * wsum;
  }
  return total * 1.01;
}

void check_linear(DType t, int rows, int cols, std::initializer_list<int> Ms, std::mt19937& rng,
                  double* worst) {
  const auto wf = random_vec(size_t(rows) * size_t(cols), rng);
  // Odd byte offset: the blocks are not 2- or 4-byte aligned, as in a memory-mapped file.
  const auto buf = quantize_at(t, wf, 1);
  const ops::Matrix W{t, rows, cols, buf.data() + 1};
  std::vector<float> w(size_t(rows) * size_t(cols));  // the weights as the reference sees them
  convert_to_f32(t, W.data, w.data(), w.size());
  for (int M : Ms) {
    const auto x = random_vec(size_t(M) * size_t(cols), rng);
    std::vector<float> want(size_t(M) * size_t(rows), std::nanf("")), got(want.size(), std::nanf(""));
    ops::ref::linear(W, x.data(), M, want.data());
    ops::cpu::linear(W, x.data(), M, got.data());
    for (int o = 0; o < rows; ++o) {
      const float* wo = w.data() + size_t(o) * size_t(cols);
      for (int m = 0; m < M; ++m) {
        const float* xm = x.data() + size_t(m) * size_t(cols);
        const double mag = abs_dot(wo, xm, cols);
        const bool integer = M <= 4 || ops::cpu::qgemm_supported(t);
        const double inputs = integer ? input_rounding_bound(wo, xm, cols, int(dtype_block_elems(t))) : 0;
        const size_t k = size_t(m) * size_t(rows) + size_t(o);
        const double err = std::fabs(double(got[k]) - double(want[k]));
        ASSERT_LE(err, 1e-4 * mag + inputs + 1e-30)
            << dtype_name(t) << " rows=" << rows << " cols=" << cols << " M=" << M << " row " << o
            << " vector " << m << " got " << got[k] << " want " << want[k];
        if (mag > 0) *worst = std::max(*worst, err / (1e-4 * mag + inputs));
      }
    }
  }
}

TEST(Quant, LinearMatchesReferenceAllTypesAndShapes) {
  std::mt19937 rng(3);
  for (DType t : kQuantTypes) {
    double worst = 0;
    const int G = int(dtype_block_elems(t));
    for (int rows : {1, 3, 7, 8, 33, 257, 1000})
      for (int cols : {32, 64, 96, 160, 800, 2048})
        if (cols % G == 0) check_linear(t, rows, cols, {1, 2, 3, 4, 5, 9}, rng, &worst);
    std::printf("%s: worst error / bound = %.2e\n", dtype_name(t), worst);
  }
}

TEST(Quant, LinearThreadedMatchesReference) {
  const int before = ops::cpu::num_threads();
  ops::cpu::set_num_threads(2);
  std::mt19937 rng(5);
  double worst = 0;
  // ≥ 64 KiB of weights each, so the rows are split between threads; odd row counts leave
  // remainders after the 4-stream slices of each thread's range.
  for (DType t : kQuantTypes) {
    check_linear(t, 1000, 2048, {1, 2, 3, 4, 6}, rng, &worst);
    check_linear(t, 777, 768, {1, 2, 3, 4, 6}, rng, &worst);
  }
  ops::cpu::set_num_threads(before);
  std::printf("threaded: worst error / bound = %.2e\n", worst);
}

// ---- (d) the SIMD conversion to fp32 (before sgemm) equals the scalar decode bit for bit ----

void check_to_f32_exact(std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  for (DType t : kQuantTypes) {
    for (size_t nb : {1, 2, 5, 64, 333}) {
      const size_t bb = dtype_block_bytes(t);
      std::vector<uint8_t> buf(1 + nb * bb);
      for (auto& v : buf) v = uint8_t(byte(rng));
      // Random finite fp16 scales and minimums (normal and subnormal; no inf/NaN codes).
      for (size_t b = 0; b < nb; ++b) {
        for (size_t at : {size_t(0), size_t(2)}) {
          if (at == 2 && t != DType::Q4_1 && t != DType::Q5_1) continue;
          uint16_t h = uint16_t(byte(rng) | byte(rng) << 8);
          if (((h >> 10) & 0x1f) == 0x1f) h &= 0xbfff;
          std::memcpy(&buf[1 + b * bb + at], &h, 2);
        }
      }
      const size_t n = nb * dtype_block_elems(t);
      std::vector<float> want(n), got(n, std::nanf(""));
      quant::dequantize(t, buf.data() + 1, want.data(), n);
      ops::cpu::simd_to_f32(t, buf.data() + 1, got.data(), got.size());
      for (size_t i = 0; i < want.size(); ++i) {
        if (std::memcmp(&want[i], &got[i], sizeof(float)) != 0) {
          ADD_FAILURE() << dtype_name(t) << " blocks=" << nb << " element " << i << " got "
                        << got[i] << " want " << want[i] << " (" << ops::cpu::simd_target() << ")";
          break;
        }
      }
    }
  }
}

TEST(Quant, SimdToF32MatchesScalarExactly) {
  std::mt19937 rng(11);
  check_to_f32_exact(rng);
}

// Every instruction set compiled in and supported by this CPU (SSSE3/SSE4 run 4 lanes and
// emulate the fp16 conversion, as NEON-sized targets do; SCALAR 1 lane), not only the one the
// dispatcher picks.
TEST(Quant, EveryCompiledTarget) {
  const int64_t supported = hwy::SupportedTargets() | HWY_SCALAR;
  int tested = 0;
  for (int64_t target = 1; target != 0 && target <= HWY_SCALAR; target <<= 1) {
    if (!(supported & target & (HWY_TARGETS | HWY_SCALAR))) continue;
    hwy::SetSupportedTargetsForTest(target);
    hwy::GetChosenTarget().Update(hwy::SupportedTargets());
    EXPECT_STREQ(ops::cpu::simd_target(), hwy::TargetName(target));
    std::mt19937 rng(13);
    check_to_f32_exact(rng);
    double worst = 0;
    for (DType t : kQuantTypes) {
      check_linear(t, 9, 128, {1, 2, 3, 4, 5}, rng, &worst);
      check_linear(t, 70, 768, {1, 4}, rng, &worst);
    }
    std::printf("%s: worst error / bound = %.2e\n", hwy::TargetName(target), worst);
    ++tested;
  }
  hwy::SetSupportedTargetsForTest(0);
  hwy::GetChosenTarget().Update(hwy::SupportedTargets());
  EXPECT_GE(tested, 2);
}

}  // namespace
}  // namespace rwkv
