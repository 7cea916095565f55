// RWKV-7's per-layer time-mix tensors as read from a checkpoint (official or rwkv.cpp names,
// spec §1.4), shared by the CPU model (rwkv7.cpp) and the CUDA model (model/cuda/).
#pragma once
#include "model/common.h"

namespace rwkv::model {

// e^{−1/2}: the decay is d = exp(−e^{−1/2}·σ(z)) ∈ (0.545, 1) (spec §2.4, §3.4).
constexpr float kRwkv7DecayScale = 0.60653066f;
constexpr float kRwkv7GroupNormEps = 64e-5f;

struct Rwkv7Layer {
  const float *ln1_w, *ln1_b;                       // (C)
  const float *x_r, *x_w, *x_k, *x_v, *x_a, *x_g;   // (C) token-shift mix
  const float *w0, *a0, *v0, *k_k, *k_a, *r_k;      // (C); v0 null in layer 0
  const float *ln_x_w, *ln_x_b;                     // (C)
  ops::Matrix w1, w2, a1, a2, v1, v2, g1, g2;       // LoRA, as (out, in); v1/v2 empty in layer 0
  ops::Matrix receptance, key, value, output;       // (C, C)
};

// Throws rwkv::Error unless the heads tile n_embd and dim_att == n_embd.
void check_rwkv7_dims(const ModelInfo& info);
// Layer l's time-mix tensors (ln1 included; ln2 and the FFN are the channel mix's).
Rwkv7Layer load_rwkv7_layer(WeightLoader& load, const ModelInfo& info, int l);

}  // namespace rwkv::model
