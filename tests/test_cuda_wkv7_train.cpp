// The WKV-7 training kernels on the GPU (bf16 activations, fp32 state) against the fp64 reference
// forward and backward (ops::ref), at odd lengths (no T % 16 restriction), with an initial state
// and a state gradient in, outputs poisoned first. Skips without a GPU.
#include <cmath>
#include <random>

#include "ops/ops.h"
#include "ops/train.h"
#include "rwkv/model.h"
#include "testing.h"

#ifdef RWKV_WITH_CUDA
#include "cuda_testing.h"
#include "ops/cuda/wkv7_train.h"

namespace rwkv {
namespace {

using bf16 = __nv_bfloat16;
constexpr double kScale = -0.60653065971263342;  // −e^{−1/2}

// Values rounded to bf16, kept both as bf16 bits and as the floats they stand for.
struct Bf16Tensor {
  std::vector<uint16_t> bits;
  std::vector<float> values;
  explicit Bf16Tensor(std::vector<float> v) : bits(v.size()), values(std::move(v)) {
    for (size_t i = 0; i < values.size(); ++i) {
      bits[i] = f32_to_bf16(values[i]);
      values[i] = bf16_to_f32(bits[i]);
    }
  }
};


using test::download_bf16;
using test::normal_floats;
using test::download_f32;
using test::upload;
cuda::DeviceBuffer poisoned(size_t bytes) { return test::poisoned_bytes(bytes); }

double rel_error(const std::vector<float>& got, const std::vector<double>& want) {
  return test::rel_norm_error(got.data(), want.data(), got.size());
}

TEST(CudaWkv7Train, ForwardAndBackwardMatchTheFp64Reference) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU";
  cuda::Context ctx(0);
  std::mt19937 rng(11);
  for (int N : {32, 64}) {
    for (int T : {1, 5, 16, 17, 40, 100}) {
      const int B = 2, H = 3, C = H * N;
      const size_t MC = size_t(B) * T * C, S = size_t(B) * H * N * N;
      Bf16Tensor r(normal_floats(MC, rng, 1.f)), z(normal_floats(MC, rng, 1.5f)), k(normal_floats(MC, rng, 0.5f)),
          v(normal_floats(MC, rng, 1.f)), dy(normal_floats(MC, rng, 1.f));
      // a = −κ̂, b = κ̂·α with κ̂ a unit vector per head and row, as the model makes them.
      std::vector<float> af(MC), bf(MC);
      std::uniform_real_distribution<float> unit(0.f, 1.f);
      for (size_t row = 0; row < MC / N; ++row) {
        const auto kh = normal_floats(size_t(N), rng, 1.f);
        double norm = 0;
        for (float x : kh) norm += double(x) * x;
        for (int i = 0; i < N; ++i) {
          const float u = float(kh[size_t(i)] / std::sqrt(norm));
          af[row * N + i] = -u;
          bf[row * N + i] = u * unit(rng);
        }
      }
      Bf16Tensor a(af), b(bf);
      const auto s0 = normal_floats(S, rng, 0.3f), dsT = normal_floats(S, rng, 0.1f);

      auto dr_ = upload(r.bits.data(), MC * 2), dz_ = upload(z.bits.data(), MC * 2),
           dk_ = upload(k.bits.data(), MC * 2), dv_ = upload(v.bits.data(), MC * 2),
           da_ = upload(a.bits.data(), MC * 2), db_ = upload(b.bits.data(), MC * 2),
           ddy = upload(dy.bits.data(), MC * 2), ds0 = upload(s0.data(), S * 4), ddsT = upload(dsT.data(), S * 4);
      auto y = poisoned(MC * 2), sT = poisoned(S * 4), sa = poisoned(MC * 4),
           ckpt = poisoned(cuda::wkv7_train_checkpoint_floats(B, T, H, N) * 4);
      auto gr = poisoned(MC * 2), gz = poisoned(MC * 2), gk = poisoned(MC * 2), gv = poisoned(MC * 2),
           ga = poisoned(MC * 2), gb = poisoned(MC * 2), gs0 = poisoned(S * 4);
      using P = const bf16*;
      const cuda::Wkv7Train p{B, T, H, N, dr_.as<bf16>(), dz_.as<bf16>(), dk_.as<bf16>(), dv_.as<bf16>(),
                              da_.as<bf16>(), db_.as<bf16>(), y.as<bf16>(), ds0.as<float>(), sT.as<float>(),
                              ckpt.as<float>(), sa.as<float>()};
      const cuda::Wkv7TrainGrads g{P(ddy.as()), ddsT.as<float>(), gr.as<bf16>(), gz.as<bf16>(), gk.as<bf16>(),
                                   gv.as<bf16>(), ga.as<bf16>(), gb.as<bf16>(), gs0.as<float>()};
      cuda::wkv7_train_forward(ctx, p);
      cuda::wkv7_train_backward(ctx, p, g);
      ctx.synchronize();

      // The reference per (sequence, head), on the same bf16 values, log-decay w = kScale·σ(z).
      std::vector<float> w(MC);
      for (size_t i = 0; i < MC; ++i) w[i] = float(kScale / (1 + std::exp(-double(z.values[i]))));
      std::vector<double> want_y(MC), want_sT(S), want[6], want_ds0(S);
      for (auto& x : want) x.assign(MC, 0);
      for (int s = 0; s < B; ++s) {
        for (int h = 0; h < H; ++h) {
          const size_t o = size_t(s) * T * C + size_t(h) * N, so = (size_t(s) * H + h) * N * N;
          std::vector<float> state(s0.begin() + long(so), s0.begin() + long(so + size_t(N) * N)), yv(MC);
          std::vector<float> grads[6], gs(size_t(N) * N);
          for (auto& x : grads) x.assign(MC, 0.f);
          ops::Wkv7Head head{T, N, C, r.values.data() + o, w.data() + o, k.values.data() + o, v.values.data() + o,
                             a.values.data() + o, b.values.data() + o, yv.data() + o, state.data()};
          ops::Wkv7Grads hg{dy.values.data() + o, dsT.data() + so, grads[0].data() + o, grads[1].data() + o,
                            grads[2].data() + o, grads[3].data() + o, grads[4].data() + o, grads[5].data() + o,
                            gs.data()};
          ops::ref::wkv7_backward(head, hg);  // S is the initial state here, left unchanged
          ops::ref::wkv7_recurrent(head);     // y, and S → S_T
          for (int t = 0; t < T; ++t) {
            for (int i = 0; i < N; ++i) {
              const size_t e = o + size_t(t) * C + i;
              want_y[e] = yv[e];
              for (int q = 0; q < 6; ++q) want[q][e] = grads[q][e];
              // ∂/∂z from ∂/∂w (log-decay): w = kScale·σ(z).
              const double sg = 1 / (1 + std::exp(-double(z.values[e])));
              want[1][e] = grads[1][e] * kScale * sg * (1 - sg);
            }
          }
          for (size_t e = 0; e < size_t(N) * N; ++e) want_sT[so + e] = state[e], want_ds0[so + e] = gs[e];
        }
      }
      // bf16 outputs: rounding alone is ≈ 2^-9/√3 ≈ 1.1e-3 relative in norm.
      const std::string at = "N=" + std::to_string(N) + " T=" + std::to_string(T);
      EXPECT_LE(rel_error(download_bf16(y, MC), want_y), 5e-3) << "y " << at;
      EXPECT_LE(rel_error(download_f32(sT, S), want_sT), 1e-4) << "S_T " << at;
      const char* names[] = {"dr", "dz", "dk", "dv", "da", "db"};
      const cuda::DeviceBuffer* outs[] = {&gr, &gz, &gk, &gv, &ga, &gb};
      for (int q = 0; q < 6; ++q) {
        EXPECT_LE(rel_error(download_bf16(*outs[q], MC), want[q]), 5e-3) << names[q] << " " << at;
      }
      EXPECT_LE(rel_error(download_f32(gs0, S), want_ds0), 1e-4) << "dS0 " << at;
    }
  }
}

// Document resets (reset_at_eod) against the fp64 training reference (ops::train, whose backward
// recomputes each chunk from its checkpoint): resets at a window's first row with a state in, at a
// chunk's first and last rows, two in a row, several in one chunk, and in the last partial chunk.
TEST(CudaWkv7Train, DocumentResetsMatchTheFp64Reference) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU";
  cuda::Context ctx(0);
  std::mt19937 rng(12);
  for (int N : {32, 64}) {
    for (int T : {40, 100}) {
      const int B = 2, H = 2, C = H * N;
      const size_t MC = size_t(B) * T * C, S = size_t(B) * H * N * N, NN = size_t(N) * N;
      std::vector<unsigned char> reset(size_t(B) * T, 0);
      for (int t : {0, 15, 16, 17, 31, 33, 38}) reset[size_t(t)] = 1;
      for (int t : {5, 32, T - 1}) reset[size_t(T + t)] = 1;
      Bf16Tensor r(normal_floats(MC, rng, 1.f)), z(normal_floats(MC, rng, 1.5f)), k(normal_floats(MC, rng, 0.5f)),
          v(normal_floats(MC, rng, 1.f)), dy(normal_floats(MC, rng, 1.f));
      std::vector<float> af(MC), bf(MC);
      std::uniform_real_distribution<float> unit(0.f, 1.f);
      for (size_t row = 0; row < MC / N; ++row) {
        const auto kh = normal_floats(size_t(N), rng, 1.f);
        double norm = 0;
        for (float x : kh) norm += double(x) * x;
        for (int i = 0; i < N; ++i) {
          const float u = float(kh[size_t(i)] / std::sqrt(norm));
          af[row * N + i] = -u;
          bf[row * N + i] = u * unit(rng);
        }
      }
      Bf16Tensor a(af), b(bf);
      const auto s0 = normal_floats(S, rng, 0.3f), dsT = normal_floats(S, rng, 0.1f);
      auto dr_ = upload(r.bits.data(), MC * 2), dz_ = upload(z.bits.data(), MC * 2),
           dk_ = upload(k.bits.data(), MC * 2), dv_ = upload(v.bits.data(), MC * 2),
           da_ = upload(a.bits.data(), MC * 2), db_ = upload(b.bits.data(), MC * 2),
           ddy = upload(dy.bits.data(), MC * 2), ds0 = upload(s0.data(), S * 4), ddsT = upload(dsT.data(), S * 4),
           dreset = upload(reset);
      auto y = poisoned(MC * 2), sT = poisoned(S * 4), sa = poisoned(MC * 4),
           ckpt = poisoned(cuda::wkv7_train_checkpoint_floats(B, T, H, N) * 4);
      auto gr = poisoned(MC * 2), gz = poisoned(MC * 2), gk = poisoned(MC * 2), gv = poisoned(MC * 2),
           ga = poisoned(MC * 2), gb = poisoned(MC * 2), gs0 = poisoned(S * 4);
      using P = const bf16*;
      cuda::Wkv7Train p{B, T, H, N, dr_.as<bf16>(), dz_.as<bf16>(), dk_.as<bf16>(), dv_.as<bf16>(),
                        da_.as<bf16>(), db_.as<bf16>(), y.as<bf16>(), ds0.as<float>(), sT.as<float>(),
                        ckpt.as<float>(), sa.as<float>()};
      p.reset = dreset.as<unsigned char>();
      const cuda::Wkv7TrainGrads g{P(ddy.as()), ddsT.as<float>(), gr.as<bf16>(), gz.as<bf16>(), gk.as<bf16>(),
                                   gv.as<bf16>(), ga.as<bf16>(), gb.as<bf16>(), gs0.as<float>()};
      cuda::wkv7_train_forward(ctx, p);
      cuda::wkv7_train_backward(ctx, p, g);
      ctx.synchronize();

      // The reference per (sequence, head) in fp64 on the same bf16 values.
      std::vector<double> want_y(MC), want_sT(S), want[6], want_ds0(S);
      for (auto& x : want) x.assign(MC, 0);
      const auto as_double = [&](const std::vector<float>& f) { return std::vector<double>(f.begin(), f.end()); };
      const auto rd = as_double(r.values), kd = as_double(k.values), vd = as_double(v.values),
                 ad = as_double(a.values), bd = as_double(b.values), dyd = as_double(dy.values);
      std::vector<double> wd(MC);
      for (size_t i = 0; i < MC; ++i) wd[i] = kScale / (1 + std::exp(-double(z.values[i])));
      for (int s = 0; s < B; ++s) {
        for (int h = 0; h < H; ++h) {
          const size_t o = size_t(s) * T * C + size_t(h) * N, so = (size_t(s) * H + h) * NN;
          std::vector<double> state(s0.begin() + long(so), s0.begin() + long(so + NN)), yv(MC),
              ckpts(size_t((T + 15) / 16) * NN), dsTd(dsT.begin() + long(so), dsT.begin() + long(so + NN)), gs(NN),
              scratch(ops::train::wkv7_train_scratch(16, N));
          std::vector<double> grads[6];
          for (auto& x : grads) x.assign(MC, 0.0);
          ops::train::Wkv7Train<double> head;
          head.T = T, head.N = N, head.stride = C, head.chunk = 16;
          head.r = rd.data() + o, head.w = wd.data() + o, head.k = kd.data() + o, head.v = vd.data() + o;
          head.a = ad.data() + o, head.b = bd.data() + o, head.y = yv.data() + o, head.S = state.data();
          head.checkpoints = ckpts.data();
          head.reset = reset.data() + size_t(s) * T;
          ops::train::wkv7_train_forward(head);
          ops::train::wkv7_train_backward(head, dyd.data() + o, dsTd.data(), grads[0].data() + o, grads[1].data() + o,
                                          grads[2].data() + o, grads[3].data() + o, grads[4].data() + o,
                                          grads[5].data() + o, gs.data(), scratch.data());
          for (int t = 0; t < T; ++t) {
            for (int i = 0; i < N; ++i) {
              const size_t e = o + size_t(t) * C + i;
              want_y[e] = yv[e];
              for (int q = 0; q < 6; ++q) want[q][e] = grads[q][e];
              const double sg = 1 / (1 + std::exp(-double(z.values[e])));
              want[1][e] = grads[1][e] * kScale * sg * (1 - sg);
            }
          }
          for (size_t e = 0; e < NN; ++e) want_sT[so + e] = state[e], want_ds0[so + e] = gs[e];
        }
      }
      const std::string at = "N=" + std::to_string(N) + " T=" + std::to_string(T);
      EXPECT_LE(rel_error(download_bf16(y, MC), want_y), 5e-3) << "y " << at;
      EXPECT_LE(rel_error(download_f32(sT, S), want_sT), 1e-4) << "S_T " << at;
      const char* names[] = {"dr", "dz", "dk", "dv", "da", "db"};
      const cuda::DeviceBuffer* outs[] = {&gr, &gz, &gk, &gv, &ga, &gb};
      for (int q = 0; q < 6; ++q) {
        EXPECT_LE(rel_error(download_bf16(*outs[q], MC), want[q]), 5e-3) << names[q] << " " << at;
      }
      // Sequence 0 starts a document at row 0: nothing reaches its S₀.
      const auto got_ds0 = download_f32(gs0, S);
      EXPECT_LE(rel_error(got_ds0, want_ds0), 1e-4) << "dS0 " << at;
      for (size_t e = 0; e < size_t(H) * NN; ++e) ASSERT_EQ(got_ds0[e], 0.f) << at;
    }
  }
}

}  // namespace
}  // namespace rwkv

#else

TEST(CudaWkv7Train, BuiltWithoutCuda) { GTEST_SKIP() << "this build has no CUDA backend"; }

#endif
