// RWKV-7's training form on an NVIDIA GPU: the same maths, tape-per-window contract and state
// layout as Rwkv7Train<float> (rwkv7_train.h), in bf16 mixed precision: fp32 master parameters,
// gradients and AdamW moments on the device; matrix products in bf16 with fp32 accumulation
// (a bf16 copy of the parameters refreshed by each optimizer step); activations saved in fp32
// (the WKV's inputs and output in bf16, as RWKV-LM's kernels take them); WKV states in fp32.
// No CUDA types here: builds without CUDA get a constructor that throws rwkv::Error.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/rwkv7_train.h"

namespace rwkv::model {

class Rwkv7TrainCuda {
 public:
  // Checks the tensors as Rwkv7Train does, then uploads them to GPU `device`. Head sizes 32 and
  // 64 only (the WKV training kernel's); rwkv::Error otherwise or without a usable GPU.
  Rwkv7TrainCuda(const std::vector<TensorView>& tensors, const std::string& source, int device);
  ~Rwkv7TrainCuda();
  Rwkv7TrainCuda(const Rwkv7TrainCuda&) = delete;
  Rwkv7TrainCuda& operator=(const Rwkv7TrainCuda&) = delete;

  const Rwkv7Dims& dims() const;
  const ParamTable& table() const;
  // wkv_chunk is ignored (the kernel saves a state every 16 rows); reset_at_eod as on the CPU.
  void set_options(const Rwkv7Train<float>::Options& options);

  void zero_grads();
  // As Rwkv7Train: `window` names a tape (the windows of one step, 0…); states on the host
  // (B × state floats, null = zeros / not wanted).
  void forward(int window, const int* tokens, int B, int T, const float* state_in, float* state_out);
  // The mean cross-entropy (as Rwkv7Train::loss). The head and the cross-entropy run fused
  // over blocks of rows, so this also runs the head's backward: it adds the head's gradient
  // into the gradients and keeps ∂/∂(ln_out output) for backward().
  double loss(int window, const int* targets, double l2wrap, int* count = nullptr, double weight = 1.0);
  void backward(int window, const float* dstate_out, float* dstate_in);

  // sqrt(Σ g²) over the gradient buffer (fp64 sum).
  double grad_norm();
  // One AdamW step over the groups (train/optimizer.h's formula, its bias corrections
  // 1 − β^t given), gradients multiplied by grad_scale first (clipping), then the bf16 copy
  // refreshed.
  struct AdamWGroup {
    size_t offset = 0, count = 0;
    float lr = 0, weight_decay = 0;
  };
  void adamw(const std::vector<AdamWGroup>& groups, float beta1, float beta2, float eps, float correction1,
             float correction2, float grad_scale);

  // Host copies of the flat buffers (table().total floats each).
  void read_params(float* out) const;
  void write_params(const float* in);
  void read_grads(float* out) const;
  void read_moments(float* m, float* v) const;
  void write_moments(const float* m, const float* v);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace rwkv::model
