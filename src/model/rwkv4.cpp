// RWKV-4 (spec §2.1 recurrent, §3.1 the max-exponent WKV, §4.1 parallel: the same scan over T
// with every matrix product batched over the sequence).
#include <cmath>
#include <cstring>

#include "model/base.h"
#include "model/generations.h"
#include "model/rwkv456_weights.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace {

class Rwkv4 final : public BlockModel {
 public:
  Rwkv4(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : BlockModel(info, options) {
    WeightLoader load(ckpt, options);
    load_common(load);
    const bool rwkvcpp = ckpt->format() == "rwkv.cpp";
    for (int l = 0; l < info_.n_layer; ++l) {
      layers_.push_back(load_rwkv4_layer(load, info_, l, rwkvcpp));
      ffn_.push_back(load_channel_mix(load, info_, l, FfnMix::kTimeMix));
    }
    finish_load(load, std::move(ckpt));
  }

  std::vector<StatePiece> state_layout() const override { return rwkv4_state_layout(info_); }
  void init_state(float* state) const override { rwkv4_init_state(info_, state); }

 private:
  size_t layer_floats() const override { return rwkv4_layer_floats(info_); }
  size_t ffn_shift_offset(int l) const override { return rwkv4_ffn_offset(info_, l); }

  void reserve(int M) override {
    if (M <= rows_) return;
    rows_ = M;
    const size_t ma = size_t(M) * size_t(info_.dim_att);
    buffer_.assign(4 * ma, 0.f);
    r_ = buffer_.data();
    k_ = r_ + ma;
    v_ = k_ + ma;
    y_ = v_ + ma;
  }

  void time_mix(int l, int B, int T, float* const* states, bool /*parallel*/) override {
    const Rwkv4Layer& y = layers_[size_t(l)];
    const int C = info_.n_embd, A = info_.dim_att, M = B * T;
    const size_t MC = size_t(M) * size_t(C), MA = size_t(M) * size_t(A);
    const size_t state_base = size_t(l) * layer_floats();
    layer_norm(x_, xn_, M, C, y.ln1_w, y.ln1_b);
    token_shift(xn_, delta_, B, T, C, states, state_base);
    mixed_linear(y.mix_k, y.key, M, k_);
    mixed_linear(y.mix_v, y.value, M, v_);
    mixed_linear(y.mix_r, y.receptance, M, r_);
    for (int b = 0; b < B; ++b) {
      const size_t o = size_t(b) * size_t(T) * size_t(A);
      float* s = states[b] + state_base + size_t(C);
      ops::Wkv4Seq seq{T, A, A, k_ + o, v_ + o, y.decay, y.first, y_ + o, s, s + A, s + 2 * A};
      kernels_->wkv4(seq);
    }
    for (size_t i = 0; i < MA; ++i) y_[i] *= sigmoid(r_[i]);
    kernels_->linear(y.output, y_, M, tmp_);
    for (size_t i = 0; i < MC; ++i) x_[i] += tmp_[i];
  }

  std::vector<Rwkv4Layer> layers_;
  int rows_ = 0;
  std::vector<float> buffer_;
  float *r_ = nullptr, *k_ = nullptr, *v_ = nullptr, *y_ = nullptr;  // (M, A)
};

}  // namespace

std::unique_ptr<Model> load_rwkv4(std::shared_ptr<const Checkpoint> checkpoint,
                                  const ModelInfo& info, const LoadOptions& options) {
  return std::make_unique<Rwkv4>(std::move(checkpoint), info, options);
}

}  // namespace rwkv::model
