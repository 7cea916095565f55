// The RWKV-7 training loop (spec §5) on the CPU or a GPU (train_net.h): windows from a
// TokenData, the parallel forward and hand-written backward (model/rwkv7_train.h and its GPU
// twin), L2Wrap, gradient clipping, AdamW
// with the official parameter groups and schedule; checkpoints (official-layout .pth) and a
// resumable training state written atomically; a CSV log and an SVG loss curve.
//
// Output directory:
//   config.json        the run's configuration (what --resume reads back)
//   model.pth          the latest weights, official keys and shapes (bf16 or fp32)
//   train_state.bin    fp32 master weights, Adam moments, step, carried states (train_state.h)
//   log.csv, loss.svg  one row per step; the loss curve
// Resuming reproduces an uninterrupted run's losses exactly (same machine and thread count):
// the sampler is a pure function of (seed, step) and everything else is in train_state.bin.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "train/dataset.h"
#include "train/train_log.h"

namespace rwkv::train {

struct TrainConfig {
  // Model: fine-tune `init_from` (an official RWKV-7 .pth/.safetensors), or a new model with
  // the official initialisation (spec §5.1).
  std::string init_from;
  int layers = 2, embd = 128, head_size = 64, vocab = 256, ffn = 0;
  // Data: a binidx prefix, or a text file tokenized with `tokenizer` (bytes | world).
  std::string data, tokenizer = "bytes", vocab_file;
  // random | magic_prime: independent windows from the zero state. sequential: each batch row
  // reads the data in order and carries its state from window to window (state passing); the
  // gradient flows through the state across the `bptt` windows of one step, not beyond.
  std::string order = "random";
  int ctx_len = 256, batch = 4, bptt = 1;
  // Micro-batches of `batch` windows whose gradients add up before each optimizer step (random
  // and magic_prime orders): the step sees batch·grad_accum windows in batch windows' memory.
  int grad_accum = 1;
  // Restart the state at every token 0 (end of document): documents do not see each other.
  bool reset_at_eod = false;
  // Optimisation (official defaults of the v7 demo, spec §5.1).
  int64_t steps = 1000, warmup_steps = 10, exit_tokens = 0;  // 0: the cosine ends at `steps`
  double lr_init = 6e-4, lr_final = 6e-5;
  double beta1 = 0.9, beta2 = 0.99, adam_eps = 1e-18, weight_decay = 0.001, grad_clip = 1.0;
  double l2wrap = 1e-4;  // 0 disables L2Wrap
  uint64_t seed = 42;
  // Output.
  std::string out_dir;
  int64_t save_every = 0;  // steps between checkpoints; 0: only at the end
  std::string save_dtype = "bf16";  // bf16 | fp32
  // Compute.
  int wkv_chunk = 16;
  bool recompute = false;
  int threads = 0;
  std::string device = "cpu";  // cpu, cuda or cuda:N (bf16 mixed precision on the GPU)

  nlohmann::json to_json() const;
  static TrainConfig from_json(const nlohmann::json& j);  // unknown keys → rwkv::Error
  void validate() const;
  int64_t tokens_per_step() const { return int64_t(ctx_len) * batch * bptt * grad_accum; }
};

struct StepReport {
  LogRow row;
  int64_t total_steps = 0;
  double eta_s = 0;
};

// Runs (or resumes) a training run; `data` must outlive the call. `on_step` is called after
// every step (for the progress line). Throws rwkv::Error for bad configs, unwritable output,
// non-finite losses.
void train(const TrainConfig& config, const TokenData& data, bool resume,
           const std::function<void(const StepReport&)>& on_step);

}  // namespace rwkv::train
