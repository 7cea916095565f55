// Kernel lab: WKV-7 training kernels (ops/cuda/wkv7_train.cu, sequential; wkv7_chunked.cu,
// chunked) at the sizes RWKV-LM's kernels are quoted at (B=8, T=4096, N=64, H=64 and H=12; bf16
// inputs, fp32 state): forward, backward and both passes' times for each form and the automatic
// choice, and the relative error of one head's outputs against the fp64 reference (ops::ref) at
// that length. Usage: wkv7_train_lab [B=8] [T=4096]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "ops/cuda/wkv7_train.h"
#include "ops/ops.h"
#include "rwkv/model.h"

using namespace rwkv;
using bf16 = __nv_bfloat16;

namespace {

constexpr double kScale = -0.60653065971263342;

struct Inputs {
  int B, T, H, N;
  std::vector<uint16_t> r, z, k, v, a, b, dy;  // bf16 bits, (B, T, H, N)
};

Inputs make_inputs(int B, int T, int H, int N, std::mt19937& rng) {
  Inputs in{B, T, H, N, {}, {}, {}, {}, {}, {}, {}};
  const size_t n = size_t(B) * T * H * N;
  std::normal_distribution<float> d(0.f, 1.f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (auto* t : {&in.r, &in.z, &in.k, &in.v, &in.a, &in.b, &in.dy}) t->resize(n);
  for (size_t i = 0; i < n; ++i) {
    in.r[i] = f32_to_bf16(d(rng));
    in.z[i] = f32_to_bf16(1.5f * d(rng));
    in.k[i] = f32_to_bf16(0.5f * d(rng));
    in.v[i] = f32_to_bf16(d(rng));
    in.dy[i] = f32_to_bf16(d(rng));
  }
  for (size_t row = 0; row < n / size_t(N); ++row) {  // a = −κ̂, b = κ̂·α (unit κ̂ per head)
    std::vector<float> kh(static_cast<size_t>(N));
    double norm = 0;
    for (float& x : kh) {
      x = d(rng);
      norm += double(x) * x;
    }
    for (int i = 0; i < N; ++i) {
      const float unit = float(kh[size_t(i)] / std::sqrt(norm));
      in.a[row * N + i] = f32_to_bf16(-unit);
      in.b[row * N + i] = f32_to_bf16(unit * u(rng));
    }
  }
  return in;
}

cuda::DeviceBuffer upload(const std::vector<uint16_t>& v) {
  cuda::DeviceBuffer b(v.size() * 2);
  RWKV_CUDA_CHECK(cudaMemcpy(b.as(), v.data(), v.size() * 2, cudaMemcpyHostToDevice));
  return b;
}

// One head (sequence 0, head h) of the GPU's outputs against the fp64 reference: the worst
// ‖got − ref‖/‖ref‖ over y, ∂r, ∂z, ∂k, ∂v, ∂a, ∂b.
double head_error(const Inputs& in, int h, const std::vector<std::vector<uint16_t>>& got) {
  const int T = in.T, N = in.N, C = in.H * in.N;
  const auto f = [&](const std::vector<uint16_t>& t) {
    std::vector<float> out(size_t(T) * N);
    for (int s = 0; s < T; ++s) {
      for (int i = 0; i < N; ++i) out[size_t(s) * N + i] = bf16_to_f32(t[size_t(s) * C + size_t(h) * N + i]);
    }
    return out;
  };
  auto r = f(in.r), z = f(in.z), k = f(in.k), v = f(in.v), a = f(in.a), b = f(in.b), dy = f(in.dy);
  std::vector<float> w(z.size());
  for (size_t i = 0; i < z.size(); ++i) w[i] = float(kScale / (1 + std::exp(-double(z[i]))));
  std::vector<float> y(z.size()), S(size_t(N) * N, 0.f), dS0(S.size());
  std::vector<std::vector<float>> g(6, std::vector<float>(z.size()));
  ops::Wkv7Head head{T, N, N, r.data(), w.data(), k.data(), v.data(), a.data(), b.data(), y.data(), S.data()};
  ops::ref::wkv7_backward(head, {dy.data(), nullptr, g[0].data(), g[1].data(), g[2].data(), g[3].data(),
                                 g[4].data(), g[5].data(), dS0.data()});
  ops::ref::wkv7_recurrent(head);
  for (size_t i = 0; i < z.size(); ++i) {
    const double sg = 1 / (1 + std::exp(-double(z[i])));
    g[1][i] = float(g[1][i] * kScale * sg * (1 - sg));
  }
  double worst = 0;
  const std::vector<float>* want[] = {&y, &g[0], &g[1], &g[2], &g[3], &g[4], &g[5]};
  for (int q = 0; q < 7; ++q) {
    const auto have = f(got[size_t(q)]);
    double num = 0, den = 0;
    for (size_t i = 0; i < have.size(); ++i) {
      num += (have[i] - (*want[q])[i]) * double(have[i] - (*want[q])[i]);
      den += double((*want[q])[i]) * (*want[q])[i];
    }
    worst = std::max(worst, std::isnan(num) ? INFINITY : std::sqrt(num / den));
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) try {
  if (cuda_device_count() == 0) {
    std::printf("wkv7_train_lab: no GPU\n");
    return 0;
  }
  const int B = argc > 1 ? std::atoi(argv[1]) : 8, T = argc > 2 ? std::atoi(argv[2]) : 4096, N = 64;
  cuda::Context ctx(0);
  std::printf("%s\nwkv7 train (bf16 in, fp32 state)  B    T    H  form         fwd(ms)  bwd(ms)  fwd+bwd(ms)  "
              "err vs fp64\n",
              cuda::device_description(0).c_str());
  std::mt19937 rng(1);
  for (int H : {64, 12}) {
    const Inputs in = make_inputs(B, T, H, N, rng);
    const size_t n = in.r.size(), S = size_t(B) * H * N * N;
    auto r = upload(in.r), z = upload(in.z), k = upload(in.k), v = upload(in.v), a = upload(in.a),
         b = upload(in.b), dy = upload(in.dy);
    cuda::DeviceBuffer y(n * 2), sa(n * 4), ckpt(cuda::wkv7_train_checkpoint_floats(B, T, H, N) * 4);
    std::vector<cuda::DeviceBuffer> grads;
    for (int q = 0; q < 6; ++q) grads.emplace_back(n * 2);
    cuda::DeviceBuffer ds0(S * 4);
    cuda::Wkv7Train p{B, T, H, N, r.as<bf16>(), z.as<bf16>(), k.as<bf16>(), v.as<bf16>(), a.as<bf16>(),
                      b.as<bf16>(), y.as<bf16>(), nullptr, nullptr, ckpt.as<float>(), sa.as<float>()};
    const cuda::Wkv7TrainGrads g{dy.as<bf16>(), nullptr, grads[0].as<bf16>(), grads[1].as<bf16>(),
                                 grads[2].as<bf16>(), grads[3].as<bf16>(), grads[4].as<bf16>(),
                                 grads[5].as<bf16>(), ds0.as<float>()};
    cudaEvent_t e0, e1, e2;
    cudaEventCreate(&e0), cudaEventCreate(&e1), cudaEventCreate(&e2);
    const std::pair<cuda::Wkv7Form, const char*> forms[] = {
        {cuda::Wkv7Form::Sequential, "sequential"},
        {cuda::Wkv7Form::Chunked, "chunked"},
        {cuda::Wkv7Form::Auto, "auto"}};
    for (const auto& [form, name] : forms) {
      p.form = form;
      std::vector<float> fwd, bwd, both;
      for (int rep = 0; rep < 12; ++rep) {
        cudaEventRecord(e0, ctx.stream);
        cuda::wkv7_train_forward(ctx, p);
        cudaEventRecord(e1, ctx.stream);
        cuda::wkv7_train_backward(ctx, p, g);
        cudaEventRecord(e2, ctx.stream);
        cudaEventSynchronize(e2);
        float f1 = 0, f2 = 0, f3 = 0;
        cudaEventElapsedTime(&f1, e0, e1);
        cudaEventElapsedTime(&f2, e1, e2);
        cudaEventElapsedTime(&f3, e0, e2);
        if (rep >= 2) fwd.push_back(f1), bwd.push_back(f2), both.push_back(f3);
      }
      for (auto* v : {&fwd, &bwd, &both}) std::sort(v->begin(), v->end());
      std::vector<std::vector<uint16_t>> got;
      for (const cuda::DeviceBuffer* buf : {&y, &grads[0], &grads[1], &grads[2], &grads[3], &grads[4], &grads[5]}) {
        got.emplace_back(n);
        RWKV_CUDA_CHECK(cudaMemcpy(got.back().data(), buf->as(), n * 2, cudaMemcpyDeviceToHost));
      }
      std::printf("%35d %4d %4d  %-10s %9.3f %8.3f %12.3f %12.2e\n", B, T, H, name, fwd[fwd.size() / 2],
                  bwd[bwd.size() / 2], both[both.size() / 2], head_error(in, H - 1, got));
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "wkv7_train_lab: %s\n", e.what());
  return 1;
}
