// RWKV-7 on an NVIDIA GPU: the CPU model's math (rwkv7.cpp, spec §2.4) with every op from
// ops/cuda. Weights live on the GPU in their stored (or --dtype) type; states live in GPU state
// pools, so decoding moves only token ids in and logits out.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "model/cuda/cuda_block_model.h"
#include "model/generations.h"
#include "model/rwkv7_weights.h"
#include "ops/cuda/rwkv7_step.h"
#include "rwkv/error.h"

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
    prepare_fused_step();
  }
  ~Rwkv7Cuda() override {
    if (profile_.as()) print_step_profile();
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

  // Decode steps of up to step_batch_ sequences run as one kernel (ops/cuda/rwkv7_step.h) when
  // the weights and shapes allow: by default single sequences of models with C ≥ 2048, where it
  // was measured faster or level (1.5B: 557–560 vs 520 tok/s on an H200, 464 vs 466 on an H100);
  // at the 0.1B size (C 768) layer by layer is 1–5% faster on both cards, and at batches 2–4 the
  // fused step is slower (BENCHMARKS.md, dev/NOTES.md). RWKV_CUDA_FUSED_STEP=0 keeps every step
  // layer by layer; =1 runs every batch the kernel takes (up to 4) through it, whatever the
  // size, and makes a model it cannot run an error.
  void prepare_fused_step() {
    const char* env = std::getenv("RWKV_CUDA_FUSED_STEP");
    const std::string mode = env ? env : "";
    if (mode == "0") return;
    fuse_step();
    if (mode != "1") step_batch_ = info_.n_embd >= 2048 ? std::min(step_batch_, 1) : 0;
    if (mode == "1" && step_batch_ == 0) {
      fail("RWKV_CUDA_FUSED_STEP=1: the fused decode step needs 16-bit weights of one type, head size 64 "
           "and LoRA widths that are multiples of 8");
    }
  }
  void fuse_step() {
    const CommonWeights& cw = common();
    cuda::Rwkv7StepModel& m = step_;
    m.dtype = cw.head.dtype;
    // One weight type, the same LoRA widths in every layer, every vector the kernel reads.
    bool fits = cw.emb.dtype == m.dtype && cw.ln0_w && cw.ln_out_w;
    const auto mat = [&](const ops::Matrix& w) {
      if (w.data && w.dtype != m.dtype) fits = false;
      return w.data;
    };
    for (size_t l = 0; l < att_.size(); ++l) {
      const Rwkv7Layer& a = att_[l];
      fits = fits && a.w1.rows == att_[0].w1.rows && a.a1.rows == att_[0].a1.rows &&
             a.g1.rows == att_[0].g1.rows && (l < 2 || a.v1.rows == att_[1].v1.rows) && ffn_[l].mix_k;
    }
    std::vector<cuda::Rwkv7StepLayer> layers;
    for (size_t l = 0; l < att_.size(); ++l) {
      const Rwkv7Layer& a = att_[l];
      const ChannelMix& f = ffn_[l];
      layers.push_back({a.ln1_w, a.ln1_b, a.x_r, a.x_w, a.x_k, a.x_v, a.x_a, a.x_g, a.w0, a.a0, a.v0, a.k_k,
                        a.k_a, a.r_k, a.ln_x_w, a.ln_x_b, mat(a.receptance), mat(a.key), mat(a.value),
                        mat(a.output), mat(a.w1), mat(a.w2), mat(a.a1), mat(a.a2), mat(a.v1), mat(a.v2),
                        mat(a.g1), mat(a.g2), f.ln_w, f.ln_b, f.mix_k, mat(f.key), mat(f.value)});
    }
    if (!fits) return;
    m.n_layer = info_.n_layer, m.C = info_.n_embd, m.H = info_.n_head, m.N = info_.head_size;
    m.F = info_.dim_ffn, m.V = info_.vocab_size;
    m.lw = att_[0].w1.rows, m.la = att_[0].a1.rows, m.lg = att_[0].g1.rows;
    m.lv = att_.size() > 1 ? att_[1].v1.rows : 0;
    m.group_norm_eps = kRwkv7GroupNormEps;
    m.emb = cw.emb.data, m.head = cw.head.data;
    m.ln0_w = cw.ln0_w, m.ln0_b = cw.ln0_b, m.ln_out_w = cw.ln_out_w, m.ln_out_b = cw.ln_out_b;
    m.layer_floats = matrix_state_layer_floats(info_);
    step_layers_.ensure(layers.size() * sizeof layers[0]);
    RWKV_CUDA_CHECK(cudaMemcpy(step_layers_.as(), layers.data(), layers.size() * sizeof layers[0],
                               cudaMemcpyHostToDevice));
    m.layers = step_layers_.as<cuda::Rwkv7StepLayer>();
    barrier_.ensure(cuda::kRwkv7StepBarrierWords * sizeof(unsigned));
    RWKV_CUDA_CHECK(cudaMemset(barrier_.as(), 0, cuda::kRwkv7StepBarrierWords * sizeof(unsigned)));
    step_batch_ = cuda::rwkv7_step_max_batch(ctx(), m);
    if (std::getenv("RWKV_CUDA_STEP_PROFILE")) {
      profile_.ensure(8 * sizeof(unsigned long long));
      RWKV_CUDA_CHECK(cudaMemset(profile_.as(), 0, 8 * sizeof(unsigned long long)));
    }
  }

  // RWKV_CUDA_STEP_PROFILE: where the fused steps' time went, printed when the model goes.
  void print_step_profile() {
    unsigned long long t[8] = {};
    if (cudaMemcpy(t, profile_.as(), sizeof t, cudaMemcpyDeviceToHost) != cudaSuccess || t[7] == 0) return;
    const char* names[] = {"embedding", "1 ln+mix+r/k/v+LoRA-in", "2 LoRA-out+WKV", "3 norm+output",
                           "4 ln+key", "5 value", "head"};
    std::fprintf(stderr, "fused step profile over %llu steps (µs per step, block 0):\n", t[7]);
    for (int i = 0; i < 7; ++i) std::fprintf(stderr, "  %-24s %8.1f\n", names[i], double(t[i]) / 1e3 / double(t[7]));
  }
  bool enqueue_step(int B, const cuda::StateRef& states, bool want_logits) override {
    if (B > step_batch_) return false;
    const cuda::Rwkv7StepBuffers buf{x(), xn(), r, k, v, g, y, v_first, hw, ha, hv, hg,
                                     hidden(), logits(), barrier_.as<unsigned>(),
                                     profile_.as<unsigned long long>()};
    cuda::rwkv7_step(ctx(), step_, buf, tokens(), B, states, want_logits);
    return true;
  }

  std::vector<Rwkv7Layer> att_;
  cuda::Rwkv7StepModel step_;
  cuda::DeviceBuffer step_layers_, barrier_, profile_;
  int step_batch_ = 0;
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
