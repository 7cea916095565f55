// Element-wise activations in plain loops (ops/ops.h).
#include <cmath>

#include "ops/ops.h"

namespace rwkv::ops::ref {

void sigmoid(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = 1.f / (1.f + std::exp(-x[i]));
}

void tanh(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}

}  // namespace rwkv::ops::ref
