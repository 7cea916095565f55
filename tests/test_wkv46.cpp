// RWKV-4 and RWKV-5/6 WKV kernels (ref and cpu; recurrent and chunked) against oracles written
// here in plain high precision: an fp64 recurrence for WKV-5/6 (spec §2.2–2.3) and a long-double
// closed form for WKV-4 (spec §2.1). Random inputs at many shapes, several heads interleaved in
// one [T, C] buffer with columns nobody owns, outputs poisoned with NaN, non-zero initial states,
// calls split at odd points carrying the state, decays from d ≈ 1 to d = 0, and every SIMD
// instruction set this CPU runs.
//
// Error measure. Each output element is compared with |got − want| / scale, where `scale` is the
// same sum with every term replaced by its absolute value (the oracle computes both). That is the
// relative error of the element with respect to the size of what was summed to make it: it stays
// meaningful where cancellation makes |want| tiny (a plain relative error would not), and unlike
// a signed sum of errors it cannot hide errors that cancel. Failure messages also give the max
// absolute and max relative error.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "ops/ops.h"
#include "testing.h"

namespace rwkv::ops {
namespace {

constexpr double kU = 0x1p-24;  // fp32 unit roundoff
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> random_vec(size_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

// The worst element of |got − want| / scale (NaN or ∞ in got counts as ∞), plus the plain
// max-abs and max-relative errors for the failure message.
struct Errors {
  double normalized = 0, max_abs = 0, max_rel = 0;
  void add(double got, double want, double scale) {
    const double e = std::fabs(got - want);
    if (!std::isfinite(got) || !std::isfinite(e)) {
      normalized = max_abs = max_rel = INFINITY;
      return;
    }
    normalized = std::max(normalized, e / std::max(scale, 1e-30));
    max_abs = std::max(max_abs, e);
    if (std::fabs(want) > 1e-6) max_rel = std::max(max_rel, e / std::fabs(want));
  }
  std::string str() const {
    return "normalized " + std::to_string(normalized) + ", max abs " + std::to_string(max_abs) +
           ", max rel " + std::to_string(max_rel);
  }
};

// ============================================================================================
// RWKV-5/6

// v5: one decay per channel repeated on every token, close to 1 (|λ| ∈ [1e-5, 1e-2]) or close to
// 0 (|λ| ∈ [3, 30]); v6: a decay per token and channel, |λ| log-uniform in [1e-4, 200].
enum class Decay { V5NearOne, V5NearZero, V6 };
const char* decay_name(Decay d) {
  return d == Decay::V5NearOne ? "v5 d≈1" : d == Decay::V5NearZero ? "v5 d≈0" : "v6 random";
}

// H heads of size N in one [T, C] buffer, C = stride = H·N + 3: the last 3 columns belong to
// nobody and must stay poisoned.
struct Wkv6Data {
  int T, N, H, stride;
  std::vector<float> r, w, k, v, u, S;  // r, w, k, v: T×stride; u: H·N; S: H initial N×N states
  Wkv6Data(int T_, int N_, int H_, Decay decay, std::mt19937& rng)
      : T(T_), N(N_), H(H_), stride(H_ * N_ + 3) {
    const size_t n = size_t(T) * size_t(stride);
    r = random_vec(n, rng, -1, 1);
    k = random_vec(n, rng, -1, 1);
    v = random_vec(n, rng, -2, 2);
    u = random_vec(size_t(H) * size_t(N), rng, -1, 1);
    S = random_vec(size_t(H) * size_t(N) * size_t(N), rng, -1, 1);
    w.resize(n);
    const float lo = decay == Decay::V5NearOne ? -5 : decay == Decay::V5NearZero ? 0.5f : -4;
    const float hi = decay == Decay::V5NearOne ? -2 : decay == Decay::V5NearZero ? 1.5f : 2.301f;
    std::uniform_real_distribution<float> log10_mag(lo, hi);
    for (int c = 0; c < stride; ++c) {
      const float constant = -std::pow(10.f, log10_mag(rng));
      for (int t = 0; t < T; ++t)
        w[size_t(t) * size_t(stride) + size_t(c)] =
            decay == Decay::V6 ? -std::pow(10.f, log10_mag(rng)) : constant;
    }
  }
  // Rows [t0, t0 + len) of head h.
  Wkv6Head head(int h, int t0, int len, float* y, float* state) const {
    const size_t o = size_t(t0) * size_t(stride) + size_t(h) * size_t(N);
    return Wkv6Head{len,          N,
                    stride,       r.data() + o,
                    w.data() + o, k.data() + o,
                    v.data() + o, u.data() + size_t(h) * size_t(N),
                    y + o,        state};
  }
  float* state(std::vector<float>& all, int h) const { return all.data() + size_t(h) * N * N; }
};

// The recurrence of spec §2.2 in fp64, and the same recurrence over absolute values (the scale).
struct Wkv6Oracle {
  std::vector<double> y, y_scale;  // T×stride (head columns only)
  std::vector<double> S, S_scale;  // H×N×N, after the last token
};

Wkv6Oracle wkv6_oracle(const Wkv6Data& d) {
  const size_t N = size_t(d.N), st = size_t(d.stride);
  Wkv6Oracle o;
  o.y.assign(size_t(d.T) * st, 0);
  o.y_scale.assign(o.y.size(), 0);
  o.S.assign(d.S.begin(), d.S.end());
  o.S_scale.resize(d.S.size());
  for (size_t i = 0; i < d.S.size(); ++i) o.S_scale[i] = std::fabs(double(d.S[i]));
  for (size_t h = 0; h < size_t(d.H); ++h) {
    double* S = o.S.data() + h * N * N;
    double* Sa = o.S_scale.data() + h * N * N;
    for (size_t t = 0; t < size_t(d.T); ++t) {
      const size_t row = t * st + h * N;
      const float *r = &d.r[row], *w = &d.w[row], *k = &d.k[row], *v = &d.v[row], *u = &d.u[h * N];
      for (size_t j = 0; j < N; ++j) {
        double y = 0, ya = 0;
        for (size_t i = 0; i < N; ++i) {
          const double bonus = double(u[i]) * k[i] * v[j];
          y += double(r[i]) * (bonus + S[i * N + j]);
          ya += std::fabs(double(r[i])) * (std::fabs(bonus) + Sa[i * N + j]);
        }
        o.y[row + j] = y;
        o.y_scale[row + j] = ya;
      }
      for (size_t i = 0; i < N; ++i) {
        const double decay = std::exp(double(w[i]));
        for (size_t j = 0; j < N; ++j) {
          S[i * N + j] = decay * S[i * N + j] + double(k[i]) * v[j];
          Sa[i * N + j] = decay * Sa[i * N + j] + std::fabs(double(k[i]) * v[j]);
        }
      }
    }
  }
  return o;
}

// Bound on the normalized error of an fp32 kernel. Rounding-error analysis gives a worst case
// of about u·(N + 2T) for this measure: a sum of N products is off by at most N·u·Σ|terms|, and
// each step of the recurrence adds a few u of relative error to every contribution it carries
// (the rounded e^λ, the product, the sum). Independent roundings grow like √N in practice; the
// decay's rounding error is systematic when the decay is constant (v5), so that part grows like T.
// Allowed: u·(4√N + T/2 + 16) = 111u = 6.6e-6 at N = 128, T = 100. Measured worst, all kernels,
// all shapes: 6u (v5 with d ≈ 1), under a fifth of the bound, which leaves room for other SIMD
// widths' summation orders. Any wrong term, index or decay gives errors of order 1 here, and
// careless rounding shows too: e^{Ĝ_t − G_s} from fp32 cumulative sums is off by |G|·u, with
// |G| up to 3200 for v6 decays.
double wkv6_tolerance(int N, int T) { return kU * (4 * std::sqrt(double(N)) + T / 2.0 + 16); }

using Wkv6Fn = void (*)(const Wkv6Head&);
struct Wkv6Kernel {
  std::string name;
  Wkv6Fn fn;
};

void ref_chunk1(const Wkv6Head& h) { ref::wkv6_chunked(h, 1); }
void ref_chunk5(const Wkv6Head& h) { ref::wkv6_chunked(h, 5); }
void ref_chunk16(const Wkv6Head& h) { ref::wkv6_chunked(h, 16); }
void ref_chunk64(const Wkv6Head& h) { ref::wkv6_chunked(h, 64); }

std::vector<Wkv6Kernel> wkv6_kernels() {
  return {{"ref recurrent", ref::wkv6_recurrent},
          {"ref chunked(1)", ref_chunk1},
          {"ref chunked(5)", ref_chunk5},
          {"ref chunked(16)", ref_chunk16},
          {"ref chunked(64)", ref_chunk64},
          {"cpu recurrent", cpu::wkv6_recurrent},
          {"cpu chunked", cpu::wkv6_chunked},
          {"ref table parallel", ref_kernels().wkv6_parallel},
          {"cpu table recurrent", cpu_kernels().wkv6_recurrent},
          {"cpu table parallel", cpu_kernels().wkv6_parallel}};
}

struct Wkv6Result {
  std::vector<float> y, S;
};

// Runs `fn` on every head, the T rows split into calls at `splits` (state carried between them).
Wkv6Result run_wkv6(const Wkv6Data& d, Wkv6Fn fn, const std::vector<int>& splits = {}) {
  Wkv6Result out{std::vector<float>(size_t(d.T) * size_t(d.stride), kNaN), d.S};
  for (int h = 0; h < d.H; ++h) {
    int t0 = 0;
    std::vector<int> ends = splits;
    ends.push_back(d.T);
    for (int end : ends) {
      fn(d.head(h, t0, end - t0, out.y.data(), d.state(out.S, h)));
      t0 = end;
    }
  }
  return out;
}

// got against the oracle: every head's outputs and final state, and the unowned columns.
Errors wkv6_errors(const Wkv6Data& d, const Wkv6Oracle& o, const Wkv6Result& got,
                   bool* unowned_written) {
  Errors e;
  const size_t owned = size_t(d.H) * size_t(d.N);
  *unowned_written = false;
  for (size_t t = 0; t < size_t(d.T); ++t) {
    for (size_t c = 0; c < size_t(d.stride); ++c) {
      const size_t i = t * size_t(d.stride) + c;
      if (c < owned) {
        e.add(got.y[i], o.y[i], o.y_scale[i]);
      } else if (!std::isnan(got.y[i])) {
        *unowned_written = true;
      }
    }
  }
  for (size_t i = 0; i < got.S.size(); ++i) e.add(got.S[i], o.S[i], o.S_scale[i]);
  return e;
}

// Two kernels' results against each other, scaled by the oracle's scale.
Errors wkv6_diff(const Wkv6Data& d, const Wkv6Oracle& o, const Wkv6Result& a, const Wkv6Result& b) {
  Errors e;
  const size_t owned = size_t(d.H) * size_t(d.N);
  for (size_t t = 0; t < size_t(d.T); ++t)
    for (size_t c = 0; c < owned; ++c) {
      const size_t i = t * size_t(d.stride) + c;
      e.add(a.y[i], b.y[i], o.y_scale[i]);
    }
  for (size_t i = 0; i < a.S.size(); ++i) e.add(a.S[i], b.S[i], o.S_scale[i]);
  return e;
}

std::string wkv6_case(const Wkv6Data& d, Decay decay) {
  return "N=" + std::to_string(d.N) + " T=" + std::to_string(d.T) + " H=" + std::to_string(d.H) +
         " decay " + decay_name(decay);
}

TEST(Wkv6, EveryKernelMatchesTheOracle) {
  std::mt19937 rng(61);
  const auto kernels = wkv6_kernels();
  for (Decay decay : {Decay::V5NearOne, Decay::V5NearZero, Decay::V6}) {
    for (int N : {1, 3, 4, 8, 13, 64, 128}) {
      for (int T : {1, 2, 15, 16, 17, 33, 64, 100}) {
        const Wkv6Data d(T, N, N >= 64 ? 2 : 3, decay, rng);
        const Wkv6Oracle o = wkv6_oracle(d);
        const double tol = wkv6_tolerance(N, T);
        std::vector<Wkv6Result> results;
        for (const auto& kernel : kernels) {
          results.push_back(run_wkv6(d, kernel.fn));
          bool unowned = false;
          const Errors e = wkv6_errors(d, o, results.back(), &unowned);
          EXPECT_LE(e.normalized, tol)
              << kernel.name << ", " << wkv6_case(d, decay) << ": " << e.str();
          EXPECT_FALSE(unowned) << kernel.name << " wrote outside its head, "
                                << wkv6_case(d, decay);
        }
        // The forms and backends against each other directly (indices into wkv6_kernels()); each
        // is far inside the bound from the oracle, so the bound holds for their difference too.
        const std::pair<int, int> pairs[] = {{6, 5}, {5, 0}, {6, 3}, {3, 0}};
        for (auto [a, b] : pairs) {
          const Errors e = wkv6_diff(d, o, results[size_t(a)], results[size_t(b)]);
          EXPECT_LE(e.normalized, tol)
              << kernels[size_t(a)].name << " vs " << kernels[size_t(b)].name << ", "
              << wkv6_case(d, decay) << ": " << e.str();
        }
      }
    }
  }
}

// The largest head size the SIMD path takes, and one between the common sizes.
TEST(Wkv6, LargeHeads) {
  std::mt19937 rng(62);
  for (int N : {96, 256}) {
    const Wkv6Data d(40, N, 1, Decay::V6, rng);
    const Wkv6Oracle o = wkv6_oracle(d);
    for (const auto& kernel : wkv6_kernels()) {
      bool unowned = false;
      const Errors e = wkv6_errors(d, o, run_wkv6(d, kernel.fn), &unowned);
      EXPECT_LE(e.normalized, wkv6_tolerance(N, d.T))
          << kernel.name << ", N=" << N << ": " << e.str();
      EXPECT_FALSE(unowned);
    }
  }
}

// Running T tokens as several calls, carrying the state, gives one call's result: exactly for the
// recurrent kernels (same operations in the same order), within the bound for the chunked ones
// (the chunks fall elsewhere).
TEST(Wkv6, SplitCallsCarryTheState) {
  std::mt19937 rng(63);
  const auto kernels = wkv6_kernels();
  const std::vector<std::vector<int>> split_sets = {{1}, {7}, {16}, {33}, {50, 51}, {13, 47, 99}};
  for (Decay decay : {Decay::V5NearOne, Decay::V6}) {
    for (int N : {8, 13, 64}) {
      const Wkv6Data d(100, N, 2, decay, rng);
      const Wkv6Oracle o = wkv6_oracle(d);
      for (const auto& kernel : kernels) {
        const Wkv6Result whole = run_wkv6(d, kernel.fn);
        const bool recurrent = kernel.name.find("recurrent") != std::string::npos;
        for (const auto& splits : split_sets) {
          const Wkv6Result parts = run_wkv6(d, kernel.fn, splits);
          bool unowned = false;
          const Errors e = wkv6_errors(d, o, parts, &unowned);
          EXPECT_LE(e.normalized, wkv6_tolerance(N, d.T))
              << kernel.name << " split at " << splits[0] << ", " << wkv6_case(d, decay) << ": "
              << e.str();
          if (recurrent) {
            EXPECT_EQ(parts.S, whole.S) << kernel.name << " split at " << splits[0];
            EXPECT_EQ(0, std::memcmp(parts.y.data(), whole.y.data(), parts.y.size() * 4))
                << kernel.name << " split at " << splits[0];
          }
        }
      }
    }
  }
}

// λ = −∞ (d = 0) is a legal input (spec §3.3: exp(ω) = ∞ gives d = 0), and so are huge finite
// ones: the state forgets, nothing becomes NaN.
TEST(Wkv6, InfiniteAndHugeDecaysForget) {
  std::mt19937 rng(64);
  for (int N : {8, 13, 64}) {
    Wkv6Data d(40, N, 1, Decay::V6, rng);
    std::uniform_int_distribution<int> pick(0, 9);
    for (float& w : d.w) {
      const int p = pick(rng);
      if (p == 0) w = -std::numeric_limits<float>::infinity();
      if (p == 1) w = -1e30f;
      if (p == 2) w = -std::numeric_limits<float>::max();
      if (p == 3) w = -1e4f;
    }
    const Wkv6Oracle o = wkv6_oracle(d);
    for (const auto& kernel : wkv6_kernels()) {
      bool unowned = false;
      const Errors e = wkv6_errors(d, o, run_wkv6(d, kernel.fn), &unowned);
      EXPECT_LE(e.normalized, wkv6_tolerance(N, d.T))
          << kernel.name << ", N=" << N << ": " << e.str();
    }
  }
}

TEST(Wkv6, NoTokensLeavesTheStateAlone) {
  std::mt19937 rng(65);
  const Wkv6Data d(1, 64, 1, Decay::V6, rng);
  for (const auto& kernel : wkv6_kernels()) {
    std::vector<float> y(size_t(d.stride), kNaN), S = d.S;
    kernel.fn(d.head(0, 0, 0, y.data(), S.data()));
    EXPECT_EQ(S, d.S) << kernel.name;
    for (float x : y) EXPECT_TRUE(std::isnan(x)) << kernel.name;
  }
}

// ============================================================================================
// RWKV-4

enum class Keys { Moderate, Extreme };
enum class Start { Zero, Random };

// C channels at columns [2, 2 + C) of rows of stride C + 5 (columns nobody owns on both sides).
struct Wkv4Data {
  int T, C, stride, offset = 2;
  std::vector<float> k, v, w, u, aa, bb, pp;
  Wkv4Data(int T_, int C_, Keys keys, Start start, std::mt19937& rng)
      : T(T_), C(C_), stride(C_ + 5) {
    const size_t n = size_t(T) * size_t(stride);
    v = random_vec(n, rng, -2, 2);
    k = random_vec(n, rng, -5, 5);
    if (keys == Keys::Extreme) {
      // ±60 overflows e^{u+k} with the naive form in fp16 terms already; ±100 and ±1000 overflow
      // fp32 (88.7); mixed with moderate keys so that both sides of every max happen.
      std::uniform_int_distribution<int> pick(0, 5);
      std::uniform_real_distribution<float> unit(0, 1);
      for (float& x : k) {
        const int p = pick(rng);
        const float sign = unit(rng) < 0.5f ? -1.f : 1.f;
        if (p == 0) x = sign * (55 + 10 * unit(rng));
        if (p == 1) x = sign * (80 + 40 * unit(rng));
        if (p == 2) x = sign * (500 + 500 * unit(rng));
      }
    }
    // w = −e^{time_decay}, time_decay ∈ [−8, 3] as in trained RWKV-4 models; u = time_first.
    w = random_vec(size_t(C), rng, -8, 3);
    for (float& x : w) x = -std::exp(x);
    u = random_vec(size_t(C), rng, -3, 3);
    if (start == Start::Zero) {
      aa.assign(size_t(C), 0.f);
      bb.assign(size_t(C), 0.f);
      pp.assign(size_t(C), -1e30f);
    } else {
      // A state some earlier tokens could have left: bb > 0, aa/bb a weighted mean of values.
      bb = random_vec(size_t(C), rng, -2, 2);
      for (float& x : bb) x = std::exp(x);
      aa = random_vec(size_t(C), rng, -2, 2);
      for (size_t c = 0; c < size_t(C); ++c) aa[c] *= bb[c];
      pp = random_vec(size_t(C), rng, -60, 60);
    }
  }
  Wkv4Seq seq(int t0, int len, float* y, float* a, float* b, float* p) const {
    const size_t o = size_t(t0) * size_t(stride) + size_t(offset);
    return Wkv4Seq{len, C, stride, k.data() + o, v.data() + o, w.data(), u.data(), y + o, a, b, p};
  }
  // Largest |exponent| the fp32 scan handles: keys, bonus and the initial offset. The fp32 sums
  // that form exponents are off by up to about this times u.
  double exponent_size() const {
    double m = 0;
    for (float x : k) m = std::max(m, double(std::fabs(x)));
    for (size_t c = 0; c < size_t(C); ++c) {
      m = std::max(m, double(std::fabs(k[c])) + std::fabs(u[c]));
      if (pp[c] > -1e29f) m = std::max(m, double(std::fabs(pp[c])));
    }
    return m;
  }
};

// The closed form of spec §2.1 in long double (no max trick needed: its exponent range covers
// e^{±1000}), plus the weighted mean of |v| as the scale. The state (aa, bb, pp) counts as
// numerator aa·e^{pp} and denominator bb·e^{pp} before token 0.
struct Wkv4Oracle {
  std::vector<double> y, y_scale;                   // T×stride
  std::vector<double> ratio, ratio_scale, log_den;  // final state: aa/bb and pp + ln bb
};

Wkv4Oracle wkv4_oracle(const Wkv4Data& d) {
  using LD = long double;
  const size_t st = size_t(d.stride), T = size_t(d.T);
  Wkv4Oracle o;
  o.y.assign(T * st, 0);
  o.y_scale.assign(T * st, 0);
  for (size_t c = 0; c < size_t(d.C); ++c) {
    const size_t col = c + size_t(d.offset);
    const LD w = d.w[c], u = d.u[c], pp = d.pp[c], aa = d.aa[c], bb = d.bb[c];
    // Σ over the initial state, tokens s < t decayed (t−1−s) times, and token t with the bonus.
    auto sums = [&](size_t t, bool with_bonus, LD* num, LD* den, LD* abs_num, LD* log_scale) {
      std::vector<LD> expo, val;
      LD init = (bb != 0 || aa != 0) ? pp + LD(t) * w : -INFINITY;
      for (size_t s = 0; s < t; ++s) {
        expo.push_back(LD(t - 1 - s) * w + LD(d.k[s * st + col]));
        val.push_back(d.v[s * st + col]);
      }
      if (with_bonus) {
        expo.push_back(u + LD(d.k[t * st + col]));
        val.push_back(d.v[t * st + col]);
      }
      LD m = init;
      for (LD e : expo) m = std::max(m, e);
      *num = *den = *abs_num = 0;
      if (std::isfinite(init)) {
        const LD f = std::exp(init - m);
        *num += aa * f;
        *den += bb * f;
        *abs_num += std::fabs(aa) * f;
      }
      for (size_t i = 0; i < expo.size(); ++i) {
        const LD f = std::exp(expo[i] - m);
        *num += f * val[i];
        *den += f;
        *abs_num += f * std::fabs(val[i]);
      }
      *log_scale = m;
    };
    for (size_t t = 0; t < T; ++t) {
      LD num, den, abs_num, m;
      sums(t, true, &num, &den, &abs_num, &m);
      o.y[t * st + col] = double(num / den);
      o.y_scale[t * st + col] = double(abs_num / den);
    }
    LD num, den, abs_num, m;
    sums(T, false, &num, &den, &abs_num, &m);
    o.ratio.push_back(double(num / den));
    o.ratio_scale.push_back(double(abs_num / den));
    o.log_den.push_back(double(m + std::log(den)));
  }
  return o;
}

// Bound on the normalized error of the fp32 scan. y is a weighted mean of values (positive
// weights), so its error is at most twice the relative error of the weights times the scale.
// Weight errors: each step rounds a few products and sums (a few u, systematic for the constant
// w, so growing like T); and the exponent offset pp is a running fp32 sum, pp + w + w + …, of
// numbers of size up to P = exponent_size(), each addition off by up to ulp(P)/2 ≈ P·u, so after
// T steps the weights are off by up to T·P·u. This is the format's own limit (the reference scan
// has it too, to the bit) and it dominates with keys near ±1000. Allowed, for y, aa/bb and the
// absolute error of ln(den) = pp + ln bb: u·(T·(P + 1) + 4T + 64). Measured worst: half of it,
// for ln(den) at T = 100 with keys ±1000 (2.9e-3, i.e. 100 additions each off by ulp(1000)/2).
double wkv4_tolerance(const Wkv4Data& d) {
  return kU * (d.T * (d.exponent_size() + 1) + 4 * d.T + 64);
}

using Wkv4Fn = void (*)(const Wkv4Seq&);
struct Wkv4Kernel {
  std::string name;
  Wkv4Fn fn;
};
std::vector<Wkv4Kernel> wkv4_kernels() {
  return {{"ref", ref::wkv4},
          {"cpu", cpu::wkv4},
          {"ref table", ref_kernels().wkv4},
          {"cpu table", cpu_kernels().wkv4}};
}

struct Wkv4Result {
  std::vector<float> y, aa, bb, pp;
};

Wkv4Result run_wkv4(const Wkv4Data& d, Wkv4Fn fn, const std::vector<int>& splits = {}) {
  Wkv4Result out{std::vector<float>(size_t(d.T) * size_t(d.stride), kNaN), d.aa, d.bb, d.pp};
  int t0 = 0;
  std::vector<int> ends = splits;
  ends.push_back(d.T);
  for (int end : ends) {
    fn(d.seq(t0, end - t0, out.y.data(), out.aa.data(), out.bb.data(), out.pp.data()));
    t0 = end;
  }
  return out;
}

// Outputs and final state against the closed form. The state (aa, bb, pp) is one of many
// representations of (numerator, denominator), so it is compared as aa/bb (a weighted mean, like
// y) and pp + ln bb (the log of the denominator: its absolute error is the relative error of
// the denominator).
void expect_wkv4_matches(const Wkv4Data& d, const Wkv4Oracle& o, const Wkv4Result& got,
                         const std::string& what) {
  const double tol = wkv4_tolerance(d);
  Errors ey, eratio, elog;
  bool unowned = false;
  for (size_t t = 0; t < size_t(d.T); ++t)
    for (size_t col = 0; col < size_t(d.stride); ++col) {
      const size_t i = t * size_t(d.stride) + col;
      if (col >= size_t(d.offset) && col < size_t(d.offset + d.C)) {
        ey.add(got.y[i], o.y[i], o.y_scale[i]);
      } else if (!std::isnan(got.y[i])) {
        unowned = true;
      }
    }
  for (size_t c = 0; c < size_t(d.C); ++c) {
    eratio.add(double(got.aa[c]) / double(got.bb[c]), o.ratio[c], o.ratio_scale[c]);
    elog.add(double(got.pp[c]) + std::log(double(got.bb[c])), o.log_den[c], 1.0);
  }
  const std::string shape = what + ", T=" + std::to_string(d.T) + " C=" + std::to_string(d.C);
  EXPECT_LE(ey.normalized, tol) << shape << " y: " << ey.str();
  EXPECT_LE(eratio.normalized, tol) << shape << " aa/bb: " << eratio.str();
  EXPECT_LE(elog.normalized, tol) << shape << " pp + ln bb: " << elog.str();
  EXPECT_FALSE(unowned) << shape << " wrote outside its channels";
}

TEST(Wkv4, EveryKernelMatchesTheClosedForm) {
  std::mt19937 rng(41);
  for (Keys keys : {Keys::Moderate, Keys::Extreme}) {
    for (Start start : {Start::Zero, Start::Random}) {
      for (int C : {1, 3, 4, 8, 13, 64, 100}) {
        for (int T : {1, 2, 15, 16, 17, 33, 64, 100}) {
          const Wkv4Data d(T, C, keys, start, rng);
          const Wkv4Oracle o = wkv4_oracle(d);
          const std::string what = std::string(keys == Keys::Extreme ? "extreme k" : "moderate k") +
                                   (start == Start::Zero ? ", zero state" : ", random state");
          for (const auto& kernel : wkv4_kernels())
            expect_wkv4_matches(d, o, run_wkv4(d, kernel.fn), kernel.name + ", " + what);
        }
      }
    }
  }
}

// Split calls carry the state exactly: the scan does the same operations in the same order.
TEST(Wkv4, SplitCallsCarryTheState) {
  std::mt19937 rng(42);
  for (int C : {5, 8, 37}) {
    const Wkv4Data d(100, C, Keys::Extreme, Start::Zero, rng);
    const Wkv4Oracle o = wkv4_oracle(d);
    for (const auto& kernel : wkv4_kernels()) {
      const Wkv4Result whole = run_wkv4(d, kernel.fn);
      for (const std::vector<int>& splits : {std::vector<int>{1}, {7}, {50}, {13, 47, 99}}) {
        const Wkv4Result parts = run_wkv4(d, kernel.fn, splits);
        expect_wkv4_matches(d, o, parts, kernel.name + " split");
        EXPECT_EQ(0, std::memcmp(parts.y.data(), whole.y.data(), parts.y.size() * 4))
            << kernel.name;
        EXPECT_EQ(parts.aa, whole.aa) << kernel.name;
        EXPECT_EQ(parts.bb, whole.bb) << kernel.name;
        EXPECT_EQ(parts.pp, whole.pp) << kernel.name;
      }
    }
  }
}

// The cpu kernel against the reference at a model's width (vectors plus a partial one).
TEST(Wkv4, CpuMatchesReferenceAtModelWidth) {
  std::mt19937 rng(43);
  const Wkv4Data d(64, 768 + 3, Keys::Moderate, Start::Random, rng);
  const Wkv4Result want = run_wkv4(d, ref::wkv4), got = run_wkv4(d, cpu::wkv4);
  Errors e;
  for (size_t t = 0; t < size_t(d.T); ++t)
    for (size_t c = 0; c < size_t(d.C); ++c) {
      const size_t i = t * size_t(d.stride) + size_t(d.offset) + c;
      e.add(got.y[i], want.y[i], 2.0);  // |v| ≤ 2 bounds y
    }
  // Both are fp32 scans of the same form; they differ by exp's rounding (≤ 2 ulp each step).
  EXPECT_LE(e.normalized, 64 * kU * d.T) << e.str();
}

// ============================================================================================
// Every instruction set the SIMD kernels were compiled for that this CPU runs (SSE4, AVX2, …):
// the dispatcher picks one, but another machine picks another, with other lane counts.

TEST(Wkv46, EverySimdTargetMatchesTheOracles) {
  std::mt19937 rng(7);
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    const std::string name = hwy::TargetName(target);
    ASSERT_EQ(name, cpu::simd_target()) << "the dispatcher did not switch target";
    for (int N : {4, 8, 16, 64}) {
      for (int T : {1, 3, 17, 40}) {
        const Wkv6Data d(T, N, 2, Decay::V6, rng);
        const Wkv6Oracle o = wkv6_oracle(d);
        for (Wkv6Fn fn : {cpu::wkv6_recurrent, cpu::wkv6_chunked}) {
          bool unowned = false;
          const Errors e = wkv6_errors(d, o, run_wkv6(d, fn), &unowned);
          EXPECT_LE(e.normalized, wkv6_tolerance(N, T))
              << name << ", " << (fn == cpu::wkv6_chunked ? "chunked" : "recurrent") << ", "
              << wkv6_case(d, Decay::V6) << ": " << e.str();
          EXPECT_FALSE(unowned) << name;
        }
      }
    }
    for (int C : {5, 13, 64}) {
      const Wkv4Data d(33, C, Keys::Extreme, Start::Random, rng);
      expect_wkv4_matches(d, wkv4_oracle(d), run_wkv4(d, cpu::wkv4), name + " cpu");
    }
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace
}  // namespace rwkv::ops
