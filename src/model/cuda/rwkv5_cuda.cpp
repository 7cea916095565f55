// RWKV-5 "Eagle" (5.0 / 5.1 / 5.2) on an NVIDIA GPU: the CPU model's math (rwkv5.cpp, spec §2.2)
// with every op from ops/cuda.
#include "model/cuda/cuda_block_model.h"
#include "model/generations.h"
#include "model/rwkv456_weights.h"
#include "ops/cuda/kernels_v456.h"

namespace rwkv::model {
namespace {

using cuda::Act;
using cuda::LinearJob;

class Rwkv5Cuda final : public CudaMatrixStateModel {
 public:
  Rwkv5Cuda(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : CudaMatrixStateModel(info, options, {8, 16, 32, 64, 128}) {
    check_head_dims(info_, ckpt->path());
    const bool rwkvcpp = ckpt->format() == "rwkv.cpp";
    group_norm_eps_ = rwkv5_group_norm_eps(rwkvcpp);
    WeightLoader load(ckpt, load_options());
    load_common(load);
    for (int l = 0; l < info_.n_layer; ++l) {
      att_.push_back(load_rwkv5_layer(load, info_, l, rwkvcpp));
      ffn_.push_back(load_channel_mix(load, info_, l, FfnMix::kTimeMix));
    }
    finish_load(load, state_floats());
  }

 private:
  void visit_layers(const VecVisitor& vec, const MatVisitor& mat) override {
    const int C = info_.n_embd, A = info_.dim_att;
    for (Rwkv5Layer& y : att_) {
      for (const float** p : {&y.ln1_w, &y.ln1_b, &y.mix_k, &y.mix_v, &y.mix_r, &y.mix_g}) {
        if (*p) vec(*p, C);
      }
      for (const float** p : {&y.log_decay, &y.bonus, &y.ln_x_w, &y.ln_x_b}) vec(*p, A);
      for (ops::Matrix* m : {&y.key, &y.value, &y.receptance, &y.gate, &y.output}) {
        if (m->data) mat(*m);
      }
    }
  }

  bool reserve(int M) override {
    return ensure_activations(buffer_, rows_, M, [&](Carver& c, int n) {
      const size_t mc = size_t(n) * size_t(info_.n_embd), ma = size_t(n) * size_t(info_.dim_att);
      for (float** f : {&xk, &xv, &xr, &xg}) *f = c.take<float>(mc);
      for (float** f : {&r, &k, &v, &g, &y}) *f = c.take<float>(ma);
    });
  }

  void time_mix(int l, int B, int T, const cuda::StateRef& states) override {
    const Rwkv5Layer& L = att_[size_t(l)];
    cuda::Context& c = ctx();
    const int C = info_.n_embd, H = info_.n_head, N = info_.head_size, M = B * T;
    const bool gated = L.mix_g != nullptr;  // 5.1, 5.2
    cuda::layer_norm(c, x(), C, xn(), M, C, L.ln1_w, L.ln1_b);
    const cuda::ShiftMix mix{gated ? 4 : 3, {L.mix_k, L.mix_v, L.mix_r, L.mix_g}, {xk, xv, xr, xg}};
    cuda::token_shift_mix(c, xn(), B, T, C, states, size_t(l) * matrix_state_layer_floats(info_), mix);
    const LinearJob projections[] = {{L.key, xk, k}, {L.value, xv, v}, {L.receptance, xr, r},
                                     {L.gate, xg, g, Act::Silu}};
    cuda::linear_jobs(c, projections, gated ? 4 : 3, M);
    // A constant log-decay per channel (no per-row part).
    cuda::wkv6_scan(c, B, T, H, N, r, k, v, nullptr, L.log_decay, L.bonus, y, states,
                    matrix_state_kv_offset(info_, l));
    cuda::group_norm_gate(c, y, gated ? g : nullptr, M, H, N, L.ln_x_w, L.ln_x_b, group_norm_eps_);
    cuda::linear(c, L.output, y, M, x(), Act::None, /*accumulate=*/true);
  }

  std::vector<Rwkv5Layer> att_;
  float group_norm_eps_ = 64e-5f;
  cuda::DeviceBuffer buffer_;
  int rows_ = 0;
  float *xk, *xv, *xr, *xg;    // (M, C)
  float *r, *k, *v, *g, *y;    // (M, A)
};

}  // namespace

std::unique_ptr<Model> load_rwkv5_cuda(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options) {
  return std::make_unique<Rwkv5Cuda>(std::move(checkpoint), info, options);
}

}  // namespace rwkv::model
