// The network a training run steps, on the CPU (model::Rwkv7Train<float>) or a GPU
// (model::Rwkv7TrainCuda), with its optimizer state where it computes: the training loop
// (trainer.cpp) is written once against this.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/rwkv7_train.h"
#include "train/optimizer.h"

namespace rwkv::train {

class TrainNet {
 public:
  virtual ~TrainNet() = default;
  virtual const model::Rwkv7Dims& dims() const = 0;
  virtual const model::ParamTable& table() const = 0;
  virtual void zero_grads() = 0;
  // Rwkv7Train's forward / loss / backward on the tape of window `window` (0 … bptt − 1).
  virtual void forward(int window, const int* tokens, int B, int T, const float* state_in,
                       float* state_out) = 0;
  virtual double loss(int window, const int* targets, double l2wrap, double weight) = 0;
  virtual void backward(int window, const float* dstate_out, float* dstate_in) = 0;
  // clip_grad_norm's contract: the norm before clipping; gradients scaled when it exceeds
  // max_norm (> 0). Then one AdamW step (t 1-based) over the groups.
  virtual double clip_grad_norm(double max_norm) = 0;
  virtual void adamw_step(const AdamW& adam, const std::vector<ParamGroup>& groups, float lr, int64_t t) = 0;
  // Host copies of parameters and moments (table().total floats each), for train_state.bin and
  // model.pth (model::export_rwkv7_tensors).
  virtual void read_state(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) = 0;
  virtual void write_state(const std::vector<float>& params, const std::vector<float>& m,
                           const std::vector<float>& v) = 0;
};

// device: "cpu", "cuda" or "cuda:N" (rwkv::parse_device). Throws rwkv::Error for bad tensors,
// a bad device, or a GPU run in a build without CUDA.
std::unique_ptr<TrainNet> make_train_net(const std::vector<TensorView>& tensors, const std::string& source,
                                         const std::string& device,
                                         const model::Rwkv7Train<float>::Options& options);

}  // namespace rwkv::train
