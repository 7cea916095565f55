// Input quantization for the quantized products and their plain-loop reference (ops/qdot.h).
#include <cmath>
#include <cstring>

#include "core/quant.h"
#include "ops/qdot.h"
#include "rwkv/error.h"

namespace rwkv::ops {

void quantize_vectors(const float* x, int M, size_t cols, int group, QuantizedVectors& out) {
  out.resize(M, cols, group);
  quantize_groups(x, 0, out.groups(), out);
}

void quantize_groups(const float* x, size_t g0, size_t g1, QuantizedVectors& out) {
  const size_t G = size_t(out.group), ng = out.groups();
  for (size_t m = 0; m < size_t(out.count); ++m) {
    for (size_t i = m * ng + g0; i < m * ng + g1; ++i) {
      const float* xg = x + i * G;
      int8_t* q = out.q.data() + i * G;
      float amax = 0;
      bool finite = true;
      for (size_t j = 0; j < G; ++j) {
        finite = finite && std::isfinite(xg[j]);
        amax = std::max(amax, std::fabs(xg[j]));
      }
      const float d = amax / 127, inv = d != 0 ? 127 / amax : 0;
      int32_t sum = 0;
      for (size_t j = 0; j < G; ++j) {
        q[j] = finite ? int8_t(std::lrint(xg[j] * inv)) : 0;
        sum += q[j];
      }
      out.scale[i] = finite ? d : std::nanf("");
      out.sum[i] = sum;
    }
  }
}

int qdot_group(DType dtype) { return quant::block_format(dtype).group; }

void check_qdot_args(const Matrix& W, const QuantizedVectors& x) {
  if (!is_quantized(W.dtype) || x.group != qdot_group(W.dtype) || x.cols != size_t(W.cols)) {
    fail("quantized product: ", dtype_name(W.dtype), " weights with ", W.cols,
         " columns need inputs in groups of ", qdot_group(W.dtype), ", got ", x.cols,
         " columns in groups of ", x.group);
  }
}

namespace ref {

namespace {

uint16_t u16_at(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Quant j (unsigned for 4/5 bits, signed for 8) of a block in format f (rwkv/dtype.h).
int quant_at(const quant::BlockFormat& f, const uint8_t* blk, int j) {
  const uint8_t* q = blk + f.quants;
  if (f.bits == 8) return int8_t(q[j]);
  if (f.group > 32) {  // Q4_G: 32 bytes per 64 elements
    const uint8_t byte = q[32 * (j / 64) + j % 32];
    return j % 64 < 32 ? byte & 0x0f : byte >> 4;
  }
  int v = j < 16 ? q[j] & 0x0f : q[j - 16] >> 4;
  if (f.bits == 5) {
    uint32_t qh;
    std::memcpy(&qh, blk + f.high_bits, 4);
    v |= int((qh >> j) & 1u) << 4;
  }
  return v;
}

}  // namespace

// Σ over blocks of d_w·d_x·(Σ_j q_j·x̂_j − bias·Σ_j x̂_j) + m_w·d_x·Σ_j x̂_j: integer sums exact,
// the rest in fp64.
void qdot_rows(const Matrix& W, const QuantizedVectors& x, float* y, int r0, int r1) {
  check_qdot_args(W, x);
  if (W.panels) fail("reference quantized product: reads row-major matrices, not panels");
  const quant::BlockFormat f = quant::block_format(W.dtype);
  const size_t ng = x.groups();
  for (int m = 0; m < x.count; ++m) {
    const int8_t* xq = x.vector(m);
    for (int o = r0; o < r1; ++o) {
      const uint8_t* row = static_cast<const uint8_t*>(W.data) + size_t(o) * W.row_bytes();
      double total = 0;
      for (size_t g = 0; g < ng; ++g) {
        const uint8_t* blk = row + g * size_t(f.bytes);
        int64_t dot = 0;
        for (int j = 0; j < f.group; ++j) dot += int64_t(quant_at(f, blk, j)) * xq[g * size_t(f.group) + size_t(j)];
        const int32_t xsum = x.sum[size_t(m) * ng + g];
        const double dx = x.scale[size_t(m) * ng + g], dw = f16_to_f32(u16_at(blk));
        total += dw * dx * double(dot - int64_t(f.bias) * xsum);
        if (f.min != 0) total += double(f16_to_f32(u16_at(blk + f.min))) * dx * xsum;
      }
      y[size_t(m) * size_t(W.rows) + size_t(o)] = float(total);
    }
  }
}

}  // namespace ref
}  // namespace rwkv::ops
