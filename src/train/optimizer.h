// AdamW over the flat parameter buffer (DESIGN §2: parameters, gradients and both moments
// share one layout, so a step is one loop per contiguous group), the official RWKV-7 parameter
// groups (spec §5.1 "Optimiser") and global gradient-norm clipping.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/param_table.h"

namespace rwkv::train {

// A contiguous range [offset, offset + count) of the flat buffer sharing optimiser settings.
struct ParamGroup {
  std::string name;          // "lr_1x", "lr_2x" or "decay" (the official group names)
  size_t offset = 0;         // in elements
  size_t count = 0;          // in elements
  float lr_scale = 1.0f;     // multiplies the scheduled lr
  float weight_decay = 0.0f; // decoupled: applied as lr·lr_scale·wd·p
};

// The groups of RWKV-LM v7 (spec §5.1), in table order:
//   - names containing "att.w0": lr × 2, no weight decay ("lr_2x");
//   - weight_decay > 0, squeezed rank ≥ 2 (at least two dims of size > 1) and the name contains
//     ".weight": lr × 1, weight decay ("decay") — emb, att r/k/v/o, ffn k/v, head;
//   - everything else (vectors, LoRA matrices w1/w2/a1/..., r_k, norms): lr × 1, no wd ("lr_1x").
// Adjacent tensors with the same settings are merged into one group, which then also spans the
// alignment padding between them; that padding has zero gradients and zero values, so AdamW
// leaves it at zero. Padding between groups of different settings is never touched.
// Throws rwkv::Error for a negative or non-finite weight_decay.
std::vector<ParamGroup> official_param_groups(const model::ParamTable& table, float weight_decay);

// Adam with bias correction and decoupled weight decay, as DeepSpeed FusedAdam in adam_w_mode
// (the official trainer's optimiser). Defaults are the official β = (0.9, 0.99), eps = 1e-18.
struct AdamW {
  float beta1 = 0.9f, beta2 = 0.99f, eps = 1e-18f;

  // One step over every group: params, grads, m (first moment) and v (second moment) all use the
  // flat layout the groups index into. t is the 1-based step count (bias correction); lr is the
  // scheduled learning rate before each group's lr_scale. Elements outside every group are not
  // read or written. Throws rwkv::Error for t < 1 or bad hyper-parameters.
  void step(float* params, const float* grads, float* m, float* v,
            const std::vector<ParamGroup>& groups, float lr, int64_t t) const;

  // What step() checks first (rwkv::Error for t < 1, bad betas or eps, a non-finite or negative
  // lr), and the bias corrections 1 − β^t it divides by (computed in double): for other
  // implementations of the same step (the GPU's).
  struct Corrections {
    float c1, c2;
  };
  Corrections check(float lr, int64_t t) const;
};

// sqrt(sum g²), accumulated in double.
double global_grad_norm(const float* g, size_t n);

// torch's clip coefficient for a gradient of norm `norm`: max_norm / (norm + 1e-6) when that is
// < 1, else 1 (no clipping); also 1 for max_norm ≤ 0 or a non-finite norm.
double clip_factor(double norm, double max_norm);

// torch.nn.utils.clip_grad_norm_ over one buffer: factor = max_norm / (norm + 1e-6); when the
// factor is < 1 every gradient is multiplied by it. Returns the norm before clipping (what the
// training log reports). max_norm ≤ 0 disables clipping (the norm is still computed). A
// non-finite norm is returned without scaling: the caller should skip that step.
double clip_grad_norm(float* g, size_t n, double max_norm);

}  // namespace rwkv::train
