// Reference RWKV-7 WKV in both forms (spec §2.4 recurrent, §4.5 chunked), plain loops.
#include <cmath>
#include <vector>

#include "ops/ops.h"

namespace rwkv::ops::ref {

void wkv7_recurrent(const Wkv7Head& h) {
  const int N = h.N;
  std::vector<float> sa(static_cast<size_t>(N)), decay(static_cast<size_t>(N));
  for (int t = 0; t < h.T; ++t) {
    const size_t o = size_t(t) * size_t(h.stride);
    const float *r = h.r + o, *w = h.w + o, *k = h.k + o, *v = h.v + o, *a = h.a + o,
                *b = h.b + o;
    for (int j = 0; j < N; ++j) decay[size_t(j)] = std::exp(w[j]);
    for (int i = 0; i < N; ++i) {
      float* Si = h.S + size_t(i) * size_t(N);
      float s = 0;
      for (int j = 0; j < N; ++j) s += Si[j] * a[j];
      sa[size_t(i)] = s;
    }
    for (int i = 0; i < N; ++i) {
      float* Si = h.S + size_t(i) * size_t(N);
      float y = 0;
      for (int j = 0; j < N; ++j) {
        Si[j] = Si[j] * decay[size_t(j)] + sa[size_t(i)] * b[j] + v[i] * k[j];
        y += Si[j] * r[j];
      }
      h.y[o + size_t(i)] = y;
    }
  }
}

// Spec §4.5 per chunk, with the decays factorised relative to the chunk start: with
// G_t = Σ_{s≤t} w_s (inclusive) and Ĝ_t = G_t − w_t, every pair term e^{G_t−G_s} is split as
// e^{G_t}·e^{−G_s}. v7 clamps w ≥ −0.6065, so |G| ≤ 0.61·chunk and both factors stay in range.
void wkv7_chunked(const Wkv7Head& h, int chunk) {
  const int N = h.N;
  const size_t NN = size_t(N);
  auto at = [&](const float* p, int t, int i) { return p[size_t(t) * size_t(h.stride) + size_t(i)]; };
  std::vector<float> G(NN), rt, at_, kt, bt, sa, S0(NN * NN);
  for (int t0 = 0; t0 < h.T; t0 += chunk) {
    const int L = std::min(chunk, h.T - t0);
    rt.assign(size_t(L) * NN, 0);
    at_.assign(size_t(L) * NN, 0);
    kt.assign(size_t(L) * NN, 0);
    bt.assign(size_t(L) * NN, 0);
    sa.assign(size_t(L) * NN, 0);
    std::fill(G.begin(), G.end(), 0.f);
    for (int t = 0; t < L; ++t) {
      for (int i = 0; i < N; ++i) {
        const float w = at(h.w, t0 + t, i);
        const float g_excl = G[size_t(i)];
        G[size_t(i)] += w;
        const size_t ti = size_t(t) * NN + size_t(i);
        rt[ti] = at(h.r, t0 + t, i) * std::exp(G[size_t(i)]);
        at_[ti] = at(h.a, t0 + t, i) * std::exp(g_excl);
        kt[ti] = at(h.k, t0 + t, i) * std::exp(-G[size_t(i)]);
        bt[ti] = at(h.b, t0 + t, i) * std::exp(-G[size_t(i)]);
      }
    }
    auto dot = [&](const std::vector<float>& x, int t, const std::vector<float>& z, int s) {
      float sum = 0;
      for (int i = 0; i < N; ++i) sum += x[size_t(t) * NN + size_t(i)] * z[size_t(s) * NN + size_t(i)];
      return sum;
    };
    S0.assign(h.S, h.S + NN * NN);
    // sa_t = S₀ ã_t + Σ_{s<t} A_ak[t,s] v_s + Σ_{s<t} A_ab[t,s] sa_s  (forward substitution)
    for (int t = 0; t < L; ++t) {
      for (int j = 0; j < N; ++j) {
        float s0 = 0;
        for (int i = 0; i < N; ++i) s0 += S0[size_t(j) * NN + size_t(i)] * at_[size_t(t) * NN + size_t(i)];
        sa[size_t(t) * NN + size_t(j)] = s0;
      }
      for (int s = 0; s < t; ++s) {
        const float a_k = dot(at_, t, kt, s), a_b = dot(at_, t, bt, s);
        for (int j = 0; j < N; ++j)
          sa[size_t(t) * NN + size_t(j)] += a_k * at(h.v, t0 + s, j) + a_b * sa[size_t(s) * NN + size_t(j)];
      }
    }
    // y_t = S₀ r̃_t + Σ_{s≤t} A_rk[t,s] v_s + Σ_{s≤t} A_rb[t,s] sa_s
    for (int t = 0; t < L; ++t) {
      std::vector<float> y(NN, 0.f);
      for (int j = 0; j < N; ++j)
        for (int i = 0; i < N; ++i) y[size_t(j)] += S0[size_t(j) * NN + size_t(i)] * rt[size_t(t) * NN + size_t(i)];
      for (int s = 0; s <= t; ++s) {
        const float r_k = dot(rt, t, kt, s), r_b = dot(rt, t, bt, s);
        for (int j = 0; j < N; ++j) y[size_t(j)] += r_k * at(h.v, t0 + s, j) + r_b * sa[size_t(s) * NN + size_t(j)];
      }
      for (int j = 0; j < N; ++j) h.y[size_t(t0 + t) * size_t(h.stride) + size_t(j)] = y[size_t(j)];
    }
    // S_next = S₀ diag(e^{G_last}) + Σ_s (v_s k_sᵀ + sa_s b_sᵀ) diag(e^{G_last − G_s})
    for (int j = 0; j < N; ++j) {
      for (int i = 0; i < N; ++i) {
        const float last = std::exp(G[size_t(i)]);
        float s = S0[size_t(j) * NN + size_t(i)] * last;
        for (int u = 0; u < L; ++u) {
          const size_t ui = size_t(u) * NN + size_t(i);
          s += (at(h.v, t0 + u, j) * kt[ui] + sa[size_t(u) * NN + size_t(j)] * bt[ui]) * last;
        }
        h.S[size_t(j) * NN + size_t(i)] = s;
      }
    }
  }
}

}  // namespace rwkv::ops::ref
