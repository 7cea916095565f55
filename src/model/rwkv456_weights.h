// RWKV-4/5/6 per-layer time-mix tensors as read from a checkpoint (official or rwkv.cpp names,
// spec §1.4), shared by the CPU models (rwkv4/5/6.cpp) and the CUDA ones (model/cuda/). Each
// loader applies the load-time preprocessing of spec §1.4, so the models see one convention:
// mixes as the weight of the previous token, decays as log d.
#pragma once
#include "model/common.h"

namespace rwkv::model {

struct Rwkv4Layer {
  const float *ln1_w, *ln1_b;              // (C)
  const float *mix_k, *mix_v, *mix_r;      // (C), 1 − time_mix (weight of the previous token)
  const float *decay, *first;              // (A): −exp(time_decay), time_first
  ops::Matrix key, value, receptance;      // (A, C)
  ops::Matrix output;                      // (C, A)
};
// rwkv.cpp files store time_decay as −exp(w) already.
Rwkv4Layer load_rwkv4_layer(WeightLoader& load, const ModelInfo& info, int l, bool rwkvcpp);
// RWKV-4's state per layer, in the official package's list order: att_x_prev (C), att_aa,
// att_bb, att_pp (A each), ffn_x_prev (C).
size_t rwkv4_layer_floats(const ModelInfo& info);
inline size_t rwkv4_aa_offset(const ModelInfo& info, int l) {
  return size_t(l) * rwkv4_layer_floats(info) + size_t(info.n_embd);
}
inline size_t rwkv4_ffn_offset(const ModelInfo& info, int l) {
  return rwkv4_aa_offset(info, l) + 3 * size_t(info.dim_att);
}
std::vector<StatePiece> rwkv4_state_layout(const ModelInfo& info);
// Zeros, but att_pp: the zero state's exponent offset is a finite huge negative, −1e30
// (−∞ would give −∞ − −∞ = NaN).
void rwkv4_init_state(const ModelInfo& info, float* state);

//   5.0: no gate, one decay and bonus per head
//   5.1: SiLU gate, one decay and bonus per head
//   5.2: SiLU gate, decay and bonus per channel
struct Rwkv5Layer {
  const float *ln1_w, *ln1_b;                  // (C)
  const float *mix_k, *mix_v, *mix_r, *mix_g;  // (C), 1 − time_mix; mix_g null in 5.0
  const float *log_decay, *bonus;              // (A) per channel: log d, u
  ops::Matrix key, value, receptance, gate;    // (A, C); gate empty in 5.0
  ops::Matrix output;                          // (C, A)
  const float *ln_x_w, *ln_x_b;                // (A)
};
// rwkv.cpp bakes exp(−exp(w)) and exp(time_first) into its files (spec §1.4).
Rwkv5Layer load_rwkv5_layer(WeightLoader& load, const ModelInfo& info, int l, bool rwkvcpp);
// rwkv.cpp's v5 models are trained for a GroupNorm epsilon of 1e-5; official ones use 64e-5
// (spec §12.1).
inline float rwkv5_group_norm_eps(bool rwkvcpp) { return rwkvcpp ? 1e-5f : 64e-5f; }
// Throws rwkv::Error unless the heads tile dim_att (RWKV-5 and 6).
void check_head_dims(const ModelInfo& info, const std::string& path);

// DDLerp targets in the order of time_maa_w2's slabs.
enum Rwkv6Target { kRwkv6W, kRwkv6K, kRwkv6V, kRwkv6R, kRwkv6G, kRwkv6Targets };
constexpr float kRwkv6GroupNormEps = 64e-5f;

struct Rwkv6Layer {
  const float *ln1_w, *ln1_b;                // (C)
  const float* maa_x;                        // (C)
  const float* maa[kRwkv6Targets];           // (C) static mix per target
  ops::Matrix maa_w1;                        // (5·D_mix, C)
  ops::Matrix maa_w2[kRwkv6Targets];         // (C, D_mix) each
  const float* decay;                        // (A) time_decay
  ops::Matrix decay_w1, decay_w2;            // (D_decay, C), (A, D_decay)
  const float* bonus;                        // (A) time_faaaa
  ops::Matrix key, value, receptance, gate;  // (A, C)
  ops::Matrix output;                        // (C, A)
  const float *ln_x_w, *ln_x_b;              // (A)
};
// The widths of RWKV-6's LoRAs: the token-shift mix's and the decay's.
struct Rwkv6Lora {
  int mix = 0, decay = 0;
};
Rwkv6Lora rwkv6_lora(const ModelInfo& info);
Rwkv6Layer load_rwkv6_layer(WeightLoader& load, const ModelInfo& info, int l);

}  // namespace rwkv::model
