// The x86 builds of the quantized dot-product kernel (qdot_kernel.inl) and the choice between
// them. Each build sits in its own namespace under its own target pragma, so nothing compiled for
// AVX-512 can be picked by the linker for a caller on an AVX2-only CPU; the standard headers come
// first, outside the pragmas, and are compiled for the baseline.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/quant.h"
#include "hwy/targets.h"
#include "ops/qdot.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define RWKV_QDOT_X86 1
#else
#define RWKV_QDOT_X86 0
#endif

namespace rwkv::ops::cpu {

#if RWKV_QDOT_X86
// A dtype's block format as the kernel's template constants.
template <DType T>
struct FormatOf {
  static constexpr quant::BlockFormat f = quant::block_format(T);
  static constexpr int kGroup = f.group, kBytes = f.bytes, kQs = f.quants, kMin = f.min,
                       kQh = f.high_bits, kBits = f.bits, kBias = f.bias, kSub = f.group / 32;
};

#define RWKV_QDOT_ENTRY                                                                       \
  void QuantizeInputs(const float* x, int M, size_t cols, int group, QuantizedVectors& out) { \
    out.count = M;                                                                            \
    out.cols = cols;                                                                          \
    out.group = group;                                                                        \
    out.q.resize(size_t(M) * cols);                                                           \
    out.scale.resize(size_t(M) * cols / size_t(group));                                       \
    out.sum.resize(size_t(M) * cols / size_t(group));                                         \
    Quantize(x, M, cols, group, out);                                                         \
  }                                                                                           \
  void RowsOf(const Matrix& W, const QuantizedVectors& x, float* y, int r0, int r1) {         \
    switch (W.dtype) {                                                                        \
      case DType::Q4_0: return Rows<FormatOf<DType::Q4_0>>(W, x, y, r0, r1);                  \
      case DType::Q4_1: return Rows<FormatOf<DType::Q4_1>>(W, x, y, r0, r1);                  \
      case DType::Q5_0: return Rows<FormatOf<DType::Q5_0>>(W, x, y, r0, r1);                  \
      case DType::Q5_1: return Rows<FormatOf<DType::Q5_1>>(W, x, y, r0, r1);                  \
      case DType::Q8_0: return Rows<FormatOf<DType::Q8_0>>(W, x, y, r0, r1);                  \
      case DType::Q8_G64: return Rows<FormatOf<DType::Q8_G64>>(W, x, y, r0, r1);              \
      case DType::Q8_G128: return Rows<FormatOf<DType::Q8_G128>>(W, x, y, r0, r1);            \
      case DType::Q4_G64: return Rows<FormatOf<DType::Q4_G64>>(W, x, y, r0, r1);              \
      case DType::Q4_G128: return Rows<FormatOf<DType::Q4_G128>>(W, x, y, r0, r1);            \
      default: return;                                                                        \
    }                                                                                         \
  }

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace qdot_avx2 {
#define RWKV_QDOT_VNNI 0
#include "ops/cpu/qdot_kernel.inl"
#undef RWKV_QDOT_VNNI
RWKV_QDOT_ENTRY
}  // namespace qdot_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
namespace qdot_avx512vnni {
#define RWKV_QDOT_VNNI 1
#include "ops/cpu/qdot_kernel.inl"
#undef RWKV_QDOT_VNNI
RWKV_QDOT_ENTRY
}  // namespace qdot_avx512vnni
#pragma GCC pop_options
#undef RWKV_QDOT_ENTRY
#endif

namespace {

QdotIsa best_isa() {
  QdotIsa best = QdotIsa::Scalar;
  for (QdotIsa isa : {QdotIsa::Avx2, QdotIsa::Avx512Vnni}) {
    if (qdot_isa_supported(isa)) best = isa;
  }
  // RWKV_QDOT_ISA lowers the choice (for comparisons); an unknown or unsupported name is ignored.
  if (const char* env = std::getenv("RWKV_QDOT_ISA")) {
    for (QdotIsa isa : {QdotIsa::Scalar, QdotIsa::Avx2}) {
      if (std::string(env) == qdot_isa_name(isa) && int(isa) < int(best)) best = isa;
    }
  }
  return best;
}

}  // namespace

bool qdot_isa_supported(QdotIsa isa) {
#if RWKV_QDOT_X86
  // Highway's AVX2 target means AVX2 + FMA + F16C + BMI2, and AVX3 the AVX-512 F/BW/DQ/VL state
  // enabled by the OS; VNNI is checked on its own.
  const int64_t targets = hwy::SupportedTargets();
  switch (isa) {
    case QdotIsa::Scalar: return true;
    case QdotIsa::Avx2: return (targets & HWY_AVX2) != 0;
    case QdotIsa::Avx512Vnni:
      return (targets & HWY_AVX3) != 0 && __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return isa == QdotIsa::Scalar;
#endif
}

QdotIsa qdot_isa() {
  static const QdotIsa isa = best_isa();
  return isa;
}

const char* qdot_isa_name(QdotIsa isa) {
  switch (isa) {
    case QdotIsa::Scalar: return "scalar";
    case QdotIsa::Avx2: return "avx2";
    case QdotIsa::Avx512Vnni: return "avx512vnni";
  }
  return "?";
}

void quantize_vectors(QdotIsa isa, const float* x, int M, size_t cols, int group,
                      QuantizedVectors& out) {
#if RWKV_QDOT_X86
  // Both builds use AVX2 instructions only here.
  if (isa != QdotIsa::Scalar) return qdot_avx2::QuantizeInputs(x, M, cols, group, out);
#endif
  ops::quantize_vectors(x, M, cols, group, out);
}

void qdot_rows(QdotIsa isa, const Matrix& W, const QuantizedVectors& x, float* y, int r0,
               int r1) {
  if (r0 >= r1 || x.count <= 0) return;
  check_qdot_args(W, x);
#if RWKV_QDOT_X86
  if (isa == QdotIsa::Avx512Vnni) return qdot_avx512vnni::RowsOf(W, x, y, r0, r1);
  if (isa == QdotIsa::Avx2) return qdot_avx2::RowsOf(W, x, y, r0, r1);
#endif
  ref::qdot_rows(W, x, y, r0, r1);
}

}  // namespace rwkv::ops::cpu
