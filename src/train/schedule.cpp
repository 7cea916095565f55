#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "rwkv/error.h"

namespace rwkv::train {

void LrSchedule::validate() const {
  if (!std::isfinite(lr_init) || lr_init <= 0)
    fail("lr schedule: lr_init must be > 0, got ", lr_init);
  if (!std::isfinite(lr_final) || lr_final < 0)
    fail("lr schedule: lr_final must be >= 0, got ", lr_final);
  if (warmup_steps < 0) fail("lr schedule: warmup_steps must be >= 0, got ", warmup_steps);
  if (tokens_per_step <= 0)
    fail("lr schedule: tokens_per_step must be > 0, got ", tokens_per_step);
  if (exit_tokens > 0) {
    // In double: warmup_steps·tokens_per_step may not fit int64 for absurd inputs.
    const double warmup_tokens = double(warmup_steps) * double(tokens_per_step);
    if (double(exit_tokens) <= warmup_tokens)
      fail("lr schedule: exit_tokens (", exit_tokens, ") must exceed the warmup tokens (",
           warmup_steps, " steps x ", tokens_per_step, " tokens = ", warmup_tokens, ")");
  }
}

double LrSchedule::lr(int64_t step) const {
  validate();
  if (step < 0) fail("lr schedule: step must be >= 0, got ", step);
  double rate = lr_init;
  if (exit_tokens > 0) {
    // Tokens in double, as the official Python computes them (no int64 overflow either).
    const double real_tokens = double(step) * double(tokens_per_step);
    const double warmup_tokens = double(warmup_steps) * double(tokens_per_step);
    const double progress =
        std::clamp((real_tokens - warmup_tokens) / (double(exit_tokens) - warmup_tokens), 0.0, 1.0);
    const double f = lr_final / lr_init;
    rate = lr_init * ((0.5 + f / 2) + (0.5 - f / 2) * std::cos(std::numbers::pi * progress));
  }
  if (step < warmup_steps) rate *= 0.01 + 0.99 * double(step) / double(warmup_steps);
  return rate;
}

}  // namespace rwkv::train
