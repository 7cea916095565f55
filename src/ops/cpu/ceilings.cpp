// Measured machine ceilings, printed beside benchmark figures.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace rwkv::ops::cpu {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

double measure_read_bandwidth(size_t bytes) {
  const size_t n = bytes / sizeof(float);
  std::vector<float> buffer(n);
  // First touch from the threads that read, so pages sit near them.
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) buffer[i] = float(i & 7);
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
      const size_t nt = size_t(omp_get_num_threads()), id = size_t(omp_get_thread_num());
      const size_t i0 = n * id / nt, i1 = n * (id + 1) / nt;
      total += simd_sum_f32(buffer.data() + i0, i1 - i0);
    }
    sink = total;
    best = std::max(best, double(bytes) / seconds_since(t0) / 1e9);
  }
  (void)sink;
  return best;
}

double measure_sgemm_gflops(int M, int N, int K) {
  std::vector<float> a(size_t(M) * size_t(K), 0.5f), b(size_t(N) * size_t(K), 0.25f),
      c(size_t(M) * size_t(N));
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a.data(), K, b.data(), K,
                0.0f, c.data(), N);
    best = std::max(best, 2.0 * M * N * K / seconds_since(t0) / 1e9);
  }
  return best;
}

}  // namespace rwkv::ops::cpu
