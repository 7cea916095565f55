// RWKV-6 "Finch" (x060), spec §2.3 (recurrent) and §4.3 (chunked parallel form): data-dependent
// token shift (DDLerp) and data-dependent decay.
#include <cmath>
#include <cstring>

#include "model/base.h"
#include "model/generations.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace {

// DDLerp targets in the order of time_maa_w2's slabs.
enum Target { kW, kK, kV, kR, kG, kTargets };

struct Layer {
  const float *ln1_w, *ln1_b;             // (C)
  const float* maa_x;                     // (C)
  const float* maa[kTargets];             // (C) static mix per target
  ops::Matrix maa_w1;                     // (5·D_mix, C)
  ops::Matrix maa_w2[kTargets];           // (C, D_mix) each
  const float* decay;                     // (A) time_decay
  ops::Matrix decay_w1, decay_w2;         // (D_decay, C), (A, D_decay)
  const float* bonus;                     // (A) time_faaaa
  ops::Matrix key, value, receptance, gate;  // (A, C)
  ops::Matrix output;                     // (C, A)
  const float *ln_x_w, *ln_x_b;           // (A)
};

class Rwkv6 final : public MatrixStateModel {
 public:
  Rwkv6(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : MatrixStateModel(info, options) {
    const int C = info_.n_embd, A = info_.dim_att, H = info_.n_head, N = info_.head_size;
    if (H <= 0 || H * N != A) fail(ckpt->path(), ": RWKV-6: ", H, " heads do not divide dim_att ", A);
    for (const auto& [name, width] : info_.lora) (name == "mix" ? d_mix_ : d_decay_) = width;
    WeightLoader load(ckpt, options);
    load_common(load);
    static const char* const kNames[kTargets] = {"w", "k", "v", "r", "g"};
    for (int l = 0; l < info_.n_layer; ++l) {
      const std::string p = cat("blocks.", l, "."), a = p + "att.";
      Layer y{};
      y.ln1_w = load.vec(p + "ln1.weight", C);
      y.ln1_b = load.vec(p + "ln1.bias", C);
      y.maa_x = load.vec(a + "time_maa_x", C);
      for (int t = 0; t < kTargets; ++t) {
        y.maa[t] = load.vec(a + "time_maa_" + kNames[t], C);
        y.maa_w2[t] = load.lora_slab(a + "time_maa_w2", t, kTargets, d_mix_, C);
      }
      y.maa_w1 = load.lora(a + "time_maa_w1", C, kTargets * d_mix_);
      y.decay = load.vec(a + "time_decay", A);
      y.decay_w1 = load.lora(a + "time_decay_w1", C, d_decay_);
      y.decay_w2 = load.lora(a + "time_decay_w2", d_decay_, A);
      y.bonus = load.vec(a + "time_faaaa", A);
      y.key = load.mat(a + "key.weight", A, C);
      y.value = load.mat(a + "value.weight", A, C);
      y.receptance = load.mat(a + "receptance.weight", A, C);
      y.gate = load.mat(a + "gate.weight", A, C);
      y.output = load.mat(a + "output.weight", C, A);
      y.ln_x_w = load.vec(a + "ln_x.weight", A);
      y.ln_x_b = load.vec(a + "ln_x.bias", A);
      layers_.push_back(y);
      ffn_.push_back(load_channel_mix(load, l, FfnMix::kTimeMaa));
    }
    finish_load(load, std::move(ckpt));
  }

 private:
  static constexpr float kGroupNormEps = 64e-5f;

  void reserve(int M) override {
    if (M <= rows_) return;
    rows_ = M;
    const size_t ma = size_t(M) * size_t(std::max(info_.n_embd, info_.dim_att));
    const size_t lora = size_t(M) * size_t(std::max(kTargets * d_mix_, d_decay_));
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
  void ddlerp(const Layer& y, int t, int M) {
    const int C = info_.n_embd, D = d_mix_;
    for (int m = 0; m < M; ++m) {
      std::memcpy(slab_ + size_t(m) * size_t(D),
                  hidden_lora_ + size_t(m) * size_t(kTargets * D) + size_t(t * D), size_t(D) * 4);
    }
    kernels_->linear(y.maa_w2[t], slab_, M, xc_);
    const size_t MC = size_t(M) * size_t(C);
    for (size_t i = 0; i < MC; ++i) xc_[i] = xn_[i] + delta_[i] * (y.maa[t][i % size_t(C)] + xc_[i]);
  }

  void time_mix(int l, int B, int T, float* const* states, bool parallel) override {
    const Layer& y = layers_[size_t(l)];
    const int C = info_.n_embd, A = info_.dim_att, M = B * T;
    const size_t MC = size_t(M) * size_t(C), MA = size_t(M) * size_t(A);
    layer_norm(x_, xn_, M, C, y.ln1_w, y.ln1_b);
    token_shift(xn_, delta_, B, T, C, states, size_t(l) * layer_floats());
    for (size_t i = 0; i < MC; ++i) tmp_[i] = xn_[i] + delta_[i] * y.maa_x[i % size_t(C)];
    kernels_->linear(y.maa_w1, tmp_, M, hidden_lora_);
    const size_t MH = size_t(M) * size_t(kTargets * d_mix_);
    for (size_t i = 0; i < MH; ++i) hidden_lora_[i] = std::tanh(hidden_lora_[i]);
    // Decay last: it reuses the LoRA hidden buffer.
    const struct {
      Target target;
      const ops::Matrix* weight;
      float* out;
    } projections[] = {{kK, &y.key, k_}, {kV, &y.value, v_}, {kR, &y.receptance, r_},
                       {kG, &y.gate, g_}};
    for (const auto& pr : projections) {
      ddlerp(y, pr.target, M);
      kernels_->linear(*pr.weight, xc_, M, pr.out);
    }
    for (size_t i = 0; i < MA; ++i) g_[i] = silu(g_[i]);
    ddlerp(y, kW, M);
    kernels_->linear(y.decay_w1, xc_, M, hidden_lora_);
    const size_t MD = size_t(M) * size_t(d_decay_);
    for (size_t i = 0; i < MD; ++i) hidden_lora_[i] = std::tanh(hidden_lora_[i]);
    kernels_->linear(y.decay_w2, hidden_lora_, M, w_);
    for (size_t i = 0; i < MA; ++i) w_[i] = -std::exp(y.decay[i % size_t(A)] + w_[i]);  // log d
    matrix_wkv6(*kernels_, info_, l, B, T, states, parallel, {r_, w_, k_, v_, y.bonus, y_});
    group_norm(y_, M, info_.n_head, info_.head_size, y.ln_x_w, y.ln_x_b, kGroupNormEps);
    for (size_t i = 0; i < MA; ++i) y_[i] *= g_[i];
    kernels_->linear(y.output, y_, M, tmp_);
    for (size_t i = 0; i < MC; ++i) x_[i] += tmp_[i];
  }

  std::vector<Layer> layers_;
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
