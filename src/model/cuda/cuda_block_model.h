// What every generation's GPU model shares (the CUDA twin of model/base.h's BlockModel): the
// embedding, ln0, L blocks of time mix + channel mix on a residual stream, ln_out and the head;
// weights in one device allocation; states in GPU state pools; decode steps replayed as CUDA
// graphs. A generation derives from CudaBlockModel, loads its layers, lists their tensors for the
// upload and implements its time mix.
#pragma once
#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "model/base.h"
#include "model/cuda/cuda_model.h"
#include "ops/cuda/kernels.h"

namespace rwkv::model {

class CudaBlockModel : public Model {
 public:
  ~CudaBlockModel() override;

  const ModelInfo& info() const override { return info_; }
  StateSpec state_spec() const override { return spec_; }
  size_t decode_bytes_per_token() const override { return decode_bytes_; }
  DType weight_dtype() const override { return weight_dtype_; }
  int cuda_device() const override { return options_.cuda_device; }
  std::unique_ptr<StatePool> new_state_pool(int n) const override;

  // The pointer forms: states go up into a scratch pool and come back down.
  void step(const int* tokens, int B, float* const* states, float* logits) override;
  void forward(const int* tokens, int B, int T, float* const* states, float* logits,
               LogitsMode mode) override;
  void step_pooled(const int* tokens, int B, StatePool& pool, const int* slots,
                   float* logits) override;
  void forward_pooled(const int* tokens, int B, int T, StatePool& pool, const int* slots,
                      float* logits, LogitsMode mode) override;

 protected:
  // Checks the head size against `head_sizes` (the generation's WKV kernels) and the weight
  // types: the kernels read fp32/fp16/bf16, so quantized rwkv.cpp files become fp16.
  CudaBlockModel(const ModelInfo& info, LoadOptions options, std::initializer_list<int> head_sizes);

  // The options to load weights with (after the constructor's dtype choice).
  const LoadOptions& load_options() const { return options_; }
  // Loads emb, ln0, ln_out, head; call first.
  void load_common(WeightLoader& load) { common_ = load_common_weights(load, info_); }
  // Checks every tensor was used and uploads every weight (the common ones, the channel mixes in
  // ffn_ and the layers visit_layers lists); call last. state_floats: per state.
  void finish_load(WeightLoader& load, size_t state_floats);

  // Every tensor of the generation's layers: vec(pointer, floats) for fp32 vectors,
  // mat(matrix) for matrices (upload repoints them at their device copies). Skip null ones.
  using VecVisitor = std::function<void(const float*&, int)>;
  using MatVisitor = std::function<void(ops::Matrix&)>;
  virtual void visit_layers(const VecVisitor& vec, const MatVisitor& mat) = 0;
  // The time mix of layer l over M = B·T rows of x (updated in place).
  virtual void time_mix(int l, int B, int T, const cuda::StateRef& states) = 0;
  // Where layer l's channel-mix token shift lives in a state.
  virtual size_t ffn_shift_offset(int l) const = 0;
  // Makes the generation's own activations hold M rows; true when they moved (CUDA graphs
  // captured over them are stale).
  virtual bool reserve(int M) = 0;
  // A whole decode step of B sequences in the generation's own way (a fused kernel); false
  // leaves it to the layer-by-layer path.
  virtual bool enqueue_step(int /*B*/, const cuda::StateRef& /*states*/, bool /*logits*/) { return false; }

  // Row-major (M, C) fp32 activations every generation uses, valid in time_mix: the residual
  // and its LayerNorm.
  float* x() const { return shared_.x; }
  float* xn() const { return shared_.xn; }
  // The channel mix's hidden rows (M, F), the logits (M, V) and the tokens (M) on the device.
  float* hidden() const { return shared_.hidden; }
  float* logits() const { return shared_.logits; }
  const int* tokens() const { return shared_.tokens; }
  const CommonWeights& common() const { return common_; }
  cuda::Context& ctx() const { return *ctx_; }

  ModelInfo info_;
  std::vector<ChannelMix> ffn_;  // per layer

 private:
  struct Shared {
    int M = 0;
    cuda::DeviceBuffer buffer;
    float *x, *xn, *xk, *xr, *rr, *ffn_out;  // (M, C)
    float* hidden;                           // (M, F)
    float* logits;                           // (M, V)
    int* tokens;                             // (M)
    bool ensure(int rows, const ModelInfo& info);
  };

  void upload();
  void run_host_states(const int* tokens, int B, int T, float* const* states, float* logits,
                       LogitsMode mode);
  void run(const int* tokens, int B, int T, StatePool& pool, const int* slots, float* logits,
           LogitsMode mode);
  // Every kernel of one call, on the stream (tokens and slots already on the device).
  void enqueue(int B, int T, const cuda::StateRef& states, LogitsMode mode);
  void channel_mix(int l, int B, int T, const cuda::StateRef& states);
  // Records what `work` enqueues on the stream as an executable graph.
  cudaGraphExec_t capture(const std::function<void()>& work);
  void drop_graphs();

  LoadOptions options_;
  StateSpec spec_;
  DType weight_dtype_ = DType::F32;
  size_t decode_bytes_ = 0;
  std::shared_ptr<cuda::Context> ctx_;
  CommonWeights common_;
  cuda::DeviceBuffer weights_;
  Shared shared_;
  cuda::DeviceBuffer slots_;
  std::vector<float> start_state_;  // init_state(), when it is not all zeros (RWKV-4)
  std::unique_ptr<StatePool> scratch_pool_;
  // Decode-step graphs by (batch, pool base, logits mode), valid for Context::generation.
  bool use_graphs_ = true;
  std::map<std::tuple<int, float*, int>, cudaGraphExec_t> graphs_;
  int graph_generation_ = 0;
};

// A generation's own activations: `lay_out(carver)` takes every buffer from the carver; the
// buffer is re-carved whenever M grows. Returns true when it moved.
template <typename LayOut>
bool ensure_activations(cuda::DeviceBuffer& buffer, int& rows, int M, LayOut lay_out) {
  if (M <= rows) return false;
  Carver count(nullptr);
  lay_out(count, M);
  buffer = cuda::DeviceBuffer();  // free first: the old and new buffers need not fit together
  buffer.ensure(count.used());
  Carver carve(buffer.as<char>());
  lay_out(carve, M);
  rows = M;
  return true;
}

// RWKV-5/6/7: the matrix-state layout of model/base.h, all zeros at the start of a sequence.
class CudaMatrixStateModel : public CudaBlockModel {
 public:
  std::vector<StatePiece> state_layout() const override { return matrix_state_layout(info_); }
  void init_state(float* state) const override { std::fill(state, state + state_spec().floats, 0.f); }

 protected:
  using CudaBlockModel::CudaBlockModel;
  size_t state_floats() const { return size_t(info_.n_layer) * matrix_state_layer_floats(info_); }
  size_t ffn_shift_offset(int l) const override { return matrix_state_ffn_offset(info_, l); }
};

// Each generation's GPU model (rwkv4_cuda.cpp … rwkv7_cuda.cpp); load_cuda_model picks one.
std::unique_ptr<Model> load_rwkv4_cuda(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options);
std::unique_ptr<Model> load_rwkv5_cuda(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options);
std::unique_ptr<Model> load_rwkv6_cuda(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options);
std::unique_ptr<Model> load_rwkv7_cuda(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options);

}  // namespace rwkv::model
