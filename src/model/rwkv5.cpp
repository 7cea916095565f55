// RWKV-5 "Eagle" 5.0 / 5.1 / 5.2 (spec §2.2 recurrent, §4.3 chunked parallel form).
//   5.0: no gate, one decay and bonus per head
//   5.1: SiLU gate, one decay and bonus per head
//   5.2: SiLU gate, decay and bonus per channel
#include <cmath>
#include <cstring>

#include "model/base.h"
#include "model/generations.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace {

struct Layer {
  const float *ln1_w, *ln1_b;                  // (C)
  const float *mix_k, *mix_v, *mix_r, *mix_g;  // (C), 1 − time_mix; mix_g null in 5.0
  const float *log_decay, *bonus;              // (A) per channel: log d, u
  ops::Matrix key, value, receptance, gate;    // (A, C); gate empty in 5.0
  ops::Matrix output;                          // (C, A)
  const float *ln_x_w, *ln_x_b;                // (A)
};

class Rwkv5 final : public MatrixStateModel {
 public:
  Rwkv5(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : MatrixStateModel(info, options) {
    const int C = info_.n_embd, A = info_.dim_att, H = info_.n_head, N = info_.head_size;
    if (H <= 0 || H * N != A) fail(ckpt->path(), ": RWKV-5: ", H, " heads do not divide dim_att ", A);
    // rwkv.cpp bakes exp(−exp(w)) and exp(time_first) into its files (spec §1.4), and its v5
    // models are trained for a GroupNorm epsilon of 1e-5; official ones use 64e-5 (spec §12.1).
    const bool rwkvcpp = ckpt->format() == "rwkv.cpp";
    group_norm_eps_ = rwkvcpp ? 1e-5f : 64e-5f;
    const bool gated = info_.generation != "5.0";
    const bool per_channel = info_.generation == "5.2";
    WeightLoader load(ckpt, options);
    load_common(load);
    for (int l = 0; l < info_.n_layer; ++l) {
      const std::string p = cat("blocks.", l, "."), a = p + "att.";
      Layer y{};
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
      layers_.push_back(y);
      ffn_.push_back(load_channel_mix(load, l, FfnMix::kTimeMix));
    }
    finish_load(load, std::move(ckpt));
  }

 private:
  static std::vector<float> per_head_to_channels(const float* v, int H, int N) {
    std::vector<float> out(size_t(H) * size_t(N));
    for (size_t i = 0; i < out.size(); ++i) out[i] = v[i / size_t(N)];
    return out;
  }

  void reserve(int M) override {
    if (M <= rows_) return;
    rows_ = M;
    const size_t ma = size_t(M) * size_t(info_.dim_att);
    buffer_.assign(6 * ma, 0.f);
    float* p = buffer_.data();
    for (float** f : {&r_, &k_, &v_, &g_, &w_, &y_}) {
      *f = p;
      p += ma;
    }
  }

  void time_mix(int l, int B, int T, float* const* states, bool parallel) override {
    const Layer& y = layers_[size_t(l)];
    const int C = info_.n_embd, A = info_.dim_att, M = B * T;
    const size_t MC = size_t(M) * size_t(C), MA = size_t(M) * size_t(A);
    layer_norm(x_, xn_, M, C, y.ln1_w, y.ln1_b);
    token_shift(xn_, delta_, B, T, C, states, size_t(l) * layer_floats());
    mixed_linear(y.mix_k, y.key, M, k_);
    mixed_linear(y.mix_v, y.value, M, v_);
    mixed_linear(y.mix_r, y.receptance, M, r_);
    if (y.mix_g) {
      mixed_linear(y.mix_g, y.gate, M, g_);
      for (size_t i = 0; i < MA; ++i) g_[i] = silu(g_[i]);
    }
    for (int m = 0; m < M; ++m) std::memcpy(w_ + size_t(m) * size_t(A), y.log_decay, size_t(A) * 4);
    matrix_wkv6(*kernels_, info_, l, B, T, states, parallel, {r_, w_, k_, v_, y.bonus, y_});
    group_norm(y_, M, info_.n_head, info_.head_size, y.ln_x_w, y.ln_x_b, group_norm_eps_);
    if (y.mix_g) {
      for (size_t i = 0; i < MA; ++i) y_[i] *= g_[i];
    }
    kernels_->linear(y.output, y_, M, tmp_);
    for (size_t i = 0; i < MC; ++i) x_[i] += tmp_[i];
  }

  std::vector<Layer> layers_;
  float group_norm_eps_ = 64e-5f;
  int rows_ = 0;
  std::vector<float> buffer_;
  float *r_ = nullptr, *k_ = nullptr, *v_ = nullptr, *g_ = nullptr, *w_ = nullptr, *y_ = nullptr;
};

}  // namespace

std::unique_ptr<Model> load_rwkv5(std::shared_ptr<const Checkpoint> checkpoint,
                                  const ModelInfo& info, const LoadOptions& options) {
  return std::make_unique<Rwkv5>(std::move(checkpoint), info, options);
}

}  // namespace rwkv::model
