// Quantized 4-bit weights times many input vectors (prefill, more than a few vectors): an
// integer GEMM on AVX2 (ops/qdot.h, cpu::qgemm).
//
// The decode kernel (qdot_kernel.inl) keeps a row's blocks in the vector lanes along the
// columns, so every (row, input) pair needs its own accumulator and a horizontal sum at the end:
// fine for a few inputs, but with many inputs its per-block conversions cost as much as sgemm's
// multiply-adds. Here the weights are first unpacked into panels of 8 rows whose lanes are the
// rows: a 32-byte vector holds 4 consecutive columns of each of the 8 rows, as unsigned levels
// (value = d·(level − 8)). One vpmaddubsw against the input's 4 bytes broadcast gives, per row,
// two sums of two products; 8 of them add up in 16 bits without overflow (levels ≤ 15,
// |x̂| ≤ 127: 8·2·15·127 = 30480), and one vpmaddwd widens them. A block's integer sum is then
// exact, as in the decode kernel:
//   y[t][o] = Σ_blocks d_w·d_x·(Σ_j level_j·x̂_j − 8·Σ_j x̂_j)
// On the 2-core Zen 3 of BENCHMARKS.md this runs 1.45–1.6× sgemm on the same weights.
//
// 8-bit weights stay on sgemm: split into two 4-bit planes (the only saturation-free way with
// vpmaddubsw) they measured level with it, and sgemm keeps the inputs in fp32.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/quant.h"
#include "ops/qdot.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define RWKV_QGEMM_X86 1
#else
#define RWKV_QGEMM_X86 0
#endif

namespace rwkv::ops::cpu {

bool qgemm_supported(DType dtype) {
#if RWKV_QGEMM_X86
  switch (dtype) {
    case DType::Q4_0:
    case DType::Q4_G64:
    case DType::Q4_G128: return qdot_isa() != QdotIsa::Scalar;
    default: return false;
  }
#else
  (void)dtype;
  return false;
#endif
}

#if RWKV_QGEMM_X86
namespace {

constexpr int kPanelRows = 8;     // rows per panel: the 8 32-bit lanes of a 256-bit vector
constexpr int kBlockPanels = 4;   // panels unpacked together and swept over all inputs
constexpr int kChunksPerSum = 8;  // 4-column chunks whose 16-bit sums add before widening

// A panel block's weights unpacked: per panel, per group, per 4-column chunk, 32 bytes (row r's
// 4 levels at bytes 4r..4r+3); per panel and group the 8 rows' scales d_w.
struct Panels {
  int panels = 0;
  size_t groups = 0;
  int group = 0;
  std::vector<uint8_t> q;
  std::vector<float> scale;
  size_t group_bytes() const { return size_t(group) * kPanelRows; }
  const uint8_t* quants(int p, size_t g) const {
    return q.data() + (size_t(p) * groups + g) * group_bytes();
  }
  const float* scales(int p, size_t g) const {
    return scale.data() + (size_t(p) * groups + g) * kPanelRows;
  }
};

uint16_t u16_at(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Panels [p0, p1) of W (rows 8·p0 ...) into `out` (rows past the end: levels 0, scale 0).
template <class F>
void unpack(const Matrix& W, int p0, int p1, Panels& out) {
  static_assert(F::kBits == 4 && F::kBias == 8 && F::kMin == 0);
  constexpr int G = F::kGroup;
  out.panels = p1 - p0;
  out.groups = size_t(W.cols) / G;
  out.group = G;
  out.q.resize(size_t(out.panels) * out.groups * out.group_bytes());
  out.scale.resize(size_t(out.panels) * out.groups * kPanelRows);
  uint8_t levels[G];
  for (int p = 0; p < out.panels; ++p) {
    for (int r = 0; r < kPanelRows; ++r) {
      const int o = (p0 + p) * kPanelRows + r;
      const auto* base = static_cast<const uint8_t*>(W.data);
      const uint8_t* row = o < W.rows ? base + size_t(o) * W.row_bytes() : nullptr;
      for (size_t g = 0; g < out.groups; ++g) {
        uint8_t* dst = out.q.data() + (size_t(p) * out.groups + g) * out.group_bytes() + 4 * r;
        float* d = out.scale.data() + (size_t(p) * out.groups + g) * kPanelRows + r;
        if (!row) {
          *d = 0;
          for (int k = 0; k < G / 4; ++k) std::memset(dst + 32 * k, 0, 4);
          continue;
        }
        const uint8_t* blk = row + g * F::kBytes;
        *d = f16_to_f32(u16_at(blk));
        quant::unpack_levels4(F::f, blk + F::kQs, levels);
        for (int c = 0; c < G / 4; ++c) std::memcpy(dst + 32 * c, levels + 4 * c, 4);
      }
    }
  }
}

// The same from a matrix in 4-bit panels (ops/qdot.h): chunk 2k takes the low nibbles of the
// matrix's chunk k, chunk 2k + 1 the high ones.
void unpack_panels(const Matrix& W, int p0, int p1, Panels& out) {
  const PanelLayout L = panel_layout(W);
  out.panels = p1 - p0;
  out.groups = L.groups;
  out.group = L.group;
  out.q.resize(size_t(out.panels) * out.groups * out.group_bytes());
  out.scale.resize(size_t(out.panels) * out.groups * kPanelRows);
  for (int p = 0; p < out.panels; ++p) {
    const uint8_t* panel = static_cast<const uint8_t*>(W.data) + size_t(p0 + p) * L.panel_bytes();
    for (size_t g = 0; g < out.groups; ++g) {
      uint8_t* dst = out.q.data() + (size_t(p) * out.groups + g) * out.group_bytes();
      float* d = out.scale.data() + (size_t(p) * out.groups + g) * kPanelRows;
      for (int r = 0; r < kPanelRows; ++r) d[r] = f16_to_f32(u16_at(panel + L.scales(g) + 2 * r));
      for (int k = 0; k < L.group / 8; ++k) {
        const uint8_t* chunk = panel + L.quants(g) + 32 * size_t(k);
        for (int b = 0; b < 32; ++b) {
          dst[64 * k + b] = chunk[b] & 0x0f;
          dst[64 * k + 32 + b] = chunk[b] >> 4;
        }
      }
    }
  }
}

void unpack(const Matrix& W, int p0, int p1, Panels& out) {
  if (W.panels) return unpack_panels(W, p0, p1, out);
  switch (W.dtype) {
    case DType::Q4_0: return unpack<quant::Format<DType::Q4_0>>(W, p0, p1, out);
    case DType::Q4_G64: return unpack<quant::Format<DType::Q4_G64>>(W, p0, p1, out);
    case DType::Q4_G128: return unpack<quant::Format<DType::Q4_G128>>(W, p0, p1, out);
    default: return;
  }
}

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

// y[t][8p + r] for inputs t0..t0+T−1 and the 8 rows of panel p (only the first `valid` stored).
template <int T>
void tile(const Panels& P, int p, const QuantizedVectors& x, int t0, float* y, size_t y_stride,
          int valid) {
  const int G = P.group;
  const size_t ng = P.groups;
  const int8_t* xt[T];
  for (int t = 0; t < T; ++t) xt[t] = x.vector(t0 + t);
  __m256 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (size_t g = 0; g < ng; ++g) {
    const uint8_t* w = P.quants(p, g);
    __m256i isum[T];
    for (int t = 0; t < T; ++t) isum[t] = _mm256_set1_epi32(-8 * x.sum[size_t(t0 + t) * ng + g]);
    for (int c0 = 0; c0 < G / 4; c0 += kChunksPerSum) {
      __m256i pairs[T];
      for (int t = 0; t < T; ++t) pairs[t] = _mm256_setzero_si256();
      for (int c = c0; c < c0 + kChunksPerSum; ++c) {
        const __m256i wc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * c));
        for (int t = 0; t < T; ++t) {
          int32_t four;
          std::memcpy(&four, xt[t] + g * size_t(G) + 4 * size_t(c), 4);
          pairs[t] = _mm256_add_epi16(pairs[t], _mm256_maddubs_epi16(wc, _mm256_set1_epi32(four)));
          // Keeps the sums in registers, in this order: otherwise GCC computes all the chunks'
          // products first and adds them as a tree, spilling most of them to the stack.
          __asm__("" : "+x"(pairs[t]));
        }
      }
      for (int t = 0; t < T; ++t) isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(pairs[t], ones));
    }
    const __m256 dw = _mm256_loadu_ps(P.scales(p, g));
    for (int t = 0; t < T; ++t) {
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(x.scale[size_t(t0 + t) * ng + g]));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), scale, acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) {
    float* out = y + size_t(t0 + t) * y_stride + size_t(p) * kPanelRows;
    if (valid == kPanelRows) {
      _mm256_storeu_ps(out, acc[t]);
    } else {
      alignas(32) float tmp[kPanelRows];
      _mm256_store_ps(tmp, acc[t]);
      std::copy(tmp, tmp + valid, out);
    }
  }
}

#pragma GCC pop_options

}  // namespace
#endif

void qgemm(const Matrix& W, const QuantizedVectors& x, float* y) {
  check_qdot_args(W, x);
#if RWKV_QGEMM_X86
  if (!qgemm_supported(W.dtype)) {
    return qdot_rows(qdot_isa(), W, x, y, 0, W.rows);
  }
  const int panels = (W.rows + kPanelRows - 1) / kPanelRows;
  const int blocks = (panels + kBlockPanels - 1) / kBlockPanels;
  const int M = x.count;
  // 4 inputs at a time: 4 float and 8 integer accumulators, the weights and a broadcast input
  // fit the 16 vector registers.
  constexpr int T = 4;
#pragma omp parallel for schedule(static)
  for (int b = 0; b < blocks; ++b) {
    thread_local Panels P;
    const int p0 = b * kBlockPanels, p1 = std::min(panels, p0 + kBlockPanels);
    unpack(W, p0, p1, P);
    for (int t0 = 0; t0 < M; t0 += T) {
      for (int p = 0; p < p1 - p0; ++p) {
        const int valid = std::min(kPanelRows, W.rows - (p0 + p) * kPanelRows);
        float* yp = y + size_t(p0) * kPanelRows;  // the tile indexes panels from p0
        switch (std::min(T, M - t0)) {
          case 1: tile<1>(P, p, x, t0, yp, size_t(W.rows), valid); break;
          case 2: tile<2>(P, p, x, t0, yp, size_t(W.rows), valid); break;
          case 3: tile<3>(P, p, x, t0, yp, size_t(W.rows), valid); break;
          default: tile<4>(P, p, x, t0, yp, size_t(W.rows), valid);
        }
      }
    }
  }
#else
  qdot_rows(qdot_isa(), W, x, y, 0, W.rows);
#endif
}

}  // namespace rwkv::ops::cpu
