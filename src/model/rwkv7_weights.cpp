#include "model/rwkv7_weights.h"

#include "rwkv/error.h"

namespace rwkv::model {

void check_rwkv7_dims(const ModelInfo& info) {
  const int C = info.n_embd;
  if (info.dim_att != C) fail("RWKV-7: dim_att ", info.dim_att, " != n_embd ", C);
  if (info.n_head * info.head_size != C) {
    fail("RWKV-7: r_k shape (", info.n_head, ", ", info.head_size, ") does not cover n_embd ", C);
  }
}

Rwkv7Layer load_rwkv7_layer(WeightLoader& load, const ModelInfo& info, int l) {
  const int C = info.n_embd;
  const auto lora_width = [&](const std::string& name) {
    for (const auto& [n, w] : info.lora) {
      if (n == name) return w;
    }
    return 0;
  };
  const int Dw = lora_width("decay"), Da = lora_width("iclr"), Dv = lora_width("value"),
            Dg = lora_width("gate");
  const std::string p = cat("blocks.", l, "."), a = p + "att.";
  Rwkv7Layer y{};
  y.ln1_w = load.vec(p + "ln1.weight", C);
  y.ln1_b = load.vec(p + "ln1.bias", C);
  if (load.has(a + "x_rwkvag")) {
    // rwkv.cpp files stack the six mixes as x_rwkvag (6, 1, C) (spec §1.4).
    const float* mixes = load.vec(a + "x_rwkvag", 6 * int64_t(C));
    for (const float** f : {&y.x_r, &y.x_w, &y.x_k, &y.x_v, &y.x_a, &y.x_g}) {
      *f = mixes;
      mixes += C;
    }
  } else {
    y.x_r = load.vec(a + "x_r", C);
    y.x_w = load.vec(a + "x_w", C);
    y.x_k = load.vec(a + "x_k", C);
    y.x_v = load.vec(a + "x_v", C);
    y.x_a = load.vec(a + "x_a", C);
    y.x_g = load.vec(a + "x_g", C);
  }
  y.w0 = load.vec(a + "w0", C);
  y.a0 = load.vec(a + "a0", C);
  y.k_k = load.vec(a + "k_k", C);
  y.k_a = load.vec(a + "k_a", C);
  y.r_k = load.vec(a + "r_k", C);
  y.ln_x_w = load.vec(a + "ln_x.weight", C);
  y.ln_x_b = load.vec(a + "ln_x.bias", C);
  y.w1 = load.lora(a + "w1", C, Dw);
  y.w2 = load.lora(a + "w2", Dw, C);
  y.a1 = load.lora(a + "a1", C, Da);
  y.a2 = load.lora(a + "a2", Da, C);
  y.g1 = load.lora(a + "g1", C, Dg);
  y.g2 = load.lora(a + "g2", Dg, C);
  if (l == 0) {
    // The value residual starts at layer 0; official files may still carry unused v0/v1/v2.
    for (const char* n : {"v0", "v1", "v2"}) {
      if (load.has(a + n)) load.mark_ignored(a + n);
    }
    y.v0 = nullptr;
  } else {
    y.v0 = load.vec(a + "v0", C);
    y.v1 = load.lora(a + "v1", C, Dv);
    y.v2 = load.lora(a + "v2", Dv, C);
  }
  y.receptance = load.mat(a + "receptance.weight", C, C);
  y.key = load.mat(a + "key.weight", C, C);
  y.value = load.mat(a + "value.weight", C, C);
  y.output = load.mat(a + "output.weight", C, C);
  return y;
}

}  // namespace rwkv::model
