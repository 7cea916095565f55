// Reference RWKV-5/6 WKV in both forms (spec §2.2–2.3 recurrent, §4.3 chunked), plain loops,
// fp64 sums.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/ops.h"
#include "rwkv/error.h"

namespace rwkv::ops::ref {

void wkv6_recurrent(const Wkv6Head& h) {
  const size_t N = size_t(h.N);
  for (int t = 0; t < h.T; ++t) {
    const size_t o = size_t(t) * size_t(h.stride);
    const float *r = h.r + o, *w = h.w + o, *k = h.k + o, *v = h.v + o;
    for (size_t j = 0; j < N; ++j) {
      double y = 0;
      for (size_t i = 0; i < N; ++i) {
        y += double(r[i]) * (double(h.u[i]) * k[i] * v[j] + h.S[i * N + j]);
      }
      h.y[o + j] = float(y);
    }
    for (size_t i = 0; i < N; ++i) {
      const float d = std::exp(w[i]);
      for (size_t j = 0; j < N; ++j) h.S[i * N + j] = d * h.S[i * N + j] + k[i] * v[j];
    }
  }
}

// Spec §4.3, one chunk of L ≤ `chunk` tokens at a time, S₀ = the state before the chunk:
//   Y = M V + (R ⊙ e^{Ĝ}) S₀ ;  S_next = diag(e^{G_last}) S₀ + (K ⊙ e^{G_last − G})ᵀ V
// with G the inclusive and Ĝ the exclusive cumulative log-decay inside the chunk (fp64, so the
// differences below do not lose digits to cancellation when G is large).
// RWKV-6 log-decays can be below −100 per step (§3.5), so e^{Ĝ_t − G_s} is never split into
// e^{Ĝ_t}·e^{−G_s} (the second factor overflows): the intra-chunk matrix takes one exponential per
// (t, s, i) of a difference ≤ 0, and the state terms use e^{Ĝ_t} and e^{G_last − G_s}, both ≤ 1.
//
// λ = −∞ (d = 0) is a legal input (§3.3: exp(ω) = ∞ gives d = 0). Log-decays are clamped here:
// e^{−1e4} is 0 in fp64, so every term containing such a step stays exactly 0, while the
// differences of cumulative sums never meet ∞ − ∞.
constexpr double kMinLogDecay = -1e4;

void wkv6_chunked(const Wkv6Head& h, int chunk) {
  if (chunk < 1) fail("wkv6_chunked: chunk length must be ≥ 1, got ", chunk);
  const size_t N = size_t(h.N), Lc = size_t(chunk);
  auto at = [&](const float* p, size_t t, size_t i) { return double(p[t * size_t(h.stride) + i]); };
  std::vector<double> G(Lc * N), Gx(Lc * N), M(Lc * Lc), S0(N * N);
  for (size_t t0 = 0; t0 < size_t(h.T); t0 += Lc) {
    const size_t L = std::min(Lc, size_t(h.T) - t0);
    for (size_t i = 0; i < N; ++i) {
      double g = 0;
      for (size_t t = 0; t < L; ++t) {
        Gx[t * N + i] = g;
        g += std::max(at(h.w, t0 + t, i), kMinLogDecay);
        G[t * N + i] = g;
      }
    }
    // Intra-chunk matrix: M[t][s] for s < t (decayed pairs), M[t][t] (bonus u).
    for (size_t t = 0; t < L; ++t) {
      for (size_t s = 0; s < t; ++s) {
        double m = 0;
        for (size_t i = 0; i < N; ++i)
          m += at(h.r, t0 + t, i) * at(h.k, t0 + s, i) * std::exp(Gx[t * N + i] - G[s * N + i]);
        M[t * Lc + s] = m;
      }
      double m = 0;
      for (size_t i = 0; i < N; ++i) m += at(h.r, t0 + t, i) * double(h.u[i]) * at(h.k, t0 + t, i);
      M[t * Lc + t] = m;
    }
    S0.assign(h.S, h.S + N * N);
    for (size_t t = 0; t < L; ++t) {
      for (size_t j = 0; j < N; ++j) {
        double y = 0;
        for (size_t s = 0; s <= t; ++s) y += M[t * Lc + s] * at(h.v, t0 + s, j);
        for (size_t i = 0; i < N; ++i)
          y += at(h.r, t0 + t, i) * std::exp(Gx[t * N + i]) * S0[i * N + j];
        h.y[(t0 + t) * size_t(h.stride) + j] = float(y);
      }
    }
    const double* G_last = &G[(L - 1) * N];
    for (size_t i = 0; i < N; ++i) {
      for (size_t j = 0; j < N; ++j) {
        double s = std::exp(G_last[i]) * S0[i * N + j];
        for (size_t u = 0; u < L; ++u)
          s += at(h.k, t0 + u, i) * std::exp(G_last[i] - G[u * N + i]) * at(h.v, t0 + u, j);
        h.S[i * N + j] = float(s);
      }
    }
  }
}

}  // namespace rwkv::ops::ref
