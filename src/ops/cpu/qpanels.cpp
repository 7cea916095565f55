// 4-bit weights in 8-row panels (layout in ops/qdot.h): the repacking at load and its inverse.
// Scalar code: the repacking runs once per matrix at load, the inverse only on the sgemm path.
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
  const PanelLayout L = panel_layout(W);
  const int panels = (W.rows + kPanelRows - 1) / kPanelRows;
  auto* out = static_cast<uint8_t*>(dst);
  const auto* src = static_cast<const uint8_t*>(W.data);
  // A block's quant bytes hold, per run of `chunk` columns, columns j < chunk/2 in the low nibbles
  // and j + chunk/2 in the high ones (quant::nibble_chunk). Eight bytes of either nibble are 8
  // consecutive columns, i.e. one panel chunk's 4 bytes for this row: byte j gets column j in its
  // low nibble and column j + 4 in its high one.
  const int chunk = quant::nibble_chunk(f), half = chunk / 2;
  constexpr uint64_t kLow = 0x0f0f0f0f0f0f0f0full;
  // Every byte of a whole panel is written below; the threads touch their panels first.
#pragma omp parallel for schedule(static) if (panels >= 64)
  for (int p = 0; p < panels; ++p) {
    uint8_t* panel = out + size_t(p) * L.panel_bytes();
    if ((p + 1) * kPanelRows > W.rows) std::memset(panel, 0, L.panel_bytes());  // padded rows: 0
    for (int r = 0; r < kPanelRows && p * kPanelRows + r < W.rows; ++r) {
      const uint8_t* row = src + size_t(p * kPanelRows + r) * W.row_bytes();
      for (size_t g = 0; g < L.groups; ++g) {
        const uint8_t* blk = row + g * size_t(f.bytes);
        std::memcpy(panel + L.scales(g) + 2 * r, blk, 2);
        uint8_t* q = panel + L.quants(g) + 4 * r;
        for (int c = 0; c < f.group / chunk; ++c) {
          for (int w = 0; w < half / 8; ++w) {
            uint64_t v;
            std::memcpy(&v, blk + f.quants + half * c + 8 * w, 8);
            const uint64_t lo = v & kLow, hi = v >> 4 & kLow;
            const uint32_t out_lo = uint32_t(lo) | uint32_t(lo >> 32) << 4;
            const uint32_t out_hi = uint32_t(hi) | uint32_t(hi >> 32) << 4;
            std::memcpy(q + 32 * (chunk * c / 8 + w), &out_lo, 4);
            std::memcpy(q + 32 * ((chunk * c + half) / 8 + w), &out_hi, 4);
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
  const PanelLayout L = panel_layout(P);
  const auto* src = static_cast<const uint8_t*>(P.data);
  for (int o = r0; o < r1; ++o) {
    const uint8_t* panel = src + size_t(o / kPanelRows) * L.panel_bytes();
    const int r = o % kPanelRows;
    float* row = dst + size_t(o - r0) * size_t(P.cols);
    for (size_t g = 0; g < L.groups; ++g) {
      uint16_t bits;
      std::memcpy(&bits, panel + L.scales(g) + 2 * r, 2);
      const float d = f16_to_f32(bits);
      const uint8_t* q = panel + L.quants(g);
      float* out = row + g * size_t(L.group);
      for (int k = 0; k < L.group / 8; ++k) {
        for (int j = 0; j < 4; ++j) {
          const uint8_t b = q[32 * k + 4 * r + j];
          out[8 * k + j] = d * float(int(b & 0x0f) - 8);
          out[8 * k + 4 + j] = d * float(int(b >> 4) - 8);
        }
      }
    }
  }
}

}  // namespace rwkv::ops::cpu
