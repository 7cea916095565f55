// Reference backward of the RWKV-7 WKV (spec §4.4), plain loops: a forward pass that keeps every
// state S_0 … S_T and every sa_t, then the reverse sweep. Value-major S[i][j] (i value, j key):
//   S_t = S_{t−1}·diag(d_t) + sa_t b_tᵀ + v_t k_tᵀ,  sa_t = S_{t−1} a_t,  y_t = S_t r_t.
// Reverse, with dS = ∂L/∂S_t gathered from the future:
//   dS += ∂y_t r_tᵀ ;  ∂r_t = S_tᵀ ∂y_t ;  ∂k_t = dSᵀ v_t ;  ∂v_t = dS k_t ;  ∂b_t = dSᵀ sa_t
//   ∂sa = dS b_t ;  ∂a_t = S_{t−1}ᵀ ∂sa ;  ∂d_t = colsum(dS ⊙ S_{t−1}) ;  ∂w_t = ∂d_t · d_t
//   dS ← dS·diag(d_t) + ∂sa a_tᵀ   (= ∂L/∂S_{t−1})
#include <cmath>
#include <cstring>
#include <vector>

#include "ops/ops.h"

namespace rwkv::ops::ref {

void wkv7_backward(const Wkv7Head& h, const Wkv7Grads& g) {
  const size_t N = size_t(h.N), NN = N * N, T = size_t(h.T);
  // states[t] = S_t (t = 0 … T), sa[t] = sa_{t+1}; kept in double so the reference adds no
  // rounding of its own beyond the fp32 inputs.
  std::vector<double> states((T + 1) * NN), sa(T * N);
  for (size_t e = 0; e < NN; ++e) states[e] = h.S[e];
  for (size_t t = 0; t < T; ++t) {
    const size_t o = t * size_t(h.stride);
    const double* prev = &states[t * NN];
    double* next = &states[(t + 1) * NN];
    for (size_t i = 0; i < N; ++i) {
      double s = 0;
      for (size_t j = 0; j < N; ++j) s += prev[i * N + j] * h.a[o + j];
      sa[t * N + i] = s;
    }
    for (size_t i = 0; i < N; ++i) {
      for (size_t j = 0; j < N; ++j) {
        next[i * N + j] = prev[i * N + j] * std::exp(double(h.w[o + j])) +
                          sa[t * N + i] * h.b[o + j] + double(h.v[o + i]) * h.k[o + j];
      }
    }
  }
  std::vector<double> dS(NN, 0.0), dsa(N);
  if (g.dS_out) {
    for (size_t e = 0; e < NN; ++e) dS[e] = g.dS_out[e];
  }
  for (size_t t = T; t-- > 0;) {
    const size_t o = t * size_t(h.stride);
    const double* S = &states[(t + 1) * NN];  // S_t
    const double* prev = &states[t * NN];     // S_{t−1}
    const float *r = h.r + o, *w = h.w + o, *k = h.k + o, *v = h.v + o, *a = h.a + o,
                *b = h.b + o, *dy = g.dy + o;
    for (size_t i = 0; i < N; ++i) {
      for (size_t j = 0; j < N; ++j) dS[i * N + j] += double(dy[i]) * r[j];
    }
    for (size_t j = 0; j < N; ++j) {
      double dr = 0, dk = 0, db = 0, dd = 0;
      for (size_t i = 0; i < N; ++i) {
        dr += S[i * N + j] * dy[i];
        dk += dS[i * N + j] * v[i];
        db += dS[i * N + j] * sa[t * N + i];
        dd += dS[i * N + j] * prev[i * N + j];
      }
      g.dr[o + j] = float(dr);
      g.dk[o + j] = float(dk);
      g.db[o + j] = float(db);
      g.dw[o + j] = float(dd * std::exp(double(w[j])));
    }
    for (size_t i = 0; i < N; ++i) {
      double dv = 0, ds = 0;
      for (size_t j = 0; j < N; ++j) {
        dv += dS[i * N + j] * k[j];
        ds += dS[i * N + j] * b[j];
      }
      g.dv[o + i] = float(dv);
      dsa[i] = ds;
    }
    for (size_t j = 0; j < N; ++j) {
      double da = 0;
      for (size_t i = 0; i < N; ++i) da += prev[i * N + j] * dsa[i];
      g.da[o + j] = float(da);
    }
    for (size_t i = 0; i < N; ++i) {
      for (size_t j = 0; j < N; ++j) {
        dS[i * N + j] = dS[i * N + j] * std::exp(double(w[j])) + dsa[i] * a[j];
      }
    }
  }
  for (size_t e = 0; e < NN; ++e) g.dS0[e] = float(dS[e]);
}

}  // namespace rwkv::ops::ref
