// RWKV-5 "Eagle" 5.0 / 5.1 / 5.2 (spec §2.2 recurrent, §4.3 chunked parallel form).
//   5.0: no gate, one decay and bonus per head
//   5.1: SiLU gate, one decay and bonus per head
//   5.2: SiLU gate, decay and bonus per channel
#include <cmath>
#include <cstring>

#include "model/base.h"
#include "model/generations.h"
#include "model/rwkv456_weights.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace {

class Rwkv5 final : public MatrixStateModel {
 public:
  Rwkv5(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : MatrixStateModel(info, options) {
    check_head_dims(info_, ckpt->path());
    const bool rwkvcpp = ckpt->format() == "rwkv.cpp";
    group_norm_eps_ = rwkv5_group_norm_eps(rwkvcpp);
    WeightLoader load(ckpt, options);
    load_common(load);
    for (int l = 0; l < info_.n_layer; ++l) {
      layers_.push_back(load_rwkv5_layer(load, info_, l, rwkvcpp));
      ffn_.push_back(load_channel_mix(load, info_, l, FfnMix::kTimeMix));
    }
    finish_load(load, std::move(ckpt));
  }

 private:
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
    const Rwkv5Layer& y = layers_[size_t(l)];
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

  std::vector<Rwkv5Layer> layers_;
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
