// RWKV-6 "Finch" on an NVIDIA GPU: the CPU model's math (rwkv6.cpp, spec §2.3) with every op
// from ops/cuda — data-dependent token shift (DDLerp) and decay.
#include "model/cuda/cuda_block_model.h"
#include "model/generations.h"
#include "model/rwkv456_weights.h"
#include "ops/cuda/kernels_v456.h"

namespace rwkv::model {
namespace {

using cuda::Act;
using cuda::LinearJob;

class Rwkv6Cuda final : public CudaMatrixStateModel {
 public:
  Rwkv6Cuda(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : CudaMatrixStateModel(info, options, {8, 16, 32, 64, 128}), lora_(rwkv6_lora(info)) {
    check_head_dims(info_, ckpt->path());
    WeightLoader load(ckpt, load_options());
    load_common(load);
    for (int l = 0; l < info_.n_layer; ++l) {
      att_.push_back(load_rwkv6_layer(load, info_, l));
      ffn_.push_back(load_channel_mix(load, info_, l, FfnMix::kTimeMaa));
    }
    finish_load(load, state_floats());
  }

 private:
  void visit_layers(const VecVisitor& vec, const MatVisitor& mat) override {
    const int C = info_.n_embd, A = info_.dim_att;
    for (Rwkv6Layer& y : att_) {
      for (const float** p : {&y.ln1_w, &y.ln1_b, &y.maa_x}) vec(*p, C);
      for (const float*& p : y.maa) vec(p, C);
      for (const float** p : {&y.decay, &y.bonus, &y.ln_x_w, &y.ln_x_b}) vec(*p, A);
      for (ops::Matrix& m : y.maa_w2) mat(m);
      for (ops::Matrix* m : {&y.maa_w1, &y.decay_w1, &y.decay_w2, &y.key, &y.value, &y.receptance,
                             &y.gate, &y.output}) {
        mat(*m);
      }
    }
  }

  bool reserve(int M) override {
    return ensure_activations(buffer_, rows_, M, [&](Carver& c, int n) {
      const size_t mc = size_t(n) * size_t(info_.n_embd), ma = size_t(n) * size_t(info_.dim_att);
      for (float** f : {&xxx, &delta}) *f = c.take<float>(mc);
      for (float*& f : xc) f = c.take<float>(mc);
      for (float** f : {&r, &k, &v, &g, &w, &y}) *f = c.take<float>(ma);
      hidden = c.take<float>(size_t(n) * size_t(kRwkv6Targets * lora_.mix));
      slabs = c.take<float>(size_t(n) * size_t(kRwkv6Targets * lora_.mix));
      hidden_decay = c.take<float>(size_t(n) * size_t(lora_.decay));
    });
  }

  void time_mix(int l, int B, int T, const cuda::StateRef& states) override {
    const Rwkv6Layer& L = att_[size_t(l)];
    cuda::Context& c = ctx();
    const int C = info_.n_embd, H = info_.n_head, N = info_.head_size, M = B * T, D = lora_.mix;
    cuda::layer_norm(c, x(), C, xn(), M, C, L.ln1_w, L.ln1_b);
    // xxx = x̂ + δ⊙μ_x, and δ itself (a null mix).
    const cuda::ShiftMix mix{2, {L.maa_x, nullptr}, {xxx, delta}};
    cuda::token_shift_mix(c, xn(), B, T, C, states, size_t(l) * matrix_state_layer_floats(info_), mix);
    cuda::linear(c, L.maa_w1, xxx, M, hidden, Act::Tanh);  // (M, 5·D)
    // Each target's D columns of the LoRA hidden layer as its own (M, D) input; a decode row's
    // are contiguous already (when 16-byte aligned for the matrix-vector kernel's loads).
    LinearJob offsets[kRwkv6Targets];
    for (int t = 0; t < kRwkv6Targets; ++t) {
      const float* slab = hidden + size_t(t * D);
      if (M > 1 || D % 4 != 0) {
        float* dst = slabs + size_t(t) * size_t(M) * size_t(D);
        cuda::copy_columns(c, slab, kRwkv6Targets * D, M, D, dst);
        slab = dst;
      }
      offsets[t] = {L.maa_w2[t], slab, xc[t]};
    }
    cuda::linear_jobs(c, offsets, kRwkv6Targets, M);
    // x_t = x̂ + δ⊙(μ_t + offset_t), in place over the offsets.
    for (int t = 0; t < kRwkv6Targets; ++t) cuda::ddlerp(c, M, C, xn(), delta, L.maa[t], xc[t], xc[t]);
    const LinearJob projections[] = {{L.key, xc[kRwkv6K], k},
                                     {L.value, xc[kRwkv6V], v},
                                     {L.receptance, xc[kRwkv6R], r},
                                     {L.gate, xc[kRwkv6G], g, Act::Silu},
                                     {L.decay_w1, xc[kRwkv6W], hidden_decay, Act::Tanh}};
    cuda::linear_jobs(c, projections, 5, M);
    cuda::linear(c, L.decay_w2, hidden_decay, M, w);
    // log d = −exp(time_decay + w), inside the scan.
    cuda::wkv6_scan(c, B, T, H, N, r, k, v, w, L.decay, L.bonus, y, states, matrix_state_kv_offset(info_, l));
    cuda::group_norm_gate(c, y, g, M, H, N, L.ln_x_w, L.ln_x_b, kRwkv6GroupNormEps);
    cuda::linear(c, L.output, y, M, x(), Act::None, /*accumulate=*/true);
  }

  std::vector<Rwkv6Layer> att_;
  Rwkv6Lora lora_;
  cuda::DeviceBuffer buffer_;
  int rows_ = 0;
  float *xxx, *delta, *xc[kRwkv6Targets];  // (M, C)
  float *r, *k, *v, *g, *w, *y;            // (M, A)
  float *hidden, *slabs, *hidden_decay;    // (M, 5·D_mix) twice, (M, D_decay)
};

}  // namespace

std::unique_ptr<Model> load_rwkv6_cuda(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options) {
  return std::make_unique<Rwkv6Cuda>(std::move(checkpoint), info, options);
}

}  // namespace rwkv::model
