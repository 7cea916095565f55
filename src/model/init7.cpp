// RWKV-7 weights with the official initialisation (spec §5.1): the module-level values of
// RWKV-LM's x070 constructors, overridden where the model-level `generate_init_weight` pass
// says so, in the official key names, order and shapes (§1.2).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "model/init_common.h"
#include "rwkv/error.h"
#include "rwkv/init.h"

namespace rwkv {
namespace {

using namespace init_detail;

// ---- the tensor list -----------------------------------------------------------------------

struct Dims {
  int L, C, H, N, F, V;
  int d_decay, d_iclr, d_value, d_gate;
};

// Released LoRA width (§1.2): max(32, 32·round(factor·C^power/32)). nearbyint in the default
// rounding mode rounds half to even, as Python's round does.
int released_width(int C, double factor, double power) {
  return std::max(32, 32 * int(std::nearbyint(factor * std::pow(double(C), power) / 32)));
}

Dims validate(const InitConfig& c) {
  const char* who = "init_rwkv7";
  check_positive(who, "n_layer", c.n_layer);
  check_positive(who, "n_embd", c.n_embd);
  check_positive(who, "vocab_size", c.vocab_size);
  check_positive(who, "head_size", c.head_size);
  // The decay zigzag of §5.1 divides by N − 1.
  if (c.head_size < 2) fail("init_rwkv7: head_size must be at least 2, got ", c.head_size);
  if (c.n_embd % c.head_size != 0) {
    fail("init_rwkv7: n_embd (", c.n_embd, ") must be a multiple of head_size (", c.head_size, ")");
  }
  check_defaultable(who, "dim_ffn", c.dim_ffn);
  check_defaultable(who, "d_decay", c.d_decay);
  check_defaultable(who, "d_iclr", c.d_iclr);
  check_defaultable(who, "d_value", c.d_value);
  check_defaultable(who, "d_gate", c.d_gate);
  check_unused(who, "d_mix", c.d_mix, "RWKV-6");
  const int C = c.n_embd;
  const LoraWidths released = released_lora_widths(C);
  auto or_released = [](int forced, int released) { return forced ? forced : released; };
  return Dims{.L = c.n_layer,
              .C = C,
              .H = C / c.head_size,
              .N = c.head_size,
              .F = c.dim_ffn ? c.dim_ffn : 4 * C,
              .V = c.vocab_size,
              .d_decay = or_released(c.d_decay, released.decay),
              .d_iclr = or_released(c.d_iclr, released.iclr),
              .d_value = or_released(c.d_value, released.value),
              .d_gate = or_released(c.d_gate, released.gate)};
}

// X1 (C, D) zero, X2 (D, C) orthogonal 0.1 (× √(D/C) when D > C, as ortho_init), then X0 if any.
void add_lora(Builder& out, const std::string& prefix, int C, int D, const std::vector<float>* x0) {
  out.add_constant(prefix + "1", {C, D}, 0.f);
  out.add_orthogonal(prefix + "2", D, C, 0.1 * (D > C ? std::sqrt(double(D) / C) : 1.0));
  if (x0) out.add(prefix + "0", {1, 1, C}, *x0);
}

// The per-channel curves of the time-mix constructor (§5.1) for layer i.
struct Curves {
  Curves(const Dims& d, int i)
      : C(d.C),
        N(d.N),
        r01(d.L > 1 ? double(i) / (d.L - 1) : 0.0),  // §5.1: guard L = 1
        r1(1.0 - double(i) / d.L) {}
  double ddd(int c) const { return double(c) / C; }
  double lin(int c) const { return double(c) / (C - 1) - 0.5; }
  double zig(int c) const {
    const double half = (N - 1) / 2.0, z = ((c % N) - half) / half;
    return z * std::abs(z);
  }
  double www(int c) const {
    return -6.0 + 6.0 * std::pow(double(c) / (C - 1), 1.0 + std::pow(r01, 0.3));
  }
  int C, N;
  double r01, r1;
};

void add_time_mix(Builder& out, const Dims& d, int i, const std::string& a) {
  const Curves curve(d, i);
  const int C = d.C;
  const char* mix_names[] = {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g"};
  const double mix_powers[] = {0.2, 0.9, 0.7, 0.7, 0.9, 0.2};
  for (int j = 0; j < 6; ++j) {
    out.add(a + mix_names[j], {1, 1, C}, per_channel(C, [&](int c) {
              return 1.0 - std::pow(curve.ddd(c), mix_powers[j] * curve.r1);
            }));
  }
  const auto w0 = per_channel(C, [&](int c) { return curve.www(c) + 0.5 + 2.5 * curve.zig(c); });
  const auto a0 =
      per_channel(C, [&](int c) { return -0.19 + 0.3 * curve.zig(c) + 0.4 * curve.lin(c); });
  const auto v0 = per_channel(C, [&](int c) { return 0.73 - 0.4 * curve.lin(c); });
  add_lora(out, a + "w", C, d.d_decay, &w0);
  add_lora(out, a + "a", C, d.d_iclr, &a0);
  // Block 0 stores its value as v_first and has no value-residual LoRA (fixture manifest).
  if (i > 0) add_lora(out, a + "v", C, d.d_value, &v0);
  add_lora(out, a + "g", C, d.d_gate, nullptr);
  out.add(a + "k_k", {1, 1, C}, per_channel(C, [&](int c) { return 0.71 - 0.1 * curve.lin(c); }));
  out.add_constant(a + "k_a", {1, 1, C}, 1.02f);
  out.add_constant(a + "r_k", {d.H, d.N}, -0.04f);
  // Model-level pass: orthogonal r/k/v (key gain 0.1), zero output, ln_x weight ((1+i)/L)^0.7.
  out.add_orthogonal(a + "receptance.weight", C, C, 1.0);
  out.add_orthogonal(a + "key.weight", C, C, 0.1);
  out.add_orthogonal(a + "value.weight", C, C, 1.0);
  out.add_constant(a + "output.weight", {C, C}, 0.f);
  out.add_constant(a + "ln_x.weight", {C}, float(std::pow((1.0 + i) / d.L, 0.7)));
  out.add_constant(a + "ln_x.bias", {C}, 0.f);
}

void add_channel_mix(Builder& out, const Dims& d, int i, const std::string& f) {
  const Curves curve(d, i);
  out.add(f + "x_k", {1, 1, d.C}, per_channel(d.C, [&](int c) {
            return 1.0 - std::pow(curve.ddd(c), std::pow(curve.r1, 4));
          }));
  out.add_orthogonal(f + "key.weight", d.F, d.C, 1.0);
  out.add_constant(f + "value.weight", {d.C, d.F}, 0.f);
}

}  // namespace

LoraWidths released_lora_widths(int n_embd) {
  return {released_width(n_embd, 1.8, 0.5), released_width(n_embd, 1.8, 0.5),
          released_width(n_embd, 1.3, 0.5), released_width(n_embd, 0.6, 0.8)};
}

OwnedTensors init_rwkv7(const InitConfig& config) {
  const Dims d = validate(config);
  return build_model(
      config, d.V, d.C, d.L, 1e-4,
      [&](Builder& out, int i, const std::string& p) { add_time_mix(out, d, i, p); },
      [&](Builder& out, int i, const std::string& p) { add_channel_mix(out, d, i, p); });
}

}  // namespace rwkv
