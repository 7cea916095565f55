// 4-bit weights in 8-row panels (layout in ops/qdot.h): the repacking at load and its inverse.
// Plain loops: both run once per matrix (load) or per prefill call on the sgemm path.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/quant.h"
#include "ops/qdot.h"
#include "rwkv/error.h"

namespace rwkv::ops::cpu {

namespace {

constexpr int kPanelRows = 8;

bool is_panel_type(DType dtype) {
  return dtype == DType::Q4_0 || dtype == DType::Q4_G64 || dtype == DType::Q4_G128;
}

// Bytes of one panel's block g: 8 blocks' worth.
size_t panel_block_bytes(DType dtype) { return kPanelRows * dtype_block_bytes(dtype); }

void check_panel_type(const Matrix& W, const char* what) {
  if (!is_panel_type(W.dtype)) fail(what, ": ", dtype_name(W.dtype), " weights have no panel layout");
}

}  // namespace

bool panels_supported(DType dtype) {
  const char* env = std::getenv("RWKV_CPU_PANELS");  // read at each load: a process may compare
  const bool enabled = !(env && std::string(env) == "0");
  return enabled && is_panel_type(dtype) && qdot_isa() != QdotIsa::Scalar;
}

Matrix to_panels(const Matrix& W, void* dst) {
  check_panel_type(W, "to_panels");
  if (W.panels) fail("to_panels: the matrix is in panels already");
  const quant::BlockFormat f = quant::block_format(W.dtype);
  const size_t groups = size_t(W.cols) / size_t(f.group), pb = panel_block_bytes(W.dtype);
  const int panels = (W.rows + kPanelRows - 1) / kPanelRows;
  auto* out = static_cast<uint8_t*>(dst);
  const auto* src = static_cast<const uint8_t*>(W.data);
  uint8_t level[128];
#pragma omp parallel for schedule(static) private(level) if (panels >= 64)
  for (int p = 0; p < panels; ++p) {
    for (size_t g = 0; g < groups; ++g) {
      uint8_t* blk = out + (size_t(p) * groups + g) * pb;
      std::memset(blk, 0, pb);  // padded rows: scale 0, levels 0
      for (int r = 0; r < kPanelRows && p * kPanelRows + r < W.rows; ++r) {
        const uint8_t* row_blk = src + size_t(p * kPanelRows + r) * W.row_bytes() + g * size_t(f.bytes);
        std::memcpy(blk + 2 * r, row_blk, 2);
        quant::unpack_levels4(f, row_blk + f.quants, level);
        for (int k = 0; k < f.group / 8; ++k) {
          for (int j = 0; j < 4; ++j) {
            blk[16 + 32 * k + 4 * r + j] = uint8_t(level[8 * k + j] | level[8 * k + 4 + j] << 4);
          }
        }
      }
    }
  }
  Matrix P = W;
  P.data = dst;
  P.panels = true;
  return P;
}

void panel_rows_to_f32(const Matrix& P, int r0, int r1, float* dst) {
  check_panel_type(P, "panel_rows_to_f32");
  if (!P.panels) fail("panel_rows_to_f32: the matrix is not in panels");
  const int G = int(dtype_block_elems(P.dtype));
  const size_t groups = size_t(P.cols) / size_t(G), pb = panel_block_bytes(P.dtype);
  const auto* src = static_cast<const uint8_t*>(P.data);
  for (int o = r0; o < r1; ++o) {
    const int p = o / kPanelRows, r = o % kPanelRows;
    float* row = dst + size_t(o - r0) * size_t(P.cols);
    for (size_t g = 0; g < groups; ++g) {
      const uint8_t* blk = src + (size_t(p) * groups + g) * pb;
      uint16_t bits;
      std::memcpy(&bits, blk + 2 * r, 2);
      const float d = f16_to_f32(bits);
      for (int k = 0; k < G / 8; ++k) {
        for (int j = 0; j < 4; ++j) {
          const uint8_t b = blk[16 + 32 * k + 4 * r + j];
          row[g * size_t(G) + size_t(8 * k + j)] = d * float(int(b & 0x0f) - 8);
          row[g * size_t(G) + size_t(8 * k + 4 + j)] = d * float(int(b >> 4) - 8);
        }
      }
    }
  }
}

}  // namespace rwkv::ops::cpu
