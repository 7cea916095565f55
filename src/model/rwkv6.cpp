// RWKV-6 "Finch" (x060), spec §2.3 (recurrent) and §4.3 (chunked parallel form): data-dependent
// token shift (DDLerp) and data-dependent decay.
#include <cmath>
#include <cstring>

#include "model/base.h"
#include "model/generations.h"
#include "model/rwkv456_weights.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace {

class Rwkv6 final : public MatrixStateModel {
 public:
  Rwkv6(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : MatrixStateModel(info, options) {
    check_head_dims(info_, ckpt->path());
    const Rwkv6Lora lora = rwkv6_lora(info_);
    d_mix_ = lora.mix, d_decay_ = lora.decay;
    WeightLoader load(ckpt, options);
    load_common(load);
    for (int l = 0; l < info_.n_layer; ++l) {
      layers_.push_back(load_rwkv6_layer(load, info_, l));
      ffn_.push_back(load_channel_mix(load, info_, l, FfnMix::kTimeMaa));
    }
    finish_load(load, std::move(ckpt));
  }

 private:
  void reserve(int M) override {
    if (M <= rows_) return;
    rows_ = M;
    const size_t ma = size_t(M) * size_t(std::max(info_.n_embd, info_.dim_att));
    const size_t lora = size_t(M) * size_t(std::max(kRwkv6Targets * d_mix_, d_decay_));
    buffer_.assign(7 * ma + 2 * lora, 0.f);
    float* p = buffer_.data();
    for (float** f : {&r_, &k_, &v_, &g_, &w_, &y_, &xc_}) {
      *f = p;
      p += ma;
    }
    hidden_lora_ = p;
    slab_ = p + lora;
  }

  // x_c = x̂ + δ⊙(μ_c + m_c) with the DDLerp offset m_c = W2[c]ᵀ h_c.
  void ddlerp(const Rwkv6Layer& y, int t, int M) {
    const int C = info_.n_embd, D = d_mix_;
    for (int m = 0; m < M; ++m) {
      std::memcpy(slab_ + size_t(m) * size_t(D),
                  hidden_lora_ + size_t(m) * size_t(kRwkv6Targets * D) + size_t(t * D), size_t(D) * 4);
    }
    kernels_->linear(y.maa_w2[t], slab_, M, xc_);
    mix_rows(xn_, delta_, y.maa[t], xc_, xc_, M, C);
  }

  void time_mix(int l, int B, int T, float* const* states, bool parallel) override {
    const Rwkv6Layer& y = layers_[size_t(l)];
    const int C = info_.n_embd, A = info_.dim_att, M = B * T;
    const size_t MC = size_t(M) * size_t(C), MA = size_t(M) * size_t(A);
    layer_norm(x_, xn_, M, C, y.ln1_w, y.ln1_b);
    token_shift(xn_, delta_, B, T, C, states, size_t(l) * layer_floats());
    mix_rows(xn_, delta_, y.maa_x, nullptr, tmp_, M, C);
    kernels_->linear(y.maa_w1, tmp_, M, hidden_lora_);
    const size_t MH = size_t(M) * size_t(kRwkv6Targets * d_mix_);
    for (size_t i = 0; i < MH; ++i) hidden_lora_[i] = std::tanh(hidden_lora_[i]);
    // Decay last: it reuses the LoRA hidden buffer.
    const struct {
      Rwkv6Target target;
      const ops::Matrix* weight;
      float* out;
    } projections[] = {{kRwkv6K, &y.key, k_}, {kRwkv6V, &y.value, v_}, {kRwkv6R, &y.receptance, r_},
                       {kRwkv6G, &y.gate, g_}};
    for (const auto& pr : projections) {
      ddlerp(y, pr.target, M);
      kernels_->linear(*pr.weight, xc_, M, pr.out);
    }
    for (size_t i = 0; i < MA; ++i) g_[i] = silu(g_[i]);
    ddlerp(y, kRwkv6W, M);
    kernels_->linear(y.decay_w1, xc_, M, hidden_lora_);
    const size_t MD = size_t(M) * size_t(d_decay_);
    for (size_t i = 0; i < MD; ++i) hidden_lora_[i] = std::tanh(hidden_lora_[i]);
    kernels_->linear(y.decay_w2, hidden_lora_, M, w_);
    for (int m = 0; m < M; ++m) {
      float* w = w_ + size_t(m) * size_t(A);
      for (int c = 0; c < A; ++c) w[c] = -std::exp(y.decay[c] + w[c]);  // log d
    }
    matrix_wkv6(*kernels_, info_, l, B, T, states, parallel, {r_, w_, k_, v_, y.bonus, y_});
    group_norm(y_, M, info_.n_head, info_.head_size, y.ln_x_w, y.ln_x_b, kRwkv6GroupNormEps);
    for (size_t i = 0; i < MA; ++i) y_[i] *= g_[i];
    kernels_->linear(y.output, y_, M, tmp_);
    for (size_t i = 0; i < MC; ++i) x_[i] += tmp_[i];
  }

  std::vector<Rwkv6Layer> layers_;
  int d_mix_ = 0, d_decay_ = 0;
  int rows_ = 0;
  std::vector<float> buffer_;
  float *r_ = nullptr, *k_ = nullptr, *v_ = nullptr, *g_ = nullptr, *w_ = nullptr, *y_ = nullptr;
  float* xc_ = nullptr;                                   // (M, C) mixed input of one target
  float *hidden_lora_ = nullptr, *slab_ = nullptr;        // LoRA hidden, one target's slice
};

}  // namespace

std::unique_ptr<Model> load_rwkv6(std::shared_ptr<const Checkpoint> checkpoint,
                                  const ModelInfo& info, const LoadOptions& options) {
  return std::make_unique<Rwkv6>(std::move(checkpoint), info, options);
}

}  // namespace rwkv::model
