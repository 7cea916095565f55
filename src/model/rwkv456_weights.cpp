#include "model/rwkv456_weights.h"

#include <algorithm>
#include <cmath>

#include "rwkv/error.h"

namespace rwkv::model {

Rwkv4Layer load_rwkv4_layer(WeightLoader& load, const ModelInfo& info, int l, bool rwkvcpp) {
  const int C = info.n_embd, A = info.dim_att;
  const std::string p = cat("blocks.", l, "."), a = p + "att.";
  Rwkv4Layer y{};
  y.ln1_w = load.vec(p + "ln1.weight", C);
  y.ln1_b = load.vec(p + "ln1.bias", C);
  y.mix_k = load.one_minus(a + "time_mix_k", C);
  y.mix_v = load.one_minus(a + "time_mix_v", C);
  y.mix_r = load.one_minus(a + "time_mix_r", C);
  y.decay = rwkvcpp ? load.vec(a + "time_decay", A)
                    : load.vec_map(a + "time_decay", A, [](float w) { return -std::exp(w); });
  y.first = load.vec(a + "time_first", A);
  y.key = load.mat(a + "key.weight", A, C);
  y.value = load.mat(a + "value.weight", A, C);
  y.receptance = load.mat(a + "receptance.weight", A, C);
  y.output = load.mat(a + "output.weight", C, A);
  return y;
}

size_t rwkv4_layer_floats(const ModelInfo& info) {
  return 2 * size_t(info.n_embd) + 3 * size_t(info.dim_att);
}

std::vector<StatePiece> rwkv4_state_layout(const ModelInfo& info) {
  std::vector<StatePiece> pieces;
  const int64_t C = info.n_embd, A = info.dim_att;
  for (int l = 0; l < info.n_layer; ++l) {
    const size_t base = size_t(l) * rwkv4_layer_floats(info);
    const std::string p = cat("blocks.", l, ".");
    pieces.push_back({p + "att_x_prev", {C}, base, size_t(C)});
    pieces.push_back({p + "att_aa", {A}, base + size_t(C), size_t(A)});
    pieces.push_back({p + "att_bb", {A}, base + size_t(C + A), size_t(A)});
    pieces.push_back({p + "att_pp", {A}, base + size_t(C + 2 * A), size_t(A)});
    pieces.push_back({p + "ffn_x_prev", {C}, base + size_t(C + 3 * A), size_t(C)});
  }
  return pieces;
}

void rwkv4_init_state(const ModelInfo& info, float* state) {
  const size_t A = size_t(info.dim_att);
  std::fill(state, state + size_t(info.n_layer) * rwkv4_layer_floats(info), 0.f);
  for (int l = 0; l < info.n_layer; ++l) {
    float* pp = state + rwkv4_aa_offset(info, l) + 2 * A;
    std::fill(pp, pp + A, -1e30f);
  }
}

void check_head_dims(const ModelInfo& info, const std::string& path) {
  if (info.n_head <= 0 || info.n_head * info.head_size != info.dim_att) {
    fail(path, ": ", info.family, ": ", info.n_head, " heads do not divide dim_att ", info.dim_att);
  }
}

namespace {

std::vector<float> per_head_to_channels(const float* v, int H, int N) {
  std::vector<float> out(size_t(H) * size_t(N));
  for (size_t i = 0; i < out.size(); ++i) out[i] = v[i / size_t(N)];
  return out;
}

}  // namespace

Rwkv5Layer load_rwkv5_layer(WeightLoader& load, const ModelInfo& info, int l, bool rwkvcpp) {
  const int C = info.n_embd, A = info.dim_att, H = info.n_head, N = info.head_size;
  const bool gated = info.generation != "5.0";
  const bool per_channel = info.generation == "5.2";
  const std::string p = cat("blocks.", l, "."), a = p + "att.";
  Rwkv5Layer y{};
  y.ln1_w = load.vec(p + "ln1.weight", C);
  y.ln1_b = load.vec(p + "ln1.bias", C);
  y.mix_k = load.one_minus(a + "time_mix_k", C);
  y.mix_v = load.one_minus(a + "time_mix_v", C);
  y.mix_r = load.one_minus(a + "time_mix_r", C);
  if (gated) y.mix_g = load.one_minus(a + "time_mix_g", C);
  const int n = per_channel ? A : H;  // decay/bonus values stored
  // Decay: log d = −exp(w), or log of the stored d.
  const float* decay = rwkvcpp ? load.vec_map(a + "time_decay", n, [](float d) { return std::log(d); })
                               : load.vec_map(a + "time_decay", n, [](float w) { return -std::exp(w); });
  // Bonus: time_faaaa is u itself; time_first is log u (rwkv.cpp stores u under that name).
  const float* bonus = load.has(a + "time_faaaa") || rwkvcpp
                           ? load.vec(a + (load.has(a + "time_faaaa") ? "time_faaaa" : "time_first"), n)
                           : load.vec_map(a + "time_first", n, [](float f) { return std::exp(f); });
  y.log_decay = per_channel ? decay : load.keep(per_head_to_channels(decay, H, N));
  y.bonus = per_channel ? bonus : load.keep(per_head_to_channels(bonus, H, N));
  y.key = load.mat(a + "key.weight", A, C);
  y.value = load.mat(a + "value.weight", A, C);
  y.receptance = load.mat(a + "receptance.weight", A, C);
  if (gated) y.gate = load.mat(a + "gate.weight", A, C);
  y.output = load.mat(a + "output.weight", C, A);
  y.ln_x_w = load.vec(a + "ln_x.weight", A);
  y.ln_x_b = load.vec(a + "ln_x.bias", A);
  return y;
}

Rwkv6Lora rwkv6_lora(const ModelInfo& info) {
  Rwkv6Lora w;
  for (const auto& [name, width] : info.lora) (name == "mix" ? w.mix : w.decay) = width;
  return w;
}

Rwkv6Layer load_rwkv6_layer(WeightLoader& load, const ModelInfo& info, int l) {
  const int C = info.n_embd, A = info.dim_att;
  const Rwkv6Lora d = rwkv6_lora(info);
  static const char* const kNames[kRwkv6Targets] = {"w", "k", "v", "r", "g"};
  const std::string p = cat("blocks.", l, "."), a = p + "att.";
  Rwkv6Layer y{};
  y.ln1_w = load.vec(p + "ln1.weight", C);
  y.ln1_b = load.vec(p + "ln1.bias", C);
  y.maa_x = load.vec(a + "time_maa_x", C);
  for (int t = 0; t < kRwkv6Targets; ++t) {
    y.maa[t] = load.vec(a + "time_maa_" + kNames[t], C);
    y.maa_w2[t] = load.lora_slab(a + "time_maa_w2", t, kRwkv6Targets, d.mix, C);
  }
  y.maa_w1 = load.lora(a + "time_maa_w1", C, kRwkv6Targets * d.mix);
  y.decay = load.vec(a + "time_decay", A);
  y.decay_w1 = load.lora(a + "time_decay_w1", C, d.decay);
  y.decay_w2 = load.lora(a + "time_decay_w2", d.decay, A);
  y.bonus = load.vec(a + "time_faaaa", A);
  y.key = load.mat(a + "key.weight", A, C);
  y.value = load.mat(a + "value.weight", A, C);
  y.receptance = load.mat(a + "receptance.weight", A, C);
  y.gate = load.mat(a + "gate.weight", A, C);
  y.output = load.mat(a + "output.weight", C, A);
  y.ln_x_w = load.vec(a + "ln_x.weight", A);
  y.ln_x_b = load.vec(a + "ln_x.bias", A);
  return y;
}

}  // namespace rwkv::model
