// The training ops of ops/train.h (spec §2.4, §4, §4.6): forwards against direct formulas,
// backwards against central finite differences in double, the += and null-output contract,
// and the float instantiation against the double one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ops/train.h"

namespace rwkv::ops::train {
namespace {

template <class R>
using Tensors = std::vector<std::vector<R>>;
using Vec = std::vector<double>;

// Values in [lo, hi) rounded to float, so the float and double runs see the same inputs and
// differ only by their arithmetic.
Vec random_vec(size_t n, std::mt19937& rng, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> u(lo, hi);
  Vec v(n);
  for (double& x : v) x = double(float(u(rng)));
  return v;
}
template <class R>
Tensors<R> cast(const Tensors<double>& in) {
  Tensors<R> out;
  for (const Vec& v : in) out.emplace_back(v.begin(), v.end());
  return out;
}
double max_abs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}
// max |got − want| over the tensor, relative to the larger of the two ∞-norms and `floor`
// (0 when both are exactly zero). See check_gradients for why the tensor's norm rather than
// each element's, and term_scale for the floor.
template <class R>
double tensor_error(const std::vector<R>& got, const Vec& want, double floor = 0) {
  double err = 0, scale = std::max(max_abs(want), floor);
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(double(got[i]) - want[i]));
    scale = std::max(scale, std::abs(double(got[i])));
  }
  return err == 0 ? 0 : err / scale;
}

// Worst error per check and op ("fd layer_norm", "float layer_norm"), printed after the run.
std::map<std::string, double> g_worst;
void record(const std::string& key, double err) { g_worst[key] = std::max(g_worst[key], err); }
struct PrintWorst : ::testing::Environment {
  void TearDown() override {
    for (const auto& [key, err] : g_worst) std::printf("worst %-22s %.2e\n", key.c_str(), err);
  }
};
[[maybe_unused]] const auto* const kPrintWorst =
    ::testing::AddGlobalTestEnvironment(new PrintWorst);

// Mean, biased variance and sum of squares of n values.
struct Moments {
  double mean = 0, var = 0, sum_sq = 0;
};
Moments moments(const double* x, int n) {
  Moments s;
  for (int i = 0; i < n; ++i) s.mean += x[i] / n, s.sum_sq += x[i] * x[i];
  for (int i = 0; i < n; ++i) s.var += (x[i] - s.mean) * (x[i] - s.mean) / n;
  return s;
}

// ---- The ops under test: tensor sizes (inputs, then parameters), forward, backward (which
// recomputes what the forward saves) and a direct double formula for the forward.

struct GroupNormOp {  // LayerNorm when `layer` is set (then H = 1, N = C)
  int M, H, N;
  bool layer = false;
  double eps = 1e-5;
  std::vector<size_t> sizes() const { return {size_t(M * H * N), size_t(H * N), size_t(H * N)}; }
  template <class R>
  std::vector<R> run(const Tensors<R>& in, std::vector<R>& mean, std::vector<R>& rstd) const {
    std::vector<R> out(sizes()[0]);
    mean.resize(size_t(M * H));
    rstd.resize(size_t(M * H));
    const R *x = in[0].data(), *w = in[1].data(), *b = in[2].data();
    if (layer)
      layer_norm_forward(x, M, N, w, b, R(eps), out.data(), mean.data(), rstd.data());
    else
      group_norm_forward(x, M, H, N, w, b, R(eps), out.data(), mean.data(), rstd.data());
    return out;
  }
  template <class R>
  std::vector<R> forward(const Tensors<R>& in) const {
    std::vector<R> mean, rstd;
    return run(in, mean, rstd);
  }
  template <class R>
  void backward(const Tensors<R>& in, const std::vector<R>& dout, const std::vector<R*>& g) const {
    std::vector<R> mean, rstd;
    run(in, mean, rstd);
    const R *x = in[0].data(), *w = in[1].data(), *dy = dout.data();
    if (layer)
      layer_norm_backward(dy, x, M, N, w, mean.data(), rstd.data(), g[0], g[1], g[2]);
    else
      group_norm_backward(dy, x, M, H, N, w, mean.data(), rstd.data(), g[0], g[1], g[2]);
  }
  double rstd(const Tensors<double>& in, int g) const {
    return 1 / std::sqrt(moments(&in[0][size_t(g * N)], N).var + eps);
  }
  double dx_term_scale(const Tensors<double>& in, const Vec& dout) const {  // rstd·|dout·w|
    double scale = 0;
    for (int e = 0; e < M * H * N; ++e) {
      const double w = in[1][size_t(e % (H * N))];
      scale = std::max(scale, rstd(in, e / N) * std::abs(dout[size_t(e)] * w));
    }
    return scale;
  }
  Vec reference(const Tensors<double>& in) const {
    Vec out(sizes()[0]);
    for (int e = 0; e < M * H * N; ++e) {
      const size_t c = size_t(e % (H * N));
      const double mean = moments(&in[0][size_t(e / N * N)], N).mean;
      out[size_t(e)] = (in[0][size_t(e)] - mean) * rstd(in, e / N) * in[1][c] + in[2][c];
    }
    return out;
  }
};

struct L2NormalizeOp {
  int M, H, N;
  double eps = 1e-12;  // F.normalize's default
  std::vector<size_t> sizes() const { return {size_t(M * H * N)}; }
  template <class R>
  std::vector<R> forward(const Tensors<R>& in) const {
    std::vector<R> out(sizes()[0]);
    l2_normalize_forward(in[0].data(), M, H, N, R(eps), out.data());
    return out;
  }
  template <class R>
  void backward(const Tensors<R>& in, const std::vector<R>& dout, const std::vector<R*>& g) const {
    l2_normalize_backward(dout.data(), in[0].data(), M, H, N, R(eps), g[0]);
  }
  double divisor(const Tensors<double>& in, int g) const {
    return std::max(std::sqrt(moments(&in[0][size_t(g * N)], N).sum_sq), eps);
  }
  double dx_term_scale(const Tensors<double>& in, const Vec& dout) const {  // |dout|/‖x‖
    double scale = 0;
    for (int e = 0; e < M * H * N; ++e) {
      scale = std::max(scale, std::abs(dout[size_t(e)]) / divisor(in, e / N));
    }
    return scale;
  }
  Vec reference(const Tensors<double>& in) const {
    Vec out(sizes()[0]);
    for (int e = 0; e < M * H * N; ++e) out[size_t(e)] = in[0][size_t(e)] / divisor(in, e / N);
    return out;
  }
};

struct TokenShiftOp {
  int B, T, C;
  bool with_prev;
  std::vector<size_t> sizes() const {
    if (with_prev) return {size_t(B * T * C), size_t(B * C)};
    return {size_t(B * T * C)};
  }
  template <class R>
  std::vector<R> forward(const Tensors<R>& in) const {
    std::vector<R> out(sizes()[0]);
    token_shift_forward(in[0].data(), with_prev ? in[1].data() : nullptr, B, T, C, out.data());
    return out;
  }
  template <class R>
  void backward(const Tensors<R>& in, const std::vector<R>& dout, const std::vector<R*>& g) const {
    token_shift_backward(dout.data(), B, T, C, g[0], with_prev ? g[1] : nullptr);
  }
  Vec reference(const Tensors<double>& in) const {
    Vec out(sizes()[0]);
    for (int e = 0; e < B * T * C; ++e) {
      const int b = e / (T * C), t = e / C % T, c = e % C;
      const double prev = t > 0 ? in[0][size_t(e - C)] : with_prev ? in[1][size_t(b * C + c)] : 0;
      out[size_t(e)] = prev - in[0][size_t(e)];
    }
    return out;
  }
};

struct ProductOp {  // nn.Linear (y = x·Wᵀ, W (N, K)) or, when `plain`, y = x·A (A (K, N))
  int M, K, N;
  bool plain = false;
  std::vector<size_t> sizes() const { return {size_t(M * K), size_t(N * K)}; }
  template <class R>
  std::vector<R> forward(const Tensors<R>& in) const {
    std::vector<R> y(size_t(M * N), R(7));  // poisoned: the forward overwrites
    if (plain)
      matmul_forward(in[0].data(), in[1].data(), M, K, N, y.data());
    else
      linear_forward(in[0].data(), in[1].data(), M, K, N, y.data());
    return y;
  }
  template <class R>
  void backward(const Tensors<R>& in, const std::vector<R>& dy, const std::vector<R*>& g) const {
    if (plain)
      matmul_backward(dy.data(), in[0].data(), in[1].data(), M, K, N, g[0], g[1]);
    else
      linear_backward(dy.data(), in[0].data(), in[1].data(), M, K, N, g[0], g[1]);
  }
  double weight(const Tensors<double>& in, int k, int n) const {
    return plain ? in[1][size_t(k * N + n)] : in[1][size_t(n * K + k)];
  }
  Vec reference(const Tensors<double>& in) const {  // the naive triple loop
    Vec y(size_t(M * N), 0.0);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k)
          y[size_t(m * N + n)] += in[0][size_t(m * K + k)] * weight(in, k, n);
    return y;
  }
};

// Cross-entropy as an op of one output, scale·loss (l2wrap = 0, as the loss has no L2Wrap
// term); its backward adds dout·dlogits to the gradient, so the generic checks apply.
struct CrossEntropyOp {
  int M, V;
  std::vector<int> targets;  // row 0 always counted, others may be −1 (skipped)
  double scale = 0.37;
  std::vector<size_t> sizes() const { return {size_t(M * V)}; }
  template <class R>
  std::vector<R> forward(const Tensors<R>& in) const {
    std::vector<R> d(sizes()[0]);
    const double loss =
        cross_entropy(in[0].data(), targets.data(), M, V, R(scale), R(0), d.data(), nullptr);
    return {R(scale * loss)};
  }
  template <class R>
  void backward(const Tensors<R>& in, const std::vector<R>& dout, const std::vector<R*>& g) const {
    std::vector<R> d(sizes()[0]);
    cross_entropy(in[0].data(), targets.data(), M, V, R(scale), R(0), d.data(), nullptr);
    for (size_t i = 0; g[0] && i < d.size(); ++i) g[0][i] += dout[0] * d[i];
  }
  Vec reference(const Tensors<double>& in) const {  // direct log-softmax: fine for |x| ≤ 3
    double loss = 0;
    for (int m = 0; m < M; ++m) {
      double sum = 0;
      for (int i = 0; i < V; ++i) sum += std::exp(in[0][size_t(m * V + i)]);
      if (targets[size_t(m)] >= 0)
        loss -= in[0][size_t(m * V + targets[size_t(m)])] - std::log(sum);
    }
    return {scale * loss};
  }
};
CrossEntropyOp cross_entropy_op(int M, int V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pick(-1, V - 1);
  CrossEntropyOp op{M, V, {V - 1}};
  for (int m = 1; m < M; ++m) op.targets.push_back(pick(rng));
  return op;
}

// ---- Generic checks, run on every op.

// Rounding errors of a backward are relative to the largest term its formula adds, not to the
// result: where the terms cancel (dx of LayerNorm over 2 channels, of l2_normalize over 1,
// analytically ~0) the result is all rounding noise. Ops with such cancelling terms say how
// large those terms are (dx, tensor 0); the others need no floor.
template <class Op>
double term_scale(const Op& op, const Tensors<double>& in, const Vec& dout, size_t t) {
  if constexpr (requires { op.dx_term_scale(in, dout); }) {
    if (t == 0) return op.dx_term_scale(in, dout);
  }
  return 0;
}

template <class Op>
Tensors<double> random_inputs(const Op& op, uint32_t seed, double range = 1) {
  std::mt19937 rng(seed);
  Tensors<double> in;
  for (size_t n : op.sizes()) in.push_back(random_vec(n, rng, -range, range));
  return in;
}
template <class R>
std::vector<R*> pointers(Tensors<R>& t) {
  std::vector<R*> p;
  for (auto& v : t) p.push_back(v.data());
  return p;
}
template <class Op, class R>
Tensors<R> gradients(const Op& op, const Tensors<R>& in, const std::vector<R>& dout) {
  Tensors<R> g;
  for (size_t n : op.sizes()) g.emplace_back(n, R(0));
  op.backward(in, dout, pointers(g));
  return g;
}

// The loss is a random projection L = Σ dout·out, so its gradient is backward(dout). Central
// differences with h = 1e-6 err by O(h²·f''') ≈ 1e-12 (truncation) plus O(u·|L|/h) ≈ 1e-10·|L|
// (rounding): an absolute error, the same for every element of a tensor. Dividing it by each
// element's own size would fail elements whose gradient is nearly zero, so the error is
// measured against the tensor's largest gradient; 1e-6 then still catches any wrong term.
template <class Op>
void check_gradients(const Op& op, Tensors<double> in, uint32_t seed, const std::string& name) {
  std::mt19937 rng(seed);
  const Vec dout = random_vec(op.forward(in).size(), rng);
  const Tensors<double> analytic = gradients(op, in, dout);
  const double h = 1e-6;
  auto loss = [&] {
    const Vec out = op.forward(in);
    double L = 0;
    for (size_t j = 0; j < out.size(); ++j) L += dout[j] * out[j];
    return L;
  };
  for (size_t t = 0; t < in.size(); ++t) {
    Vec fd(in[t].size());
    for (size_t i = 0; i < in[t].size(); ++i) {
      const double saved = in[t][i];
      in[t][i] = saved + h;
      const double up = loss();
      in[t][i] = saved - h;
      fd[i] = (up - loss()) / (2 * h);
      in[t][i] = saved;
    }
    const double err = tensor_error(analytic[t], fd, term_scale(op, in, dout, t));
    EXPECT_LE(err, 1e-6) << name << " tensor " << t;
    record("fd " + name, err);
  }
}

// Backward adds into its outputs (twice from zero is twice once; onto existing values it
// adds), and a null output is skipped without changing the others. Parameter gradients sum
// over rows, and starting that sum from a nonzero value re-associates it: M·u·Σ|g| ≲ 1e-13.
template <class Op>
void check_accumulation(const Op& op, const Tensors<double>& in, uint32_t seed) {
  std::mt19937 rng(seed);
  const Vec dout = random_vec(op.forward(in).size(), rng);
  const Tensors<double> once = gradients(op, in, dout);
  Tensors<double> twice = once, onto;
  op.backward(in, dout, pointers(twice));
  for (size_t n : op.sizes()) onto.push_back(random_vec(n, rng));
  const Tensors<double> base = onto;
  op.backward(in, dout, pointers(onto));
  for (size_t t = 0; t < in.size(); ++t) {
    for (size_t i = 0; i < in[t].size(); ++i) {
      const double tol = 1e-13 * (1 + std::abs(once[t][i]));
      EXPECT_NEAR(twice[t][i], 2 * once[t][i], tol) << "tensor " << t << " element " << i;
      EXPECT_NEAR(onto[t][i], base[t][i] + once[t][i], tol) << "tensor " << t << " element " << i;
    }
    Vec alone(in[t].size(), 0.0);
    std::vector<double*> ptrs(in.size(), nullptr);
    ptrs[t] = alone.data();
    op.backward(in, dout, ptrs);
    EXPECT_EQ(alone, once[t]) << "tensor " << t << " alone";
  }
}

// Float with double sums differs from double by a few float roundings per element, amplified
// by the op's conditioning (small for these random inputs): 80 float epsilons, ~1e-5.
constexpr double kFloatTol = 80 * double(FLT_EPSILON);
template <class Op>
void check_float_matches_double(const Op& op, const Tensors<double>& in, uint32_t seed,
                                const std::string& name) {
  std::mt19937 rng(seed);
  const Vec dout = random_vec(op.forward(in).size(), rng);
  const Tensors<float> in_f = cast<float>(in);
  double err = tensor_error(op.forward(in_f), op.forward(in));
  EXPECT_LE(err, kFloatTol) << "output";
  record("float " + name, err);
  const Tensors<float> g_f = gradients(op, in_f, cast<float>({dout})[0]);
  const Tensors<double> g = gradients(op, in, dout);
  for (size_t t = 0; t < in.size(); ++t) {
    err = tensor_error(g_f[t], g[t], term_scale(op, in, dout, t));
    EXPECT_LE(err, kFloatTol) << "tensor " << t;
    record("float " + name, err);
  }
}

template <class Op>
void check_all(const Op& op, const std::string& name, uint32_t seed, double range = 1) {
  SCOPED_TRACE(name + " seed " + std::to_string(seed));
  const Tensors<double> in = random_inputs(op, seed, range);
  EXPECT_LE(tensor_error(op.forward(in), op.reference(in)), 1e-13) << "forward";
  check_gradients(op, in, seed + 1, name);
  check_accumulation(op, in, seed + 2);
  check_float_matches_double(op, in, seed + 3, name);
}

TEST(TrainOps, LayerNorm) {
  for (int M : {1, 3, 7})
    for (int C : {1, 2, 5, 16, 33})
      check_all(GroupNormOp{M, 1, C, true}, "layer_norm", 100 * M + C);
}

TEST(TrainOps, GroupNorm) {
  for (int M : {1, 3})
    for (int H : {1, 2, 3})
      for (int N : {1, 4, 7}) check_all(GroupNormOp{M, H, N}, "group_norm", 100 * M + 10 * H + N);
}

TEST(TrainOps, L2Normalize) {
  for (int M : {1, 3})
    for (int H : {1, 2, 3})
      for (int N : {1, 4, 7})
        check_all(L2NormalizeOp{M, H, N}, "l2_normalize", 100 * M + 10 * H + N);
}

TEST(TrainOps, L2NormalizeBelowEps) {
  // An all-zero group: out = 0 and dx = dout/eps, finite (F.normalize's clamp, not 0/0).
  const L2NormalizeOp op{2, 2, 4};
  Tensors<double> in = random_inputs(op, 5);
  std::fill(in[0].begin() + 4, in[0].begin() + 8, 0.0);
  const Vec out = op.forward(in), dout(out.size(), 1.0);
  const Vec g = gradients(op, in, dout)[0];
  const std::vector<float> g_f =
      gradients(op, cast<float>(in), std::vector<float>(out.size(), 1.f))[0];
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_TRUE(std::isfinite(out[i]) && std::isfinite(g[i]) && std::isfinite(g_f[i])) << i;
    EXPECT_EQ(out[i] == 0, i >= 4 && i < 8);
    if (i >= 4 && i < 8) {
      EXPECT_EQ(g[i], 1.0 / op.eps);
    }
  }
  // Groups of norm ~1e-4 under eps = 1e-2 are x/eps: linear, so FD checks that branch exactly
  // (h = 1e-6 moves the norm by far less than the gap to eps).
  check_all(L2NormalizeOp{3, 2, 5, 1e-2}, "l2_normalize", 6, 1e-4);
}

TEST(TrainOps, TokenShift) {
  for (bool with_prev : {false, true})
    for (int B : {1, 2, 3})
      for (int T : {1, 2, 5})
        for (int C : {1, 3})
          check_all(TokenShiftOp{B, T, C, with_prev}, "token_shift",
                    100 * B + 10 * T + C + with_prev);
}

TEST(TrainOps, LinearAndMatmul) {
  const int shapes[][3] = {{1, 1, 1}, {1, 5, 3},   {3, 1, 7},  {7, 2, 1},
                           {3, 5, 7}, {4, 33, 16}, {7, 16, 33}};
  for (bool plain : {false, true})
    for (const auto& s : shapes) {
      const ProductOp op{s[0], s[1], s[2], plain};
      const std::string name = plain ? "matmul" : "linear";
      check_all(op, name, 1000 * s[0] + 10 * s[1] + s[2] + plain);
      // Float against the naive loop, element by element: a K-term dot product in float is
      // within γ_K·Σ|x||w| of the exact one, γ_K = K·u/(1 − K·u) (Higham, §3.1).
      const Tensors<double> in = random_inputs(op, 11);
      const std::vector<float> y = op.forward(cast<float>(in));
      const Vec want = op.reference(in);
      const double u = FLT_EPSILON / 2, gamma = op.K * u / (1 - op.K * u);
      for (int e = 0; e < op.M * op.N; ++e) {
        double abs_sum = 0;
        for (int k = 0; k < op.K; ++k)
          abs_sum += std::abs(in[0][size_t(e / op.N * op.K + k)] * op.weight(in, k, e % op.N));
        EXPECT_NEAR(y[size_t(e)], want[size_t(e)], gamma * abs_sum) << name << " element " << e;
      }
    }
}

TEST(TrainOps, LinearAndMatmulEmptyShapes) {
  // K = 0 is an empty sum: the forward writes zeros. Backward adds nothing, and M or N = 0
  // touch nothing at all; none of them may reach BLAS with a zero leading dimension.
  const int shapes[][3] = {{0, 3, 2}, {3, 0, 2}, {3, 2, 0}};
  for (bool plain : {false, true})
    for (const auto& s : shapes) {
      const ProductOp op{s[0], s[1], s[2], plain};
      const Tensors<double> in = random_inputs(op, 12);
      EXPECT_EQ(op.forward(in), Vec(size_t(op.M * op.N), 0.0));
      Tensors<double> g = {Vec(in[0].size(), 1.0), Vec(in[1].size(), 1.0)};
      op.backward(in, Vec(size_t(op.M * op.N), 1.0), pointers(g));
      EXPECT_EQ(g[0], Vec(in[0].size(), 1.0));
      EXPECT_EQ(g[1], Vec(in[1].size(), 1.0));
    }
}

// ---- Cross-entropy: the generic checks (l2wrap = 0), then what is particular to it.

TEST(TrainOps, CrossEntropy) {
  for (int M : {1, 3, 7})
    for (int V : {1, 2, 5, 33})
      check_all(cross_entropy_op(M, V, 10 * M + V), "cross_entropy", M + V, 3);
}

TEST(TrainOps, CrossEntropyGradientAndSkippedRows) {
  const CrossEntropyOp op = cross_entropy_op(7, 5, 1);
  const Vec x = random_inputs(op, 2, 3)[0];
  Vec d(x.size(), 123.0);  // poisoned: every element is written, skipped rows with 0
  int count = -1;
  cross_entropy(x.data(), op.targets.data(), 7, 5, 0.5, 0.0, d.data(), &count);
  EXPECT_EQ(count, 7 - int(std::count(op.targets.begin(), op.targets.end(), -1)));
  ASSERT_LT(count, 7);  // the seed gives skipped rows
  for (int m = 0; m < 7; ++m) {
    double sum = 0;
    for (int i = 0; i < 5; ++i) sum += std::exp(x[size_t(m * 5 + i)]);
    for (int i = 0; i < 5; ++i) {
      const int t = op.targets[size_t(m)];
      const double want = t < 0 ? 0 : 0.5 * (std::exp(x[size_t(m * 5 + i)]) / sum - (i == t));
      EXPECT_NEAR(d[size_t(m * 5 + i)], want, 1e-15) << "row " << m << " col " << i;
    }
  }
}

TEST(TrainOps, CrossEntropyL2Wrap) {
  CrossEntropyOp op = cross_entropy_op(5, 6, 9);
  Vec x = random_inputs(op, 9, 3)[0];
  x[6 + 1] = x[6 + 4] = 5;  // row 1: a tie, the first max takes the term (as torch.max)
  op.targets[2] = -1;
  for (double l2wrap : {1e-4, 0.5}) {
    Vec plain(x.size()), wrapped(x.size());
    const double loss =
        cross_entropy(x.data(), op.targets.data(), 5, 6, 0.25, 0.0, plain.data(), nullptr);
    EXPECT_EQ(
        cross_entropy(x.data(), op.targets.data(), 5, 6, 0.25, l2wrap, wrapped.data(), nullptr),
        loss);
    for (int m = 0; m < 5; ++m) {
      const auto row = x.begin() + m * 6;
      const int argmax = int(std::max_element(row, row + 6) - row);
      for (int i = 0; i < 6; ++i) {
        const double added = op.targets[size_t(m)] >= 0 && i == argmax ? l2wrap * row[i] : 0;
        EXPECT_NEAR(wrapped[size_t(m * 6 + i)] - plain[size_t(m * 6 + i)], added, 1e-15)
            << m << ", " << i;
      }
    }
  }
}

TEST(TrainOps, CrossEntropyLargeLogitsAndAliasing) {
  // ±1000 would overflow exp without the max subtracted; each row's loss is known exactly.
  const std::vector<int> targets = {1, 0, 2};
  const std::vector<float> big = {1000, -1000, 0, -1000, 1000, 1000, 1000, 1000, -1000};
  std::vector<float> d(big.size());
  const double loss = cross_entropy(big.data(), targets.data(), 3, 3, 1.f, 0.f, d.data(), nullptr);
  EXPECT_NEAR(loss, 6000 + 2 * std::log(2.0), 1e-3);
  for (float g : d) EXPECT_TRUE(std::isfinite(g));
  EXPECT_EQ(d[1], -1.f);
  // dlogits == logits gives what separate buffers give, in both scalars, small logits or large.
  for (double range : {3.0, 1000.0})
    for (double l2wrap : {0.0, 0.01}) {
      const CrossEntropyOp op = cross_entropy_op(7, 33, 21);
      const Vec x = random_inputs(op, 22, range)[0];
      Vec separate(x.size()), aliased = x;
      const int* t = op.targets.data();
      const double want = cross_entropy(x.data(), t, 7, 33, 0.5, l2wrap, separate.data(), nullptr);
      EXPECT_EQ(cross_entropy(aliased.data(), t, 7, 33, 0.5, l2wrap, aliased.data(), nullptr),
                want);
      EXPECT_EQ(aliased, separate);
      const std::vector<float> x_f(x.begin(), x.end());
      std::vector<float> separate_f(x.size()), aliased_f = x_f;
      const float l2wrap_f = float(l2wrap);
      const double want_f =
          cross_entropy(x_f.data(), t, 7, 33, 0.5f, l2wrap_f, separate_f.data(), nullptr);
      EXPECT_EQ(
          cross_entropy(aliased_f.data(), t, 7, 33, 0.5f, l2wrap_f, aliased_f.data(), nullptr),
          want_f);
      EXPECT_EQ(aliased_f, separate_f);
      EXPECT_LE(tensor_error(separate_f, separate), kFloatTol);
    }
}

}  // namespace
}  // namespace rwkv::ops::train
