// RWKV-7 WKV for training (spec §4.4): the float template (ops/train/wkv7.cpp) against the SIMD
// kernels (ops/cpu/simd_wkv7_train.cpp), forward, backward and both, at T = 512, N = 64, chunk 16,
// over the 12 heads of a 0.1B layer (C = 768, rows a whole [C] apart). One thread (the kernels
// are per head; the model runs heads in parallel).
//   build/bench_wkv7_train   (prints the one-thread sgemm GFLOP/s as the ceiling)
//
// FLOP/s counts the recurrence's arithmetic per step and head, a multiply and an add each one
// FLOP (an FMA two):
//   forward  9·N²: sa = S a (2N²), S⊙d + sa bᵀ + v kᵀ (5N²), y = S r (2N²)
//   backward 26·N²: recomputing the state 7N², ∂r = Sᵀ∂y 2N², dS += ∂y rᵀ 2N², ∂k, ∂b, ∂d, ∂v,
//            ∂sa, ∂a 2N² each, dS ← dS⊙d + ∂sa aᵀ 3N²
// (lower-order O(N) terms — exp, ∂w = ∂d·d — are left out). Counting an FMA-like update as
// one unit per element instead (6·N² and 16·N²) scales the figures by 2/3 and 8/13; the ratios
// between template and SIMD are the same either way.
// Measured (AVX2, Zen 3 EPYC VM shared with other jobs, best of 6 repetitions): forward 49 →
// 6.7 ms (7.3×), backward 109 → 18.6 ms (5.9×), both 158 → 23 ms (6.9×); 34–38 GFLOP/s.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "ops/cpu/wkv7_train.h"
#include "ops/ops.h"
#include "ops/train.h"

namespace rwkv::ops {
namespace {

constexpr int kT = 512, kN = 64, kH = 12, kC = kH * kN, kChunk = 16;
constexpr double kForwardFlops = 9.0 * kN * kN, kBackwardFlops = 26.0 * kN * kN;

using Forward = void (*)(const train::Wkv7Train<float>&);
using Backward = void (*)(const train::Wkv7Train<float>&, const float*, const float*, float*,
                          float*, float*, float*, float*, float*, float*, float*);

// Inputs, outputs and buffers of one layer's WKV at model-like magnitudes (w ∈ [−0.6065, 0),
// a = −κ̂, b = κ̂·α).
struct Layer {
  std::vector<float> r, w, k, v, a, b, y, dy, S, checkpoints, scratch;
  std::vector<float> dr, dw, dk, dv, da, db, dS;
  Layer() {
    const size_t n = size_t(kT) * kC, NN = size_t(kN) * kN;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_real_distribution<float> unit(0.f, 1.f);
    for (auto* x : {&r, &w, &k, &v, &a, &b, &dy}) x->resize(n);
    for (size_t row = 0; row < size_t(kT) * kH; ++row) {
      const size_t o = row * kN;
      float norm2 = 0;
      for (int j = 0; j < kN; ++j) {
        a[o + j] = normal(rng);
        norm2 += a[o + j] * a[o + j];
      }
      for (int j = 0; j < kN; ++j) {
        const float kappa = a[o + j] / std::sqrt(norm2);
        a[o + j] = -kappa;
        b[o + j] = kappa * unit(rng);
        r[o + j] = 0.5f * normal(rng);
        k[o + j] = 0.5f * normal(rng);
        v[o + j] = 0.5f * normal(rng);
        dy[o + j] = normal(rng);
        w[o + j] = -0.6065f * (1.f - unit(rng));
      }
    }
    y.resize(n);
    for (auto* x : {&dr, &dw, &dk, &dv, &da, &db}) x->resize(n);
    S.assign(kH * NN, 0.f);
    dS.assign(kH * NN, 0.f);
    checkpoints.resize(size_t(kH) * ((kT + kChunk - 1) / kChunk) * NN);
    scratch.resize(train::wkv7_train_scratch(kChunk, kN));
  }
  train::Wkv7Train<float> head(int h) {
    const size_t c = size_t(h) * kN, NN = size_t(kN) * kN;
    train::Wkv7Train<float> t;
    t.T = kT;
    t.N = kN;
    t.stride = kC;
    t.chunk = kChunk;
    t.r = r.data() + c;
    t.w = w.data() + c;
    t.k = k.data() + c;
    t.v = v.data() + c;
    t.a = a.data() + c;
    t.b = b.data() + c;
    t.y = y.data() + c;
    t.S = S.data() + size_t(h) * NN;
    t.checkpoints = checkpoints.data() + size_t(h) * ((kT + kChunk - 1) / kChunk) * NN;
    return t;
  }
  void forward(Forward fn) {
    std::fill(S.begin(), S.end(), 0.f);
    for (int h = 0; h < kH; ++h) fn(head(h));
  }
  void backward(Backward fn) {
    const size_t NN = size_t(kN) * kN;
    for (int h = 0; h < kH; ++h) {
      const size_t c = size_t(h) * kN;
      float* dSh = dS.data() + size_t(h) * NN;  // dS_T in, dS0 out, as the model calls it
      fn(head(h), dy.data() + c, dSh, dr.data() + c, dw.data() + c, dk.data() + c, dv.data() + c,
         da.data() + c, db.data() + c, dSh, scratch.data());
    }
  }
};

void report(benchmark::State& state, double flops_per_step) {
  state.counters["FLOP/s"] =
      benchmark::Counter(flops_per_step * kT * kH, benchmark::Counter::kIsIterationInvariantRate);
  state.SetItemsProcessed(int64_t(state.iterations()) * kT);  // tokens of the layer
}

void Wkv7TrainForward(benchmark::State& state, Forward fwd, Backward) {
  Layer layer;
  for (auto _ : state) {
    layer.forward(fwd);
    benchmark::DoNotOptimize(layer.y.data());
  }
  report(state, kForwardFlops);
}

void Wkv7TrainBackward(benchmark::State& state, Forward fwd, Backward bwd) {
  Layer layer;
  layer.forward(fwd);
  for (auto _ : state) {
    std::fill(layer.dS.begin(), layer.dS.end(), 0.f);
    layer.backward(bwd);
    benchmark::DoNotOptimize(layer.dr.data());
  }
  report(state, kBackwardFlops);
}

void Wkv7TrainForwardBackward(benchmark::State& state, Forward fwd, Backward bwd) {
  Layer layer;
  for (auto _ : state) {
    layer.forward(fwd);
    std::fill(layer.dS.begin(), layer.dS.end(), 0.f);
    layer.backward(bwd);
    benchmark::DoNotOptimize(layer.dr.data());
  }
  report(state, kForwardFlops + kBackwardFlops);
}

const Forward kTemplateForward = train::wkv7_train_forward<float>;
const Backward kTemplateBackward = train::wkv7_train_backward<float>;

BENCHMARK_CAPTURE(Wkv7TrainForward, template, kTemplateForward, kTemplateBackward)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Wkv7TrainForward, simd, cpu::wkv7_train_forward, cpu::wkv7_train_backward)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Wkv7TrainBackward, template, kTemplateForward, kTemplateBackward)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Wkv7TrainBackward, simd, cpu::wkv7_train_forward, cpu::wkv7_train_backward)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Wkv7TrainForwardBackward, template, kTemplateForward, kTemplateBackward)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Wkv7TrainForwardBackward, simd, cpu::wkv7_train_forward, cpu::wkv7_train_backward)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace rwkv::ops

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  rwkv::ops::cpu::set_num_threads(1);
  char ceiling[32];
  std::snprintf(ceiling, sizeof ceiling, "%.1f",
                rwkv::ops::cpu::measure_sgemm_gflops(512, 512, 512));
  benchmark::AddCustomContext("simd_target", rwkv::ops::cpu::simd_target());
  benchmark::AddCustomContext("ceiling: sgemm 512^3 GFLOP/s, one thread", ceiling);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
