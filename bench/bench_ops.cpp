// Kernel benchmarks (Google Benchmark): matrix-vector products report the weight bytes they
// stream (compare with `rwkv bench`'s read bandwidth), WKV kernels report tokens per second.
//   build/bench_ops --benchmark_filter=MatVec
//   OMP_NUM_THREADS=1 build/bench_ops --benchmark_filter=MatVecDecode   (quantized vs bf16)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "ops/ops.h"
#include "ops/qdot.h"
#include "rwkv/sampler.h"

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

// A LoRA's second product in a decode step: one thread's half of the rows (out channels) of a
// (rows, cols = LoRA width) bf16 matrix, one of 64 distinct copies each time (6+ MB: from DRAM or
// L3, as in a step, not from L2).
void LoraUp(benchmark::State& state) {
  const int rows = int(state.range(0)), cols = int(state.range(1));
  constexpr int kCopies = 64;
  const size_t bytes = dtype_nbytes(DType::BF16, size_t(rows) * size_t(cols));
  std::vector<uint8_t> w(kCopies * bytes, 0x3c);
  std::vector<float> x(size_t(cols), 0.5f), y(static_cast<size_t>(rows));
  int i = 0;
  for (auto _ : state) {
    const Matrix W{DType::BF16, rows, cols, w.data() + size_t(i) * bytes};
    cpu::matvec_rows(W, x.data(), nullptr, 1, y.data(), 0, rows / 2);
    benchmark::DoNotOptimize(y.data());
    i = (i + 1) % kCopies;
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes / 2));
}
BENCHMARK(LoraUp)->Args({768, 64})->Args({768, 128})->Args({768, 32})->Args({768, 768});
BENCHMARK_CAPTURE(MatVec, fp16, DType::F16)->Args({3072, 768, 1});
BENCHMARK_CAPTURE(MatVec, fp32, DType::F32)->Args({3072, 768, 1})->Args({65536, 768, 1});

// Random weight bytes with sane values (quantized: fp16 scales 0x2000..0x23ff ≈ 0.008..0.016;
// bf16: ±0.008..0.03), so that no NaN/inf slows the FP units; kept for the repetitions of one
// benchmark.
const std::vector<uint8_t>& weight_bytes(DType dtype, size_t bytes) {
  static DType cached_dtype;
  static std::vector<uint8_t> w;
  if (w.size() == bytes && cached_dtype == dtype) return w;
  cached_dtype = dtype;
  w.assign(bytes, 0);
  uint64_t s = 88172645463325252ull;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    std::memcpy(&w[i], &s, 8);
  }
  if (is_quantized(dtype)) {
    const size_t bb = dtype_block_bytes(dtype);
    const bool has_min = dtype == DType::Q4_1 || dtype == DType::Q5_1;
    for (size_t i = 0; i + bb <= w.size(); i += bb) {
      w[i + 1] = 0x20 | (w[i + 1] & 3);
      if (has_min) w[i + 3] = 0xa0 | (w[i + 3] & 3);
    }
  } else {
    for (size_t i = 1; i < w.size(); i += 2) w[i] = 0x3c | (w[i] & 0x80);  // ±0.008..0.03
  }
  return w;
}

// Quantized weights next to bf16, at the shapes of a 768-wide model's FFN (768x3072, 3072x768)
// and a 4096x4096 projection. Cold: the product cycles through copies of the weights totalling
// over 3x the last-level cache (32 MiB here), so every iteration streams them from DRAM as
// decode does; the GB/s figure is then comparable with the machine's read bandwidth. Without
// the rotation the smaller matrices stay in cache and the figure measures the kernel's decode
// throughput instead. Bytes are stored bytes (18 per 32 weights for q4_0, 2 per weight for bf16).
void MatVecDecodeOf(benchmark::State& state, DType dtype, bool panels) {
  const int rows = int(state.range(0)), cols = int(state.range(1)), M = int(state.range(2));
  const bool cold = state.range(3) != 0;
  const size_t bytes = dtype_nbytes(dtype, size_t(rows) * size_t(cols));
  const size_t copies = cold ? std::max<size_t>(1, (size_t(96) << 20) / bytes + 1) : 1;
  const auto& w = weight_bytes(dtype, bytes * copies);
  // Panels: the weights in 8-row panels, as the CPU model loads 4-bit ones.
  if (panels && (!cpu::panels_supported(dtype) || rows % 8 != 0)) {
    state.SkipWithError("no panel kernel for this type on this CPU");
    return;
  }
  std::vector<uint8_t> panel_bytes(panels ? w.size() : 0);
  for (size_t c = 0; panels && c < copies; ++c) {
    cpu::to_panels(Matrix{dtype, rows, cols, w.data() + c * bytes}, panel_bytes.data() + c * bytes);
  }
  std::vector<float> x(size_t(M) * size_t(cols), 0.5f), y(size_t(M) * size_t(rows));
  size_t k = 0;
  for (auto _ : state) {
    const size_t at = (k++ % copies) * bytes;
    const Matrix W{dtype, rows, cols, panels ? panel_bytes.data() + at : w.data() + at, panels};
    cpu::linear(W, x.data(), M, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes));
}
void MatVecDecode(benchmark::State& state, DType dtype) { MatVecDecodeOf(state, dtype, false); }
void MatVecDecodePanels(benchmark::State& state, DType dtype) { MatVecDecodeOf(state, dtype, true); }
// Args: rows, cols, M, cold.
#define RWKV_QUANT_BENCH(name, dtype)                                                     \
  BENCHMARK_CAPTURE(MatVecDecode, name, dtype)                                              \
      ->Args({768, 3072, 1, 1})->Args({3072, 768, 1, 1})->Args({4096, 4096, 1, 1})        \
      ->Args({4096, 4096, 4, 1})->Args({3072, 768, 1, 0})->Args({3072, 768, 4, 0})        \
      ->UseRealTime()
#define RWKV_PANEL_BENCH(name, dtype)                                                     \
  BENCHMARK_CAPTURE(MatVecDecodePanels, name, dtype)                                        \
      ->Args({768, 3072, 1, 1})->Args({3072, 768, 1, 1})->Args({4096, 4096, 1, 1})        \
      ->Args({4096, 4096, 4, 1})->Args({3072, 768, 1, 0})->Args({3072, 768, 4, 0})        \
      ->UseRealTime()
RWKV_QUANT_BENCH(bf16, DType::BF16);
RWKV_QUANT_BENCH(q4_0, DType::Q4_0);
RWKV_QUANT_BENCH(q4_1, DType::Q4_1);
RWKV_QUANT_BENCH(q5_0, DType::Q5_0);
RWKV_QUANT_BENCH(q5_1, DType::Q5_1);
RWKV_QUANT_BENCH(q8_0, DType::Q8_0);
RWKV_QUANT_BENCH(q8_g128, DType::Q8_G128);
RWKV_QUANT_BENCH(q4_g128, DType::Q4_G128);
RWKV_QUANT_BENCH(q4_g64, DType::Q4_G64);
RWKV_QUANT_BENCH(q8_g64, DType::Q8_G64);
RWKV_PANEL_BENCH(q4_0, DType::Q4_0);
RWKV_PANEL_BENCH(q4_g64, DType::Q4_G64);
RWKV_PANEL_BENCH(q4_g128, DType::Q4_G128);
BENCHMARK_CAPTURE(MatVecDecode, q4_g64_model, DType::Q4_G64)->Args({768, 768, 1, 1})->Args({65536, 768, 1, 1})->UseRealTime();
BENCHMARK_CAPTURE(MatVecDecodePanels, q4_g64_model, DType::Q4_G64)->Args({768, 768, 1, 1})->Args({65536, 768, 1, 1})->UseRealTime();
// In L2 (160 KiB): the kernels' compute ceiling on one core.
BENCHMARK_CAPTURE(MatVecDecode, hot_q4g64, DType::Q4_G64)->Args({384, 768, 1, 0})->UseRealTime();
BENCHMARK_CAPTURE(MatVecDecodePanels, hot_q4g64, DType::Q4_G64)->Args({384, 768, 1, 0})->UseRealTime();
BENCHMARK_CAPTURE(MatVecDecode, hot_q8g64, DType::Q8_G64)->Args({192, 768, 1, 0})->UseRealTime();
BENCHMARK_CAPTURE(MatVecDecode, cols_q4g64, DType::Q4_G64)->Args({2048, 2048, 1, 1})->Args({2048, 4096, 1, 1})->Args({2048, 8192, 1, 1})->Args({4096, 2048, 1, 1})->Args({4096, 4096, 1, 1})->UseRealTime();
BENCHMARK_CAPTURE(MatVecDecodePanels, cols_q4g64, DType::Q4_G64)->Args({2048, 2048, 1, 1})->Args({2048, 4096, 1, 1})->Args({2048, 8192, 1, 1})->Args({4096, 2048, 1, 1})->Args({4096, 4096, 1, 1})->UseRealTime();
BENCHMARK_CAPTURE(MatVecDecode, cols_q8g64, DType::Q8_G64)->Args({2048, 2048, 1, 1})->Args({2048, 4096, 1, 1})->Args({2048, 8192, 1, 1})->Args({4096, 4096, 1, 1})->UseRealTime();
BENCHMARK_CAPTURE(MatVecDecode, cols_q8_0, DType::Q8_0)->Args({2048, 2048, 1, 1})->Args({2048, 4096, 1, 1})->Args({4096, 4096, 1, 1})->UseRealTime();

// Prefill-shaped products, y[M, rows] = x[M, cols]·Wᵀ, in FLOP/s (2·M·rows·cols per call):
// cpu::linear (sgemm over fp32 weights, converted per call for quantized ones) against the
// integer kernels of ops/qdot.h over all rows (inputs quantized once per call, as decode does).
// panels: 4-bit weights in 8-row panels, as the CPU model loads them.
void Gemm(benchmark::State& state, DType dtype, bool integer, bool panels = false) {
  const int rows = int(state.range(0)), cols = int(state.range(1)), M = int(state.range(2));
  const auto& w = weight_bytes(dtype, dtype_nbytes(dtype, size_t(rows) * size_t(cols)));
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(size_t(M) * size_t(cols)), y(size_t(M) * size_t(rows));
  for (float& v : x) v = normal(rng);
  Matrix W{dtype, rows, cols, w.data()};
  std::vector<uint8_t> panel_bytes(panels ? w.size() + 64 : 0);
  if (panels) W = cpu::to_panels(W, panel_bytes.data() + (64 - reinterpret_cast<uintptr_t>(panel_bytes.data()) % 64) % 64);
  QuantizedVectors xq;
  for (auto _ : state) {
    if (integer) {  // the decode kernel, 4 inputs at a time, on one thread
      cpu::quantize_vectors(cpu::qdot_isa(), x.data(), M, size_t(cols), qdot_group(dtype), xq);
      cpu::qdot_rows(cpu::qdot_isa(), W, xq, y.data(), 0, rows);
    } else {  // sgemm on fp32 weights, or for quantized ones the integer GEMM (RWKV_CPU_QGEMM)
      cpu::linear(W, x.data(), M, y.data());
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * M * rows * cols * double(state.iterations()),
                                                benchmark::Counter::kIsRate);
}
BENCHMARK_CAPTURE(Gemm, fp32_sgemm, DType::F32, false)->Args({3072, 768, 512})->Args({768, 768, 512})->Args({64, 768, 512})->Args({768, 64, 512})->Args({768, 128, 512})->UseRealTime();
BENCHMARK_CAPTURE(Gemm, q8_g64, DType::Q8_G64, false)->Args({3072, 768, 512})->Args({768, 3072, 512})->UseRealTime();
BENCHMARK_CAPTURE(Gemm, q8_g64_decode_kernel, DType::Q8_G64, true)->Args({3072, 768, 512})->UseRealTime();
BENCHMARK_CAPTURE(Gemm, q4_g64, DType::Q4_G64, false)->Args({3072, 768, 512})->Args({768, 3072, 512})->UseRealTime();
BENCHMARK_CAPTURE(Gemm, q4_g64_panels, DType::Q4_G64, false, true)->Args({3072, 768, 512})->Args({768, 3072, 512})->UseRealTime();
BENCHMARK_CAPTURE(Gemm, q4_g64_decode_kernel, DType::Q4_G64, true)->Args({3072, 768, 512})->UseRealTime();
BENCHMARK_CAPTURE(Gemm, q8_0, DType::Q8_0, false)->Args({3072, 768, 512})->UseRealTime();
BENCHMARK_CAPTURE(Gemm, q4_0, DType::Q4_0, false)->Args({3072, 768, 512})->UseRealTime();

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
BENCHMARK_CAPTURE(Wkv7, recurrent, false)->Arg(1)->Arg(512)->Arg(2048);
BENCHMARK_CAPTURE(Wkv7, chunked, true)->Arg(512)->Arg(2048);

void Wkv6(benchmark::State& state, bool chunked) {
  const int T = int(state.range(0)), N = 64;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  std::vector<float> in(size_t(T) * N * 3), bonus(N), y(size_t(T) * N), S(size_t(N) * N, 0.f);
  for (float& v : in) v = u(rng);
  for (float& v : bonus) v = u(rng);
  std::vector<float> w(size_t(T) * N, -0.1f);
  const float* p = in.data();
  Wkv6Head h{T, N, N, p, w.data(), p + T * N, p + 2 * T * N, bonus.data(), y.data(), S.data()};
  for (auto _ : state) {
    if (chunked) {
      cpu::wkv6_chunked(h);
    } else {
      cpu::wkv6_recurrent(h);
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * T);
}
BENCHMARK_CAPTURE(Wkv6, recurrent, false)->Arg(2048);
BENCHMARK_CAPTURE(Wkv6, chunked, true)->Arg(2048);

}  // namespace
}  // namespace rwkv::ops

// One sampled token from 65536 logits with the default settings (top_p 0.85, penalties): a
// peaked distribution (a trained model's: logits spread N(0, 3²)) and a flat one (a random
// model's: N(0, 0.1²)), where top-p keeps most of the vocabulary. The server samples every
// sequence's token on the CPU after each step.
void Sample(benchmark::State& state, float spread) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, spread);
  std::vector<float> logits(65536);
  for (float& l : logits) l = normal(rng);
  rwkv::Sampler sampler(rwkv::SamplerConfig{}, 65536);
  for (auto _ : state) {
    const int token = sampler.sample(logits);
    sampler.accept(token);
    benchmark::DoNotOptimize(token);
  }
}
BENCHMARK_CAPTURE(Sample, peaked, 3.0f);
BENCHMARK_CAPTURE(Sample, flat, 0.1f);

BENCHMARK_MAIN();
