// RWKV-4 weights with the official initialisation (spec §5.3): the module-level values of
// RWKV-LM's RWKV-v4neo constructors (RWKV_TimeMix, RWKV_ChannelMix), then its model-level
// `generate_init_weight` pass, in the official key names, order and shapes (§1.2; key order =
// the v4 fixture's, i.e. RWKV-LM's state_dict order).
#include <cmath>
#include <string>

#include "model/init_common.h"
#include "rwkv/error.h"
#include "rwkv/init.h"

namespace rwkv {
namespace {

using namespace init_detail;

// v4neo's emb init is uniform(±lr_init), not ±1e-4 as in the later trainers. lr_init is a
// training argument; we take train.py's default, 6e-4 ("6e-4 for L12-D768").
constexpr double kEmbeddingBound = 6e-4;

struct Dims {
  int L, C, A, F, V;
};

Dims validate(const InitConfig& c) {
  const char* who = "init_rwkv4";
  check_positive(who, "n_layer", c.n_layer);
  check_positive(who, "n_embd", c.n_embd);
  check_positive(who, "vocab_size", c.vocab_size);
  check_defaultable(who, "dim_ffn", c.dim_ffn);
  check_unused(who, "d_decay", c.d_decay, "RWKV-6 and RWKV-7");
  check_unused(who, "d_mix", c.d_mix, "RWKV-6");
  check_unused(who, "d_iclr", c.d_iclr, "RWKV-7");
  check_unused(who, "d_value", c.d_value, "RWKV-7");
  check_unused(who, "d_gate", c.d_gate, "RWKV-7");
  const int C = c.n_embd;
  return Dims{.L = c.n_layer,
              .C = C,
              .A = C,  // dim_att = n_embd, as in every official checkpoint
              .F = c.dim_ffn ? c.dim_ffn : default_dim_ffn("4", C),
              .V = c.vocab_size};
}

// v4neo's pass: every matrix not zeroed is orthogonal with gain √(rows/cols) when rows > cols
// (so the columns of a tall matrix have norm √(rows/cols)), else 1.
double tall_gain(int64_t rows, int64_t cols) {
  return rows > cols ? std::sqrt(double(rows) / double(cols)) : 1.0;
}

void add_time_mix(Builder& out, const Dims& d, int i, const std::string& a) {
  const int C = d.C, A = d.A;
  const double r01 = ratio_0_to_1(i, d.L), r1 = ratio_1_to_almost0(i, d.L);
  auto ddd = [&](int c) { return double(c) / C; };
  // Decay w (per step exp(−exp(w))) from −5 (slow) to 3 (fast) across channels; the curve
  // bends more in deeper layers.
  out.add(a + "time_decay", {A}, per_channel(A, [&](int c) {
            return -5.0 + 8.0 * std::pow(position(c, A), 0.7 + 1.3 * r01);
          }));
  out.add(a + "time_first", {A}, per_channel(A, [&](int c) {
            return std::log(0.3) + 0.5 * ((c + 1) % 3 - 1);
          }));
  out.add(a + "time_mix_k", {1, 1, C},
          per_channel(C, [&](int c) { return std::pow(ddd(c), r1); }));
  out.add(a + "time_mix_v", {1, 1, C},
          per_channel(C, [&](int c) { return std::pow(ddd(c), r1) + 0.3 * r01; }));
  out.add(a + "time_mix_r", {1, 1, C},
          per_channel(C, [&](int c) { return std::pow(ddd(c), 0.5 * r1); }));
  // v4neo zeroes key, receptance and output; value is the only random attention matrix.
  out.add_constant(a + "key.weight", {A, C}, 0.f);
  out.add_orthogonal(a + "value.weight", A, C, tall_gain(A, C));
  out.add_constant(a + "receptance.weight", {A, C}, 0.f);
  out.add_constant(a + "output.weight", {C, A}, 0.f);
}

void add_channel_mix(Builder& out, const Dims& d, int i, const std::string& f) {
  const int C = d.C;
  const double r1 = ratio_1_to_almost0(i, d.L);
  const auto mix = per_channel(C, [&](int c) { return std::pow(double(c) / C, r1); });
  out.add(f + "time_mix_k", {1, 1, C}, mix);
  out.add(f + "time_mix_r", {1, 1, C}, mix);
  out.add_orthogonal(f + "key.weight", d.F, C, tall_gain(d.F, C));  // 4C × C: gain 2
  out.add_constant(f + "receptance.weight", {C, C}, 0.f);
  out.add_constant(f + "value.weight", {C, d.F}, 0.f);
}

}  // namespace

OwnedTensors init_rwkv4(const InitConfig& config) {
  const Dims d = validate(config);
  // head.weight: v4neo scales the tall gain √(V/C) by 0.5, the same 0.5·√(V/C) as later trainers.
  return build_model(
      config, d.V, d.C, d.L, kEmbeddingBound,
      [&](Builder& out, int i, const std::string& p) { add_time_mix(out, d, i, p); },
      [&](Builder& out, int i, const std::string& p) { add_channel_mix(out, d, i, p); });
}

}  // namespace rwkv
