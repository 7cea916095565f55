// Reference RWKV-5/6 WKV (spec §2.2–2.3): one token after another, plain loops, fp64 sums.
#include <cmath>
#include <vector>

#include "ops/ops.h"

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

}  // namespace rwkv::ops::ref
