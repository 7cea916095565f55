// Kernel benchmarks (Google Benchmark): matrix-vector products report the weight bytes they
// stream (compare with `rwkv bench`'s read bandwidth), WKV kernels report tokens per second.
//   build/bench_ops --benchmark_filter=MatVec
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "ops/ops.h"

namespace rwkv::ops {
namespace {

void MatVec(benchmark::State& state, DType dtype) {
  const int rows = int(state.range(0)), cols = int(state.range(1)), M = int(state.range(2));
  std::vector<uint8_t> w(dtype_nbytes(dtype, size_t(rows) * size_t(cols)), 0x3c);
  std::vector<float> x(size_t(M) * size_t(cols), 0.5f), y(size_t(M) * size_t(rows));
  const Matrix W{dtype, rows, cols, w.data()};
  for (auto _ : state) {
    cpu::linear(W, x.data(), M, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(W.nbytes()));
}
BENCHMARK_CAPTURE(MatVec, bf16, DType::BF16)->Args({3072, 768, 1})->Args({65536, 768, 1})->Args({3072, 768, 4});
BENCHMARK_CAPTURE(MatVec, fp16, DType::F16)->Args({3072, 768, 1});
BENCHMARK_CAPTURE(MatVec, fp32, DType::F32)->Args({3072, 768, 1})->Args({65536, 768, 1});

void Wkv7(benchmark::State& state, bool chunked) {
  const int T = int(state.range(0)), N = 64;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  std::vector<float> in(size_t(T) * N * 6), y(size_t(T) * N), S(size_t(N) * N, 0.f);
  for (float& v : in) v = u(rng);
  const float* p = in.data();
  std::vector<float> w(size_t(T) * N, -0.1f);
  Wkv7Head h{T, N, N, p, w.data(), p + 2 * T * N, p + 3 * T * N, p + 4 * T * N, p + 5 * T * N,
             y.data(), S.data()};
  for (auto _ : state) {
    if (chunked) {
      cpu::wkv7_chunked(h);
    } else {
      cpu::wkv7_recurrent(h);
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * T);
}
BENCHMARK_CAPTURE(Wkv7, recurrent, false)->Arg(512);
BENCHMARK_CAPTURE(Wkv7, chunked, true)->Arg(512);

}  // namespace
}  // namespace rwkv::ops

BENCHMARK_MAIN();
