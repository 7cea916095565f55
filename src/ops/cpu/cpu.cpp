// The fast CPU path: threads (OpenMP), SIMD kernels (simd.cpp) and OpenBLAS sgemm.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "ops/cpu/simd.h"
#include "ops/ops.h"
#include "ops/qdot.h"
#include "rwkv/error.h"

namespace rwkv::ops::cpu {
namespace {

// Up to this many input vectors a product reads the weights once with the SIMD matrix-vector
// kernel (decode: bound by weight bandwidth); beyond it a GEMM wins (prefill: bound by FLOPs).
constexpr int kMatVecMaxRows = 4;
// Below this many weight bytes and this many weights a product runs on one thread (fork/join
// costs more). The weight count keeps small quantized matrices (2–4× fewer bytes than bf16 for
// the same work) on one thread too.
constexpr size_t kParallelMinBytes = 64 * 1024;
constexpr size_t kParallelMinWeights = 32 * 1024;

int g_threads = 0;

bool is_small(const Matrix& W) {
  return W.nbytes() < kParallelMinBytes && size_t(W.rows) * size_t(W.cols) < kParallelMinWeights;
}

// Products of M ≤ kMatVecMaxRows vectors, each weight row read once for all of them. Every
// thread takes its share of every product's rows (contiguous, in multiples of 8 rows to keep
// cache lines whole) without waiting between products: one fork and join for all. A product with
// no columns is zeros.
void matvec_many(const Product* products, int n, int M) {
  thread_local std::vector<QuantizedVectors> xq;
  if (xq.size() < size_t(n)) xq.resize(size_t(n));
  bool small = true;
  for (int i = 0; i < n; ++i) {
    const Product& p = products[i];
    if (p.W.cols == 0) std::fill(p.y, p.y + size_t(M) * size_t(p.W.rows), 0.f);
    if (is_quantized(p.W.dtype)) {
      quantize_vectors(qdot_isa(), p.x, M, size_t(p.W.cols), qdot_group(p.W.dtype), xq[size_t(i)]);
    }
    small = small && is_small(p.W);
  }
  const QuantizedVectors* inputs = xq.data();  // the calling thread's, read by all
  auto rows_of = [&](int i, int r0, int r1) {
    const Product& p = products[i];
    if (r0 < r1 && p.W.cols > 0) matvec_rows(p.W, p.x, &inputs[i], M, p.y, r0, r1);
  };
  if (small) {
    for (int i = 0; i < n; ++i) rows_of(i, 0, products[i].W.rows);
    return;
  }
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    for (int i = 0; i < n; ++i) {
      const int rows = products[i].W.rows, blocks = (rows + 7) / 8;
      const int b0 = int(int64_t(blocks) * id / nt), b1 = int(int64_t(blocks) * (id + 1) / nt);
      rows_of(i, std::min(rows, b0 * 8), std::min(rows, b1 * 8));
    }
  }
}

// Weights in fp32 for sgemm: the matrix itself, or a converted copy in a reused buffer.
// Converting costs one read of the weights, small next to a GEMM over many rows.
const float* weights_f32(const Matrix& W) {
  if (W.dtype == DType::F32) return static_cast<const float*>(W.data);
  thread_local std::vector<float> converted;
  const size_t n = size_t(W.rows) * size_t(W.cols);
  if (converted.size() < n) converted.resize(n);
  const size_t block = 1 << 16;  // a multiple of every quantized block
  const auto* src = static_cast<const uint8_t*>(W.data);
  float* dst = converted.data();
  if (W.panels) {
#pragma omp parallel for schedule(static)
    for (int r0 = 0; r0 < W.rows; r0 += 64) {
      panel_rows_to_f32(W, r0, std::min(W.rows, r0 + 64), dst + size_t(r0) * size_t(W.cols));
    }
    return dst;
  }
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < (n + block - 1) / block; ++b) {
    const size_t i0 = b * block, len = std::min(block, n - i0);
    simd_to_f32(W.dtype, src + dtype_nbytes(W.dtype, i0), dst + i0, len);
  }
  return dst;
}

// Whether a product of many vectors with `dtype` weights runs as an integer GEMM (inputs
// quantized to 8 bits as for decode) rather than sgemm on weights converted to fp32.
// RWKV_CPU_QGEMM=0 keeps sgemm (for comparisons).
bool use_qgemm(DType dtype) {
  static const bool enabled = [] {
    const char* env = std::getenv("RWKV_CPU_QGEMM");
    return !(env && std::string(env) == "0");
  }();
  return enabled && qgemm_supported(dtype);
}

}  // namespace

// Float weights: the fp32-input kernels; quantized ones: the 8-bit-input integer kernels
// (ops/qdot.h), whose inputs xq were quantized once for all threads.
void matvec_rows(const Matrix& W, const float* x, const QuantizedVectors* xq, int M, float* y,
                 int r0, int r1) {
  if (!is_quantized(W.dtype)) return simd_matvec_rows(W, x, M, y, r0, r1);
  if (!xq) fail("matvec_rows: ", dtype_name(W.dtype), " weights need quantized inputs");
  qdot_rows(qdot_isa(), W, *xq, y, r0, r1);
}

void linear(const Matrix& W, const float* x, int M, float* y) {
  if (M <= 0 || W.rows == 0) return;
  if (M <= kMatVecMaxRows) {
    const Product p{W, x, y};
    return matvec_many(&p, 1, M);
  }
  if (W.cols == 0) {
    std::fill(y, y + size_t(M) * size_t(W.rows), 0.f);
    return;
  }
  if (use_qgemm(W.dtype)) {
    thread_local QuantizedVectors xq;
    quantize_vectors(qdot_isa(), x, M, size_t(W.cols), qdot_group(W.dtype), xq);
    return qgemm(W, xq, y);
  }
  const float* w = weights_f32(W);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, W.rows, W.cols, 1.0f, x, W.cols, w,
              W.cols, 0.0f, y, W.rows);
}

void linear_many(const Product* products, int n, int M) {
  if (M <= 0 || n <= 0) return;
  if (M <= kMatVecMaxRows) return matvec_many(products, n, M);
  for (int i = 0; i < n; ++i) linear(products[i].W, products[i].x, M, products[i].y);  // GEMMs
}

static bool simd_head_ok(const Wkv7Head& h) {
  return h.N <= kMaxHeadSize && h.N % int(simd_lanes_f32()) == 0;
}

void wkv7_recurrent(const Wkv7Head& h) {
  if (simd_head_ok(h)) return simd_wkv7_recurrent(h);
  ref::wkv7_recurrent(h);
}

void wkv7_chunked(const Wkv7Head& h) {
  if (simd_head_ok(h)) return simd_wkv7_chunked(h);
  ref::wkv7_chunked(h, kWkvChunk);
}

void sigmoid(const float* x, float* y, size_t n) { simd_sigmoid(x, y, n); }
void tanh(const float* x, float* y, size_t n) { simd_tanh(x, y, n); }

void set_num_threads(int n) {
  g_threads = n > 0 ? n : omp_get_num_procs();
  omp_set_num_threads(g_threads);
  openblas_set_num_threads(g_threads);
}

int num_threads() { return g_threads > 0 ? g_threads : omp_get_max_threads(); }

const char* simd_target() { return simd_target_name(); }

}  // namespace rwkv::ops::cpu

namespace rwkv::ops {

static void ref_wkv7_parallel(const Wkv7Head& h) { ref::wkv7_chunked(h, cpu::kWkvChunk); }
static void ref_wkv6_parallel(const Wkv6Head& h) { ref::wkv6_chunked(h, cpu::kWkvChunk); }

const Kernels& ref_kernels() {
  static const Kernels k{"ref",
                         &ref::linear,
                         &ref::linear_many,
                         &ref::wkv7_recurrent,
                         &ref_wkv7_parallel,
                         &ref::wkv4,
                         &ref::sigmoid,
                         &ref::tanh,
                         &ref::wkv6_recurrent,
                         &ref_wkv6_parallel};
  return k;
}

const Kernels& cpu_kernels() {
  static const Kernels k{"cpu",
                         &cpu::linear,
                         &cpu::linear_many,
                         &cpu::wkv7_recurrent,
                         &cpu::wkv7_recurrent,  // the sequence form: see Kernels::wkv7_parallel
                         &cpu::wkv4,
                         &cpu::sigmoid,
                         &cpu::tanh,
                         &cpu::wkv6_recurrent,
                         &cpu::wkv6_chunked};
  return k;
}

}  // namespace rwkv::ops
