// Reference matrix product: plain loops, fp64 accumulation (tighter than any fast path).
#include <vector>

#include "ops/ops.h"
#include "rwkv/error.h"

namespace rwkv::ops::ref {

void linear(const Matrix& W, const float* x, int M, float* y) {
  if (W.panels) fail("reference linear: reads row-major matrices, not panels");
  std::vector<float> row(size_t(W.cols));
  for (int o = 0; o < W.rows; ++o) {
    convert_to_f32(W.dtype, static_cast<const uint8_t*>(W.data) + size_t(o) * W.row_bytes(),
                   row.data(), size_t(W.cols));
    for (int m = 0; m < M; ++m) {
      const float* xm = x + size_t(m) * size_t(W.cols);
      double sum = 0;
      for (int i = 0; i < W.cols; ++i) sum += double(row[size_t(i)]) * double(xm[i]);
      y[size_t(m) * size_t(W.rows) + size_t(o)] = float(sum);
    }
  }
}

void linear_many(const Product* products, int n, int M) {
  for (int i = 0; i < n; ++i) linear(products[i].W, products[i].x, M, products[i].y);
}

}  // namespace rwkv::ops::ref
