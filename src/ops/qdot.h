// Quantized matrix-vector products with 8-bit inputs (decode and batched decode, M ≤ 4 vectors).
//
// A product W·x over quantized weights is bound by reading W when its blocks are decoded as
// integers: the input vectors are quantized once per call to int8 in groups of the weights' block
// size (32, 64 or 128; symmetric, scale = absmax/127, like the weights of Q8_0), and each block
// of a weight row contributes
//   d_w·d_x·(Σ_j q_j·x̂_j − bias·Σ_j x̂_j)  [+ m_w·d_x·Σ_j x̂_j for the types with a minimum]
// with the sums over j exact in 32-bit integers: one conversion and one multiply-add per block.
// The input's rounding (at most d_x/2 per element) is the only difference from the fp32 product
// with the dequantized weights; quality reports and the tests bound it. Every quantized type
// (rwkv/dtype.h) goes through this one kernel family.
//
//   ref::qdot_rows   plain loops (fp64 sums), the reference
//   cpu::qdot_rows   AVX2, or AVX-512 VNNI (vpdpbusd) where present, picked once at run time
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/ops.h"

namespace rwkv::ops {

// M input vectors of `cols` elements (a multiple of `group`), quantized per group.
struct QuantizedVectors {
  int count = 0;
  size_t cols = 0;
  int group = 32;
  std::vector<int8_t> q;      // (count, cols), in [−127, 127]
  std::vector<float> scale;   // (count, cols/group): d_x; NaN where the group holds a NaN or ±inf
  std::vector<int32_t> sum;   // (count, cols/group): Σ_j x̂_j of the group
  // Room for M vectors of `cols` in groups of `group` (values left to the quantizer).
  void resize(int M, size_t n_cols, int n_group) {
    count = M;
    cols = n_cols;
    group = n_group;
    q.resize(size_t(M) * cols);
    scale.resize(size_t(M) * groups());
    sum.resize(size_t(M) * groups());
  }
  const int8_t* vector(int m) const { return q.data() + size_t(m) * cols; }
  size_t groups() const { return cols / size_t(group); }
};

// x̂ = round(x / d_x), d_x = absmax/127 per group of `group` elements. A group with a NaN or an
// infinity gets a NaN scale, so the products it enters are NaN, as they are in fp32.
void quantize_vectors(const float* x, int M, size_t cols, int group, QuantizedVectors& out);
// The same for groups [g0, g1) of each of out.count vectors (x is (out.count, out.cols)) into
// `out`, already sized: threads that own parts of a vector quantize their parts.
void quantize_groups(const float* x, size_t g0, size_t g1, QuantizedVectors& out);

// The input group a quantized dtype's products need: its block size.
int qdot_group(DType dtype);
// Throws rwkv::Error unless W is quantized and x was quantized for it (columns, group).
void check_qdot_args(const Matrix& W, const QuantizedVectors& x);

namespace ref {
// Rows [r0, r1) of y[m][o] = Σ_i W[o][i]·x̂[m][i] for the x.count vectors (y is (count, W.rows)).
void qdot_rows(const Matrix& W, const QuantizedVectors& x, float* y, int r0, int r1);
}  // namespace ref

namespace cpu {
enum class QdotIsa { Scalar, Avx2, Avx512Vnni };
// The best instruction set this CPU (and OS) runs, lowered by RWKV_QDOT_ISA=scalar|avx2 if set.
QdotIsa qdot_isa();
// Whether this CPU runs `isa` (Scalar always).
bool qdot_isa_supported(QdotIsa isa);
const char* qdot_isa_name(QdotIsa isa);
// ops::quantize_vectors with SIMD (the same values: same roundings, exact sums).
void quantize_vectors(QdotIsa isa, const float* x, int M, size_t cols, int group,
                      QuantizedVectors& out);
void quantize_groups(QdotIsa isa, const float* x, size_t g0, size_t g1, QuantizedVectors& out);
// ref::qdot_rows with the SIMD kernel of `isa` (Scalar: the reference itself; panels need a
// SIMD isa). Per vector, the result does not depend on how many vectors share the call or on
// [r0, r1).
void qdot_rows(QdotIsa isa, const Matrix& W, const QuantizedVectors& x, float* y, int r0, int r1);

// 4-bit panels (Matrix::panels). The decode kernel over row-major blocks spends per row and
// block a conversion, a multiply-add and, per row, a horizontal sum, and runs out of instructions
// before memory runs out of bytes where a core has bandwidth to spare (about 12 GB/s on one Zen 3
// core, from L2). In panels the 8 lanes of a vector are 8 rows, so one conversion and one
// multiply-add serve 8 rows' blocks and no horizontal sums remain (`bench_ops MatVecDecode`).
// Layout: the rows in panels of 8 (the last padded with zero rows), panel after panel. A panel
// holds its blocks in sets of 4 (the last set may hold fewer): the set's quants, group/8 chunks of
// 32 bytes per block, chunk k having at bytes 4r..4r+3 row r's levels (q + 8, 0..15) of the
// block's columns 8k..8k+3 in the low nibbles and 8k+4..8k+7 in the high nibbles; then the set's
// fp16 scales d, 8 per block (16 bytes). A set of 4 blocks fills whole 64-byte lines, so in an
// aligned panel every 32-byte load of quants stays inside a line, and the scales come in the same
// sequential stream as the quants (a separate stream of scales measured 25% slower from DRAM).
// A panel takes the bytes of its 8 rows.
struct PanelLayout {
  static constexpr size_t kSet = 4;  // blocks whose scales share a 64-byte line
  size_t groups = 0;                 // blocks per row
  int group = 0;                     // elements per block
  size_t quant_bytes() const { return size_t(group) * 4; }  // one block of 8 rows
  size_t set_start(size_t g) const { return g / kSet * kSet * (quant_bytes() + 16); }
  size_t quants(size_t g) const { return set_start(g) + g % kSet * quant_bytes(); }
  size_t scales(size_t g) const {
    const size_t in_set = std::min(kSet, groups - g / kSet * kSet);
    return set_start(g) + in_set * quant_bytes() + 16 * (g % kSet);
  }
  size_t panel_bytes() const { return groups * (quant_bytes() + 16); }
};
inline PanelLayout panel_layout(const Matrix& W) {
  const int G = int(dtype_block_elems(W.dtype));
  return {size_t(W.cols) / size_t(G), G};
}

// Whether qdot_rows and qgemm take `dtype` in panels on this CPU (Q4_0, Q4_G64 and Q4_G128 with
// AVX2 or better); RWKV_CPU_PANELS=0 says no (to compare with the row-major kernels).
bool panels_supported(DType dtype);
// W (row-major) repacked into panels at dst (room for W.nbytes() with panels: padded rows), as
// the matrix over dst.
Matrix to_panels(const Matrix& W, void* dst);
// Rows [r0, r1) of a panel matrix in fp32, (r1 − r0, cols) at dst.
void panel_rows_to_f32(const Matrix& P, int r0, int r1, float* dst);

// Whether qgemm has its panel kernel for `dtype` on this CPU (Q4_0, Q4_G64, Q4_G128 with AVX2):
// ops/cpu/qgemm_x86.cpp.
bool qgemm_supported(DType dtype);
// y (x.count, W.rows) = every row of W against every input, for many inputs (prefill), on all
// threads: ref::qdot_rows's sums in another order (same integer block sums, fp32 accumulation
// over blocks). Types without the panel kernel go through qdot_rows.
void qgemm(const Matrix& W, const QuantizedVectors& x, float* y);
}  // namespace cpu

}  // namespace rwkv::ops
