// Backward passes of the reference ops against finite differences (training, spec §4).
#include <cmath>
#include <random>
#include <vector>

#include "ops/ops.h"
#include "testing.h"

namespace rwkv {
namespace {

// One head of WKV-7 inputs: T rows of stride N + 3 (other heads' columns stay unused).
struct Wkv7Case {
  int T, N, stride;
  std::vector<float> r, w, k, v, a, b, S0, dy, dS_out;

  Wkv7Case(int T_, int N_, uint32_t seed) : T(T_), N(N_), stride(N_ + 3) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f), half(-0.5f, 0.5f), decay(-0.6f, -0.01f);
    const size_t rows = size_t(T) * size_t(stride), NN = size_t(N) * size_t(N);
    for (auto* x : {&r, &k, &v, &dy}) x->assign(rows, 0.f);
    for (auto* x : {&w, &a, &b}) x->assign(rows, 0.f);
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < N; ++j) {
        const size_t o = size_t(t) * size_t(stride) + size_t(j);
        r[o] = u(rng), k[o] = u(rng), v[o] = u(rng), dy[o] = u(rng);
        w[o] = decay(rng), a[o] = half(rng), b[o] = half(rng);
      }
    }
    S0.resize(NN);
    dS_out.resize(NN);
    for (float& x : S0) x = u(rng);
    for (float& x : dS_out) x = u(rng);
  }

  // L = Σ_t dy_t·y_t + Σ dS_out ⊙ S_T, in double (the oracle forward of spec §2.4).
  double loss(std::vector<double>* y_out = nullptr, std::vector<double>* S_out = nullptr) const {
    const size_t n = size_t(N);
    std::vector<double> S(S0.begin(), S0.end()), sa(n);
    double L = 0;
    for (int t = 0; t < T; ++t) {
      const size_t o = size_t(t) * size_t(stride);
      for (size_t i = 0; i < n; ++i) {
        sa[i] = 0;
        for (size_t j = 0; j < n; ++j) sa[i] += S[i * n + j] * a[o + j];
      }
      for (size_t i = 0; i < n; ++i) {
        double y = 0;
        for (size_t j = 0; j < n; ++j) {
          double& s = S[i * n + j];
          s = s * std::exp(double(w[o + j])) + sa[i] * b[o + j] + double(v[o + i]) * k[o + j];
          y += s * r[o + j];
        }
        L += y * dy[o + i];
        if (y_out) y_out->push_back(y);
      }
    }
    for (size_t e = 0; e < n * n; ++e) L += S[e] * dS_out[e];
    if (S_out) *S_out = S;
    return L;
  }
};

TEST(Wkv7Backward, OracleForwardIsTheReferenceKernel) {
  Wkv7Case c(17, 4, 1);
  std::vector<double> y, S;
  c.loss(&y, &S);
  std::vector<float> state = c.S0, out(c.r.size(), 0.f);
  ops::Wkv7Head h{c.T, c.N, c.stride, c.r.data(), c.w.data(), c.k.data(), c.v.data(),
                  c.a.data(), c.b.data(), out.data(), state.data()};
  ops::ref::wkv7_recurrent(h);
  for (int t = 0; t < c.T; ++t) {
    for (int i = 0; i < c.N; ++i) {
      EXPECT_NEAR(out[size_t(t * c.stride + i)], y[size_t(t * c.N + i)], 1e-5);
    }
  }
  for (size_t e = 0; e < S.size(); ++e) EXPECT_NEAR(state[e], S[e], 1e-5);
}

// Every input's gradient, including the initial state's, against central differences of the
// double oracle: step 1e-4 gives truncation ~1e-8·|L'''| and rounding ~1e-12, far below the
// 1e-5 bound; a wrong term shows up at O(1).
TEST(Wkv7Backward, MatchesFiniteDifferencesForEveryInputAndTheInitialState) {
  for (const auto& [T, N] : {std::pair{1, 1}, {1, 3}, {5, 4}, {17, 3}, {9, 8}}) {
    Wkv7Case c(T, N, uint32_t(T * 100 + N));
    const size_t rows = c.r.size();
    std::vector<float> dr(rows), dw(rows), dk(rows), dv(rows), da(rows), db(rows), dS0(c.S0.size());
    std::vector<float> state = c.S0;
    ops::Wkv7Head h{c.T, c.N, c.stride, c.r.data(), c.w.data(), c.k.data(), c.v.data(),
                    c.a.data(), c.b.data(), nullptr, state.data()};
    ops::ref::wkv7_backward(h, {c.dy.data(), c.dS_out.data(), dr.data(), dw.data(), dk.data(),
                                dv.data(), da.data(), db.data(), dS0.data()});
    EXPECT_EQ(state, c.S0) << "the initial state is left alone";
    const auto check = [&](std::vector<float>& x, const std::vector<float>& grad, const char* name,
                           bool rows_layout) {
      for (size_t e = 0; e < x.size(); ++e) {
        if (rows_layout && int(e % size_t(c.stride)) >= c.N) continue;  // other heads' columns
        const float saved = x[e];
        const double step = 1e-4;
        // Perturb in double through the float array: use exactly representable offsets.
        x[e] = float(double(saved) + step);
        const double up = c.loss(), dx_up = double(x[e]) - saved;
        x[e] = float(double(saved) - step);
        const double down = c.loss(), dx_down = saved - double(x[e]);
        x[e] = saved;
        const double fd = (up - down) / (dx_up + dx_down);
        EXPECT_NEAR(grad[e], fd, 1e-5 * std::max(1.0, std::fabs(fd)))
            << name << "[" << e << "] T=" << T << " N=" << N;
      }
    };
    check(c.r, dr, "dr", true);
    check(c.w, dw, "dw", true);
    check(c.k, dk, "dk", true);
    check(c.v, dv, "dv", true);
    check(c.a, da, "da", true);
    check(c.b, db, "db", true);
    check(c.S0, dS0, "dS0", false);
  }
}

TEST(Wkv7Backward, NoFinalStateGradientMeansZero) {
  Wkv7Case c(6, 3, 7);
  const size_t rows = c.r.size();
  std::vector<float> g1(6 * rows), g2(6 * rows), s1(c.S0.size()), s2(c.S0.size());
  const std::vector<float> zeros(c.S0.size(), 0.f);
  std::vector<float> state = c.S0;
  ops::Wkv7Head h{c.T, c.N, c.stride, c.r.data(), c.w.data(), c.k.data(), c.v.data(),
                  c.a.data(), c.b.data(), nullptr, state.data()};
  const auto grads = [&](std::vector<float>& g, std::vector<float>& s, const float* dS_out) {
    float* p = g.data();
    return ops::Wkv7Grads{c.dy.data(), dS_out, p, p + rows, p + 2 * rows, p + 3 * rows,
                          p + 4 * rows, p + 5 * rows, s.data()};
  };
  ops::ref::wkv7_backward(h, grads(g1, s1, nullptr));
  ops::ref::wkv7_backward(h, grads(g2, s2, zeros.data()));
  EXPECT_EQ(g1, g2);
  EXPECT_EQ(s1, s2);
}

}  // namespace
}  // namespace rwkv
