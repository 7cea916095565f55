// The WKV-7 training kernels on the GPU (bf16 activations, fp32 state), sequential and chunked,
// against the fp64 training reference forward and backward (ops::train), at odd lengths (no
// T % 16 restriction), with an initial state and a state gradient in, with and without document
// resets, outputs poisoned first. Skips without a GPU.
#include <cmath>
#include <random>
#include <string>
#include <utility>

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

// Random WKV-7 inputs as the model makes them (bf16 activations; a = −κ̂, b = κ̂·α with κ̂ a unit
// vector per head and row), an initial state and a state gradient.
struct Inputs {
  int B, T, H, N;
  Bf16Tensor r, z, k, v, a, b, dy;
  std::vector<float> s0, dsT;
  size_t C() const { return size_t(H) * N; }
  size_t MC() const { return size_t(B) * T * C(); }
  size_t S() const { return size_t(B) * H * N * N; }
};

Inputs random_inputs(int B, int T, int H, int N, std::mt19937& rng) {
  const size_t MC = size_t(B) * T * H * N;
  std::vector<float> r = normal_floats(MC, rng, 1.f), z = normal_floats(MC, rng, 1.5f),
                     k = normal_floats(MC, rng, 0.5f), v = normal_floats(MC, rng, 1.f), dy = normal_floats(MC, rng, 1.f);
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
  const size_t S = size_t(B) * H * N * N;
  return {B, T, H, N, Bf16Tensor(r), Bf16Tensor(z), Bf16Tensor(k), Bf16Tensor(v), Bf16Tensor(af), Bf16Tensor(bf),
          Bf16Tensor(dy), normal_floats(S, rng, 0.3f), normal_floats(S, rng, 0.1f)};
}

// y, S_T, the six input gradients (r, z, k, v, a, b) and ∂S₀.
template <typename F>
struct Outputs {
  std::vector<F> y, sT, grads[6], ds0;
};

// Each form (for both passes): sequential, chunked, and the automatic choice.
const std::pair<cuda::Wkv7Form, const char*> kForms[] = {
    {cuda::Wkv7Form::Auto, "auto"}, {cuda::Wkv7Form::Sequential, "sequential"}, {cuda::Wkv7Form::Chunked, "chunked"}};

// The GPU kernels, forward then backward, every output poisoned first; reset (B·T) may be empty.
// `chunked`: set to whether each pass ran chunked.
Outputs<float> run_gpu(cuda::Context& ctx, const Inputs& in, const std::vector<unsigned char>& reset,
                       cuda::Wkv7Form form = cuda::Wkv7Form::Auto, std::pair<bool, bool>* chunked = nullptr) {
  const size_t MC = in.MC(), S = in.S();
  auto dr_ = upload(in.r.bits.data(), MC * 2), dz_ = upload(in.z.bits.data(), MC * 2),
       dk_ = upload(in.k.bits.data(), MC * 2), dv_ = upload(in.v.bits.data(), MC * 2),
       da_ = upload(in.a.bits.data(), MC * 2), db_ = upload(in.b.bits.data(), MC * 2),
       ddy = upload(in.dy.bits.data(), MC * 2), ds0 = upload(in.s0.data(), S * 4), ddsT = upload(in.dsT.data(), S * 4);
  cuda::DeviceBuffer dreset = reset.empty() ? cuda::DeviceBuffer() : upload(reset);
  auto y = poisoned(MC * 2), sT = poisoned(S * 4), sa = poisoned(MC * 4),
       ckpt = poisoned(cuda::wkv7_train_checkpoint_floats(in.B, in.T, in.H, in.N) * 4);
  cuda::DeviceBuffer g[6];
  for (auto& b : g) b = poisoned(MC * 2);
  auto gs0 = poisoned(S * 4);
  using P = const bf16*;
  cuda::Wkv7Train p{in.B, in.T, in.H, in.N, dr_.as<bf16>(), dz_.as<bf16>(), dk_.as<bf16>(), dv_.as<bf16>(),
                    da_.as<bf16>(), db_.as<bf16>(), y.as<bf16>(), ds0.as<float>(), sT.as<float>(),
                    ckpt.as<float>(), sa.as<float>()};
  if (!reset.empty()) p.reset = dreset.as<unsigned char>();
  const cuda::Wkv7TrainGrads gr{P(ddy.as()), ddsT.as<float>(), g[0].as<bf16>(), g[1].as<bf16>(), g[2].as<bf16>(),
                                g[3].as<bf16>(), g[4].as<bf16>(), g[5].as<bf16>(), gs0.as<float>()};
  p.form = form;
  if (chunked) *chunked = {cuda::wkv7_train_chunked(ctx, p, false), cuda::wkv7_train_chunked(ctx, p, true)};
  cuda::wkv7_train_forward(ctx, p);
  cuda::wkv7_train_backward(ctx, p, gr);
  ctx.synchronize();
  Outputs<float> out;
  out.y = download_bf16(y, MC);
  out.sT = download_f32(sT, S);
  for (int q = 0; q < 6; ++q) out.grads[q] = download_bf16(g[q], MC);
  out.ds0 = download_f32(gs0, S);
  return out;
}

// bf16 outputs: rounding alone is ≈ 2^-9/√3 ≈ 1.1e-3 relative in norm. The state: 1e-4 (fp32
// arithmetic, or the chunked forward's 3xTF32 on its path). Its gradient: 1e-4 too, but through
// the chunked backward's TF32 products (unit roundoff 2^-11 ≈ 4.9e-4) twice that roundoff, 1e-3.
// `chunked`: whether the forward, the backward ran chunked.
void expect_close(const Outputs<float>& got, const Outputs<double>& want, const std::string& at,
                  std::pair<bool, bool> chunked = {false, false}) {
  const double dstate = chunked.second ? 1e-3 : 1e-4;
  EXPECT_LE(rel_error(got.y, want.y), 5e-3) << "y " << at;
  EXPECT_LE(rel_error(got.sT, want.sT), 1e-4) << "S_T " << at;
  const char* names[] = {"dr", "dz", "dk", "dv", "da", "db"};
  for (int q = 0; q < 6; ++q) EXPECT_LE(rel_error(got.grads[q], want.grads[q]), 5e-3) << names[q] << " " << at;
  EXPECT_LE(rel_error(got.ds0, want.ds0), dstate) << "dS0 " << at;
}

// The fp64 reference per (sequence, head) on the same bf16 values, log-decay w = kScale·σ(z):
// ops::ref's per-step backward, or with document resets ops::train's (it recomputes each chunk
// from its checkpoint).
Outputs<double> reference(const Inputs& in, const std::vector<unsigned char>& reset) {
  const int T = in.T, N = in.N;
  const size_t MC = in.MC(), S = in.S(), C = in.C(), NN = size_t(N) * N;
  const auto d = [](const std::vector<float>& f) { return std::vector<double>(f.begin(), f.end()); };
  const auto rd = d(in.r.values), kd = d(in.k.values), vd = d(in.v.values), ad = d(in.a.values),
             bd = d(in.b.values), dyd = d(in.dy.values);
  std::vector<double> wd(MC);
  for (size_t i = 0; i < MC; ++i) wd[i] = kScale / (1 + std::exp(-double(in.z.values[i])));
  Outputs<double> want;
  want.y.assign(MC, 0), want.sT.assign(S, 0), want.ds0.assign(S, 0);
  for (auto& x : want.grads) x.assign(MC, 0);
  for (int s = 0; s < in.B; ++s) {
    for (int h = 0; h < in.H; ++h) {
      const size_t o = size_t(s) * T * C + size_t(h) * N, so = (size_t(s) * in.H + h) * NN;
      std::vector<double> state(in.s0.begin() + long(so), in.s0.begin() + long(so + NN)),
          dsT(in.dsT.begin() + long(so), in.dsT.begin() + long(so + NN)), gs(NN),
          ckpts(size_t((T + 15) / 16) * NN), scratch(ops::train::wkv7_train_scratch(16, N));
      ops::train::Wkv7Train<double> head;
      head.T = T, head.N = N, head.stride = int(C), head.chunk = 16;
      head.r = rd.data() + o, head.w = wd.data() + o, head.k = kd.data() + o, head.v = vd.data() + o;
      head.a = ad.data() + o, head.b = bd.data() + o, head.y = want.y.data() + o, head.S = state.data();
      head.checkpoints = ckpts.data();
      if (!reset.empty()) head.reset = reset.data() + size_t(s) * T;
      ops::train::wkv7_train_forward(head);
      std::vector<double> grads[6];
      for (auto& x : grads) x.assign(MC, 0.0);
      ops::train::wkv7_train_backward(head, dyd.data() + o, dsT.data(), grads[0].data() + o, grads[1].data() + o,
                                      grads[2].data() + o, grads[3].data() + o, grads[4].data() + o,
                                      grads[5].data() + o, gs.data(), scratch.data());
      for (int t = 0; t < T; ++t) {
        for (int i = 0; i < N; ++i) {
          const size_t e = o + size_t(t) * C + i;
          for (int q = 0; q < 6; ++q) want.grads[q][e] = grads[q][e];
          // ∂/∂z from ∂/∂w (log-decay): w = kScale·σ(z).
          const double sg = 1 / (1 + std::exp(-double(in.z.values[e])));
          want.grads[1][e] = grads[1][e] * kScale * sg * (1 - sg);
        }
      }
      for (size_t e = 0; e < NN; ++e) want.sT[so + e] = state[e], want.ds0[so + e] = gs[e];
    }
  }
  return want;
}

// Each form (chunks of 16 rows: T = 16, 17 and 100 end on a full, a one-row and a partial chunk;
// T = 1100 takes the chunked forward through several windows of chunks, wkv7_chunked_forward.cu).
TEST(CudaWkv7Train, ForwardAndBackwardMatchTheFp64Reference) {
  RWKV_REQUIRE_GPU();
  cuda::Context ctx(0);
  std::mt19937 rng(11);
  for (int N : {32, 64}) {
    for (int T : {1, 5, 16, 17, 40, 100, 1100}) {
      const Inputs in = random_inputs(2, T, 3, N, rng);
      const Outputs<double> want = reference(in, {});
      for (const auto& [form, name] : kForms) {
        std::pair<bool, bool> chunked;
        const Outputs<float> got = run_gpu(ctx, in, {}, form, &chunked);
        expect_close(got, want, "N=" + std::to_string(N) + " T=" + std::to_string(T) + " " + name, chunked);
      }
    }
    // More heads than multiprocessors: the sequential forward's blocks take whole heads, not
    // slices, and the automatic backward is the sequential one.
    const int heads = (ctx.sms + 1) / 2;
    const Inputs in = random_inputs(2, 33, heads, N, rng);
    const Outputs<double> want = reference(in, {});
    for (const auto& [form, name] : kForms) {
      std::pair<bool, bool> chunked;
      const Outputs<float> got = run_gpu(ctx, in, {}, form, &chunked);
      expect_close(got, want, "N=" + std::to_string(N) + " T=33 H=" + std::to_string(heads) + " " + name, chunked);
    }
  }
}

// Document resets (reset_at_eod): at a window's first row with a state in, at a chunk's first and
// last rows, two in a row, several in one chunk, and in the last partial chunk.
TEST(CudaWkv7Train, DocumentResetsMatchTheFp64Reference) {
  RWKV_REQUIRE_GPU();
  cuda::Context ctx(0);
  std::mt19937 rng(12);
  for (int N : {32, 64}) {
    for (int T : {40, 100}) {
      const int B = 2, H = 2;
      std::vector<unsigned char> reset(size_t(B) * T, 0);
      for (int t : {0, 15, 16, 17, 31, 33, 38}) reset[size_t(t)] = 1;
      for (int t : {5, 32, T - 1}) reset[size_t(T + t)] = 1;
      const Inputs in = random_inputs(B, T, H, N, rng);
      const Outputs<float> got = run_gpu(ctx, in, reset);
      const std::string at = "N=" + std::to_string(N) + " T=" + std::to_string(T);
      expect_close(got, reference(in, reset), at);
      // Sequence 0 starts a document at row 0: nothing reaches its S₀.
      for (size_t e = 0; e < size_t(H) * N * N; ++e) ASSERT_EQ(got.ds0[e], 0.f) << at;
    }
  }
}

}  // namespace
}  // namespace rwkv

#else

TEST(CudaWkv7Train, BuiltWithoutCuda) { GTEST_SKIP() << "this build has no CUDA backend"; }

#endif
