// Training norms (spec §2.4, §4): LayerNorm, GroupNorm (RWKV's ln_x) and L2 normalisation,
// forward and backward in plain loops. LayerNorm is GroupNorm with one group of C channels, so
// both share the per-group kernels below. Sums (mean, variance, dot products) run in double
// even for float: a row of thousands of channels would otherwise lose digits in the variance,
// and the float path must track the double one that finite differences check.
#include <algorithm>
#include <cmath>

#include "ops/train.h"
#include "rwkv/error.h"

namespace rwkv::ops::train {
namespace {

void check_dims(const char* op, int M, int H, int N) {
  if (M < 0 || H < 0 || N < 0) fail(op, ": negative dimension (M=", M, ", H=", H, ", N=", N, ")");
}

// One group of N values: saves mean and rstd, writes out = xhat·weight + bias.
template <class R>
void norm_group_forward(const R* x, int N, const R* weight, const R* bias, R eps, R* out,
                        R& mean_out, R& rstd_out) {
  double sum = 0;
  for (int i = 0; i < N; ++i) sum += double(x[i]);
  const double mean = sum / N;
  double var = 0;
  for (int i = 0; i < N; ++i) {
    const double d = double(x[i]) - mean;
    var += d * d;
  }
  var /= N;
  const R m = R(mean), rstd = R(1.0 / std::sqrt(var + double(eps)));
  for (int i = 0; i < N; ++i) out[i] = (x[i] - m) * rstd * weight[i] + bias[i];
  mean_out = m;
  rstd_out = rstd;
}

// Backward of one group. xhat is recomputed from x and the saved statistics (cheaper than
// storing it). dx += rstd·(dxhat − mean(dxhat) − xhat·mean(dxhat·xhat)), dxhat = dout·weight.
template <class R>
void norm_group_backward(const R* dout, const R* x, int N, const R* weight, R mean, R rstd, R* dx,
                         R* dweight, R* dbias) {
  if (dweight || dbias) {
    for (int i = 0; i < N; ++i) {
      const R xhat = (x[i] - mean) * rstd;
      if (dweight) dweight[i] += dout[i] * xhat;
      if (dbias) dbias[i] += dout[i];
    }
  }
  if (!dx) return;
  double sum_dxhat = 0, sum_dxhat_xhat = 0;
  for (int i = 0; i < N; ++i) {
    const double dxhat = double(dout[i]) * double(weight[i]);
    sum_dxhat += dxhat;
    sum_dxhat_xhat += dxhat * (double(x[i]) - double(mean)) * double(rstd);
  }
  const R mean_dxhat = R(sum_dxhat / N), mean_dxhat_xhat = R(sum_dxhat_xhat / N);
  for (int i = 0; i < N; ++i) {
    const R xhat = (x[i] - mean) * rstd;
    dx[i] += rstd * (dout[i] * weight[i] - mean_dxhat - xhat * mean_dxhat_xhat);
  }
}

}  // namespace

template <class R>
void layer_norm_forward(const R* x, int M, int C, const R* weight, const R* bias, R eps, R* out,
                        R* mean, R* rstd) {
  group_norm_forward(x, M, 1, C, weight, bias, eps, out, mean, rstd);
}

template <class R>
void layer_norm_backward(const R* dout, const R* x, int M, int C, const R* weight, const R* mean,
                         const R* rstd, R* dx, R* dweight, R* dbias) {
  group_norm_backward(dout, x, M, 1, C, weight, mean, rstd, dx, dweight, dbias);
}

template <class R>
void group_norm_forward(const R* x, int M, int H, int N, const R* weight, const R* bias, R eps,
                        R* out, R* mean, R* rstd) {
  check_dims("group_norm_forward", M, H, N);
  if (N == 0) return;  // no channels: nothing to normalise (and no mean to divide by)
  const size_t C = size_t(H) * size_t(N);
  for (size_t m = 0; m < size_t(M); ++m) {
    for (size_t h = 0; h < size_t(H); ++h) {
      const size_t o = m * C + h * size_t(N), s = m * size_t(H) + h;
      norm_group_forward(x + o, N, weight + h * size_t(N), bias + h * size_t(N), eps, out + o,
                         mean[s], rstd[s]);
    }
  }
}

template <class R>
void group_norm_backward(const R* dout, const R* x, int M, int H, int N, const R* weight,
                         const R* mean, const R* rstd, R* dx, R* dweight, R* dbias) {
  check_dims("group_norm_backward", M, H, N);
  if (N == 0) return;
  const size_t C = size_t(H) * size_t(N);
  for (size_t m = 0; m < size_t(M); ++m) {
    for (size_t h = 0; h < size_t(H); ++h) {
      const size_t o = m * C + h * size_t(N), s = m * size_t(H) + h, c = h * size_t(N);
      norm_group_backward(dout + o, x + o, N, weight + c, mean[s], rstd[s], dx ? dx + o : nullptr,
                          dweight ? dweight + c : nullptr, dbias ? dbias + c : nullptr);
    }
  }
}

template <class R>
void l2_normalize_forward(const R* x, int M, int H, int N, R eps, R* out) {
  check_dims("l2_normalize_forward", M, H, N);
  const size_t groups = size_t(M) * size_t(H);
  for (size_t g = 0; g < groups; ++g) {
    const R* xg = x + g * size_t(N);
    double sum_sq = 0;
    for (int i = 0; i < N; ++i) sum_sq += double(xg[i]) * double(xg[i]);
    // F.normalize: divide by max(‖x‖, eps), so an all-zero group stays zero instead of NaN.
    const R inv = R(1.0 / std::max(std::sqrt(sum_sq), double(eps)));
    for (int i = 0; i < N; ++i) out[g * size_t(N) + size_t(i)] = xg[i] * inv;
  }
}

// out = x/n with n = ‖x‖ > eps has Jacobian (I − out·outᵀ)/n; below eps the divisor is the
// constant eps, so the Jacobian is I/eps. The norm is recomputed rather than saved.
template <class R>
void l2_normalize_backward(const R* dout, const R* x, int M, int H, int N, R eps, R* dx) {
  check_dims("l2_normalize_backward", M, H, N);
  if (!dx) return;
  const size_t groups = size_t(M) * size_t(H);
  for (size_t g = 0; g < groups; ++g) {
    const R *xg = x + g * size_t(N), *dg = dout + g * size_t(N);
    R* dxg = dx + g * size_t(N);
    double sum_sq = 0;
    for (int i = 0; i < N; ++i) sum_sq += double(xg[i]) * double(xg[i]);
    const double norm = std::sqrt(sum_sq);
    if (!(norm > double(eps))) {
      const R inv_eps = R(1.0 / double(eps));
      for (int i = 0; i < N; ++i) dxg[i] += dg[i] * inv_eps;
      continue;
    }
    const double inv = 1.0 / norm;
    double dot = 0;  // Σ dout·out
    for (int i = 0; i < N; ++i) dot += double(dg[i]) * double(xg[i]) * inv;
    const R inv_r = R(inv), dot_r = R(dot);
    for (int i = 0; i < N; ++i) dxg[i] += (dg[i] - xg[i] * inv_r * dot_r) * inv_r;
  }
}

// The two scalars the header promises: float for training, double for gradient checks.
template void layer_norm_forward<float>(const float*, int, int, const float*, const float*, float,
                                        float*, float*, float*);
template void layer_norm_forward<double>(const double*, int, int, const double*, const double*,
                                         double, double*, double*, double*);
template void layer_norm_backward<float>(const float*, const float*, int, int, const float*,
                                         const float*, const float*, float*, float*, float*);
template void layer_norm_backward<double>(const double*, const double*, int, int, const double*,
                                          const double*, const double*, double*, double*, double*);
template void group_norm_forward<float>(const float*, int, int, int, const float*, const float*,
                                        float, float*, float*, float*);
template void group_norm_forward<double>(const double*, int, int, int, const double*, const double*,
                                         double, double*, double*, double*);
template void group_norm_backward<float>(const float*, const float*, int, int, int, const float*,
                                         const float*, const float*, float*, float*, float*);
template void group_norm_backward<double>(const double*, const double*, int, int, int,
                                          const double*, const double*, const double*, double*,
                                          double*, double*);
template void l2_normalize_forward<float>(const float*, int, int, int, float, float*);
template void l2_normalize_forward<double>(const double*, int, int, int, double, double*);
template void l2_normalize_backward<float>(const float*, const float*, int, int, int, float,
                                           float*);
template void l2_normalize_backward<double>(const double*, const double*, int, int, int, double,
                                            double*);

}  // namespace rwkv::ops::train
