// The learning-rate schedule of the official RWKV-7 trainer (RWKV-LM train_temp, spec §5.1
// "Schedule"): a cosine from lr_init to lr_final measured in tokens, with a linear warmup factor
// over the first warmup_steps steps.
#pragma once
#include <cstdint>

namespace rwkv::train {

struct LrSchedule {
  double lr_init = 6e-4;
  double lr_final = 6e-5;
  int64_t warmup_steps = 10;
  int64_t exit_tokens = 0;      // where the cosine reaches lr_final; ≤ 0: constant lr_init
  int64_t tokens_per_step = 1;  // ctx_len · global batch size (the official real_bsz)

  // Throws rwkv::Error naming the bad field: lr_init ≤ 0, lr_final < 0, warmup_steps < 0,
  // tokens_per_step ≤ 0, or exit_tokens > 0 but not past the warmup tokens.
  void validate() const;

  // The lr for 0-based global step `step` (validates first):
  //   tokens = step·tokens_per_step, warmup_tokens = warmup_steps·tokens_per_step
  //   progress = clamp((tokens − warmup_tokens) / (exit_tokens − warmup_tokens), 0, 1)
  //   f = lr_final / lr_init
  //   lr = lr_init · ((0.5 + f/2) + (0.5 − f/2)·cos(π·progress))   (lr_init if exit_tokens ≤ 0)
  //   step < warmup_steps: lr ·= 0.01 + 0.99·step/warmup_steps
  double lr(int64_t step) const;
};

}  // namespace rwkv::train
