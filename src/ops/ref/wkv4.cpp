// Reference RWKV-4 WKV (spec §2.1, §3.1): the max-exponent scan in plain loops, fp32 like every
// implementation it is checked against (the state itself is fp32).
#include <algorithm>
#include <cmath>

#include "ops/ops.h"

namespace rwkv::ops::ref {

void wkv4(const Wkv4Seq& s) {
  for (int c = 0; c < s.channels; ++c) {
    float aa = s.aa[c], bb = s.bb[c], pp = s.pp[c];
    const float w = s.w[c], u = s.u[c];
    for (int t = 0; t < s.T; ++t) {
      const size_t o = size_t(t) * size_t(s.stride) + size_t(c);
      const float k = s.k[o], v = s.v[o];
      float q = std::max(pp, u + k);
      float e1 = std::exp(pp - q), e2 = std::exp(u + k - q);
      s.y[o] = (e1 * aa + e2 * v) / (e1 * bb + e2);
      q = std::max(pp + w, k);
      e1 = std::exp(pp + w - q);
      e2 = std::exp(k - q);
      aa = e1 * aa + e2 * v;
      bb = e1 * bb + e2;
      pp = q;
    }
    s.aa[c] = aa;
    s.bb[c] = bb;
    s.pp[c] = pp;
  }
}

}  // namespace rwkv::ops::ref
