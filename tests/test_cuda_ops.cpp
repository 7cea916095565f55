// Every CUDA op against its CPU twin (ops::ref / model helpers / plain loops here) on random
// inputs at many shapes, odd ones included, with outputs poisoned (NaN) before each run and
// tolerances derived from each dtype's rounding. Skips without a GPU.
#include <cmath>
#include <cstdlib>
#include <random>

#include "model/common.h"
#include "ops/ops.h"
#include "rwkv/model.h"
#include "testing.h"

#ifdef RWKV_WITH_CUDA
#include "cuda_testing.h"
#include "ops/cuda/kernels.h"

namespace rwkv {
namespace {

using cuda::Act;
using cuda::DeviceBuffer;
using test::normal_floats;

cuda::Context& context() { return test::cuda_context(); }


using test::upload;
DeviceBuffer poisoned(size_t floats) { return test::poisoned_bytes(floats * 4); }
std::vector<float> download(const DeviceBuffer& b, size_t floats) { return test::download_f32(b, floats); }

double act_ref(double x, Act act) {
  switch (act) {
    case Act::Tanh: return std::tanh(x);
    case Act::Sigmoid: return 1 / (1 + std::exp(-x));
    case Act::SqRelu: return x > 0 ? x * x : 0;
    case Act::Silu: return x / (1 + std::exp(-x));
    default: return x;
  }
}

// Relative rounding of one input element on the path a product of M rows takes: the matrix-vector
// kernel reads fp32 activations; cuBLASLt reads them rounded to the weights' 16-bit type.
double input_rounding(DType dtype, int M) {
  if (M <= cuda::kGemvRows || dtype == DType::F32) return 0;
  return dtype == DType::BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);  // unit roundoff
}

// y = act(x·Wᵀ) (+ y) on the GPU against double sums over the same (rounded) weights. The bound
// per element: (input rounding + 1e-6) · Σ|w||x|, through the activation's slope.
void check_linear(DType dtype, int M, int rows, int cols, Act act, bool accumulate, std::mt19937& rng) {
  const auto wf = normal_floats(size_t(rows) * size_t(cols), rng, 0.5f);
  std::vector<uint8_t> w(dtype_nbytes(dtype, wf.size()));
  convert_from_f32(dtype, wf.data(), w.data(), wf.size());
  std::vector<float> wr(wf.size());
  convert_to_f32(dtype, w.data(), wr.data(), wf.size());
  const auto x = normal_floats(size_t(M) * size_t(cols), rng);
  const auto y0 = normal_floats(size_t(M) * size_t(rows), rng);
  auto dw = upload(w.data(), w.size());
  auto dx = upload(x);
  auto dy = accumulate ? upload(y0) : poisoned(y0.size());
  const ops::Matrix W{dtype, rows, cols, dw.as()};
  cuda::linear(context(), W, dx.as<float>(), M, dy.as<float>(), act, accumulate);
  const auto got = download(dy, y0.size());
  double worst = 0;
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < rows; ++r) {
      double sum = 0, mag = 0;
      for (int c = 0; c < cols; ++c) {
        const double p = double(wr[size_t(r) * cols + c]) * x[size_t(m) * cols + c];
        sum += p;
        mag += std::abs(p);
      }
      const double bound_pre = (input_rounding(dtype, M) + 1e-6) * mag + 1e-30;
      // Error out = error in × the activation's slope (SiLU's is below 1.1).
      const double slope = act == Act::SqRelu ? 2 * std::abs(sum) + bound_pre : act == Act::Silu ? 1.1 : 1;
      const size_t i = size_t(m) * rows + r;
      const double want = accumulate ? y0[i] + sum : act_ref(sum, act);
      const double err = std::abs(double(got[i]) - want);
      ASSERT_FALSE(std::isnan(got[i])) << "unwritten y[" << m << "," << r << "]";
      worst = std::max(worst, err / (slope * bound_pre + 1e-7 * std::abs(want)));
    }
  }
  EXPECT_LE(worst, 1.0) << dtype_name(dtype) << " M=" << M << " " << rows << "×" << cols
                        << " act=" << int(act) << " acc=" << accumulate;
}

TEST(CudaOps, LinearAtManyShapesDtypesAndActivations) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(1);
  // Long rows split across 2, 4 and 8 warps (odd slice ends, and one not a multiple of 8).
  const std::pair<int, int> shapes[] = {{1, 8},     {7, 13},     {64, 64},   {33, 96},   {256, 200},
                                        {130, 1024}, {96, 8},    {5, 8192},  {37, 2056}, {3, 3001}};
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    for (int M : {1, 2, 3, 5, 8, 9, 17, 64}) {
      for (const auto& [rows, cols] : shapes) {
        check_linear(dtype, M, rows, cols, Act::None, false, rng);
      }
    }
    for (Act act : {Act::Tanh, Act::Sigmoid, Act::SqRelu, Act::Silu}) {
      for (int M : {1, 4, 33}) check_linear(dtype, M, 65, 72, act, false, rng);
    }
    for (int M : {1, 8, 20}) check_linear(dtype, M, 77, 136, Act::None, true, rng);
  }
}

// Several jobs in one launch (different shapes, inputs, activations; one of another dtype) equal
// the same products one at a time.
TEST(CudaOps, LinearJobsEqualSeparateProducts) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(2);
  for (int M : {1, 3, 8, 12}) {
    struct Spec { DType dtype; int rows, cols; Act act; bool acc; };
    const Spec specs[] = {{DType::BF16, 64, 64, Act::None, false}, {DType::BF16, 16, 64, Act::Tanh, false},
                          {DType::BF16, 200, 16, Act::None, true}, {DType::F32, 9, 24, Act::Sigmoid, false},
                          {DType::BF16, 33, 40, Act::SqRelu, false},
                          {DType::BF16, 20, 4096, Act::None, false}};  // rows split over 8 warps
    std::vector<DeviceBuffer> keep;
    std::vector<cuda::LinearJob> jobs, singles;
    std::vector<std::pair<size_t, size_t>> outs;  // (index in keep of the job's y, single's y)
    for (const Spec& s : specs) {
      const auto wf = normal_floats(size_t(s.rows) * s.cols, rng, 0.3f);
      std::vector<uint8_t> w(dtype_nbytes(s.dtype, wf.size()));
      convert_from_f32(s.dtype, wf.data(), w.data(), wf.size());
      keep.push_back(upload(w.data(), w.size()));
      const ops::Matrix W{s.dtype, s.rows, s.cols, keep.back().as()};
      keep.push_back(upload(normal_floats(size_t(M) * s.cols, rng)));
      const float* x = keep.back().as<float>();
      const auto y0 = normal_floats(size_t(M) * s.rows, rng);
      keep.push_back(s.acc ? upload(y0) : poisoned(y0.size()));
      float* y1 = keep.back().as<float>();
      keep.push_back(s.acc ? upload(y0) : poisoned(y0.size()));
      float* y2 = keep.back().as<float>();
      outs.push_back({keep.size() - 2, keep.size() - 1});
      jobs.push_back({W, x, y1, s.act, s.acc});
      singles.push_back({W, x, y2, s.act, s.acc});
    }
    cuda::linear_jobs(context(), jobs.data(), int(jobs.size()), M);
    for (const auto& j : singles) cuda::linear(context(), j.W, j.x, M, j.y, j.act, j.accumulate);
    for (size_t i = 0; i < outs.size(); ++i) {
      const size_t n = size_t(M) * size_t(specs[i].rows);
      const auto a = download(keep[outs[i].first], n), b = download(keep[outs[i].second], n);
      EXPECT_EQ(a, b) << "job " << i << " M=" << M;  // the same kernel per job: bit for bit
    }
  }
}

TEST(CudaOps, EmbedAndLayerNorm) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(3);
  for (int C : {1, 7, 64, 200, 1024, 2050}) {
    for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
      const int V = 11, M = 5;
      const auto ef = normal_floats(size_t(V) * C, rng);
      std::vector<uint8_t> e(dtype_nbytes(dtype, ef.size()));
      convert_from_f32(dtype, ef.data(), e.data(), ef.size());
      const std::vector<int> tokens = {3, 0, 10, 3, 7};
      auto de = upload(e.data(), e.size());
      auto dt = upload(tokens.data(), tokens.size() * 4);
      auto dx = poisoned(size_t(M) * C);
      cuda::embed(context(), dt.as<int>(), M, {dtype, V, C, de.as()}, dx.as<float>());
      const auto got = download(dx, size_t(M) * C);
      for (int m = 0; m < M; ++m) {
        std::vector<float> row(static_cast<size_t>(C));
        convert_to_f32(dtype, e.data() + dtype_nbytes(dtype, size_t(tokens[size_t(m)]) * C), row.data(), size_t(C));
        EXPECT_EQ(test::slice(got, size_t(m), 1, size_t(C)), row);
      }
    }
    // LayerNorm over every other row of a strided input (the last-row logits path), and in place.
    const int M = 6;
    auto x = normal_floats(size_t(2 * M) * C, rng, 3.f);
    for (float& v : x) v += 2.f;  // a mean to remove
    const auto w = normal_floats(size_t(C), rng), b = normal_floats(size_t(C), rng);
    auto dx = upload(x), dw = upload(w), db = upload(b);
    auto dout = poisoned(size_t(M) * C);
    cuda::layer_norm(context(), dx.as<float>(), 2 * C, dout.as<float>(), M, C, dw.as<float>(), db.as<float>());
    std::vector<float> picked, want(size_t(M) * C);
    for (int m = 0; m < M; ++m) picked.insert(picked.end(), x.begin() + 2 * m * C, x.begin() + (2 * m + 1) * C);
    model::layer_norm(picked.data(), want.data(), M, C, w.data(), b.data());
    EXPECT_LE(test::compare(download(dout, want.size()), want).max_abs, 2e-5) << "C=" << C;
    cuda::layer_norm(context(), dx.as<float>(), C, dx.as<float>(), 2 * M, C, dw.as<float>(), db.as<float>());
    std::vector<float> want2(x.size());
    model::layer_norm(x.data(), want2.data(), 2 * M, C, w.data(), b.data());
    EXPECT_LE(test::compare(download(dx, x.size()), want2).max_abs, 2e-5) << "C=" << C << " in place";
  }
}

// Token shift + mixes against model::token_shift, over pooled states in scattered slots.
TEST(CudaOps, TokenShiftMixCarriesTheShiftState) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(4);
  for (int T : {1, 2, 15, 16, 17, 40}) {
    for (int n : {1, 6}) {
      const int B = 3, C = 70, floats = 3 * C, offset = C;  // shift vector in the middle
      const std::vector<int> slots = {2, 0, 3};
      const auto xn = normal_floats(size_t(B * T) * C, rng);
      auto pool = normal_floats(size_t(4) * floats, rng);
      std::vector<std::vector<float>> mixes;
      for (int j = 0; j < n; ++j) mixes.push_back(normal_floats(size_t(C), rng));
      auto dxn = upload(xn), dpool = upload(pool), dslots = upload(slots.data(), 12);
      std::vector<DeviceBuffer> dmix, dout;
      cuda::ShiftMix sm;
      sm.n = n;
      for (int j = 0; j < n; ++j) {
        dmix.push_back(upload(mixes[size_t(j)]));
        dout.push_back(poisoned(xn.size()));
        const bool difference = n == 6 && j == 5;  // a null mix: out = prev − xn
        sm.mix[j] = difference ? nullptr : dmix.back().as<float>();
        sm.out[j] = dout.back().as<float>();
      }
      cuda::token_shift_mix(context(), dxn.as<float>(), B, T, C,
                            {dpool.as<float>(), dslots.as<int>(), size_t(floats)}, size_t(offset), sm);
      std::vector<float> delta(xn.size());
      std::vector<float*> states;
      for (int b = 0; b < B; ++b) states.push_back(pool.data() + size_t(slots[size_t(b)]) * floats);
      model::token_shift(xn.data(), delta.data(), B, T, C, states.data(), size_t(offset));
      // The null mix: the difference, bit for bit (the same subtraction as the CPU's).
      if (n == 6) {
        EXPECT_EQ(download(dout[5], xn.size()), delta) << "T=" << T;
      }
      for (int j = 0; j < (n == 6 ? 5 : n); ++j) {
        std::vector<float> want(xn.size());
        for (size_t i = 0; i < xn.size(); ++i) want[i] = xn[i] + delta[i] * mixes[size_t(j)][i % C];
        EXPECT_LE(test::compare(download(dout[size_t(j)], xn.size()), want).max_abs, 1e-6) << "T=" << T;
      }
      EXPECT_EQ(download(dpool, pool.size()), pool) << "T=" << T;  // shift vectors, and nothing else
    }
  }
}

// The WKV-7 scan against ops::ref::wkv7_recurrent for every head size, scattered slots.
TEST(CudaOps, Wkv7ScanMatchesTheReference) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(5);
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  for (int N : {16, 32, 64, 128}) {
    // 33 and 70: chunks of 16 (8 at N = 128) and a partial one. The last case has more heads
    // than multiprocessors: blocks take whole heads instead of slices of 16 rows.
    for (int T : {1, 7, 33, 70, -70}) {
      const bool wide = T < 0;
      T = std::abs(T);
      const int B = 3, H = wide ? (sms + B - 1) / B : 2, C = H * N;
      const size_t floats = size_t(H) * N * N + 8, offset = 4;
      const std::vector<int> slots = {1, 3, 0};
      const size_t MC = size_t(B * T) * C;
      auto r = normal_floats(MC, rng), k = normal_floats(MC, rng, 0.5f), v = normal_floats(MC, rng);
      std::vector<float> w(MC), a(MC), b(MC);
      std::uniform_real_distribution<float> dec(-0.6f, -0.01f), u(0.f, 1.f);
      for (size_t i = 0; i < MC; ++i) w[i] = dec(rng);
      // a = −κ̂, b = κ̂·α with κ̂ a unit vector per head, as the model makes them.
      for (size_t row = 0; row < size_t(B * T) * H; ++row) {
        double norm = 0;
        std::vector<float> kh(static_cast<size_t>(N));
        for (int i = 0; i < N; ++i) norm += double(kh[size_t(i)] = std::normal_distribution<float>()(rng)) * kh[size_t(i)];
        for (int i = 0; i < N; ++i) {
          const float unit = float(kh[size_t(i)] / std::sqrt(norm));
          a[row * N + i] = -unit;
          b[row * N + i] = unit * u(rng);
        }
      }
      auto pool = normal_floats(4 * floats, rng, 0.3f);
      auto dr = upload(r), dw = upload(w), dk = upload(k), dv = upload(v), da = upload(a), db = upload(b);
      auto dpool = upload(pool), dslots = upload(slots.data(), 12);
      auto dy = poisoned(MC);
      cuda::wkv7_scan(context(), B, T, H, N, dr.as<float>(), dw.as<float>(), dk.as<float>(), dv.as<float>(),
                      da.as<float>(), db.as<float>(), dy.as<float>(), {dpool.as<float>(), dslots.as<int>(), floats},
                      offset);
      std::vector<float> y(MC);
      for (int s = 0; s < B; ++s) {
        for (int h = 0; h < H; ++h) {
          const size_t o = size_t(s) * T * C + size_t(h) * N;
          ops::Wkv7Head head{T, N, C, r.data() + o, w.data() + o, k.data() + o, v.data() + o,
                             a.data() + o, b.data() + o, y.data() + o,
                             pool.data() + size_t(slots[size_t(s)]) * floats + offset + size_t(h) * N * N};
          ops::ref::wkv7_recurrent(head);
        }
      }
      EXPECT_LE(test::compare(download(dy, MC), y).max_abs, 2e-5 * std::sqrt(double(N * T)))
          << "N=" << N << " T=" << T << " H=" << H;
      EXPECT_LE(test::compare(download(dpool, pool.size()), pool).max_abs, 2e-5 * std::sqrt(double(N * T)))
          << "N=" << N << " T=" << T << " H=" << H;
    }
  }
}

// RWKV-7's per-head preparation and output against a double transcription of spec §2.4.
TEST(CudaOps, Rwkv7PrepareAndOutput) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(6);
  for (int N : {16, 24, 64, 100}) {
    for (bool layer0 : {true, false}) {
      const int M = 5, H = 3, C = H * N;
      const size_t MC = size_t(M) * C;
      auto w = normal_floats(MC, rng), k = normal_floats(MC, rng), v = normal_floats(MC, rng),
           a = normal_floats(MC, rng), vf = normal_floats(MC, rng), vl = normal_floats(MC, rng);
      auto w0 = normal_floats(size_t(C), rng), a0 = normal_floats(size_t(C), rng),
           v0 = normal_floats(size_t(C), rng), k_k = normal_floats(size_t(C), rng),
           k_a = normal_floats(size_t(C), rng);
      auto dw = upload(w), dk = upload(k), dv = upload(v), da = upload(a), dvf = upload(vf), dvl = upload(vl);
      auto dw0 = upload(w0), da0 = upload(a0), dv0 = upload(v0), dkk = upload(k_k), dka = upload(k_a);
      auto db = poisoned(MC);
      if (layer0) dvf = poisoned(MC);
      cuda::rwkv7_prepare(context(), M, H, N,
                          {dw.as<float>(), dk.as<float>(), dv.as<float>(), da.as<float>(), db.as<float>(),
                           dvf.as<float>(), layer0 ? nullptr : dvl.as<float>(), dw0.as<float>(),
                           da0.as<float>(), dv0.as<float>(), dkk.as<float>(), dka.as<float>()});
      const auto sig = [](double z) { return 1 / (1 + std::exp(-z)); };
      std::vector<float> ww(MC), wk(MC), wv(MC), wa(MC), wb(MC), wvf = layer0 ? v : vf;
      for (int m = 0; m < M; ++m) {
        for (int h = 0; h < H; ++h) {
          double norm = 0;
          for (int i = 0; i < N; ++i) {
            const size_t j = size_t(m) * C + h * N + i;
            norm += double(k[j]) * k_k[size_t(h * N + i)] * k[j] * k_k[size_t(h * N + i)];
          }
          norm = std::max(std::sqrt(norm), 1e-12);
          for (int i = 0; i < N; ++i) {
            const size_t j = size_t(m) * C + h * N + i, c = size_t(h * N + i);
            const double kh = k[j] * k_k[c] / norm, alpha = sig(a0[c] + a[j]);
            wv[j] = float(layer0 ? v[j] : v[j] + (vf[j] - v[j]) * sig(v0[c] + vl[j]));
            ww[j] = float(-std::exp(-0.5) * sig(w0[c] + w[j]));
            wk[j] = float(k[j] * (1 + (alpha - 1) * k_a[c]));
            wa[j] = float(-kh);
            wb[j] = float(kh * alpha);
          }
        }
      }
      const double tol = 2e-6;
      EXPECT_LE(test::compare(download(dw, MC), ww).max_abs, tol) << "N=" << N;
      EXPECT_LE(test::compare(download(dk, MC), wk).max_abs, 2e-5) << "N=" << N;
      EXPECT_LE(test::compare(download(dv, MC), wv).max_abs, 2e-5) << "N=" << N;
      EXPECT_LE(test::compare(download(da, MC), wa).max_abs, tol) << "N=" << N;
      EXPECT_LE(test::compare(download(db, MC), wb).max_abs, tol) << "N=" << N;
      EXPECT_EQ(download(dvf, MC), wvf) << "N=" << N;

      // Output: GroupNorm + bonus, gated.
      auto y = normal_floats(MC, rng, 2.f), r = normal_floats(MC, rng), g = normal_floats(MC, rng);
      auto r_k = normal_floats(size_t(C), rng), lw = normal_floats(size_t(C), rng), lb = normal_floats(size_t(C), rng);
      auto dy = upload(y), dr = upload(r), dg = upload(g), drk = upload(r_k), dlw = upload(lw), dlb = upload(lb);
      auto dk2 = upload(k), dv2 = upload(v);
      const float eps = 64e-5f;
      cuda::rwkv7_output(context(), M, H, N,
                         {dy.as<float>(), dr.as<float>(), dk2.as<float>(), dv2.as<float>(), dg.as<float>(),
                          drk.as<float>(), dlw.as<float>(), dlb.as<float>()},
                         eps);
      std::vector<float> want(y);
      model::group_norm(want.data(), M, H, N, lw.data(), lb.data(), eps);
      for (int m = 0; m < M; ++m) {
        for (int h = 0; h < H; ++h) {
          double bonus = 0;
          for (int i = 0; i < N; ++i) {
            const size_t j = size_t(m) * C + h * N + i;
            bonus += double(r[j]) * k[j] * r_k[size_t(h * N + i)];
          }
          for (int i = 0; i < N; ++i) {
            const size_t j = size_t(m) * C + h * N + i;
            want[j] = float((want[j] + bonus * v[j]) * g[j]);
          }
        }
      }
      EXPECT_LE(test::compare(download(dy, MC), want).max_abs, 5e-5) << "N=" << N;
    }
  }
}

TEST(CudaOps, ActivateAndErrors) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(7);
  const auto x = normal_floats(1001, rng, 3.f);
  for (Act act : {Act::Tanh, Act::Sigmoid, Act::SqRelu}) {
    auto dx = upload(x);
    cuda::activate(context(), dx.as<float>(), x.size(), act);
    const auto got = download(dx, x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      EXPECT_NEAR(got[i], act_ref(x[i], act), 1e-6 * (1 + std::abs(act_ref(x[i], act))));
    }
  }
  // Quantized weights are not a GPU type; accumulate with an activation is refused.
  auto d = upload(x);
  EXPECT_THROW(cuda::linear(context(), {DType::Q8_0, 1, 32, d.as()}, d.as<float>(), 1, d.as<float>()), Error);
  EXPECT_THROW(cuda::linear(context(), {DType::F32, 1, 32, d.as()}, d.as<float>(), 1, d.as<float>(), Act::Tanh, true), Error);
  EXPECT_THROW({ cuda::Context bad(cuda_device_count()); }, Error);
  EXPECT_THROW(DeviceBuffer(size_t(1) << 60), Error);
}

}  // namespace
}  // namespace rwkv

#else

TEST(CudaOps, BuiltWithoutCuda) { GTEST_SKIP() << "this build has no CUDA backend"; }

#endif
