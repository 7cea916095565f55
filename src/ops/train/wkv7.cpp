// WKV-7 forward and backward for training (spec §4.4): the state is checkpointed every `chunk`
// rows in the forward; the backward recomputes each chunk's states from its checkpoint (no
// division by the decay, unlike the official kernel's state inversion) and walks them back.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/train.h"

namespace rwkv::ops::train {
namespace {

// One recurrent step: S ← S·diag(d) + sa bᵀ + v kᵀ with sa = S a; returns sa in `sa`.
// Reads S_prev and writes S_next (may be the same buffer).
template <class R>
void step(const R* S_prev, R* S_next, int N, const R* d, const R* k, const R* v, const R* a,
          const R* b, R* sa) {
  for (int i = 0; i < N; ++i) {
    const R* row = S_prev + size_t(i) * size_t(N);
    R acc = 0;
    for (int j = 0; j < N; ++j) acc += row[j] * a[j];
    sa[i] = acc;
  }
  for (int i = 0; i < N; ++i) {
    const R* row = S_prev + size_t(i) * size_t(N);
    R* out = S_next + size_t(i) * size_t(N);
    const R s = sa[i], vi = v[i];
    for (int j = 0; j < N; ++j) out[j] = row[j] * d[j] + s * b[j] + vi * k[j];
  }
}

// y = S r
template <class R>
void read_out(const R* S, int N, const R* r, R* y) {
  for (int i = 0; i < N; ++i) {
    const R* row = S + size_t(i) * size_t(N);
    R acc = 0;
    for (int j = 0; j < N; ++j) acc += row[j] * r[j];
    y[i] = acc;
  }
}

template <class R>
void decays(const R* w, int N, R* d) {
  for (int j = 0; j < N; ++j) d[j] = std::exp(w[j]);
}

}  // namespace

template <class R>
void wkv7_train_forward(const Wkv7Train<R>& h) {
  const int N = h.N;
  const size_t NN = size_t(N) * size_t(N), st = size_t(h.stride);
  R d[1024], sa[1024];  // N ≤ 1024 (head sizes are 32 … 256)
  for (int t = 0; t < h.T; ++t) {
    if (t % h.chunk == 0) std::memcpy(h.checkpoints + size_t(t / h.chunk) * NN, h.S, NN * sizeof(R));
    const size_t o = size_t(t) * st;
    if (h.reset && h.reset[t]) std::fill(h.S, h.S + NN, R(0));
    decays(h.w + o, N, d);
    step(h.S, h.S, N, d, h.k + o, h.v + o, h.a + o, h.b + o, sa);
    read_out(h.S, N, h.r + o, h.y + o);
  }
}

template <class R>
void wkv7_train_backward(const Wkv7Train<R>& h, const R* dy, const R* dS_T, R* dr, R* dw, R* dk,
                         R* dv, R* da, R* db, R* dS0, R* scratch) {
  const int N = h.N, chunk = h.chunk;
  const size_t NN = size_t(N) * size_t(N), st = size_t(h.stride);
  R* states = scratch;                                   // (chunk + 1, N, N): S before each row, S after the last
  R* sas = states + size_t(chunk + 1) * NN;              // (chunk, N)
  R* dS = sas + size_t(chunk) * size_t(N);               // (N, N): ∂L/∂S_t
  R* zeros = dS + NN;                                    // (N, N): S_{t−1} of a reset row
  std::fill(zeros, zeros + NN, R(0));
  R d[1024], dsa[1024];
  if (dS_T) {
    std::memcpy(dS, dS_T, NN * sizeof(R));
  } else {
    std::fill(dS, dS + NN, R(0));
  }
  const int n_chunks = (h.T + chunk - 1) / chunk;
  for (int c = n_chunks - 1; c >= 0; --c) {
    const int t0 = c * chunk, len = std::min(chunk, h.T - t0);
    std::memcpy(states, h.checkpoints + size_t(c) * NN, NN * sizeof(R));
    for (int s = 0; s < len; ++s) {
      const size_t o = size_t(t0 + s) * st;
      const R* prev = h.reset && h.reset[t0 + s] ? zeros : states + size_t(s) * NN;
      decays(h.w + o, N, d);
      step(prev, states + size_t(s + 1) * NN, N, d, h.k + o, h.v + o, h.a + o, h.b + o,
           sas + size_t(s) * size_t(N));
    }
    for (int s = len - 1; s >= 0; --s) {
      const size_t o = size_t(t0 + s) * st;
      const R* S_prev = h.reset && h.reset[t0 + s] ? zeros : states + size_t(s) * NN;
      const R* S_now = states + size_t(s + 1) * NN;
      const R *r = h.r + o, *k = h.k + o, *v = h.v + o, *a = h.a + o, *b = h.b + o;
      const R* sa = sas + size_t(s) * size_t(N);
      const R* g = dy + o;
      decays(h.w + o, N, d);
      // dS += dy rᵀ ; dr = S_tᵀ dy
      for (int j = 0; j < N; ++j) dr[o + size_t(j)] = 0;
      for (int i = 0; i < N; ++i) {
        R* dst = dS + size_t(i) * size_t(N);
        const R* row = S_now + size_t(i) * size_t(N);
        const R gi = g[i];
        for (int j = 0; j < N; ++j) {
          dst[j] += gi * r[j];
          dr[o + size_t(j)] += row[j] * gi;
        }
      }
      // dk = dSᵀ v ; db = dSᵀ sa ; dd = colsum(dS ⊙ S_{t−1}) ; dv = dS k ; dsa = dS b
      R* dkj = dk + o;
      R* dbj = db + o;
      R* dwj = dw + o;
      for (int j = 0; j < N; ++j) dkj[j] = dbj[j] = dwj[j] = 0;
      for (int i = 0; i < N; ++i) {
        const R* dst = dS + size_t(i) * size_t(N);
        const R* prev = S_prev + size_t(i) * size_t(N);
        const R vi = v[i], si = sa[i];
        R acc_v = 0, acc_sa = 0;
        for (int j = 0; j < N; ++j) {
          dkj[j] += dst[j] * vi;
          dbj[j] += dst[j] * si;
          dwj[j] += dst[j] * prev[j];
          acc_v += dst[j] * k[j];
          acc_sa += dst[j] * b[j];
        }
        dv[o + size_t(i)] = acc_v;
        dsa[i] = acc_sa;
      }
      for (int j = 0; j < N; ++j) dwj[j] *= d[j];  // ∂/∂w = ∂/∂d · d  (d = e^w)
      // da = S_{t−1}ᵀ dsa ; dS ← dS·diag(d) + dsa aᵀ
      R* daj = da + o;
      for (int j = 0; j < N; ++j) daj[j] = 0;
      for (int i = 0; i < N; ++i) {
        const R* prev = S_prev + size_t(i) * size_t(N);
        R* dst = dS + size_t(i) * size_t(N);
        const R gi = dsa[i];
        for (int j = 0; j < N; ++j) {
          daj[j] += prev[j] * gi;
          dst[j] = dst[j] * d[j] + gi * a[j];
        }
      }
      if (h.reset && h.reset[t0 + s]) std::fill(dS, dS + NN, R(0));  // S_{t−1} was not used
    }
  }
  if (dS0) std::memcpy(dS0, dS, NN * sizeof(R));
}

template struct Wkv7Train<float>;
template struct Wkv7Train<double>;
template void wkv7_train_forward<float>(const Wkv7Train<float>&);
template void wkv7_train_forward<double>(const Wkv7Train<double>&);
template void wkv7_train_backward<float>(const Wkv7Train<float>&, const float*, const float*,
                                         float*, float*, float*, float*, float*, float*, float*,
                                         float*);
template void wkv7_train_backward<double>(const Wkv7Train<double>&, const double*, const double*,
                                          double*, double*, double*, double*, double*, double*,
                                          double*, double*);

}  // namespace rwkv::ops::train
