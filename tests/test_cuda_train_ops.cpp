// The GPU training ops (ops/cuda/train_ops.h) against their plain-loop twins (ops/train.h, the
// optimizer's AdamW) on random inputs at odd shapes, outputs poisoned first: LayerNorm forward
// and backward, the token shift with the mixes and its backward, the mixes' one-pass backward,
// column sums, the element-wise ops with bf16 outputs, the cross-entropy rows, the embedding's
// backward, Σg² and AdamW. The per-head RWKV-7 ops are checked through the whole model's
// gradients (test_cuda_train). Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "ops/train.h"
#include "rwkv/model.h"
#include "testing.h"
#include "train/optimizer.h"

#ifdef RWKV_WITH_CUDA
#include "cuda_testing.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/train_ops.h"

namespace rwkv {
namespace {

namespace ct = cuda::train;
namespace ot = ops::train;
using cuda::DeviceBuffer;
using test::download_bf16;
using test::normal_floats;
using test::download_f32;
using test::upload;

cuda::Context& context() { return test::cuda_context(); }


DeviceBuffer poisoned(size_t floats) { return test::poisoned_bytes(floats * 4); }

// Relative error of fp32 results computed in another order: a few ulps of the largest terms.
constexpr double kF32 = 2e-5;

TEST(CudaTrainOps, LayerNormForwardAndBackward) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(1);
  // C ≤ 1024 with C % 4 == 0: rows in registers (one, several and all eight float4 groups per
  // lane); 1026: the block-per-row kernel. M = 300: several blocks of 128 rows, the last partial.
  for (const int C : {8, 100, 768, 1000, 1026}) {
    for (const int M : {1, 37, 300}) {
      const auto x = normal_floats(size_t(M) * C, rng, 2.f, 0.5f), w = normal_floats(C, rng, 0.5f, 1.f),
                 b = normal_floats(C, rng, 0.1f), dout = normal_floats(size_t(M) * C, rng),
                 dx0 = normal_floats(size_t(M) * C, rng), dw0 = normal_floats(C, rng), db0 = normal_floats(C, rng);
      std::vector<float> out(x.size()), mean(M), rstd(M), dx = dx0, dw = dw0, db = db0;
      ot::layer_norm_forward<float>(x.data(), M, C, w.data(), b.data(), 1e-5f, out.data(), mean.data(), rstd.data());
      ot::layer_norm_backward<float>(dout.data(), x.data(), M, C, w.data(), mean.data(), rstd.data(), dx.data(),
                                     dw.data(), db.data());
      auto gx = upload(x), gw = upload(w), gb = upload(b), gout = poisoned(x.size()), gmean = poisoned(M),
           grstd = poisoned(M), gdout = upload(dout), gdx = upload(dx0), gdw = upload(dw0), gdb = upload(db0),
           scratch = poisoned(x.size());
      ct::layer_norm_forward(context(), gx.as<float>(), M, C, gw.as<float>(), gb.as<float>(), 1e-5f,
                             gout.as<float>(), gmean.as<float>(), grstd.as<float>());
      ct::layer_norm_backward(context(), gdout.as<float>(), gx.as<float>(), M, C, gw.as<float>(), gmean.as<float>(),
                              grstd.as<float>(), gdx.as<float>(), gdw.as<float>(), gdb.as<float>(),
                              scratch.as<float>());
      const std::string at = "M " + std::to_string(M) + " C " + std::to_string(C);
      EXPECT_LE(test::rel_norm_error(download_f32(gout, x.size()).data(), out.data(), x.size()), kF32) << at;
      EXPECT_LE(test::rel_norm_error(download_f32(grstd, M).data(), rstd.data(), size_t(M)), kF32) << at;
      EXPECT_LE(test::rel_norm_error(download_f32(gdx, x.size()).data(), dx.data(), x.size()), kF32) << at;
      EXPECT_LE(test::rel_norm_error(download_f32(gdw, C).data(), dw.data(), size_t(C)), kF32) << at;
      EXPECT_LE(test::rel_norm_error(download_f32(gdb, C).data(), db.data(), size_t(C)), kF32) << at;
    }
  }
}

TEST(CudaTrainOps, TokenShiftMixesAndTheirBackward) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(2);
  // C = 33: one channel at a time; C = 64: four at a time (train_ops.cu's 16-byte kernels).
  const std::pair<int, int> cases[] = {{0, 33}, {1, 33}, {2, 33}, {0, 64}, {1, 64}, {2, 64}};
  for (const auto& cs : cases) {
    // No previous rows, previous rows, and document resets.
    const int variant = cs.first, C = cs.second;
    const bool with_prev = variant > 0;
    const int B = 3, T = 5, M = B * T;
    // Resets at a sequence's first row (its previous row unused), mid-sequence, two in a row.
    std::vector<unsigned char> reset_rows(M, 0);
    for (int m : {5, 2, 8, 9, 14}) reset_rows[size_t(m)] = 1;
    const unsigned char* reset = variant == 2 ? reset_rows.data() : nullptr;
    auto greset_rows = upload(reset_rows);
    const unsigned char* greset = reset ? greset_rows.as<unsigned char>() : nullptr;
    const size_t n = size_t(M) * C, stride = size_t(C) + 17;  // prev rows inside a wider state
    const auto h = normal_floats(n, rng), states = normal_floats(size_t(B) * stride, rng), mu = normal_floats(C, rng, 0.5f);
    std::vector<float> prev(size_t(B) * C);
    for (int b = 0; b < B; ++b) std::copy_n(states.begin() + long(b * stride + 7), C, prev.begin() + long(b * C));
    std::vector<float> delta(n);
    ot::token_shift_forward<float>(h.data(), with_prev ? prev.data() : nullptr, B, T, C, delta.data(), reset);
    auto gh = upload(h), gstates = upload(states), gdelta = poisoned(n), gmu = upload(mu);
    const ct::Rows rows{with_prev ? gstates.as<float>() + 7 : nullptr, stride};
    // δ and out = bf16(h + δ⊙μ), twice (two mixes in one launch); then the same mixes without δ.
    auto o1 = test::poisoned_bytes(n * 2), o2 = test::poisoned_bytes(n * 2), o3 = test::poisoned_bytes(n * 2);
    ct::shift_mix_bf16(context(), gh.as<float>(), rows, B, T, C,
                       {2, {gmu.as<float>(), gmu.as<float>()}, {o1.as<ct::bf16>(), o2.as<ct::bf16>()}},
                       gdelta.as<float>(), greset);
    EXPECT_EQ(download_f32(gdelta, n), delta);
    ct::shift_mix_bf16(context(), gh.as<float>(), rows, B, T, C, {1, {gmu.as<float>()}, {o3.as<ct::bf16>()}},
                       nullptr, greset);
    const auto m1 = download_bf16(o1, n), m2 = download_bf16(o2, n), m3 = download_bf16(o3, n);
    for (size_t i = 0; i < n; ++i) {
      // One bf16 rounding (2⁻⁹), whether or not either side fused the multiply-add.
      const float want = h[i] + delta[i] * mu[i % C];
      ASSERT_NEAR(m1[i], want, std::abs(want) * 0x1p-8 + 1e-30) << i;
      ASSERT_EQ(m2[i], m1[i]);
      ASSERT_EQ(m3[i], m1[i]);
    }
    // Backward of three mixes in one pass (dh, ddelta overwritten), then of the shift.
    constexpr int kMixes = 3;
    std::vector<std::vector<float>> dout(kMixes), mus(kMixes), dmu0(kMixes), dmu(kMixes);
    std::vector<float> dh(n, 0.f), dd(n, 0.f), dprev(size_t(B) * C, 0.f);
    for (int j = 0; j < kMixes; ++j) {
      dout[j] = normal_floats(n, rng), mus[j] = normal_floats(C, rng, 0.5f), dmu0[j] = normal_floats(C, rng);
      dmu[j] = dmu0[j];
      for (size_t i = 0; i < n; ++i) {
        dh[i] += dout[j][i];
        dd[i] += dout[j][i] * mus[j][i % C];
        dmu[j][i % C] += dout[j][i] * delta[i];
      }
    }
    std::vector<float> dx = dh;
    ot::token_shift_backward<float>(dd.data(), B, T, C, dx.data(), dprev.data(), reset);
    std::vector<DeviceBuffer> gdout, gmus, gdmu;
    ct::MixGrads mg;
    mg.n = kMixes;
    for (int j = 0; j < kMixes; ++j) {
      gdout.push_back(upload(dout[j])), gmus.push_back(upload(mus[j])), gdmu.push_back(upload(dmu0[j]));
    }
    for (int j = 0; j < kMixes; ++j) {
      mg.dout[j] = gdout[j].as<float>(), mg.mu[j] = gmus[j].as<float>(), mg.dmu[j] = gdmu[j].as<float>();
    }
    auto gdh = poisoned(n), gdd = poisoned(n), gdstates = upload(states);
    ct::mix_backward(context(), mg, gdelta.as<float>(), M, C, gdh.as<float>(), gdd.as<float>());
    for (int j = 0; j < kMixes; ++j) {
      EXPECT_LE(test::rel_norm_error(download_f32(gdmu[j], C).data(), dmu[j].data(), size_t(C)), kF32) << j;
    }
    EXPECT_LE(test::rel_norm_error(download_f32(gdd, n).data(), dd.data(), n), 1e-6);
    ct::token_shift_backward(context(), gdd.as<float>(), B, T, C, gdh.as<float>(), {gdstates.as<float>() + 7, stride},
                             greset);
    EXPECT_LE(test::rel_norm_error(download_f32(gdh, n).data(), dx.data(), n), 1e-6);
    const auto got_states = download_f32(gdstates, size_t(B) * stride);
    for (int b = 0; b < B; ++b) {
      for (size_t i = 0; i < stride; ++i) {
        const bool in_row = i >= 7 && i < 7 + size_t(C);
        if (in_row) {
          ASSERT_NEAR(got_states[b * stride + i], dprev[b * C + i - 7], 1e-6 * (1 + std::abs(dprev[b * C + i - 7])));
        } else {
          ASSERT_EQ(got_states[b * stride + i], states[b * stride + i]) << b << " " << i;  // untouched
        }
      }
    }
  }
}

// The mixes' one-pass backward over several blocks of rows (the last one partial), one and six
// mixes, both channel widths.
TEST(CudaTrainOps, MixBackwardOverRowBlocks) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(5);
  for (const int M : {129, 300}) {
    for (const int C : {33, 768}) {
      for (const int mixes : {1, 6}) {
        const size_t n = size_t(M) * C;
        const auto delta = normal_floats(n, rng);
        std::vector<double> dh(n, 0.0), dd(n, 0.0);
        std::vector<std::vector<float>> dout(mixes), mus(mixes), dmu0(mixes);
        std::vector<std::vector<double>> dmu(mixes);
        std::vector<DeviceBuffer> gdout, gmus, gdmu;
        ct::MixGrads mg;
        mg.n = mixes;
        for (int j = 0; j < mixes; ++j) {
          dout[j] = normal_floats(n, rng), mus[j] = normal_floats(C, rng, 0.5f), dmu0[j] = normal_floats(C, rng);
          dmu[j].assign(dmu0[j].begin(), dmu0[j].end());
          for (size_t i = 0; i < n; ++i) {
            dh[i] += dout[j][i], dd[i] += double(dout[j][i]) * mus[j][i % C];
            dmu[j][i % C] += double(dout[j][i]) * delta[i];
          }
          gdout.push_back(upload(dout[j])), gmus.push_back(upload(mus[j])), gdmu.push_back(upload(dmu0[j]));
        }
        for (int j = 0; j < mixes; ++j) {
          mg.dout[j] = gdout[j].as<float>(), mg.mu[j] = gmus[j].as<float>(), mg.dmu[j] = gdmu[j].as<float>();
        }
        auto gdelta = upload(delta), gdh = poisoned(n), gdd = poisoned(n);
        ct::mix_backward(context(), mg, gdelta.as<float>(), M, C, gdh.as<float>(), gdd.as<float>());
        const std::string at = std::to_string(M) + "×" + std::to_string(C) + " mixes " + std::to_string(mixes);
        EXPECT_LE(test::rel_norm_error(download_f32(gdh, n).data(), dh.data(), n), kF32) << at;
        EXPECT_LE(test::rel_norm_error(download_f32(gdd, n).data(), dd.data(), n), kF32) << at;
        for (int j = 0; j < mixes; ++j) {
          EXPECT_LE(test::rel_norm_error(download_f32(gdmu[j], C).data(), dmu[j].data(), size_t(C)), kF32) << at;
        }
      }
    }
  }
}

// The element-wise ops with bf16 outputs, one value per thread (n = 37) and four (n = 4096): each
// output is the bf16 rounding of the same fp32 expression, so they must match exactly.
TEST(CudaTrainOps, ElementWiseBf16OutputsAtBothWidths) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(6);
  const auto r16 = [](float x) { return bf16_to_f32(f32_to_bf16(x)); };
  for (const size_t n : {size_t(37), size_t(4096)}) {
    std::vector<std::vector<float>> in(6);
    for (auto& v : in) v = normal_floats(n, rng);
    std::vector<DeviceBuffer> gin;
    for (const auto& v : in) gin.push_back(upload(v));
    const float* x = gin[0].as<float>();
    const float* y = gin[1].as<float>();
    std::vector<DeviceBuffer> out;
    for (int i = 0; i < 10; ++i) out.push_back(test::poisoned_bytes(n * 2));
    const auto o = [&](int i) { return out[size_t(i)].as<ct::bf16>(); };
    ct::sqrelu_bf16(context(), x, n, o(0));
    ct::sqrelu_backward_bf16(context(), y, x, n, o(1));
    ct::gate_bf16(context(), x, y, n, o(2));
    cuda::to_bf16(context(), x, n, o(3));
    ct::rwkv7_wkv_inputs(context(), n, {x, y, gin[2].as<float>(), gin[3].as<float>(), gin[4].as<float>(),
                                        gin[5].as<float>(), o(4), o(5), o(6), o(7), o(8), o(9)});
    std::vector<std::vector<float>> got;
    for (int i = 0; i < 10; ++i) got.push_back(download_bf16(out[size_t(i)], n));
    for (size_t i = 0; i < n; ++i) {
      const float a = in[0][i], b = in[1][i], relu = std::max(a, 0.f);
      const float want[10] = {r16(relu * relu), r16(b * 2.f * relu), r16(a * b), r16(a), r16(a), r16(b),
                              r16(in[2][i]), r16(in[3][i]), r16(-in[4][i]), r16(in[4][i] * in[5][i])};
      for (int k = 0; k < 10; ++k) ASSERT_EQ(got[size_t(k)][i], want[k]) << "n " << n << " output " << k << " at " << i;
    }
  }
}

TEST(CudaTrainOps, ColumnSumsAtOddShapes) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(3);
  for (const int M : {1, 127, 128, 129, 1000}) {
    for (const int C : {1, 33, 768}) {
      for (const bool product : {false, true}) {
        const auto a = normal_floats(size_t(M) * C, rng), b = normal_floats(size_t(M) * C, rng),
                   out0 = normal_floats(C, rng);
        std::vector<double> want(out0.begin(), out0.end());
        for (size_t i = 0; i < a.size(); ++i) want[i % C] += double(a[i]) * (product ? b[i] : 1.f);
        auto ga = upload(a), gb = upload(b), gout = upload(out0);
        ct::col_sum(context(), ga.as<float>(), product ? gb.as<float>() : nullptr, M, C, gout.as<float>());
        EXPECT_LE(test::rel_norm_error(download_f32(gout, C).data(), want.data(), size_t(C)), kF32)
            << M << "×" << C << (product ? " product" : "");
      }
    }
  }
}

TEST(CudaTrainOps, CrossEntropyRows) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(4);
  for (const int V : {7, 1000, 65536}) {
    const int M = 9;
    auto logits = normal_floats(size_t(M) * V, rng, 3.f);
    logits[5] = logits[6] = 40.f;  // a tie for the first maximum of row 0 (V > 6)
    std::vector<int> targets(M);
    std::uniform_int_distribution<int> pick(0, V - 1);
    for (int& t : targets) t = pick(rng);
    targets[3] = -1;  // skipped
    std::vector<float> dlogits(logits.size());
    int count = 0;
    const float scale = 1.f / 8, l2 = 1e-4f / 8;
    std::vector<double> row_loss(M, 0.0);
    for (int m = 0; m < M; ++m) {
      int c = 0;
      row_loss[m] = ot::cross_entropy<float>(logits.data() + size_t(m) * V, targets.data() + m, 1, V, scale, l2,
                                             dlogits.data() + size_t(m) * V, &c);
      count += c;
    }
    EXPECT_EQ(count, M - 1);
    auto gl = upload(logits), gt = upload(targets), gloss = poisoned(M), gd = test::poisoned_bytes(logits.size() * 2);
    ct::cross_entropy(context(), gl.as<float>(), gt.as<int>(), M, V, scale, l2, gloss.as<float>(), gd.as<ct::bf16>());
    const auto loss = download_f32(gloss, M);
    const auto d = download_bf16(gd, logits.size());
    for (int m = 0; m < M; ++m) {
      EXPECT_NEAR(loss[m], row_loss[m], 1e-5 * (1 + row_loss[m])) << "V " << V << " row " << m;
    }
    // The gradient rounded to bf16 once: within 2⁻⁸ of each element.
    for (size_t i = 0; i < d.size(); ++i) {
      ASSERT_NEAR(d[i], dlogits[i], std::abs(dlogits[i]) * 0x1p-8 + 1e-12) << "V " << V << " element " << i;
    }
  }
}

TEST(CudaTrainOps, EmbeddingBackwardAddsRows) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(5);
  const int V = 11, C = 70, M = 50;
  std::vector<int> tokens(M);
  for (int m = 0; m < M; ++m) tokens[m] = (m * 7) % 5;  // repeats: rows summed into one
  const auto dx = normal_floats(size_t(M) * C, rng), demb0 = normal_floats(size_t(V) * C, rng);
  std::vector<double> want(demb0.begin(), demb0.end());
  for (int m = 0; m < M; ++m) {
    for (int c = 0; c < C; ++c) want[size_t(tokens[m]) * C + c] += dx[size_t(m) * C + c];
  }
  const ct::TokenRows grouped = ct::group_rows_by_token(tokens.data(), M, V);
  ASSERT_EQ(grouped.unique, 5);
  ASSERT_LE(grouped.data.size(), ct::token_rows_capacity(M));
  std::vector<int> distinct(V);  // the most a batch needs: every row its own token
  for (int m = 0; m < V; ++m) distinct[size_t(m)] = V - 1 - m;
  EXPECT_EQ(ct::group_rows_by_token(distinct.data(), V, V).data.size(), ct::token_rows_capacity(V));
  auto gg = upload(grouped.data), gdx = upload(dx), gdemb = upload(demb0);
  ct::embed_backward(context(), gg.as<int>(), grouped.unique, gdx.as<float>(), M, C, gdemb.as<float>());
  const auto got = download_f32(gdemb, want.size());
  EXPECT_LE(test::rel_norm_error(got.data(), want.data(), want.size()), kF32);
  // Deterministic: the same bits on a second run (training runs repeat exactly).
  auto again = upload(demb0);
  ct::embed_backward(context(), gg.as<int>(), grouped.unique, gdx.as<float>(), M, C, again.as<float>());
  EXPECT_EQ(download_f32(again, want.size()), got);
}

TEST(CudaTrainOps, SumOfSquaresAndAdamW) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(6);
  const size_t n = 100003;
  const auto p0 = normal_floats(n, rng), g = normal_floats(n, rng, 0.01f), m0 = normal_floats(n, rng, 0.001f);
  auto v0 = normal_floats(n, rng, 1e-5f);
  for (float& x : v0) x = std::abs(x);
  double want_ss = 0;
  for (float x : g) want_ss += double(x) * x;
  auto gg = upload(g), gss = test::poisoned_bytes(8);
  ct::sum_squares(context(), gg.as<float>(), n, gss.as<double>());
  double ss = 0;
  RWKV_CUDA_CHECK(cudaDeviceSynchronize());
  RWKV_CUDA_CHECK(cudaMemcpy(&ss, gss.as(), 8, cudaMemcpyDeviceToHost));
  EXPECT_NEAR(ss, want_ss, 1e-9 * want_ss);
  // Two groups with different settings and a gap between them that must stay untouched.
  const std::vector<train::ParamGroup> groups = {{"lr_1x", 0, 40000, 1.f, 0.f}, {"decay", 50000, n - 50000, 1.f, 0.1f}};
  const float scale = 0.7f, lr = 1e-3f;
  std::vector<float> p = p0, m = m0, v = v0, gs = g;
  for (float& x : gs) x *= scale;
  const train::AdamW adam{0.9f, 0.99f, 1e-8f};
  adam.step(p.data(), gs.data(), m.data(), v.data(), groups, lr, 3);
  auto gp = upload(p0), gm = upload(m0), gv = upload(v0), gp16 = test::poisoned_bytes(n * 2);
  const float c1 = float(1 - std::pow(double(0.9f), 3)), c2 = float(1 - std::pow(double(0.99f), 3));
  for (const auto& grp : groups) {
    ct::adamw(context(), gp.as<float>(), gg.as<float>(), gm.as<float>(), gv.as<float>(), gp16.as<ct::bf16>(),
              {grp.offset, grp.count, lr * grp.lr_scale, grp.weight_decay}, 0.9f, 0.99f, 1e-8f, c1, c2, scale);
  }
  const auto got = download_f32(gp, n), got_m = download_f32(gm, n), got16 = download_bf16(gp16, n);
  EXPECT_LE(test::rel_norm_error(got.data(), p.data(), n), 1e-6);
  EXPECT_LE(test::rel_norm_error(got_m.data(), m.data(), n), 1e-6);
  for (size_t i = 40000; i < 50000; ++i) ASSERT_EQ(got[i], p0[i]) << i;  // the gap
  for (size_t i = 0; i < 40000; ++i) ASSERT_EQ(got16[i], bf16_to_f32(f32_to_bf16(got[i]))) << i;
}

}  // namespace
}  // namespace rwkv

#endif  // RWKV_WITH_CUDA
