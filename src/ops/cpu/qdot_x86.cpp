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
#include "rwkv/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define RWKV_QDOT_X86 1
#else
#define RWKV_QDOT_X86 0
#endif

namespace rwkv::ops::cpu {

#if RWKV_QDOT_X86
#define RWKV_QDOT_ENTRY                                                                           \
  void RowsOf(const Matrix& W, const QuantizedVectors& x, float* y, int r0, int r1) {             \
    if (W.panels) {                                                                               \
      switch (W.dtype) {                                                                          \
        case DType::Q4_0: return PanelRows<quant::Format<DType::Q4_0>>(W, x, y, r0, r1);          \
        case DType::Q4_G64: return PanelRows<quant::Format<DType::Q4_G64>>(W, x, y, r0, r1);      \
        case DType::Q4_G128: return PanelRows<quant::Format<DType::Q4_G128>>(W, x, y, r0, r1);    \
        default: fail("quantized product: ", dtype_name(W.dtype), " has no panel layout");        \
      }                                                                                           \
    }                                                                                             \
    switch (W.dtype) {                                                                            \
      case DType::Q4_0: return Rows<quant::Format<DType::Q4_0>>(W, x, y, r0, r1);                 \
      case DType::Q4_1: return Rows<quant::Format<DType::Q4_1>>(W, x, y, r0, r1);                 \
      case DType::Q5_0: return Rows<quant::Format<DType::Q5_0>>(W, x, y, r0, r1);                 \
      case DType::Q5_1: return Rows<quant::Format<DType::Q5_1>>(W, x, y, r0, r1);                 \
      case DType::Q8_0: return Rows<quant::Format<DType::Q8_0>>(W, x, y, r0, r1);                 \
      case DType::Q8_G64: return Rows<quant::Format<DType::Q8_G64>>(W, x, y, r0, r1);             \
      case DType::Q8_G128: return Rows<quant::Format<DType::Q8_G128>>(W, x, y, r0, r1);           \
      case DType::Q4_G64: return Rows<quant::Format<DType::Q4_G64>>(W, x, y, r0, r1);             \
      case DType::Q4_G128: return Rows<quant::Format<DType::Q4_G128>>(W, x, y, r0, r1);           \
      default: return;                                                                            \
    }                                                                                             \
  }

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace qdot_avx2 {
#define RWKV_QDOT_VNNI 0
#include "ops/cpu/qdot_kernel.inl"
#undef RWKV_QDOT_VNNI
RWKV_QDOT_ENTRY

// One group of G elements as ops::quantize_groups quantizes it, with the same roundings: absmax
// over the group, inv = 127/absmax in fp32, x·inv rounded to nearest even (vcvtps2dq under the
// default rounding mode = lrint). AVX2 only: the VNNI build's products use it too.
void QuantizeGroup(const float* xg, size_t G, int8_t* q, float& scale, int32_t& group_sum) {
  const __m256 sign = _mm256_set1_ps(-0.f), inf = _mm256_set1_ps(__builtin_inff());
  __m256 amax = _mm256_setzero_ps(), finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (size_t j = 0; j < G; j += 8) {
    const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(xg + j));
    amax = _mm256_max_ps(amax, a);
    finite = _mm256_and_ps(finite, _mm256_cmp_ps(a, inf, _CMP_LT_OQ));  // false for NaN, ±inf
  }
  const __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  const __m128 m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  const float top = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
  const bool ok = _mm256_movemask_ps(finite) == 0xff;
  const float d = top / 127, inv = d != 0 ? 127 / top : 0;
  scale = ok ? d : __builtin_nanf("");
  if (!ok) {  // x·0 would still be NaN for the NaN and infinite elements
    std::memset(q, 0, G);
    group_sum = 0;
    return;
  }
  const __m256 vinv = _mm256_set1_ps(inv);
  __m256i sum = _mm256_setzero_si256();
  for (size_t j = 0; j < G; j += 32) {
    __m256i v[4];
    for (int k = 0; k < 4; ++k) v[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + j + 8 * k), vinv));
    sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3])));
    // Pack 4×8 int32 to 32 int8 (saturating; |values| ≤ 127) and undo the packs' lane interleave.
    const __m256i p16 = _mm256_packs_epi32(v[0], v[1]), p16b = _mm256_packs_epi32(v[2], v[3]);
    const __m256i p8 = _mm256_packs_epi16(p16, p16b);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j),
                        _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
  const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
  group_sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1)));
}

// Groups [g0, g1) of vectors [m0, m1).
void Quantize(const float* x, size_t m0, size_t m1, size_t g0, size_t g1, QuantizedVectors& out) {
  const size_t G = size_t(out.group), ng = out.groups();
  for (size_t m = m0; m < m1; ++m) {
    for (size_t i = m * ng + g0; i < m * ng + g1; ++i) {
      QuantizeGroup(x + i * G, G, out.q.data() + i * G, out.scale[i], out.sum[i]);
    }
  }
}
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
  out.resize(M, cols, group);
#if RWKV_QDOT_X86
  if (isa != QdotIsa::Scalar) {
    // Many vectors (a prefill's) split over the threads; a few stay on the calling thread.
    constexpr int kPerThread = 16;
#pragma omp parallel for schedule(static) if (M >= 2 * kPerThread)
    for (int m0 = 0; m0 < M; m0 += kPerThread) {
      qdot_avx2::Quantize(x, size_t(m0), size_t(std::min(M, m0 + kPerThread)), 0, out.groups(), out);
    }
    return;
  }
#endif
  ops::quantize_groups(x, 0, out.groups(), out);
}

void quantize_groups(QdotIsa isa, const float* x, size_t g0, size_t g1, QuantizedVectors& out) {
#if RWKV_QDOT_X86
  // Both builds use AVX2 instructions only here.
  if (isa != QdotIsa::Scalar) return qdot_avx2::Quantize(x, 0, size_t(out.count), g0, g1, out);
#endif
  ops::quantize_groups(x, g0, g1, out);
}

void qdot_rows(QdotIsa isa, const Matrix& W, const QuantizedVectors& x, float* y, int r0,
               int r1) {
  if (r0 >= r1 || x.count <= 0) return;
  check_qdot_args(W, x);
#if RWKV_QDOT_X86
  if (isa == QdotIsa::Avx512Vnni) return qdot_avx512vnni::RowsOf(W, x, y, r0, r1);
  if (isa == QdotIsa::Avx2) return qdot_avx2::RowsOf(W, x, y, r0, r1);
#endif
  if (W.panels) fail("quantized product: ", dtype_name(W.dtype), " panels need AVX2, not ", qdot_isa_name(isa));
  ref::qdot_rows(W, x, y, r0, r1);
}

}  // namespace rwkv::ops::cpu
