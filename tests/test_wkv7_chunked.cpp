// The chunked WKV-7 (ops/train/wkv7_chunked.cpp, spec §4.5) against the sequential form
// (ops/train/wkv7.cpp), both in double: y, the final state and all seven gradients, at head
// sizes 1 … 64, lengths that are and are not multiples of the chunk, chunks of 1 … 64 rows, with
// an initial state and a final-state gradient, heads inside wider rows (stride > N), and with
// document resets (the first row, and rows inside and at the edges of chunks).
// Inputs at a real model's magnitudes (log-decay in [−e^{−1/2}, 0), a = −κ̂, b = κ̂·α).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "ops/train.h"

namespace rwkv::ops {
namespace {

// max |got − want| / max |want| over an array.
double rel_inf(const std::vector<double>& got, const std::vector<double>& want) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    diff = std::max(diff, std::abs(got[i] - want[i]));
    norm = std::max(norm, std::abs(want[i]));
  }
  return norm > 0 ? diff / norm : diff;
}

TEST(Wkv7Chunked, MatchesTheSequentialFormForwardAndBackward) {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  double worst = 0;
  for (const int N : {1, 5, 16, 64}) {
    for (const int T : {1, 7, 16, 33, 100}) {
      for (const int Lc : {1, 3, 16, 64}) {
        for (const int resets : {0, 1, 2}) {
          // 1: rows 5, 16, 17, 40 and 99 start documents; 2: row 0 too (S₀ unused, ∂S₀ = 0).
          std::vector<unsigned char> reset(static_cast<size_t>(T), 0);
          if (resets > 0) {
            for (int t : {5, 16, 17, 40, 99}) {
              if (t < T) reset[size_t(t)] = 1;
            }
          }
          if (resets == 2) reset[0] = 1;
          const int stride = N + 3;
          const size_t n = size_t(T) * stride, NN = size_t(N) * N;
          std::vector<double> r(n), w(n), k(n), v(n), a(n), b(n), dy(n), S0(NN), dST(NN);
          for (int t = 0; t < T; ++t) {
            double norm2 = 0;
            std::vector<double> kappa(static_cast<size_t>(N));
            for (double& x : kappa) x = normal(rng), norm2 += x * x;
            for (int j = 0; j < N; ++j) {
              const size_t o = size_t(t) * stride + j;
              r[o] = 0.5 * normal(rng), k[o] = 0.5 * normal(rng), v[o] = 0.5 * normal(rng), dy[o] = normal(rng);
              w[o] = -std::exp(-0.5) / (1 + std::exp(-2 * normal(rng)));
              const double kh = kappa[j] / std::sqrt(norm2);
              a[o] = -kh, b[o] = kh * unit(rng);
            }
          }
          for (size_t e = 0; e < NN; ++e) S0[e] = 0.3 * normal(rng), dST[e] = 0.3 * normal(rng);
          const auto head = [&](std::vector<double>& y, std::vector<double>& S, std::vector<double>& ckpt) {
            return train::Wkv7Train<double>{T, N, stride, 16, r.data(), w.data(), k.data(), v.data(), a.data(),
                                            b.data(), y.data(), S.data(), ckpt.data(),
                                            resets ? reset.data() : nullptr};
          };
          // The sequential form.
          std::vector<double> y1(n), S1 = S0, ck((size_t(T) + 15) / 16 * NN);
          train::wkv7_train_forward(head(y1, S1, ck));
          std::vector<double> g1[6], dS01(NN), scratch(train::wkv7_train_scratch(16, N));
          for (auto& g : g1) g.assign(n, 0.0);
          std::vector<double> Sback = S0;
          train::wkv7_train_backward(head(y1, Sback, ck), dy.data(), dST.data(), g1[0].data(), g1[1].data(),
                                     g1[2].data(), g1[3].data(), g1[4].data(), g1[5].data(), dS01.data(), scratch.data());
          // The chunked form.
          std::vector<double> y2(n), S2 = S0;
          train::wkv7_chunked_forward(head(y2, S2, ck), Lc);
          std::vector<double> g2[6], dS02(NN);
          for (auto& g : g2) g.assign(n, 0.0);
          std::vector<double> Sstart = S0;
          train::wkv7_chunked_backward(head(y2, Sstart, ck), Lc, dy.data(), dST.data(), g2[0].data(), g2[1].data(),
                                       g2[2].data(), g2[3].data(), g2[4].data(), g2[5].data(), dS02.data());
          const std::string at = "N " + std::to_string(N) + " T " + std::to_string(T) + " Lc " + std::to_string(Lc) +
                                 " resets " + std::to_string(resets);
          const char* names[] = {"dr", "dw", "dk", "dv", "da", "db"};
          std::vector<double> errs = {rel_inf(y2, y1), rel_inf(S2, S1), rel_inf(dS02, dS01)};
          EXPECT_LE(errs[0], 1e-11) << "y " << at;
          EXPECT_LE(errs[1], 1e-11) << "S_T " << at;
          EXPECT_LE(errs[2], 1e-11) << "dS0 " << at;
          for (int q = 0; q < 6; ++q) {
            const double e = rel_inf(g2[q], g1[q]);
            EXPECT_LE(e, 1e-11) << names[q] << " " << at;
            errs.push_back(e);
          }
          for (double e : errs) worst = std::max(worst, e);
        }
      }
    }
  }
  std::printf("worst relative error, chunked vs sequential (fp64): %.2e\n", worst);
}

}  // namespace
}  // namespace rwkv::ops
