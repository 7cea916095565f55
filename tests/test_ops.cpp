// Every fast op against its plain-loop reference, on random inputs at many shapes (odd ones
// included), outputs poisoned with NaN before each run.
#include <cmath>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "ops/ops.h"
#include "testing.h"

namespace rwkv::ops {
namespace {

std::vector<float> random_vec(size_t n, std::mt19937& rng, float lo = -1, float hi = 1) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

std::vector<uint16_t> to_half(DType dtype, const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  convert_from_f32(dtype, v.data(), out.data(), v.size());
  return out;
}

void poison(std::vector<float>& v) { std::fill(v.begin(), v.end(), std::nanf("")); }

struct LinearCase {
  int rows, cols, M;
};

TEST(Linear, CpuMatchesReferenceAllDtypesAndShapes) {
  std::mt19937 rng(1);
  const LinearCase cases[] = {{1, 1, 1},     {7, 3, 1},      {8, 8, 2},     {33, 17, 3},
                              {64, 64, 4},   {65, 130, 5},   {128, 96, 8},  {300, 257, 1},
                              {513, 768, 2}, {256, 768, 17}, {1000, 64, 4}, {3, 1000, 33}};
  for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    for (const auto& c : cases) {
      const auto wf = random_vec(size_t(c.rows) * c.cols, rng);
      const auto half = dtype == DType::F32 ? std::vector<uint16_t>() : to_half(dtype, wf);
      Matrix W{dtype, c.rows, c.cols, dtype == DType::F32 ? (const void*)wf.data() : half.data()};
      const auto x = random_vec(size_t(c.M) * c.cols, rng);
      std::vector<float> want(size_t(c.M) * c.rows), got(want.size());
      poison(want);
      poison(got);
      ref::linear(W, x.data(), c.M, want.data());
      cpu::linear(W, x.data(), c.M, got.data());
      const auto e = test::compare(got, want);
      // fp32 accumulation over `cols` terms of size ≤ 1 against fp64.
      EXPECT_LE(e.max_abs, 2e-6 * c.cols + 1e-6)
          << dtype_name(dtype) << " rows=" << c.rows << " cols=" << c.cols << " M=" << c.M;
    }
  }
}

// Random WKV-7 inputs of the shapes and ranges the model produces: log-decay in
// (−e^{−1/2}, 0), a = −κ̂ and b = κ̂⊙α with κ̂ of unit norm and α ∈ (0, 1).
struct WkvData {
  int T, N;
  std::vector<float> r, w, k, v, a, b, S;
  WkvData(int T_, int N_, std::mt19937& rng) : T(T_), N(N_) {
    const size_t n = size_t(T) * N;
    r = random_vec(n, rng);
    k = random_vec(n, rng);
    v = random_vec(n, rng, -2, 2);
    w = random_vec(n, rng, -0.6065f, -1e-4f);
    a.resize(n);
    b.resize(n);
    for (int t = 0; t < T; ++t) {
      auto kk = random_vec(size_t(N), rng);
      auto alpha = random_vec(size_t(N), rng, 0, 1);
      double norm = 0;
      for (float x : kk) norm += double(x) * x;
      norm = std::sqrt(norm);
      for (int i = 0; i < N; ++i) {
        const float kh = float(kk[size_t(i)] / norm);
        a[size_t(t) * N + i] = -kh;
        b[size_t(t) * N + i] = kh * alpha[size_t(i)];
      }
    }
    S = random_vec(size_t(N) * N, rng, -1, 1);
  }
  Wkv7Head head(float* y, float* state) const {
    return Wkv7Head{T, N, N, r.data(), w.data(), k.data(), v.data(), a.data(), b.data(), y, state};
  }
};

using WkvFn = void (*)(const Wkv7Head&);

void expect_wkv_equal(const WkvData& d, WkvFn want_fn, WkvFn got_fn, double tol,
                      const char* what) {
  std::vector<float> y_want(size_t(d.T) * d.N), y_got(y_want.size());
  poison(y_want);
  poison(y_got);
  std::vector<float> s_want = d.S, s_got = d.S;
  want_fn(d.head(y_want.data(), s_want.data()));
  got_fn(d.head(y_got.data(), s_got.data()));
  const auto ey = test::compare(y_got, y_want);
  const auto es = test::compare(s_got, s_want);
  EXPECT_LE(ey.max_abs, tol) << what << " y, T=" << d.T << " N=" << d.N;
  EXPECT_LE(es.max_abs, tol) << what << " state, T=" << d.T << " N=" << d.N;
}

void ref_chunked16(const Wkv7Head& h) { ref::wkv7_chunked(h, 16); }
void ref_chunked5(const Wkv7Head& h) { ref::wkv7_chunked(h, 5); }

TEST(Wkv7, AllFormsMatchTheRecurrentReference) {
  std::mt19937 rng(2);
  for (int N : {4, 8, 12, 16, 64}) {
    for (int T : {1, 2, 5, 15, 16, 17, 31, 33, 100}) {
      WkvData d(T, N, rng);
      expect_wkv_equal(d, ref::wkv7_recurrent, cpu::wkv7_recurrent, 2e-5, "cpu recurrent");
      expect_wkv_equal(d, ref::wkv7_recurrent, ref_chunked16, 5e-5, "ref chunked(16)");
      expect_wkv_equal(d, ref::wkv7_recurrent, ref_chunked5, 5e-5, "ref chunked(5)");
      expect_wkv_equal(d, ref::wkv7_recurrent, cpu::wkv7_chunked, 5e-5, "cpu chunked");
    }
  }
}

TEST(Wkv7, LongSequenceStaysClose) {
  std::mt19937 rng(3);
  WkvData d(1024, 64, rng);
  expect_wkv_equal(d, ref::wkv7_recurrent, cpu::wkv7_chunked, 2e-4, "cpu chunked long");
  expect_wkv_equal(d, ref::wkv7_recurrent, cpu::wkv7_recurrent, 2e-4, "cpu recurrent long");
}

}  // namespace
}  // namespace rwkv::ops

namespace rwkv::ops {
namespace {

// The SIMD activations against the scalar ones at every length up to 40 (every tail), over
// values from −100 to 100 (saturation included), in place and out of place; NaN stays NaN.
TEST(Activations, SimdMatchesScalar) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  for (size_t n = 0; n <= 40; ++n) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = u(rng) * (i % 3 == 0 ? 100.f : 6.f);
    if (n > 5) x[5] = std::numeric_limits<float>::quiet_NaN();
    for (auto [name, simd, scalar] : {std::tuple{"sigmoid", &cpu::sigmoid, &ref::sigmoid},
                                      std::tuple{"tanh", &cpu::tanh, &ref::tanh}}) {
      std::vector<float> want(n), got(n), in_place = x;
      scalar(x.data(), want.data(), n);
      simd(x.data(), got.data(), n);
      simd(in_place.data(), in_place.data(), n);
      for (size_t i = 0; i < n; ++i) {
        if (std::isnan(want[i])) {
          EXPECT_TRUE(std::isnan(got[i])) << name << " n=" << n << " i=" << i;
          continue;
        }
        EXPECT_NEAR(got[i], want[i], 4e-7f) << name << "(" << x[i] << ") n=" << n;
        EXPECT_EQ(got[i], in_place[i]) << name << " n=" << n;
      }
    }
  }
}

}  // namespace
}  // namespace rwkv::ops
