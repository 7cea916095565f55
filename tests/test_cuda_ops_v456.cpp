// The CUDA ops of RWKV-4/5/6 (ops/cuda/kernels_v456.h) against their CPU twins (ops::ref::wkv4,
// ops::ref::wkv6_recurrent, model::group_norm, plain loops here) on random inputs at many shapes,
// odd ones included, outputs poisoned (NaN) before each run, states in scattered pool slots.
// Skips without a GPU.
#include <cmath>
#include <random>

#include "model/common.h"
#include "ops/ops.h"
#include "rwkv/model.h"
#include "testing.h"

#ifdef RWKV_WITH_CUDA
#include "cuda_testing.h"
#include "ops/cuda/kernels_v456.h"

namespace rwkv {
namespace {

using cuda::DeviceBuffer;
using test::normal_floats;
using test::upload;

cuda::Context& context() { return test::cuda_context(); }
DeviceBuffer poisoned(size_t floats) { return test::poisoned_bytes(floats * 4); }
std::vector<float> download(const DeviceBuffer& b, size_t floats) { return test::download_f32(b, floats); }

double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s / double(std::max<size_t>(v.size(), 1)));
}

// Elements of a pool of `count` states of `floats` that a kernel may write: [offset, offset + n)
// of the states in `slots`. Everything else must come back bit for bit.
std::vector<bool> touched(size_t count, size_t floats, const std::vector<int>& slots, size_t offset, size_t n) {
  std::vector<bool> t(count * floats, false);
  for (int s : slots)
    for (size_t i = 0; i < n; ++i) t[size_t(s) * floats + offset + i] = true;
  return t;
}

// WKV-5/6 against ref::wkv6_recurrent, fed the log-decay computed here per row.
// Tolerance: every output is a sum of N products, each with a few fp32 roundings (2^-24 relative)
// whose signs are random, so the error grows like √N; the state carries the errors of T updates
// (√T again), and d = e^{log-decay} differs by ≤ 2 ulp between expf and std::exp. Terms are about
// as large as the output's RMS (≥ 1 here), so 2e-6 (≈ 34 roundings) · √(N·T) · scale bounds it
// with room (a CPU emulation of the kernel's fp32 order, fma and 2-ulp expf used < 5% of it),
// while a wrong index or a missed decay is off by O(scale).
TEST(CudaOpsV456, Wkv6ScanMatchesTheReference) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(11);
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  for (int N : {8, 16, 32, 64, 128}) {
    // H = sms: heads enough to fill the GPU, one block per head (else slices of 16 columns).
    for (int H : {1, 3, sms}) {
      for (int B : {1, 2}) {
        for (int T : {1, 7, 33, 70}) {  // 33, 70: chunks of 16 rows (8 at N = 128), a partial one
          for (bool v6 : {false, true}) {
            if (H == sms && T != 33) continue;
            const int A = H * N;
            const size_t MA = size_t(B * T) * A, head_floats = size_t(H) * N * N;
            const size_t floats = head_floats + 12, offset = 8, count = 3;
            const std::vector<int> slots = B == 1 ? std::vector<int>{2} : std::vector<int>{2, 0};
            const auto r = normal_floats(MA, rng), k = normal_floats(MA, rng, 0.5f), v = normal_floats(MA, rng);
            const auto u = normal_floats(size_t(A), rng, 0.5f);
            auto decay = normal_floats(size_t(A), rng, v6 ? 0.5f : 1.f);
            if (!v6)
              for (float& d : decay) d = -std::exp(d);  // RWKV-5: the log-decay itself
            const auto w = normal_floats(MA, rng, 0.5f);
            std::vector<float> ld(MA);
            for (size_t i = 0; i < MA; ++i) ld[i] = v6 ? -std::exp(decay[i % A] + w[i]) : decay[i % A];
            auto pool = normal_floats(count * floats, rng, 0.3f);
            const auto pool0 = pool;
            auto dr = upload(r), dk = upload(k), dv = upload(v), dw = upload(w), ddec = upload(decay), du = upload(u);
            auto dpool = upload(pool), dslots = upload(slots.data(), slots.size() * 4);
            auto dy = poisoned(MA);
            cuda::wkv6_scan(context(), B, T, H, N, dr.as<float>(), dk.as<float>(), dv.as<float>(),
                            v6 ? dw.as<float>() : nullptr, ddec.as<float>(), du.as<float>(), dy.as<float>(),
                            {dpool.as<float>(), dslots.as<int>(), floats}, offset);
            std::vector<float> y(MA);
            for (int b = 0; b < B; ++b) {
              for (int h = 0; h < H; ++h) {
                const size_t o = size_t(b) * T * A + size_t(h) * N;
                float* S = pool.data() + size_t(slots[size_t(b)]) * floats + offset + size_t(h) * N * N;
                ops::ref::wkv6_recurrent({T, N, A, r.data() + o, ld.data() + o, k.data() + o, v.data() + o,
                                          u.data() + size_t(h) * N, y.data() + o, S});
              }
            }
            const auto got_pool = download(dpool, pool.size());
            const double root = std::sqrt(double(N * T));
            const std::string what = "N=" + std::to_string(N) + " H=" + std::to_string(H) + " B=" +
                                     std::to_string(B) + " T=" + std::to_string(T) + (v6 ? " v6" : " v5");
            EXPECT_LE(test::compare(download(dy, MA), y).max_abs, 2e-6 * root * std::max(1.0, rms(y))) << what;
            EXPECT_LE(test::compare(got_pool, pool).max_abs, 2e-6 * root * std::max(1.0, rms(pool))) << what;
            const auto written = touched(count, floats, slots, offset, head_floats);
            for (size_t i = 0; i < pool.size(); ++i)
              if (!written[i]) { ASSERT_EQ(got_pool[i], pool0[i]) << what << " pool[" << i << "] changed"; }
          }
        }
      }
    }
  }
}

// WKV-4 against ref::wkv4 (then ·r), from the model's zero state (aa = bb = 0, pp = −1e30) and from
// a random one. Bounds relative to the quantities' own scale: bb is a sum of positive terms, so its
// relative error is a few roundings per step (≤ 1e-6 per step, ≈ 17 ulp, with expf's 2 ulp in it);
// aa = Σ weight·v has the same absolute error relative to bb·max|v| (its terms' sum of magnitudes),
// and wkv = a weighted average of the v's, so its error is that relative error times max|v|.
// pp takes only adds and maxima in the same order: it matches almost exactly.
TEST(CudaOpsV456, Wkv4ScanMatchesTheReference) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(12);
  for (int A : {1, 7, 64, 100}) {
    for (int T : {1, 5, 40}) {
      for (bool zero_state : {true, false}) {
        const int B = 2;
        const size_t MA = size_t(B * T) * A, floats = 3 * size_t(A) + 5, offset = 3, count = 3;
        const std::vector<int> slots = {2, 0};
        const auto k = normal_floats(MA, rng, 2.f), v = normal_floats(MA, rng), first = normal_floats(size_t(A), rng);
        auto r = normal_floats(MA, rng), decay = normal_floats(size_t(A), rng);
        for (float& x : r) x = 1.f / (1.f + std::exp(-x));
        for (float& x : decay) x = -std::exp(x);
        double vmax = 1e-30;  // max |v| over the inputs and the average aa/bb the state starts from
        for (float x : v) vmax = std::max(vmax, double(std::abs(x)));
        auto pool = normal_floats(count * floats, rng);
        for (int s : slots) {
          float* st = pool.data() + size_t(s) * floats + offset;
          for (int c = 0; c < A; ++c) {  // a state some history could have made: bb ≥ 1, aa = bb·v₀
            const float v0 = st[c], bb = 1.f + std::abs(st[A + c]), pp = st[2 * A + c];
            if (!zero_state) vmax = std::max(vmax, double(std::abs(v0)));
            st[c] = zero_state ? 0.f : bb * v0;
            st[A + c] = zero_state ? 0.f : bb;
            st[2 * A + c] = zero_state ? -1e30f : pp;
          }
        }
        const auto pool0 = pool;
        auto dk = upload(k), dv = upload(v), dr = upload(r), ddec = upload(decay), dfirst = upload(first);
        auto dpool = upload(pool), dslots = upload(slots.data(), slots.size() * 4);
        auto dy = poisoned(MA);
        cuda::wkv4_scan(context(), B, T, A, dk.as<float>(), dv.as<float>(), dr.as<float>(), ddec.as<float>(),
                        dfirst.as<float>(), dy.as<float>(), {dpool.as<float>(), dslots.as<int>(), floats}, offset);
        std::vector<float> y(MA);
        for (int b = 0; b < B; ++b) {
          const size_t o = size_t(b) * T * A;
          float* st = pool.data() + size_t(slots[size_t(b)]) * floats + offset;
          ops::ref::wkv4({T, A, A, k.data() + o, v.data() + o, decay.data(), first.data(), y.data() + o, st,
                          st + A, st + 2 * A});
        }
        for (size_t i = 0; i < MA; ++i) y[i] *= r[i];
        const double step = 1e-6 * (T + 2);
        const std::string what = "A=" + std::to_string(A) + " T=" + std::to_string(T) + (zero_state ? " zero" : "");
        const auto got_y = download(dy, MA), got_pool = download(dpool, pool.size());
        for (size_t i = 0; i < MA; ++i)
          ASSERT_LE(std::abs(double(got_y[i]) - y[i]), step * vmax * r[i] + 1e-30) << what << " y[" << i << "]";
        const auto written = touched(count, floats, slots, offset, 3 * size_t(A));
        for (int s : slots) {
          const size_t base = size_t(s) * floats + offset;
          for (int c = 0; c < A; ++c) {
            const double aa = pool[base + c], bb = pool[base + A + c], pp = pool[base + 2 * A + c];
            EXPECT_LE(std::abs(got_pool[base + c] - aa), step * bb * vmax + 1e-30) << what << " aa";
            EXPECT_LE(std::abs(got_pool[base + A + c] - bb), step * bb + 1e-30) << what << " bb";
            EXPECT_LE(std::abs(got_pool[base + 2 * A + c] - pp), 1e-6 * std::abs(pp) + 1e-30) << what << " pp";
          }
        }
        for (size_t i = 0; i < pool.size(); ++i)
          if (!written[i]) { ASSERT_EQ(got_pool[i], pool0[i]) << what << " pool[" << i << "] changed"; }
      }
    }
  }
}

// GroupNorm (+ gate) against model::group_norm. The normalised value z has a few fp32 roundings
// from the mean and variance (fp32 sums of N here, fp64 on the CPU): 2e-6 (≈ 34 ulp) of the
// magnitudes of z·w, b and 1, times the gate's.
TEST(CudaOpsV456, GroupNormGate) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(13);
  for (int N : {1, 24, 64}) {
    for (int H : {1, 5}) {
      for (int M : {1, 3, 17}) {
        for (bool gated : {false, true}) {
          for (float eps : {64e-5f, 1e-5f}) {
            const int A = H * N;
            const size_t MA = size_t(M) * A;
            const auto x = normal_floats(MA, rng, 2.f, 1.f), g = normal_floats(MA, rng);
            const auto weight = normal_floats(size_t(A), rng), bias = normal_floats(size_t(A), rng);
            auto dx = upload(x), dg = upload(g), dwt = upload(weight), db = upload(bias);
            cuda::group_norm_gate(context(), dx.as<float>(), gated ? dg.as<float>() : nullptr, M, H, N,
                                  dwt.as<float>(), db.as<float>(), eps);
            std::vector<float> want = x;
            model::group_norm(want.data(), M, H, N, weight.data(), bias.data(), eps);
            const auto got = download(dx, MA);
            for (size_t i = 0; i < MA; ++i) {
              const double b = bias[i % A], gate = gated ? g[i] : 1.0, zw = want[i] - b;
              const double bound = 2e-6 * (std::abs(zw) + std::abs(b) + 1) * std::abs(gate) + 1e-30;
              ASSERT_LE(std::abs(got[i] - want[i] * gate), bound)
                  << "N=" << N << " H=" << H << " M=" << M << " gated=" << gated << " eps=" << eps << " at " << i;
            }
          }
        }
      }
    }
  }
}

// The element-wise ops: one or two fp32 roundings each (the GPU may fuse a multiply-add), so
// 1e-6 (≈ 17 ulp) of the terms' magnitudes; copy_columns is exact.
TEST(CudaOpsV456, MulAddCopyColumnsDdlerp) {
  RWKV_REQUIRE_GPU();
  std::mt19937 rng(14);
  for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(100003)}) {
    const auto x = normal_floats(n, rng), a = normal_floats(n, rng), b = normal_floats(n, rng);
    auto dx = upload(x), da = upload(a), db = upload(b);
    cuda::mul_add(context(), dx.as<float>(), da.as<float>(), db.as<float>(), n);
    const auto got = download(dx, n);
    for (size_t i = 0; i < n; ++i) {
      const double ab = double(a[i]) * b[i];
      ASSERT_LE(std::abs(got[i] - (x[i] + ab)), 1e-6 * (std::abs(x[i]) + std::abs(ab)) + 1e-30) << "n=" << n;
    }
  }
  // Columns [col, col + D) of rows with leading dimension ld (the caller offsets src to the slab).
  struct Copy { int M, ld, col, D; };
  for (const Copy& s : {Copy{1, 101, 0, 100}, Copy{9, 13, 5, 7}, Copy{9, 13, 0, 13}, Copy{33, 517, 300, 200}}) {
    const auto src = normal_floats(size_t(s.M) * s.ld, rng);
    auto dsrc = upload(src);
    auto ddst = poisoned(size_t(s.M) * s.D);
    cuda::copy_columns(context(), dsrc.as<float>() + s.col, s.ld, s.M, s.D, ddst.as<float>());
    std::vector<float> want;
    for (int m = 0; m < s.M; ++m)
      want.insert(want.end(), src.begin() + size_t(m) * s.ld + s.col, src.begin() + size_t(m) * s.ld + s.col + s.D);
    EXPECT_EQ(download(ddst, want.size()), want) << "M=" << s.M << " ld=" << s.ld << " D=" << s.D;
  }
  for (int C : {7, 100}) {
    for (int M : {1, 9}) {
      const size_t MC = size_t(M) * C;
      const auto xn = normal_floats(MC, rng), delta = normal_floats(MC, rng), offset = normal_floats(MC, rng, 0.3f);
      const auto mix = normal_floats(size_t(C), rng, 0.5f, 0.5f);
      auto dxn = upload(xn), ddelta = upload(delta), doff = upload(offset), dmix = upload(mix);
      auto dout = poisoned(MC);
      cuda::ddlerp(context(), M, C, dxn.as<float>(), ddelta.as<float>(), dmix.as<float>(), doff.as<float>(),
                   dout.as<float>());
      const auto got = download(dout, MC);
      for (size_t i = 0; i < MC; ++i) {
        const double d = double(delta[i]) * (double(mix[i % C]) + offset[i]);
        ASSERT_LE(std::abs(got[i] - (xn[i] + d)), 1e-6 * (std::abs(xn[i]) + std::abs(d)) + 1e-30)
            << "M=" << M << " C=" << C << " at " << i;
      }
    }
  }
}

// Unsupported head sizes are refused; empty batches are no-ops (null pointers never touched).
TEST(CudaOpsV456, ErrorsAndEmptyShapes) {
  RWKV_REQUIRE_GPU();
  auto d = poisoned(24 * 24 * 2);
  const float* p = d.as<float>();
  const std::vector<int> slots = {0};
  auto dslots = upload(slots.data(), 4);
  const cuda::StateRef st{d.as<float>(), dslots.as<int>(), 24 * 24};
  EXPECT_THROW(cuda::wkv6_scan(context(), 1, 1, 1, 24, p, p, p, nullptr, p, p, d.as<float>(), st, 0), Error);
  EXPECT_THROW(cuda::wkv6_scan(context(), 1, 1, 1, 256, p, p, p, nullptr, p, p, d.as<float>(), st, 0), Error);
  EXPECT_NO_THROW(cuda::wkv6_scan(context(), 0, 1, 1, 64, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                  nullptr, {}, 0));
  EXPECT_NO_THROW(cuda::wkv6_scan(context(), 1, 0, 1, 64, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                  nullptr, {}, 0));
  EXPECT_NO_THROW(cuda::wkv4_scan(context(), 0, 3, 8, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, {}, 0));
  EXPECT_NO_THROW(cuda::wkv4_scan(context(), 2, 0, 8, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, {}, 0));
  EXPECT_NO_THROW(cuda::group_norm_gate(context(), nullptr, nullptr, 0, 4, 64, nullptr, nullptr, 1e-5f));
  EXPECT_NO_THROW(cuda::mul_add(context(), nullptr, nullptr, nullptr, 0));
  EXPECT_NO_THROW(cuda::copy_columns(context(), nullptr, 10, 0, 5, nullptr));
  EXPECT_NO_THROW(cuda::ddlerp(context(), 0, 7, nullptr, nullptr, nullptr, nullptr, nullptr));
  context().synchronize();
}

}  // namespace
}  // namespace rwkv

#else

TEST(CudaOpsV456, BuiltWithoutCuda) { GTEST_SKIP() << "this build has no CUDA backend"; }

#endif
