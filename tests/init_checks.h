// Helpers shared by the initialisation tests (test_init.cpp, test_init_generations.cpp).
#pragma once
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "rwkv/error.h"
#include "rwkv/init.h"

namespace rwkv::test {

// Initialised tensors by name; keeps their buffers alive.
struct Named {
  explicit Named(OwnedTensors t) : owned(std::move(t)) {
    for (const TensorView& v : owned.tensors) views[v.name] = v;
  }
  const TensorView& at(const std::string& name) const {
    auto it = views.find(name);
    if (it == views.end()) throw Error("no tensor " + name);
    return it->second;
  }
  OwnedTensors owned;
  std::map<std::string, TensorView> views;
};

inline std::vector<float> values(const TensorView& t) {
  std::vector<float> v(size_t(t.numel()));
  convert_to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

// Largest |G − gain²·I| over the Gram matrix of the rows (rows ≤ cols) or columns (rows > cols).
inline double gram_error(const TensorView& t, double gain) {
  const std::vector<float> w = values(t);
  const int64_t rows = t.dim(0), cols = t.dim(1);
  const bool by_rows = rows <= cols;
  const int64_t k = by_rows ? rows : cols, n = by_rows ? cols : rows;
  auto at = [&](int64_t vec, int64_t i) {
    return double(by_rows ? w[size_t(vec * cols + i)] : w[size_t(i * cols + vec)]);
  };
  double worst = 0;
  for (int64_t p = 0; p < k; ++p) {
    for (int64_t q = p; q < k; ++q) {
      double dot = 0;
      for (int64_t i = 0; i < n; ++i) dot += at(p, i) * at(q, i);
      worst = std::max(worst, std::abs(dot - (p == q ? gain * gain : 0.0)));
    }
  }
  return worst;
}

}  // namespace rwkv::test
