// Kernel lab for the CUDA backend: times each hot op at the shapes of real models and prints
// achieved GB/s (memory-bound ops) or TFLOP/s beside the card's measured ceilings, after checking
// it against the CPU on the same inputs. Usage: cuda_lab [C=2048] [F=4C] [V=65536]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "ops/cuda/kernels.h"
#include "rwkv/model.h"

using namespace rwkv;

namespace {

struct Timer {
  cudaEvent_t a, b;
  Timer() { cudaEventCreate(&a), cudaEventCreate(&b); }
  ~Timer() { cudaEventDestroy(a), cudaEventDestroy(b); }
  // Median milliseconds of `reps` runs of f (after 3 warm-ups), each run timed alone.
  template <typename F>
  double median_ms(cuda::Context& ctx, F f, int reps = 20) {
    for (int i = 0; i < 3; ++i) f();
    std::vector<float> t;
    for (int i = 0; i < reps; ++i) {
      cudaEventRecord(a, ctx.stream);
      f();
      cudaEventRecord(b, ctx.stream);
      cudaEventSynchronize(b);
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

cuda::DeviceBuffer random_device(size_t n, DType dtype, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  std::vector<uint8_t> bytes(dtype_nbytes(dtype, n));
  convert_from_f32(dtype, v.data(), bytes.data(), n);
  cuda::DeviceBuffer b(bytes.size());
  RWKV_CUDA_CHECK(cudaMemcpy(b.as(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  return b;
}

}  // namespace

int main(int argc, char** argv) try {
  if (cuda_device_count() == 0) {
    std::printf("cuda_lab: no GPU\n");
    return 0;
  }
  const int C = argc > 1 ? std::atoi(argv[1]) : 2048;
  const int F = argc > 2 ? std::atoi(argv[2]) : 4 * C;
  const int V = argc > 3 ? std::atoi(argv[3]) : 65536;
  const GpuCeilings ceil = measure_gpu_ceilings(0);
  std::printf("%s: copy %.0f GB/s, bf16 GEMM %.0f TFLOP/s\n", ceil.name.c_str(), ceil.copy_gb_per_s,
              ceil.gemm_tflops);
  cuda::Context ctx(0);
  Timer timer;
  std::mt19937 rng(1);

  // Matrix-vector products (decode): bytes = the weights (the activations are small). Each
  // timing runs 8 products back to back over copies of the matrix that together overflow the L2
  // cache, as a decode step's matrices do (a repeated small matrix would be timed from L2).
  std::printf("\nlinear, bf16 weights, from HBM  M   time(us)   GB/s  %%copy   TFLOP/s\n");
  const std::pair<int, int> shapes[] = {{C, C}, {F, C}, {C, F}, {V, C}, {64, C}, {C, 64}};
  constexpr int kRuns = 8;
  for (const auto& [rows, cols] : shapes) {
    const size_t bytes = size_t(rows) * size_t(cols) * 2;
    const size_t copies = std::clamp<size_t>((size_t(256) << 20) / bytes, 2, 256);
    std::vector<cuda::DeviceBuffer> w;
    for (size_t i = 0; i < copies; ++i) w.push_back(random_device(size_t(rows) * cols, DType::BF16, rng));
    size_t next = 0;
    for (int M : {1, 2, 4, 8, 16, 64, 512}) {
      auto x = random_device(size_t(M) * cols, DType::F32, rng);
      cuda::DeviceBuffer y(size_t(M) * rows * 4);
      const double ms = timer.median_ms(ctx, [&] {
        for (int r = 0; r < kRuns; ++r) {
          const ops::Matrix W{DType::BF16, rows, cols, w[next++ % copies].as()};
          cuda::linear(ctx, W, x.as<float>(), M, y.as<float>());
        }
      }) / kRuns;
      const ops::Matrix W{DType::BF16, rows, cols, nullptr};
      const double gbs = double(W.nbytes()) / (ms * 1e-3) / 1e9;
      const double tflops = 2.0 * M * rows * cols / (ms * 1e-3) / 1e12;
      std::printf("  %6d x %-6d                %4d %9.1f %7.0f %5.0f%% %9.2f\n", rows, cols, M, ms * 1e3,
                  gbs, 100 * gbs / ceil.copy_gb_per_s, tflops);
    }
  }

  // WKV-7 scan (decode step and a prefill of T rows): bytes = the inputs, outputs and state.
  std::printf("\nwkv7_scan (N=64)        B    T   H   time(us)   GB/s\n");
  const int N = 64, H = C / N;
  for (const auto& [B, T] : std::vector<std::pair<int, int>>{{1, 1}, {16, 1}, {64, 1}, {256, 1}, {1, 512}, {8, 4096}}) {
    const size_t MC = size_t(B) * T * C, floats = size_t(H) * N * N;
    auto r = random_device(MC, DType::F32, rng), w = random_device(MC, DType::F32, rng);
    cuda::DeviceBuffer pool(size_t(B) * floats * 4), y(MC * 4), slots(size_t(B) * 4);
    std::vector<int> sl(static_cast<size_t>(B));
    for (int b = 0; b < B; ++b) sl[size_t(b)] = b;
    RWKV_CUDA_CHECK(cudaMemcpy(slots.as(), sl.data(), sl.size() * 4, cudaMemcpyHostToDevice));
    RWKV_CUDA_CHECK(cudaMemset(pool.as(), 0, pool.bytes()));
    // Small log-decays and inputs keep the state bounded; the speed does not depend on values.
    RWKV_CUDA_CHECK(cudaMemset(w.as(), 0, MC * 4));
    const double ms = timer.median_ms(ctx, [&] {
      cuda::wkv7_scan(ctx, B, T, H, N, r.as<float>(), w.as<float>(), r.as<float>(), r.as<float>(),
                      w.as<float>(), w.as<float>(), y.as<float>(), {pool.as<float>(), slots.as<int>(), floats}, 0);
    }, 5);
    const double bytes = 7.0 * MC * 4 + 2.0 * B * floats * 4;
    std::printf("  %21d %4d %3d %10.1f %7.0f\n", B, T, H, ms * 1e3, bytes / (ms * 1e-3) / 1e9);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "cuda_lab: %s\n", e.what());
  return 1;
}
