// What every generation shares (spec §2): embedding, ln0, L blocks of time mix + channel mix on
// a residual stream, ln_out, head; token-id checks; the state's bookkeeping. A generation
// derives from BlockModel, loads its layers and implements time_mix (and its state layout).
#pragma once
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "model/common.h"

namespace rwkv::model {

// The channel mix (FFN) of RWKV-4/5/6 (with receptance) and RWKV-7 (without), spec §2.1, §2.4:
//   x_k = x̂ + δ⊙μ_k, x_r = x̂ + δ⊙μ_r ;  out = σ(W_r x_r) ⊙ W_v sqrelu(W_k x_k)
// Mixes use the RWKV-6/7 convention x̂ + (x̂′ − x̂)⊙μ; RWKV-4/5 loaders store 1 − μ.
struct ChannelMix {
  const float *ln_w = nullptr, *ln_b = nullptr;  // ln2
  const float* mix_k = nullptr;
  const float* mix_r = nullptr;  // null without receptance (RWKV-7)
  ops::Matrix key, value, receptance;
};

// How each generation names and stores its channel-mix coefficients ("blocks.l.ffn.*"):
//   kTimeMix  RWKV-4/5: time_mix_k/_r hold μ, the weight of x̂ (stored here as 1 − μ)
//   kTimeMaa  RWKV-6:   time_maa_k/_r, the weight of x̂′ itself
//   kX        RWKV-7:   x_k only (no receptance)
enum class FfnMix { kTimeMix, kTimeMaa, kX };
ChannelMix load_channel_mix(WeightLoader& load, const ModelInfo& info, int l, FfnMix naming);

// The tensors outside the blocks: emb, ln0, ln_out, head.
struct CommonWeights {
  ops::Matrix emb, head;
  const float *ln0_w = nullptr, *ln0_b = nullptr, *ln_out_w = nullptr, *ln_out_b = nullptr;
};
CommonWeights load_common_weights(WeightLoader& load, const ModelInfo& info);

// rwkv::Error naming the first token id outside [0, vocab) and its position.
void check_token_ids(const int* tokens, size_t n, int vocab);
// The StateSpec of a model: its dimensions, `floats` per state and the weights' fingerprint.
StateSpec make_state_spec(const ModelInfo& info, size_t floats, uint64_t fingerprint);

// RWKV-5/6/7 state per layer, in the official package's order: att_x_prev (C), att_kv (H, N, N),
// ffn_x_prev (C). (att_kv is key-major for 5/6 and value-major for 7, spec §2.6.)
size_t matrix_state_layer_floats(const ModelInfo& info);
size_t matrix_state_kv_offset(const ModelInfo& info, int layer);
size_t matrix_state_ffn_offset(const ModelInfo& info, int layer);
std::vector<StatePiece> matrix_state_layout(const ModelInfo& info);

// The RWKV-5/6 WKV of layer `layer` for B sequences of T rows: (M, A) activations, per-channel
// bonus u (A); every (sequence, head) pair independently, on threads when worth it.
struct Wkv6Inputs {
  const float *r, *w, *k, *v, *u;
  float* y;
};
void matrix_wkv6(const ops::Kernels& kernels, const ModelInfo& info, int layer, int B, int T,
                 float* const* states, bool parallel, const Wkv6Inputs& in);

class BlockModel : public Model {
 public:
  const ModelInfo& info() const override { return info_; }
  DType weight_dtype() const override { return weight_dtype_; }
  size_t decode_bytes_per_token() const override { return decode_bytes_; }
  StateSpec state_spec() const override;
  void step(const int* tokens, int B, float* const* states, float* logits) override;
  void forward(const int* tokens, int B, int T, float* const* states, float* logits,
               LogitsMode mode) override;

 protected:
  BlockModel(const ModelInfo& info, const LoadOptions& options);
  // Loads emb, ln0, ln_out and head; call first.
  void load_common(WeightLoader& load);
  // Checks every tensor was used and takes ownership of the weights; call last.
  void finish_load(WeightLoader& load, std::shared_ptr<const Checkpoint> checkpoint);
  const CommonWeights& common() const { return common_; }

  // Floats of one layer's state, and the generation's time mix of layer l over M = B·T rows of
  // x_ (residual, updated in place). States are in the layout state_layout() describes.
  virtual size_t layer_floats() const = 0;
  virtual void time_mix(int l, int B, int T, float* const* states, bool parallel) = 0;
  // Where layer l's channel-mix token shift lives in a state.
  virtual size_t ffn_shift_offset(int l) const = 0;
  // Makes the generation's own activations hold M rows.
  virtual void reserve(int M) = 0;
  void run_channel_mix(const ChannelMix& f, int B, int T, float* const* states, size_t offset);
  // out = W·(x̂ + δ⊙mix) over M rows of xn_/delta_ (uses tmp_).
  void mixed_linear(const float* mix, const ops::Matrix& W, int M, float* out);

  // Shared activations, (M, C) each (hidden_: (M, F)), valid after reserve_shared(M).
  float *x_ = nullptr, *xn_ = nullptr, *delta_ = nullptr, *tmp_ = nullptr, *tmp2_ = nullptr;
  float* hidden_ = nullptr;

  ModelInfo info_;
  const ops::Kernels* kernels_;
  std::vector<ChannelMix> ffn_;  // per layer

 private:
  void run(const int* tokens, int B, int T, float* const* states, float* logits, LogitsMode mode,
           bool parallel);

  CommonWeights common_;
  int rows_ = 0;
  std::vector<float> shared_;
  uint64_t fingerprint_ = 0;
  DType weight_dtype_ = DType::F32;
  size_t decode_bytes_ = 0;
  std::shared_ptr<const Checkpoint> checkpoint_;  // owns the mapped weights
  std::vector<std::unique_ptr<uint8_t[]>> owned_;
};

// RWKV-5/6/7: the matrix-state layout above, all zeros at the start of a sequence.
class MatrixStateModel : public BlockModel {
 public:
  std::vector<StatePiece> state_layout() const override { return matrix_state_layout(info_); }
  void init_state(float* state) const override {
    std::fill(state, state + state_spec().floats, 0.f);
  }

 protected:
  using BlockModel::BlockModel;
  size_t layer_floats() const override { return matrix_state_layer_floats(info_); }
  size_t ffn_shift_offset(int l) const override { return matrix_state_ffn_offset(info_, l); }
};

}  // namespace rwkv::model
