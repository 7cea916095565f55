// RWKV-4 and RWKV-5/6 WKV kernels at the shapes of a 0.1B model layer (C = 768): RWKV-4 with 768
// channels, RWKV-6 with 12 heads of 64. items_per_second counts tokens of the whole layer;
// head_tokens/s counts (token, head) pairs for WKV-6. One thread (the kernels are per head).
//   build/bench_wkv --benchmark_filter=Wkv6
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <vector>

#include "ops/ops.h"

namespace rwkv::ops {
namespace {

std::vector<float> random_vec(size_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

void Wkv4(benchmark::State& state, void (*fn)(const Wkv4Seq&)) {
  const int T = int(state.range(0)), C = 768;
  std::mt19937 rng(1);
  const auto k = random_vec(size_t(T) * C, rng, -5, 5);
  const auto v = random_vec(size_t(T) * C, rng, -2, 2);
  auto w = random_vec(size_t(C), rng, -8, 3);
  for (float& x : w) x = -std::exp(x);
  const auto u = random_vec(size_t(C), rng, -3, 3);
  std::vector<float> y(size_t(T) * C), aa(size_t(C), 0.f), bb(size_t(C), 0.f);
  std::vector<float> pp(size_t(C), -1e30f);  // the zero state
  const Wkv4Seq seq{T,        C,        C,         k.data(),  v.data(), w.data(),
                    u.data(), y.data(), aa.data(), bb.data(), pp.data()};
  for (auto _ : state) {
    fn(seq);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * T);
}
BENCHMARK_CAPTURE(Wkv4, cpu, cpu::wkv4)->Arg(1)->Arg(512);
BENCHMARK_CAPTURE(Wkv4, ref, ref::wkv4)->Arg(1)->Arg(512);

// One layer: H heads of N over a [T, H·N] buffer, RWKV-6-like decays (λ = −e^ω, ω ∈ [−6, 1]).
void Wkv6(benchmark::State& state, void (*fn)(const Wkv6Head&)) {
  const int T = int(state.range(0)), H = 12, N = 64, C = H * N;
  std::mt19937 rng(2);
  const size_t n = size_t(T) * C;
  const auto r = random_vec(n, rng, -1, 1), k = random_vec(n, rng, -1, 1),
             v = random_vec(n, rng, -1, 1), u = random_vec(size_t(C), rng, -1, 1);
  auto w = random_vec(n, rng, -6, 1);
  for (float& x : w) x = -std::exp(x);
  std::vector<float> y(n), S = random_vec(size_t(H) * N * N, rng, -1, 1);
  for (auto _ : state) {
    for (int h = 0; h < H; ++h) {
      const size_t o = size_t(h) * N;
      fn(Wkv6Head{T, N, C, r.data() + o, w.data() + o, k.data() + o, v.data() + o, u.data() + o,
                  y.data() + o, S.data() + size_t(h) * N * N});
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * T);
  state.counters["head_tokens/s"] =
      benchmark::Counter(double(T) * H, benchmark::Counter::kIsIterationInvariantRate);
}
void ref_chunked16(const Wkv6Head& h) { ref::wkv6_chunked(h, 16); }
BENCHMARK_CAPTURE(Wkv6, cpu_recurrent, cpu::wkv6_recurrent)->Arg(1)->Arg(64)->Arg(512);
BENCHMARK_CAPTURE(Wkv6, cpu_chunked, cpu::wkv6_chunked)->Arg(1)->Arg(64)->Arg(512);
BENCHMARK_CAPTURE(Wkv6, ref_recurrent, ref::wkv6_recurrent)->Arg(1)->Arg(512);
BENCHMARK_CAPTURE(Wkv6, ref_chunked16, ref_chunked16)->Arg(512);

}  // namespace
}  // namespace rwkv::ops

BENCHMARK_MAIN();
