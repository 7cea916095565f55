// RWKV-6 ("Finch", x060) weights with the official initialisation (spec §5.2): the module-level
// values of RWKV-LM's RWKV-v5/src/model.py RWKV_Tmix_x060 and RWKV_CMix_x060, then that
// trainer's model-level `generate_init_weight` pass, in the official key names, order and shapes
// (§1.2; key order = the v6 fixture's, i.e. RWKV-LM's state_dict order).
//
// Model-level pass: names with "ln_"/".ln"/"time_" keep the module values (so the LoRAs
// time_maa_w1/w2 and time_decay_w1/w2 keep zero / uniform ±0.01), except ln_x.weight =
// ((1+i)/L)^0.7; emb uniform(±1e-4); head orthogonal 0.5·√(V/C) (0.5 if V ≤ C); zero
// att.output, ffn.value, ffn.receptance; att.key and att.gate orthogonal 0.1; att.receptance,
// att.value and ffn.key orthogonal 1.
// The FFN lerps use RWKV-LM's current r1³ exponent (spec §5.2; older revisions used r1).
#include <cmath>
#include <string>

#include "model/init_common.h"
#include "rwkv/error.h"
#include "rwkv/init.h"

namespace rwkv {
namespace {

using namespace init_detail;

constexpr int kDefaultMixLora = 32;    // RWKV-LM's D_MIX_LORA
constexpr int kDefaultDecayLora = 64;  // RWKV-LM's D_DECAY_LORA

struct Dims {
  int L, C, A, H, N, F, V;
  int d_mix, d_decay;
};

Dims validate(const InitConfig& c) {
  const char* who = "init_rwkv6";
  check_positive(who, "n_layer", c.n_layer);
  check_positive(who, "n_embd", c.n_embd);
  check_positive(who, "vocab_size", c.vocab_size);
  check_positive(who, "head_size", c.head_size);
  if (c.n_embd % c.head_size != 0) {
    fail("init_rwkv6: n_embd (", c.n_embd, ") must be a multiple of head_size (", c.head_size, ")");
  }
  check_defaultable(who, "dim_ffn", c.dim_ffn);
  check_defaultable(who, "d_mix", c.d_mix);
  check_defaultable(who, "d_decay", c.d_decay);
  check_unused(who, "d_iclr", c.d_iclr, "RWKV-7");
  check_unused(who, "d_value", c.d_value, "RWKV-7");
  check_unused(who, "d_gate", c.d_gate, "RWKV-7");
  const int C = c.n_embd;
  return Dims{.L = c.n_layer,
              .C = C,
              .A = C,  // dim_att = n_embd, as in every official checkpoint
              .H = C / c.head_size,
              .N = c.head_size,
              .F = c.dim_ffn ? c.dim_ffn : default_dim_ffn("x060", C),
              .V = c.vocab_size,
              .d_mix = c.d_mix ? c.d_mix : kDefaultMixLora,
              .d_decay = c.d_decay ? c.d_decay : kDefaultDecayLora};
}

void add_time_mix(Builder& out, const Dims& d, int i, const std::string& a) {
  const int C = d.C, A = d.A;
  const double r01 = ratio_0_to_1(i, d.L), r1 = ratio_1_to_almost0(i, d.L);
  auto ddd = [&](int c) { return double(c) / C; };
  // Static lerp coefficients μ of x + (x_prev − x)·μ: 1 − (the v5 time_mix curves).
  const auto full = per_channel(C, [&](int c) { return 1.0 - std::pow(ddd(c), r1); });
  const auto half = per_channel(C, [&](int c) { return 1.0 - std::pow(ddd(c), 0.5 * r1); });
  out.add(a + "time_maa_x", {1, 1, C}, full);
  out.add(a + "time_maa_w", {1, 1, C}, full);
  out.add(a + "time_maa_k", {1, 1, C}, full);
  out.add(a + "time_maa_v", {1, 1, C}, per_channel(C, [&](int c) {
            return 1.0 - (std::pow(ddd(c), r1) + 0.3 * r01);
          }));
  out.add(a + "time_maa_r", {1, 1, C}, half);
  out.add(a + "time_maa_g", {1, 1, C}, half);
  // DDLerp LoRA: down (C, 5·D_mix) zero, up (5, D_mix, C) uniform ±0.01, targets w, k, v, r, g.
  out.add_constant(a + "time_maa_w1", {C, 5 * d.d_mix}, 0.f);
  out.add_uniform(a + "time_maa_w2", {5, d.d_mix, C}, 0.01);
  out.add(a + "time_decay", {1, 1, A},
          per_channel(A, [&](int n) { return eagle_decay(n, A, r01); }));
  out.add_constant(a + "time_decay_w1", {C, d.d_decay}, 0.f);
  out.add_uniform(a + "time_decay_w2", {d.d_decay, A}, 0.01);
  out.add(a + "time_faaaa", {d.H, d.N},
          per_channel(A, [&](int n) { return eagle_bonus(n, A, r01); }));
  out.add_orthogonal(a + "receptance.weight", A, C, 1.0);
  out.add_orthogonal(a + "key.weight", A, C, 0.1);
  out.add_orthogonal(a + "value.weight", A, C, 1.0);
  out.add_constant(a + "output.weight", {C, A}, 0.f);
  out.add_orthogonal(a + "gate.weight", A, C, 0.1);
  out.add_constant(a + "ln_x.weight", {A}, float(std::pow((1.0 + i) / d.L, 0.7)));
  out.add_constant(a + "ln_x.bias", {A}, 0.f);
}

void add_channel_mix(Builder& out, const Dims& d, int i, const std::string& f) {
  const int C = d.C;
  const double r1 = ratio_1_to_almost0(i, d.L);
  const auto mix =
      per_channel(C, [&](int c) { return 1.0 - std::pow(double(c) / C, r1 * r1 * r1); });
  out.add(f + "time_maa_k", {1, 1, C}, mix);
  out.add(f + "time_maa_r", {1, 1, C}, mix);
  out.add_orthogonal(f + "key.weight", d.F, C, 1.0);
  out.add_constant(f + "receptance.weight", {C, C}, 0.f);
  out.add_constant(f + "value.weight", {C, d.F}, 0.f);
}

}  // namespace

OwnedTensors init_rwkv6(const InitConfig& config) {
  const Dims d = validate(config);
  return build_model(
      config, d.V, d.C, d.L, 1e-4,
      [&](Builder& out, int i, const std::string& p) { add_time_mix(out, d, i, p); },
      [&](Builder& out, int i, const std::string& p) { add_channel_mix(out, d, i, p); });
}

}  // namespace rwkv
