// RWKV-4 (spec §2.1 recurrent, §3.1 the max-exponent WKV, §4.1 parallel: the same scan over T
// with every matrix product batched over the sequence).
#include <cmath>
#include <cstring>

#include "model/base.h"
#include "model/generations.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace {

// The zero state's exponent offset: a finite huge negative (−∞ would give −∞ − −∞ = NaN).
constexpr float kInitialExponent = -1e30f;

struct Layer {
  const float *ln1_w, *ln1_b;              // (C)
  const float *mix_k, *mix_v, *mix_r;      // (C), 1 − time_mix (weight of the previous token)
  const float *decay, *first;              // (A): −exp(time_decay), time_first
  ops::Matrix key, value, receptance;      // (A, C)
  ops::Matrix output;                      // (C, A)
};

class Rwkv4 final : public BlockModel {
 public:
  Rwkv4(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : BlockModel(info, options) {
    WeightLoader load(ckpt, options);
    load_common(load);
    const int C = info_.n_embd, A = info_.dim_att;
    const bool baked = ckpt->format() == "rwkv.cpp";  // time_decay stored as −exp(w) (§1.4)
    for (int l = 0; l < info_.n_layer; ++l) {
      const std::string p = cat("blocks.", l, "."), a = p + "att.";
      Layer y{};
      y.ln1_w = load.vec(p + "ln1.weight", C);
      y.ln1_b = load.vec(p + "ln1.bias", C);
      y.mix_k = load.one_minus(a + "time_mix_k", C);
      y.mix_v = load.one_minus(a + "time_mix_v", C);
      y.mix_r = load.one_minus(a + "time_mix_r", C);
      y.decay = baked ? load.vec(a + "time_decay", A)
                      : load.vec_map(a + "time_decay", A, [](float w) { return -std::exp(w); });
      y.first = load.vec(a + "time_first", A);
      y.key = load.mat(a + "key.weight", A, C);
      y.value = load.mat(a + "value.weight", A, C);
      y.receptance = load.mat(a + "receptance.weight", A, C);
      y.output = load.mat(a + "output.weight", C, A);
      layers_.push_back(y);
      ffn_.push_back(load_channel_mix(load, l, FfnMix::kTimeMix));
    }
    finish_load(load, std::move(ckpt));
  }

  // Per layer: att_x_prev (C), att_aa, att_bb, att_pp (A each), ffn_x_prev (C): the official
  // package's list order.
  std::vector<StatePiece> state_layout() const override {
    std::vector<StatePiece> pieces;
    const int64_t C = info_.n_embd, A = info_.dim_att;
    for (int l = 0; l < info_.n_layer; ++l) {
      const size_t base = size_t(l) * layer_floats();
      const std::string p = cat("blocks.", l, ".");
      pieces.push_back({p + "att_x_prev", {C}, base, size_t(C)});
      pieces.push_back({p + "att_aa", {A}, base + size_t(C), size_t(A)});
      pieces.push_back({p + "att_bb", {A}, base + size_t(C + A), size_t(A)});
      pieces.push_back({p + "att_pp", {A}, base + size_t(C + 2 * A), size_t(A)});
      pieces.push_back({p + "ffn_x_prev", {C}, base + size_t(C + 3 * A), size_t(C)});
    }
    return pieces;
  }

  void init_state(float* state) const override {
    std::fill(state, state + state_spec().floats, 0.f);
    const size_t C = size_t(info_.n_embd), A = size_t(info_.dim_att);
    for (int l = 0; l < info_.n_layer; ++l) {
      float* pp = state + size_t(l) * layer_floats() + C + 2 * A;
      std::fill(pp, pp + A, kInitialExponent);
    }
  }

 private:
  size_t layer_floats() const override {
    return 2 * size_t(info_.n_embd) + 3 * size_t(info_.dim_att);
  }
  size_t ffn_shift_offset(int l) const override {
    return size_t(l) * layer_floats() + size_t(info_.n_embd) + 3 * size_t(info_.dim_att);
  }

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
    const Layer& y = layers_[size_t(l)];
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

  std::vector<Layer> layers_;
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
