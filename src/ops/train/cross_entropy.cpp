// Cross-entropy over rows of logits with its gradient in one pass per row, plus RWKV's L2Wrap
// (spec §4.6). The log-sum-exp subtracts the row's max so that logits of ±1000 stay finite.
#include <cmath>
#include <cstddef>

#include "ops/train.h"
#include "rwkv/error.h"

namespace rwkv::ops::train {
namespace {

// Loss of one counted row, writing its gradient when drow is given. drow may alias row, so
// everything read from row (the max and the target logit) is read before the first write,
// and each later write only replaces the element just read.
template <class R>
double cross_entropy_row(const R* row, int V, int target, R scale, R l2wrap, R* drow) {
  int argmax = 0;  // the first one, as torch.max picks it
  for (int i = 1; i < V; ++i) {
    if (row[i] > row[argmax]) argmax = i;
  }
  const R max_logit = row[argmax], target_logit = row[target];
  double sum = 0;
  if (drow) {
    for (int i = 0; i < V; ++i) {
      const R e = std::exp(row[i] - max_logit);
      drow[i] = e;  // kept for the gradient below: one exp per logit
      sum += double(e);
    }
    const R p_scale = R(double(scale) / sum);
    for (int i = 0; i < V; ++i) drow[i] *= p_scale;
    drow[target] -= scale;
    // L2Wrap: the loss is unchanged, but the gradient pushes the largest logit towards zero.
    if (l2wrap > R(0)) drow[argmax] += l2wrap * max_logit;
  } else {
    for (int i = 0; i < V; ++i) sum += double(std::exp(row[i] - max_logit));
  }
  // −log softmax[target] = log Σ exp(x − max) + max − x[target].
  return std::log(sum) + double(max_logit) - double(target_logit);
}

}  // namespace

template <class R>
double cross_entropy(const R* logits, const int* targets, int M, int V, R scale, R l2wrap,
                     R* dlogits, int* count) {
  if (M < 0 || V < 0) fail("cross_entropy: negative dimension (M=", M, ", V=", V, ")");
  double loss = 0;
  int counted = 0;
  for (size_t m = 0; m < size_t(M); ++m) {
    const R* row = logits + m * size_t(V);
    R* drow = dlogits ? dlogits + m * size_t(V) : nullptr;
    const int target = targets[m];
    if (target < 0) {  // padding or a masked token: no loss, no gradient
      if (drow) {
        for (int i = 0; i < V; ++i) drow[i] = R(0);
      }
      continue;
    }
    if (target >= V)
      fail("cross_entropy: target ", target, " of row ", m, " is outside [0, ", V, ")");
    loss += cross_entropy_row(row, V, target, scale, l2wrap, drow);
    ++counted;
  }
  if (count) *count = counted;
  return loss;
}

// The two scalars the header promises: float for training, double for gradient checks.
template double cross_entropy<float>(const float*, const int*, int, int, float, float, float*,
                                     int*);
template double cross_entropy<double>(const double*, const int*, int, int, double, double, double*,
                                      int*);

}  // namespace rwkv::ops::train
