// RWKV-5 ("Eagle") weights with RWKV-LM's initialisation, in the official key names, order and
// shapes of each layout (spec §1.2; order = the fixtures', i.e. RWKV-LM's state_dict order:
// a module's own parameters first, then its sub-modules in construction order).
//
// Sources, by layout (where RWKV-LM defines the layout, we follow that code):
//   5.2  RWKV-v5/src/model.py RWKV_Tmix_x052 + RWKV_CMix_x052 and that trainer's
//        generate_init_weight (the trainer of the released Eagle models; spec §5.2 "v5.2").
//   5.0  RWKV-v4neo/src/model.py RWKV_TimeMix_RWKV5_Preview without "r2"/"r3": per-head decay,
//        time_first (H) = −3 (log of the bonus).
//   5.1  the same class with "r2" and "r3": a gate (time_mix_g, gate.weight) and the bonus as
//        time_faaaa (H) used directly, as in the 5.1 fixture (ChatRWKV reads either key).
//        Registered inside the constructor, gate.weight comes before receptance in the dict.
//   5.0 and 5.1 take v4neo's generate_init_weight (the pass that trained them): orthogonal gain
//   √(rows/cols) for tall matrices and 1 otherwise (att.key and gate included), emb
//   uniform(±lr_init = 6e-4). 5.2 takes RWKV-v5's: att.key and gate gain 0.1, all others 1,
//   emb uniform(±1e-4). Both zero att.output, ffn.value, ffn.receptance, set ln_x.weight to
//   ((1+i)/L)^0.7 and head to orthogonal 0.5·√(V/C) (0.5 if V ≤ C).
// The per-head curves of 5.0/5.1 divide by H − 1 and the per-channel ones of 5.2 by A − 1;
// with one head (or channel) the ramp is taken as 0 where Python would divide by zero.
#include <cmath>
#include <string>

#include "model/init_common.h"
#include "rwkv/error.h"
#include "rwkv/init.h"

namespace rwkv {
namespace {

using namespace init_detail;

enum class Layout { V50, V51, V52 };

struct Dims {
  Layout layout;
  int L, C, A, H, N, F, V;
};

Dims validate(const InitConfig& c) {
  const char* who = "init_rwkv5";
  const std::string generation = canonical_generation(c.generation);
  Layout layout;
  if (generation == "5.0") {
    layout = Layout::V50;
  } else if (generation == "5.1") {
    layout = Layout::V51;
  } else if (generation == "5.2") {
    layout = Layout::V52;
  } else {
    fail("init_rwkv5: generation must be 5.0, 5.1 or 5.2, got '", c.generation, "'");
  }
  check_positive(who, "n_layer", c.n_layer);
  check_positive(who, "n_embd", c.n_embd);
  check_positive(who, "vocab_size", c.vocab_size);
  check_positive(who, "head_size", c.head_size);
  if (c.n_embd % c.head_size != 0) {
    fail("init_rwkv5: n_embd (", c.n_embd, ") must be a multiple of head_size (", c.head_size, ")");
  }
  check_defaultable(who, "dim_ffn", c.dim_ffn);
  check_unused(who, "d_decay", c.d_decay, "RWKV-6 and RWKV-7");
  check_unused(who, "d_mix", c.d_mix, "RWKV-6");
  check_unused(who, "d_iclr", c.d_iclr, "RWKV-7");
  check_unused(who, "d_value", c.d_value, "RWKV-7");
  check_unused(who, "d_gate", c.d_gate, "RWKV-7");
  const int C = c.n_embd;
  return Dims{.layout = layout,
              .L = c.n_layer,
              .C = C,
              .A = C,  // dim_att = n_embd, as in every official checkpoint
              .H = C / c.head_size,
              .N = c.head_size,
              .F = c.dim_ffn ? c.dim_ffn : default_dim_ffn(generation, C),
              .V = c.vocab_size};
}

// The orthogonal gain of a matrix the model-level pass does not zero (see the file comment).
// `small` is RWKV-v5's 0.1 for att.key and att.gate.
double matrix_gain(const Dims& d, int64_t rows, int64_t cols, bool small) {
  if (d.layout == Layout::V52) return small ? 0.1 : 1.0;
  return rows > cols ? std::sqrt(double(rows) / double(cols)) : 1.0;
}

double embedding_bound(const Dims& d) { return d.layout == Layout::V52 ? 1e-4 : 6e-4; }

// time_mix_k/v/r (and g) of every v5 constructor: lerp weights x·μ + x_prev·(1−μ).
void add_time_mixes(Builder& out, const Dims& d, int i, const std::string& a, bool gate) {
  const int C = d.C;
  const double r01 = ratio_0_to_1(i, d.L), r1 = ratio_1_to_almost0(i, d.L);
  auto ddd = [&](int c) { return double(c) / C; };
  out.add(a + "time_mix_k", {1, 1, C},
          per_channel(C, [&](int c) { return std::pow(ddd(c), r1); }));
  out.add(a + "time_mix_v", {1, 1, C},
          per_channel(C, [&](int c) { return std::pow(ddd(c), r1) + 0.3 * r01; }));
  const auto half = per_channel(C, [&](int c) { return std::pow(ddd(c), 0.5 * r1); });
  out.add(a + "time_mix_r", {1, 1, C}, half);
  if (gate) out.add(a + "time_mix_g", {1, 1, C}, half);
}

// 5.0/5.1: one decay per head, −6 + 5·(h/(H−1))^{0.7 + 1.3·r01}; bonus −3 as time_first (5.0,
// u = e^−3) or r01·(1 − h/(H−1)) as time_faaaa (5.1, used directly).
void add_head_decay_and_bonus(Builder& out, const Dims& d, int i, const std::string& a) {
  const double r01 = ratio_0_to_1(i, d.L);
  out.add(a + "time_decay", {d.H}, per_channel(d.H, [&](int h) {
            return -6.0 + 5.0 * std::pow(position(h, d.H), 0.7 + 1.3 * r01);
          }));
  if (d.layout == Layout::V50) {
    out.add_constant(a + "time_first", {d.H}, -3.f);
  } else {
    out.add(a + "time_faaaa", {d.H},
            per_channel(d.H, [&](int h) { return r01 * (1.0 - position(h, d.H)); }));
  }
}

void add_time_mix(Builder& out, const Dims& d, int i, const std::string& a) {
  const int C = d.C, A = d.A;
  const bool gated = d.layout != Layout::V50;
  add_time_mixes(out, d, i, a, gated);
  if (d.layout == Layout::V52) {
    const double r01 = ratio_0_to_1(i, d.L);
    out.add(a + "time_decay", {d.H, d.N},
            per_channel(A, [&](int n) { return eagle_decay(n, A, r01); }));
    out.add(a + "time_faaaa", {d.H, d.N},
            per_channel(A, [&](int n) { return eagle_bonus(n, A, r01); }));
  } else {
    add_head_decay_and_bonus(out, d, i, a);
  }
  if (d.layout == Layout::V51) {
    out.add_orthogonal(a + "gate.weight", A, C, matrix_gain(d, A, C, true));
  }
  out.add_orthogonal(a + "receptance.weight", A, C, matrix_gain(d, A, C, false));
  out.add_orthogonal(a + "key.weight", A, C, matrix_gain(d, A, C, true));
  out.add_orthogonal(a + "value.weight", A, C, matrix_gain(d, A, C, false));
  out.add_constant(a + "output.weight", {C, A}, 0.f);
  if (d.layout == Layout::V52) {
    out.add_orthogonal(a + "gate.weight", A, C, matrix_gain(d, A, C, true));
  }
  out.add_constant(a + "ln_x.weight", {A}, float(std::pow((1.0 + i) / d.L, 0.7)));
  out.add_constant(a + "ln_x.bias", {A}, 0.f);
}

void add_channel_mix(Builder& out, const Dims& d, int i, const std::string& f) {
  const int C = d.C;
  const double r1 = ratio_1_to_almost0(i, d.L);
  const auto mix = per_channel(C, [&](int c) { return std::pow(double(c) / C, r1); });
  out.add(f + "time_mix_k", {1, 1, C}, mix);
  out.add(f + "time_mix_r", {1, 1, C}, mix);
  out.add_orthogonal(f + "key.weight", d.F, C, matrix_gain(d, d.F, C, false));
  out.add_constant(f + "receptance.weight", {C, C}, 0.f);
  out.add_constant(f + "value.weight", {C, d.F}, 0.f);
}

}  // namespace

OwnedTensors init_rwkv5(const InitConfig& config) {
  const Dims d = validate(config);
  return build_model(
      config, d.V, d.C, d.L, embedding_bound(d),
      [&](Builder& out, int i, const std::string& p) { add_time_mix(out, d, i, p); },
      [&](Builder& out, int i, const std::string& p) { add_channel_mix(out, d, i, p); });
}

}  // namespace rwkv
