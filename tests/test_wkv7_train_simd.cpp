// The SIMD WKV-7 training kernels (ops/cpu/simd_wkv7_train.cpp) against their plain-loop
// templates (ops/train/wkv7.cpp) run in double on the same inputs, and against the float
// template: forward (y, final state, every checkpoint) and backward (dr, dw, dk, dv, da, db,
// dS0), at many shapes — head sizes that are not a multiple of any vector length, T not a
// multiple of the chunk — several heads interleaved in [T, stride] buffers with columns nobody
// owns, dS_T absent or given, dS0 separate, absent or aliasing dS_T, outputs poisoned with NaN,
// on every SIMD instruction set this CPU runs.
//
// Inputs are at the magnitudes of a real model (spec §2.4): log-decay w ∈ [−e^{−0.5}, 0),
// a = −κ̂ and b = κ̂·α with κ̂ a unit vector and α ∈ (0, 1), r, k, v ~ N(0, 0.5²), dy ~ N(0, 1).
//
// Error measure: for each output array, max |got − want| over its elements divided by
// max |want| (the ∞-norm of that output over all heads and rows). Relative to the array's norm
// it stays meaningful where a single element cancels to ~0.
//
// Tolerance against the fp64 template, from fp32's ε = 2⁻²³: kTolerancePerOp·ε·(N + T + kOps).
// Each step of a float run rounds dots of N terms (error up to ~N·ε) and a few more operations
// per element (the update, the backward's accumulations: kOps), and the state carries errors
// through T steps of a recurrence that at these magnitudes does not amplify them (d < 1, and
// a bᵀ = −κ̂(α⊙κ̂)ᵀ only takes away part of the κ̂ direction), each step adding its own; the
// backward walks the same chain back. Measured (AVX2, SSE4, SSSE3, scalar): the worst error is
// 1.12·ε·(N + T + kOps) (dS0 at N = T = 1, scalar and SSE4) and far below it at large N and T,
// where rounding errors add up like a random walk rather than linearly; kTolerancePerOp = 4
// keeps a margin of over three.
// Against the float template (the same sums in another order, both rounded) the bound is a
// fixed 1e-5 (≈ 84ε), the largest measured being 2.9e-6 (db at N = 33, T = 1, AVX2).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "ops/cpu/wkv7_train.h"
#include "ops/ops.h"
#include "ops/train.h"

namespace rwkv::ops {
namespace {

constexpr double kEps = 0x1p-23;  // fp32 machine epsilon (FLT_EPSILON)
constexpr double kTolerancePerOp = 4;
constexpr int kOps = 8;
constexpr double kToleranceVsFloat = 1e-5;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// H heads of size N side by side in [T, stride] rows, stride = H·N + 3: the last 3 columns
// belong to nobody (NaN in the inputs, so that reading them would show; must stay NaN in the
// outputs). The state and checkpoints sit `offset` elements past a 64-byte boundary: 0 lets the
// kernel update an aligned state in place, 1 makes it work on an aligned copy.
struct Data {
  int T, N, H, chunk, stride, offset;
  std::vector<float> r, w, k, v, a, b, dy;  // T × stride
  std::vector<float> S0, dS_T;              // H × N × N
  std::vector<unsigned char> reset;         // T, or empty: rows that start a new document
  Data(int T_, int N_, int H_, int chunk_, int offset_, std::mt19937& rng)
      : T(T_), N(N_), H(H_), chunk(chunk_), stride(H_ * N_ + 3), offset(offset_) {
    const size_t n = size_t(T) * size_t(stride), NN = size_t(N) * size_t(N);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_real_distribution<float> unit(0.f, 1.f);
    for (auto* x : {&r, &w, &k, &v, &a, &b, &dy}) x->assign(n, kNaN);
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < H; ++h) {
        const size_t o = size_t(t) * size_t(stride) + size_t(h) * size_t(N);
        std::vector<float> kappa(static_cast<size_t>(N));
        float norm2 = 0;
        for (float& x : kappa) {
          x = normal(rng);
          norm2 += x * x;
        }
        for (float& x : kappa) x /= std::sqrt(norm2);
        for (size_t j = 0; j < size_t(N); ++j) {
          r[o + j] = 0.5f * normal(rng);
          k[o + j] = 0.5f * normal(rng);
          v[o + j] = 0.5f * normal(rng);
          dy[o + j] = normal(rng);
          w[o + j] = -0.6065f * (1.f - unit(rng));  // 1 − u ∈ (0, 1]: w ∈ [−0.6065, 0)
          a[o + j] = -kappa[j];
          b[o + j] = kappa[j] * std::max(unit(rng), 1e-3f);
        }
      }
    }
    S0.resize(size_t(H) * NN);
    dS_T.resize(size_t(H) * NN);
    for (float& x : S0) x = 0.3f * normal(rng);
    for (float& x : dS_T) x = 0.3f * normal(rng);
  }
  int chunks() const { return (T + chunk - 1) / chunk; }
};

// What ∂L/∂S_T is and where ∂L/∂S₀ goes.
enum class Final { Absent, Given, Aliased, GivenNoDS0 };
const char* final_name(Final f) {
  switch (f) {
    case Final::Absent: return "dS_T null";
    case Final::Given: return "dS_T given";
    case Final::Aliased: return "dS0 aliases dS_T";
    case Final::GivenNoDS0: return "dS0 null";
  }
  return "";
}

constexpr int kOutputs = 10;
const char* const kOutputNames[kOutputs] = {"y",  "S_T", "checkpoints", "dr", "dw",
                                            "dk", "dv",  "da",          "db", "dS0"};

// Every output of one run, in the scalar of the run.
template <class R>
struct Outputs {
  std::vector<R> out[kOutputs];  // in kOutputNames' order
  std::vector<R>& operator[](int i) { return out[i]; }
  const std::vector<R>& operator[](int i) const { return out[i]; }
};
enum { kY, kS, kCkpt, kDr, kDw, kDk, kDv, kDa, kDb, kDS0 };

template <class R>
std::vector<R> cast(const std::vector<float>& x) {
  return std::vector<R>(x.begin(), x.end());
}

// `offset` elements past the first 64-byte boundary in v (which has 64 elements to spare).
template <class R>
R* at_offset(std::vector<R>& v, int offset) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<R*>((p + 63) / 64 * 64) + offset;
}

// One forward and one backward for every head (on parallel threads if asked), through `fwd` and
// `bwd` (the signatures of ops::train::wkv7_train_forward / _backward for R), outputs poisoned
// with NaN first.
template <class R, class Fwd, class Bwd>
Outputs<R> run(const Data& d, Final final, Fwd fwd, Bwd bwd, bool parallel = false) {
  const size_t n = size_t(d.T) * size_t(d.stride), NN = size_t(d.N) * size_t(d.N);
  const auto r = cast<R>(d.r), w = cast<R>(d.w), k = cast<R>(d.k), v = cast<R>(d.v),
             a = cast<R>(d.a), b = cast<R>(d.b), dy = cast<R>(d.dy);
  const R nan = std::numeric_limits<R>::quiet_NaN();
  Outputs<R> o;
  for (int i : {kY, kDr, kDw, kDk, kDv, kDa, kDb}) o[i].assign(n, nan);
  const size_t n_state = size_t(d.H) * NN, n_ckpt = n_state * size_t(d.chunks()), spare = 64;
  std::vector<R> S_buf(n_state + spare), ckpt_buf(n_ckpt + spare, nan);
  R *S = at_offset(S_buf, d.offset), *ckpt = at_offset(ckpt_buf, d.offset);
  std::copy(d.S0.begin(), d.S0.end(), S);
  o[kDS0].assign(n_state, nan);
  std::vector<R> dS_T = cast<R>(d.dS_T);
  std::vector<std::vector<R>> scratch(size_t(d.H));
#pragma omp parallel for schedule(static, 1) if (parallel)
  for (int h = 0; h < d.H; ++h) {
    scratch[size_t(h)].assign(train::wkv7_train_scratch(d.chunk, d.N), nan);
    const size_t c = size_t(h) * size_t(d.N), s = size_t(h) * NN;
    train::Wkv7Train<R> head;
    head.T = d.T;
    head.N = d.N;
    head.stride = d.stride;
    head.chunk = d.chunk;
    head.r = r.data() + c;
    head.w = w.data() + c;
    head.k = k.data() + c;
    head.v = v.data() + c;
    head.a = a.data() + c;
    head.b = b.data() + c;
    head.y = o[kY].data() + c;
    head.S = S + s;
    head.checkpoints = ckpt + size_t(h) * size_t(d.chunks()) * NN;
    head.reset = d.reset.empty() ? nullptr : d.reset.data();
    fwd(head);
    const R* final_grad = final == Final::Absent ? nullptr : dS_T.data() + s;
    R* dS0 = final == Final::GivenNoDS0 ? nullptr : o[kDS0].data() + s;
    if (final == Final::Aliased) {
      std::copy_n(final_grad, NN, dS0);
      final_grad = dS0;
    }
    bwd(head, dy.data() + c, final_grad, o[kDr].data() + c, o[kDw].data() + c, o[kDk].data() + c,
        o[kDv].data() + c, o[kDa].data() + c, o[kDb].data() + c, dS0, scratch[size_t(h)].data());
  }
  o[kS].assign(S, S + n_state);
  o[kCkpt].assign(ckpt, ckpt + n_ckpt);
  return o;
}

template <class R>
Outputs<R> run_template(const Data& d, Final final) {
  return run<R>(d, final, train::wkv7_train_forward<R>, train::wkv7_train_backward<R>);
}
Outputs<float> run_simd(const Data& d, Final final, bool parallel = false) {
  return run<float>(d, final, cpu::wkv7_train_forward, cpu::wkv7_train_backward, parallel);
}

// Whether element i of output `which` (in a run on d) is one the kernels write.
bool owned(const Data& d, int which, size_t i) {
  if (which == kY || (which >= kDr && which <= kDb))
    return i % size_t(d.stride) < size_t(d.H * d.N);
  return true;
}

// ‖got − want‖∞ / ‖want‖∞ per output (∞ if got has a NaN or ∞ where it should not, or lacks
// the NaN where nobody owns the element). dS0 is skipped when not requested.
template <class R>
std::vector<double> errors(const Data& d, Final final, const Outputs<float>& got,
                           const Outputs<R>& want) {
  std::vector<double> e(kOutputs, 0.0);
  for (int which = 0; which < kOutputs; ++which) {
    if (which == kDS0 && final == Final::GivenNoDS0) continue;
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want[which].size(); ++i) {
      const double g = got[which][i], x = double(want[which][i]);
      if (!owned(d, which, i)) {
        if (!std::isnan(g)) diff = INFINITY;
        continue;
      }
      if (!std::isfinite(g)) diff = INFINITY;
      diff = std::max(diff, std::fabs(g - x));
      norm = std::max(norm, std::fabs(x));
    }
    e[which] = diff / std::max(norm, 1e-30);
  }
  return e;
}

std::string case_name(const Data& d, Final final) {
  return std::string(d.reset.empty() ? "" : "resets ") + "N=" + std::to_string(d.N) + " T=" + std::to_string(d.T) +
         " chunk=" + std::to_string(d.chunk) + " H=" + std::to_string(d.H) +
         " offset=" + std::to_string(d.offset) + " " + final_name(final);
}

// Worst error per output over many cases, for the summary line.
struct Worst {
  double ratio = 0;  // error / (ε·(N + T + kOps)), all outputs
  double err[kOutputs] = {};
  std::string where[kOutputs];
  void add(const std::vector<double>& e, const std::string& name, double scale) {
    for (int i = 0; i < kOutputs; ++i) {
      if (e[size_t(i)] > err[i]) {
        err[i] = e[size_t(i)];
        where[i] = name;
      }
      ratio = std::max(ratio, e[size_t(i)] / scale);
    }
  }
  void print(const char* what) const {
    std::printf("%s: worst error / (eps·(N+T+%d)) = %.3f\n", what, kOps, ratio);
    for (int i = 0; i < kOutputs; ++i)
      std::printf("  %-11s %.2e  (%s)\n", kOutputNames[i], err[i], where[i].c_str());
  }
};

TEST(Wkv7TrainSimd, MatchesTemplatesOnEveryTarget) {
  std::mt19937 rng(2024);
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  std::vector<Worst> vs_double(targets.size()), vs_float(targets.size());
  for (int N : {1, 3, 4, 7, 8, 13, 16, 33, 64, 96}) {
    for (int T : {1, 2, 15, 16, 17, 40}) {
      for (int chunk : {1, 5, 16}) {
       for (bool resets : {false, true}) {
        if (resets && T < 15) continue;
        Data d(T, N, N <= 16 ? 3 : 2, chunk, (T + chunk) % 2, rng);
        if (resets) {  // document starts at row 0, inside a chunk, at a chunk start, last row
          d.reset.assign(size_t(T), 0);
          for (int t : {0, 3, 5, 10, T - 1}) d.reset[size_t(t)] = 1;
        }
        const double scale = kEps * (N + T + kOps), tol = kTolerancePerOp * scale;
        for (Final final : {Final::Absent, Final::Given, Final::Aliased, Final::GivenNoDS0}) {
          const Outputs<double> want = run_template<double>(d, final);
          const Outputs<float> flt = run_template<float>(d, final);
          for (size_t ti = 0; ti < targets.size(); ++ti) {
            hwy::SetSupportedTargetsForTest(targets[ti]);
            const std::string name =
                std::string(hwy::TargetName(targets[ti])) + " " + case_name(d, final);
            ASSERT_STREQ(cpu::simd_target(), hwy::TargetName(targets[ti]))
                << "the dispatcher did not switch target";
            const Outputs<float> got = run_simd(d, final);
            const std::vector<double> e = errors(d, final, got, want);
            const std::vector<double> ef = errors(d, final, got, flt);
            vs_double[ti].add(e, name, scale);
            vs_float[ti].add(ef, name, scale);
            for (int i = 0; i < kOutputs; ++i) {
              EXPECT_LE(e[size_t(i)], tol) << name << ": " << kOutputNames[i] << " vs double";
              EXPECT_LE(ef[size_t(i)], kToleranceVsFloat)
                  << name << ": " << kOutputNames[i] << " vs float";
            }
          }
        }
       }
      }
    }
  }
  hwy::SetSupportedTargetsForTest(0);
  for (size_t ti = 0; ti < targets.size(); ++ti) {
    const std::string t = hwy::TargetName(targets[ti]);
    vs_double[ti].print((t + " SIMD vs double template").c_str());
    vs_float[ti].print((t + " SIMD vs float template").c_str());
  }
}

// The kernels keep per-thread scratch: heads run on parallel threads (as the model runs them)
// give bit for bit the results of heads run one after another.
TEST(Wkv7TrainSimd, HeadsOnParallelThreadsMatchHeadsInSequence) {
  std::mt19937 rng(99);
  for (int N : {13, 64}) {
    const Data d(37, N, 8, 16, 0, rng);
    const Outputs<float> seq = run_simd(d, Final::Given), par = run_simd(d, Final::Given, true);
    for (int i = 0; i < kOutputs; ++i) {
      ASSERT_EQ(seq[i].size(), par[i].size());
      EXPECT_EQ(0, std::memcmp(seq[i].data(), par[i].data(), seq[i].size() * sizeof(float)))
          << "N=" << N << ": " << kOutputNames[i];
    }
  }
}

}  // namespace
}  // namespace rwkv::ops
