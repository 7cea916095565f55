// RWKV-7 on an NVIDIA GPU: the CPU model's math (rwkv7.cpp, spec §2.4) with every op from
// ops/cuda. Weights live on the GPU in their stored (or --dtype) type; states live in GPU state
// pools, so decoding moves only token ids in and logits out.
#include "model/cuda/cuda_block_model.h"
#include "model/generations.h"
#include "model/rwkv7_weights.h"

namespace rwkv::model {
namespace {

using cuda::Act;
using cuda::LinearJob;

class Rwkv7Cuda final : public CudaMatrixStateModel {
 public:
  Rwkv7Cuda(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : CudaMatrixStateModel(info, options, {16, 32, 64, 128}) {
    check_rwkv7_dims(info_);
    WeightLoader load(ckpt, load_options());
    load_common(load);
    for (int l = 0; l < info_.n_layer; ++l) {
      att_.push_back(load_rwkv7_layer(load, info_, l));
      ffn_.push_back(load_channel_mix(load, info_, l, FfnMix::kX));
    }
    for (const auto& [name, width] : info_.lora) max_lora_ = std::max(max_lora_, width);
    finish_load(load, state_floats());
  }

 private:
  void visit_layers(const VecVisitor& vec, const MatVisitor& mat) override {
    const int C = info_.n_embd;
    for (Rwkv7Layer& y : att_) {
      for (const float** p : {&y.ln1_w, &y.ln1_b, &y.x_r, &y.x_w, &y.x_k, &y.x_v, &y.x_a, &y.x_g,
                              &y.w0, &y.a0, &y.v0, &y.k_k, &y.k_a, &y.r_k, &y.ln_x_w, &y.ln_x_b}) {
        if (*p) vec(*p, C);
      }
      for (ops::Matrix* m : {&y.w1, &y.w2, &y.a1, &y.a2, &y.v1, &y.v2, &y.g1, &y.g2, &y.receptance,
                             &y.key, &y.value, &y.output}) {
        if (m->data) mat(*m);
      }
    }
  }

  bool reserve(int M) override {
    return ensure_activations(buffer_, rows_, M, [&](Carver& c, int n) {
      const size_t mc = size_t(n) * size_t(info_.n_embd), ml = size_t(n) * size_t(max_lora_);
      for (float** f : {&xr, &xw, &xk, &xv, &xa, &xg, &r, &w, &k, &v, &a, &b, &g, &y, &v_first}) {
        *f = c.take<float>(mc);
      }
      for (float** f : {&hw, &ha, &hg, &hv}) *f = c.take<float>(ml);
    });
  }

  void time_mix(int l, int B, int T, const cuda::StateRef& states) override {
    const Rwkv7Layer& L = att_[size_t(l)];
    cuda::Context& c = ctx();
    const int C = info_.n_embd, H = info_.n_head, N = info_.head_size, M = B * T;
    const size_t layer = size_t(l) * matrix_state_layer_floats(info_);
    cuda::layer_norm(c, x(), C, xn(), M, C, L.ln1_w, L.ln1_b);
    const cuda::ShiftMix mix{6, {L.x_r, L.x_w, L.x_k, L.x_v, L.x_a, L.x_g}, {xr, xw, xk, xv, xa, xg}};
    cuda::token_shift_mix(c, xn(), B, T, C, states, layer, mix);
    const bool v_residual = l > 0;
    const LinearJob first[] = {
        {L.receptance, xr, r}, {L.key, xk, k},          {L.value, xv, v},
        {L.w1, xw, hw, Act::Tanh}, {L.a1, xa, ha},      {L.g1, xg, hg, Act::Sigmoid},
        {L.v1, xv, hv}};
    cuda::linear_jobs(c, first, v_residual ? 7 : 6, M);
    // xr is free once r is computed: it takes the value LoRA's output.
    const LinearJob second[] = {{L.w2, hw, w}, {L.a2, ha, a}, {L.g2, hg, g}, {L.v2, hv, xr}};
    cuda::linear_jobs(c, second, v_residual ? 4 : 3, M);
    cuda::rwkv7_prepare(c, M, H, N,
                        {w, k, v, a, b, v_first, v_residual ? xr : nullptr, L.w0, L.a0, L.v0, L.k_k, L.k_a});
    cuda::wkv7_scan(c, B, T, H, N, r, w, k, v, a, b, y, states, matrix_state_kv_offset(info_, l));
    cuda::rwkv7_output(c, M, H, N, {y, r, k, v, g, L.r_k, L.ln_x_w, L.ln_x_b}, kRwkv7GroupNormEps);
    cuda::linear(c, L.output, y, M, x(), Act::None, /*accumulate=*/true);
  }

  std::vector<Rwkv7Layer> att_;
  int max_lora_ = 1;
  // Activations of one call, (M, C) each; LoRA hidden (M, max LoRA width).
  cuda::DeviceBuffer buffer_;
  int rows_ = 0;
  float *xr, *xw, *xk, *xv, *xa, *xg, *r, *w, *k, *v, *a, *b, *g, *y, *v_first;
  float *hw, *ha, *hg, *hv;
};

}  // namespace

std::unique_ptr<Model> load_rwkv7_cuda(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options) {
  return std::make_unique<Rwkv7Cuda>(std::move(checkpoint), info, options);
}

}  // namespace rwkv::model
