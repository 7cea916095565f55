// RWKV-4 on an NVIDIA GPU: the CPU model's math (rwkv4.cpp, spec §2.1, §3.1) with every op from
// ops/cuda; the WKV is the max-exponent scan, one thread per channel.
#include "model/cuda/cuda_block_model.h"
#include "model/generations.h"
#include "model/rwkv456_weights.h"
#include "ops/cuda/kernels_v456.h"

namespace rwkv::model {
namespace {

using cuda::Act;
using cuda::LinearJob;

class Rwkv4Cuda final : public CudaBlockModel {
 public:
  Rwkv4Cuda(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : CudaBlockModel(info, options, {}) {
    WeightLoader load(ckpt, load_options());
    load_common(load);
    const bool rwkvcpp = ckpt->format() == "rwkv.cpp";
    for (int l = 0; l < info_.n_layer; ++l) {
      att_.push_back(load_rwkv4_layer(load, info_, l, rwkvcpp));
      ffn_.push_back(load_channel_mix(load, info_, l, FfnMix::kTimeMix));
    }
    finish_load(load, size_t(info_.n_layer) * rwkv4_layer_floats(info_));
  }

  std::vector<StatePiece> state_layout() const override { return rwkv4_state_layout(info_); }
  void init_state(float* state) const override { rwkv4_init_state(info_, state); }

 private:
  void visit_layers(const VecVisitor& vec, const MatVisitor& mat) override {
    const int C = info_.n_embd, A = info_.dim_att;
    for (Rwkv4Layer& y : att_) {
      for (const float** p : {&y.ln1_w, &y.ln1_b, &y.mix_k, &y.mix_v, &y.mix_r}) vec(*p, C);
      for (const float** p : {&y.decay, &y.first}) vec(*p, A);
      for (ops::Matrix* m : {&y.key, &y.value, &y.receptance, &y.output}) mat(*m);
    }
  }

  size_t ffn_shift_offset(int l) const override { return rwkv4_ffn_offset(info_, l); }

  bool reserve(int M) override {
    return ensure_activations(buffer_, rows_, M, [&](Carver& c, int n) {
      const size_t mc = size_t(n) * size_t(info_.n_embd), ma = size_t(n) * size_t(info_.dim_att);
      for (float** f : {&xk, &xv, &xr}) *f = c.take<float>(mc);
      for (float** f : {&r, &k, &v, &y}) *f = c.take<float>(ma);
    });
  }

  void time_mix(int l, int B, int T, const cuda::StateRef& states) override {
    const Rwkv4Layer& L = att_[size_t(l)];
    cuda::Context& c = ctx();
    const int C = info_.n_embd, A = info_.dim_att, M = B * T;
    cuda::layer_norm(c, x(), C, xn(), M, C, L.ln1_w, L.ln1_b);
    const cuda::ShiftMix mix{3, {L.mix_k, L.mix_v, L.mix_r}, {xk, xv, xr}};
    cuda::token_shift_mix(c, xn(), B, T, C, states, size_t(l) * rwkv4_layer_floats(info_), mix);
    const LinearJob projections[] = {{L.key, xk, k}, {L.value, xv, v}, {L.receptance, xr, r, Act::Sigmoid}};
    cuda::linear_jobs(c, projections, 3, M);
    cuda::wkv4_scan(c, B, T, A, k, v, r, L.decay, L.first, y, states, rwkv4_aa_offset(info_, l));
    cuda::linear(c, L.output, y, M, x(), Act::None, /*accumulate=*/true);
  }

  std::vector<Rwkv4Layer> att_;
  cuda::DeviceBuffer buffer_;
  int rows_ = 0;
  float *xk, *xv, *xr;   // (M, C)
  float *r, *k, *v, *y;  // (M, A)
};

}  // namespace

std::unique_ptr<Model> load_rwkv4_cuda(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options) {
  return std::make_unique<Rwkv4Cuda>(std::move(checkpoint), info, options);
}

}  // namespace rwkv::model
