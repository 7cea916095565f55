// The quantized products with 8-bit inputs (ops/qdot.h): the input quantizer's SIMD twin equals
// the scalar one exactly, and every kernel build this CPU runs (AVX2, AVX-512 VNNI) equals the
// plain-loop reference for every quantized type, at odd shapes and row ranges, with blocks at odd
// byte offsets and random quant bytes (every nibble, −128 included), and gives each input vector
// the same bits however many vectors share the call.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/quant.h"
#include "ops/qdot.h"
#include "rwkv/error.h"
#include "testing.h"

namespace rwkv {
namespace {

using ops::QuantizedVectors;
using ops::cpu::QdotIsa;

constexpr DType kTypes[] = {DType::Q4_0,   DType::Q4_1,   DType::Q5_0,    DType::Q5_1,  DType::Q8_0,
                            DType::Q8_G64, DType::Q8_G128, DType::Q4_G64, DType::Q4_G128};

std::vector<QdotIsa> supported_isas() {
  std::vector<QdotIsa> out;
  for (QdotIsa isa : {QdotIsa::Scalar, QdotIsa::Avx2, QdotIsa::Avx512Vnni}) {
    if (ops::cpu::qdot_isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

// M vectors of cols values, each group with its own magnitude (1e-4 … 1e3), some all zero.
std::vector<float> random_inputs(int M, int cols, int group, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1, 1), e(-4, 3);
  std::vector<float> x(size_t(M) * size_t(cols));
  for (size_t g = 0; g < x.size(); g += size_t(group)) {
    const float scale = std::pow(10.f, e(rng));
    const bool zero = g / size_t(group) % 7 == 3;
    for (size_t j = g; j < g + size_t(group); ++j) x[j] = zero ? 0.f : scale * u(rng);
  }
  return x;
}

// Random block bytes with finite fp16 scales (and minimums) between 2^−10 and 2^2.
std::vector<uint8_t> random_blocks(DType t, size_t n_blocks, size_t offset, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255), exponent(5, 17);
  const quant::BlockFormat f = quant::block_format(t);
  std::vector<uint8_t> buf(offset + n_blocks * size_t(f.bytes));
  for (auto& b : buf) b = uint8_t(byte(rng));
  auto put_half = [&](uint8_t* p) {
    const uint16_t h = uint16_t((byte(rng) & 1) << 15 | exponent(rng) << 10 | (byte(rng) << 2 & 0x3ff));
    std::memcpy(p, &h, 2);
  };
  for (size_t i = 0; i < n_blocks; ++i) {
    uint8_t* blk = buf.data() + offset + i * size_t(f.bytes);
    put_half(blk);
    if (f.min != 0) put_half(blk + f.min);
  }
  return buf;
}

TEST(Qdot, SimdInputQuantizationEqualsScalar) {
  std::mt19937 rng(1);
  for (QdotIsa isa : supported_isas()) {
    for (int group : {32, 64, 128}) {
      for (int M : {1, 2, 4}) {
        for (int cols : {group, 3 * group, 2048}) {
          auto x = random_inputs(M, cols, group, rng);
          const bool bad = x.size() >= size_t(3 * group);
          if (bad) {
            x[size_t(group) + 5] = std::nanf("");   // group 1: NaN
            x[size_t(2 * group)] = -INFINITY;       // group 2: −inf
          }
          QuantizedVectors want, got;
          ops::quantize_vectors(x.data(), M, size_t(cols), group, want);
          ops::cpu::quantize_vectors(isa, x.data(), M, size_t(cols), group, got);
          ASSERT_EQ(got.q, want.q) << ops::cpu::qdot_isa_name(isa) << " group " << group;
          ASSERT_EQ(got.sum, want.sum);
          ASSERT_EQ(got.scale.size(), want.scale.size());
          for (size_t i = 0; i < want.scale.size(); ++i) {
            if (std::isnan(want.scale[i])) {
              EXPECT_TRUE(std::isnan(got.scale[i])) << "group " << i;
            } else {
              EXPECT_EQ(got.scale[i], want.scale[i]) << "group " << i;
            }
          }
          if (bad) {
            EXPECT_TRUE(std::isnan(want.scale[1]) && std::isnan(want.scale[2]));
          }
          for (int8_t q : want.q) ASSERT_GE(q, -127);
        }
      }
    }
  }
}

// Threads that own parts of a vector quantize their groups (ops::quantize_groups): ranges that
// tile the groups give exactly the whole vectors' quantization, with every ISA.
TEST(Qdot, QuantizingGroupRangesEqualsWholeVectors) {
  std::mt19937 rng(2);
  for (QdotIsa isa : supported_isas()) {
    for (int group : {32, 64}) {
      for (int M : {1, 3}) {
        const int groups = 7, cols = groups * group;
        const auto x = random_inputs(M, cols, group, rng);
        QuantizedVectors whole, parts;
        ops::cpu::quantize_vectors(isa, x.data(), M, size_t(cols), group, whole);
        parts.resize(M, size_t(cols), group);
        for (auto [g0, g1] : {std::pair{0, 2}, {2, 3}, {3, 3}, {3, 7}}) {
          ops::cpu::quantize_groups(isa, x.data(), size_t(g0), size_t(g1), parts);
        }
        EXPECT_EQ(parts.q, whole.q) << ops::cpu::qdot_isa_name(isa) << " group " << group << " M " << M;
        EXPECT_EQ(parts.scale, whole.scale);
        EXPECT_EQ(parts.sum, whole.sum);
      }
    }
  }
}

// Σ_j (|w_j| + 2|m|)·|x̂_j| per output: the magnitude of the terms the kernels add in fp32 (the
// integer sums are exact): d·d_x·Σ(q − bias)x̂ ≤ Σ|w||x̂| and, with a minimum m, d·d_x·Σq·x̂ ≤
// Σ(|w| + |m|)|x̂| and m·d_x·Σx̂ ≤ |m|Σ|x̂|.
std::vector<double> magnitudes(const ops::Matrix& W, const QuantizedVectors& x) {
  const quant::BlockFormat f = quant::block_format(W.dtype);
  std::vector<float> w(size_t(W.cols));
  std::vector<double> out(size_t(x.count) * size_t(W.rows));
  for (int o = 0; o < W.rows; ++o) {
    const uint8_t* row = static_cast<const uint8_t*>(W.data) + size_t(o) * W.row_bytes();
    convert_to_f32(W.dtype, row, w.data(), w.size());
    for (int m = 0; m < x.count; ++m) {
      double mag = 0;
      for (int j = 0; j < W.cols; ++j) {
        const size_t g = size_t(j / f.group);
        double min = 0;
        if (f.min != 0) {
          uint16_t h;
          std::memcpy(&h, row + g * size_t(f.bytes) + size_t(f.min), 2);
          min = std::fabs(double(f16_to_f32(h)));
        }
        const double xhat = double(x.scale[size_t(m) * x.groups() + g]) * x.vector(m)[j];
        mag += (std::fabs(double(w[size_t(j)])) + 2 * min) * std::fabs(xhat);
      }
      out[size_t(m) * size_t(W.rows) + size_t(o)] = mag;
    }
  }
  return out;
}

TEST(Qdot, EveryKernelMatchesReference) {
  std::mt19937 rng(2);
  for (QdotIsa isa : supported_isas()) {
    double worst = 0;
    for (DType t : kTypes) {
      const int G = int(dtype_block_elems(t));
      for (int rows : {1, 3, 4, 5, 7, 8, 13, 64, 257}) {
        for (int cols : {G, 2 * G, 3 * G, 2048}) {
          const size_t nb = size_t(rows) * size_t(cols) / size_t(G);
          const auto buf = random_blocks(t, nb, 3, rng);  // odd offset: unaligned blocks
          const ops::Matrix W{t, rows, cols, buf.data() + 3};
          for (int M : {1, 2, 3, 4}) {
            const auto xf = random_inputs(M, cols, G, rng);
            QuantizedVectors x;
            ops::quantize_vectors(xf.data(), M, size_t(cols), G, x);
            std::vector<float> want(size_t(M) * size_t(rows), std::nanf("")), got(want.size(), std::nanf(""));
            ops::ref::qdot_rows(W, x, want.data(), 0, rows);
            // Two row ranges, so each kernel also starts and ends inside the matrix.
            const int mid = rows / 3;
            ops::cpu::qdot_rows(isa, W, x, got.data(), 0, mid);
            ops::cpu::qdot_rows(isa, W, x, got.data(), mid, rows);
            const auto mag = magnitudes(W, x);
            for (size_t i = 0; i < want.size(); ++i) {
              const double err = std::fabs(double(got[i]) - double(want[i]));
              ASSERT_LE(err, 2e-5 * mag[i] + 1e-30)
                  << ops::cpu::qdot_isa_name(isa) << " " << dtype_name(t) << " rows=" << rows
                  << " cols=" << cols << " M=" << M << " output " << i << " got " << got[i]
                  << " want " << want[i];
              if (mag[i] > 0) worst = std::max(worst, err / mag[i]);
            }
          }
        }
      }
    }
    std::printf("%s: worst |kernel − reference| / magnitude = %.2e\n", ops::cpu::qdot_isa_name(isa), worst);
  }
}

// The many-input product (prefill) against the reference: every type (those without the panel
// kernel take the decode kernel), rows around the 8-row panels and 32-row panel blocks, input
// counts around its 4-input tiles, a NaN input that must reach only its own vector's outputs.
TEST(Qdot, ManyInputProductMatchesReference) {
  std::mt19937 rng(4);
  double worst = 0;
  for (DType t : kTypes) {
    const int G = int(dtype_block_elems(t));
    for (int rows : {1, 7, 8, 9, 31, 33, 77}) {
      for (int cols : {G, 3 * G, 768}) {
        if (cols % G != 0) continue;
        const size_t nb = size_t(rows) * size_t(cols) / size_t(G);
        const auto buf = random_blocks(t, nb, 1, rng);
        const ops::Matrix W{t, rows, cols, buf.data() + 1};
        for (int M : {5, 6, 7, 8, 13}) {
          auto xf = random_inputs(M, cols, G, rng);
          xf[size_t(M / 2) * size_t(cols) + 1] = std::nanf("");
          QuantizedVectors x;
          ops::quantize_vectors(xf.data(), M, size_t(cols), G, x);
          std::vector<float> want(size_t(M) * size_t(rows), 1.f), got(want.size(), std::nanf(""));
          ops::ref::qdot_rows(W, x, want.data(), 0, rows);
          ops::cpu::qgemm(W, x, got.data());
          const auto mag = magnitudes(W, x);
          for (size_t i = 0; i < want.size(); ++i) {
            const std::string where = std::string(dtype_name(t)) + " rows=" + std::to_string(rows) +
                                      " cols=" + std::to_string(cols) + " M=" + std::to_string(M) +
                                      " output " + std::to_string(i);
            ASSERT_EQ(std::isnan(want[i]), std::isnan(got[i])) << where;
            if (std::isnan(want[i])) continue;
            const double err = std::fabs(double(got[i]) - double(want[i]));
            ASSERT_LE(err, 2e-5 * mag[i] + 1e-30) << where << " got " << got[i] << " want " << want[i];
            if (mag[i] > 0) worst = std::max(worst, err / mag[i]);
          }
        }
      }
    }
  }
  std::printf("worst |qgemm − reference| / magnitude = %.2e\n", worst);
}

// A vector's outputs are the same bits alone or beside up to three others, and whichever rows
// one call covers (the server batches decode steps and relies on it).
TEST(Qdot, OutputsDoNotDependOnBatchOrRowRange) {
  std::mt19937 rng(3);
  for (QdotIsa isa : supported_isas()) {
    for (DType t : kTypes) {
      const int G = int(dtype_block_elems(t)), rows = 37, cols = 6 * G;
      const auto buf = random_blocks(t, size_t(rows) * size_t(cols) / size_t(G), 1, rng);
      const ops::Matrix W{t, rows, cols, buf.data() + 1};
      const auto xf = random_inputs(4, cols, G, rng);
      QuantizedVectors all;
      ops::quantize_vectors(xf.data(), 4, size_t(cols), G, all);
      std::vector<float> together(size_t(4) * size_t(rows));
      ops::cpu::qdot_rows(isa, W, all, together.data(), 0, rows);
      for (int m = 0; m < 4; ++m) {
        QuantizedVectors one;
        ops::quantize_vectors(xf.data() + size_t(m) * size_t(cols), 1, size_t(cols), G, one);
        std::vector<float> alone(static_cast<size_t>(rows));
        for (int r = 0; r < rows; r += 5) ops::cpu::qdot_rows(isa, W, one, alone.data(), r, std::min(rows, r + 5));
        EXPECT_EQ(0, std::memcmp(alone.data(), together.data() + size_t(m) * size_t(rows), alone.size() * 4))
            << ops::cpu::qdot_isa_name(isa) << " " << dtype_name(t) << " vector " << m;
      }
    }
  }
}

constexpr DType kPanelTypes[] = {DType::Q4_0, DType::Q4_G64, DType::Q4_G128};

// A matrix repacked into 8-row panels, with the buffer that holds it.
struct PanelCopy {
  std::vector<uint8_t> bytes;
  ops::Matrix P;
  explicit PanelCopy(const ops::Matrix& W) : bytes(size_t((W.rows + 7) / 8 * 8) * W.row_bytes() + 1) {
    P = ops::cpu::to_panels(W, bytes.data() + 1);  // odd address, as for the row-major blocks
  }
};

// Panels hold the same values: each row read back equals the row-major row dequantized.
TEST(Qdot, PanelsHoldTheRowsValues) {
  std::mt19937 rng(5);
  for (DType t : kPanelTypes) {
    const int G = int(dtype_block_elems(t));
    for (int rows : {1, 7, 8, 9, 20}) {
      const int cols = 3 * G;
      const auto buf = random_blocks(t, size_t(rows) * 3, 0, rng);
      const ops::Matrix W{t, rows, cols, buf.data()};
      const PanelCopy pc(W);
      EXPECT_TRUE(pc.P.panels);
      EXPECT_EQ(pc.P.nbytes(), size_t((rows + 7) / 8 * 8) * W.row_bytes());
      std::vector<float> want(size_t(rows) * size_t(cols)), got(want.size(), std::nanf(""));
      convert_to_f32(t, buf.data(), want.data(), want.size());
      const int mid = std::min(rows, 3);  // two calls: a range may start inside a panel
      ops::cpu::panel_rows_to_f32(pc.P, 0, mid, got.data());
      ops::cpu::panel_rows_to_f32(pc.P, mid, rows, got.data() + size_t(mid) * size_t(cols));
      ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * 4)) << dtype_name(t) << " rows=" << rows;
    }
  }
}

// The panel kernels against the reference on the row-major matrix: odd row counts (a padded
// last panel), ranges that start and end inside panels, 1–4 inputs, the many-input product.
TEST(Qdot, PanelKernelsMatchReference) {
  std::mt19937 rng(6);
  for (QdotIsa isa : supported_isas()) {
    if (isa == QdotIsa::Scalar) continue;
    double worst = 0;
    for (DType t : kPanelTypes) {
      const int G = int(dtype_block_elems(t));
      for (int rows : {1, 3, 7, 8, 9, 13, 64, 257}) {
        for (int cols : {G, 2 * G, 3 * G, 2048}) {
          const auto buf = random_blocks(t, size_t(rows) * size_t(cols) / size_t(G), 0, rng);
          const ops::Matrix W{t, rows, cols, buf.data()};
          const PanelCopy pc(W);
          for (int M : {1, 2, 3, 4, 9}) {
            auto xf = random_inputs(M, cols, G, rng);
            if (M == 9) xf[size_t(4) * size_t(cols) + 2] = std::nanf("");
            QuantizedVectors x;
            ops::quantize_vectors(xf.data(), M, size_t(cols), G, x);
            std::vector<float> want(size_t(M) * size_t(rows)), got(want.size(), std::nanf(""));
            ops::ref::qdot_rows(W, x, want.data(), 0, rows);
            if (M <= 4) {
              const int mid = rows / 3;
              ops::cpu::qdot_rows(isa, pc.P, x, got.data(), 0, mid);
              ops::cpu::qdot_rows(isa, pc.P, x, got.data(), mid, rows);
            } else if (isa == ops::cpu::qdot_isa()) {
              ops::cpu::qgemm(pc.P, x, got.data());
            } else {
              continue;
            }
            const auto mag = magnitudes(W, x);
            for (size_t i = 0; i < want.size(); ++i) {
              const std::string where = std::string(ops::cpu::qdot_isa_name(isa)) + " " + dtype_name(t) +
                                        " rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
                                        " M=" + std::to_string(M) + " output " + std::to_string(i);
              ASSERT_EQ(std::isnan(want[i]), std::isnan(got[i])) << where;
              if (std::isnan(want[i])) continue;
              const double err = std::fabs(double(got[i]) - double(want[i]));
              ASSERT_LE(err, 2e-5 * mag[i] + 1e-30) << where << " got " << got[i] << " want " << want[i];
              if (mag[i] > 0) worst = std::max(worst, err / mag[i]);
            }
          }
        }
      }
    }
    std::printf("%s panels: worst |kernel − reference| / magnitude = %.2e\n", ops::cpu::qdot_isa_name(isa), worst);
  }
}

// As for row-major blocks: a vector's outputs are the same bits alone or beside others, and
// whichever rows a call covers.
TEST(Qdot, PanelOutputsDoNotDependOnBatchOrRowRange) {
  std::mt19937 rng(7);
  for (QdotIsa isa : supported_isas()) {
    if (isa == QdotIsa::Scalar) continue;
    for (DType t : kPanelTypes) {
      const int G = int(dtype_block_elems(t)), rows = 37, cols = 6 * G;
      const auto buf = random_blocks(t, size_t(rows) * size_t(cols) / size_t(G), 0, rng);
      const PanelCopy pc(ops::Matrix{t, rows, cols, buf.data()});
      const auto xf = random_inputs(4, cols, G, rng);
      QuantizedVectors all;
      ops::quantize_vectors(xf.data(), 4, size_t(cols), G, all);
      std::vector<float> together(size_t(4) * size_t(rows));
      ops::cpu::qdot_rows(isa, pc.P, all, together.data(), 0, rows);
      for (int m = 0; m < 4; ++m) {
        QuantizedVectors one;
        ops::quantize_vectors(xf.data() + size_t(m) * size_t(cols), 1, size_t(cols), G, one);
        std::vector<float> alone(static_cast<size_t>(rows));
        for (int r = 0; r < rows; r += 5) ops::cpu::qdot_rows(isa, pc.P, one, alone.data(), r, std::min(rows, r + 5));
        EXPECT_EQ(0, std::memcmp(alone.data(), together.data() + size_t(m) * size_t(rows), alone.size() * 4))
            << ops::cpu::qdot_isa_name(isa) << " " << dtype_name(t) << " vector " << m;
      }
    }
  }
}

// Only 4-bit symmetric types have panels, and only the SIMD kernels read them.
TEST(Qdot, PanelsAreRefusedWhereUnsupported) {
  std::vector<uint8_t> buf(dtype_nbytes(DType::Q8_0, 8 * 64), 0), out(buf.size());
  EXPECT_THROW(ops::cpu::to_panels(ops::Matrix{DType::Q8_0, 8, 64, buf.data()}, out.data()), Error);
  const ops::Matrix P = ops::cpu::to_panels(ops::Matrix{DType::Q4_G64, 8, 64, buf.data()}, out.data());
  EXPECT_THROW(ops::cpu::to_panels(P, buf.data()), Error);
  std::vector<float> x(64, 1.f), y(8);
  QuantizedVectors q;
  ops::quantize_vectors(x.data(), 1, 64, 64, q);
  EXPECT_THROW(ops::ref::qdot_rows(P, q, y.data(), 0, 8), Error);
  EXPECT_THROW(ops::cpu::qdot_rows(QdotIsa::Scalar, P, q, y.data(), 0, 8), Error);
  EXPECT_THROW(ops::ref_kernels().linear(P, x.data(), 1, y.data()), Error);
}

TEST(Qdot, InputsQuantizedForAnotherGroupAreRefused) {
  std::vector<uint8_t> buf(dtype_nbytes(DType::Q8_G128, 256));
  const ops::Matrix W{DType::Q8_G128, 1, 256, buf.data()};
  std::vector<float> x(256, 1.f), y(1);
  QuantizedVectors q;
  ops::quantize_vectors(x.data(), 1, 256, 32, q);
  EXPECT_THROW(ops::ref::qdot_rows(W, q, y.data(), 0, 1), Error);
  EXPECT_THROW(ops::cpu::qdot_rows(ops::cpu::qdot_isa(), W, q, y.data(), 0, 1), Error);
  const ops::Matrix F{DType::F32, 1, 256, x.data()};
  EXPECT_THROW(ops::ref::qdot_rows(F, q, y.data(), 0, 1), Error);
}

TEST(Qdot, PicksASupportedInstructionSet) {
  const QdotIsa isa = ops::cpu::qdot_isa();
  EXPECT_TRUE(ops::cpu::qdot_isa_supported(isa));
  std::printf("quantized products use %s (supported:", ops::cpu::qdot_isa_name(isa));
  for (QdotIsa s : supported_isas()) std::printf(" %s", ops::cpu::qdot_isa_name(s));
  std::printf(")\n");
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_TRUE(ops::cpu::qdot_isa_supported(QdotIsa::Avx2));
  }
#endif
}

}  // namespace
}  // namespace rwkv
