// RWKV-7 in its training form (spec §2.4 maths, parallel over [B, T]; §4.4 backward): every
// parameter in one flat buffer (official key names, order and shapes), gradients in a second
// one with the same offsets, and a Tape holding what the forward saves for the backward
// (llm.c's layout: one struct per tensor family, one allocation each).
//
// Templated on the scalar: float for training, double for finite-difference checks.
// The state of a sequence has the inference models' layout (per layer: att_x (C),
// att_kv (H, N, N) value-major, ffn_x (C)), so a trained state is an ordinary state.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/param_table.h"
#include "rwkv/tensor.h"

namespace rwkv::model {

struct Rwkv7Dims {
  int L = 0, C = 0, H = 0, N = 0, V = 0, F = 0;  // layers, width, heads × head size, vocab, FFN
  int d_decay = 0, d_iclr = 0, d_value = 0, d_gate = 0;  // LoRA widths
  size_t state_floats() const { return size_t(L) * (2 * size_t(C) + size_t(H) * N * N); }
  // Where layer l's pieces sit in one sequence's state (the inference layout).
  struct LayerState {
    size_t att_x, kv, ffn_x;
  };
  LayerState layer_state(int l) const {
    const size_t c = size_t(C), kv = size_t(H) * N * N, base = size_t(l) * (2 * c + kv);
    return {base, base + c, base + c + kv};
  }
};

// The flat parameters `params` (laid out by `table`) as official tensors in `dtype` (F32 or BF16),
// in table order, for saving; the views point into `storage`.
std::vector<TensorView> export_rwkv7_tensors(const ParamTable& table, const float* params, DType dtype,
                                             std::vector<std::vector<uint8_t>>& storage);

// Throws rwkv::Error naming the position of the first token id outside [0, V).
void check_rwkv7_tokens(const int* tokens, size_t M, int V);
// The targets a loss scores (≥ 0; < 0 skips a row); rwkv::Error for one ≥ V or when none counts.
int count_rwkv7_targets(const int* targets, size_t M, int V);

// Pointers of one layer's tensors into a flat buffer (parameters or their gradients).
template <class R>
struct Rwkv7LayerParams {
  R *ln1_w, *ln1_b, *ln2_w, *ln2_b;                 // (C)
  R *x_r, *x_w, *x_k, *x_v, *x_a, *x_g;             // (C) token-shift mixes
  R *w0, *a0, *v0;                                  // (C); v0 null in layer 0
  R *w1, *a1, *v1, *g1;                             // (C, D) LoRA down, x·A layout
  R *w2, *a2, *v2, *g2;                             // (D, C) LoRA up
  R *k_k, *k_a, *r_k;                               // (C), (C), (H, N)
  R *receptance, *key, *value, *output;             // (C, C) nn.Linear (out, in)
  R *ln_x_w, *ln_x_b;                               // (C)
  R *ffn_x_k;                                       // (C)
  R *ffn_key, *ffn_value;                           // (F, C), (C, F)
};

template <class R>
struct Rwkv7Params {
  R *emb, *ln0_w, *ln0_b, *ln_out_w, *ln_out_b, *head;  // (V, C), (C) ×4, (V, C)
  std::vector<Rwkv7LayerParams<R>> layers;
};

// The tensors' places in a flat buffer laid out by `table` (a Rwkv7Train's table): parameters,
// gradients, or a copy in another type (the GPU trainer's bf16 weights). Absent tensors (layer
// 0's v0/v1/v2) are null.
template <class R>
Rwkv7Params<R> bind_rwkv7_params(const ParamTable& table, int layers, R* base) {
  const auto at = [&](const std::string& name) -> R* {
    const ParamTensor* t = table.find(name);
    return t ? base + t->offset : nullptr;
  };
  Rwkv7Params<R> out;
  out.emb = at("emb.weight");
  out.ln0_w = at("blocks.0.ln0.weight");
  out.ln0_b = at("blocks.0.ln0.bias");
  out.ln_out_w = at("ln_out.weight");
  out.ln_out_b = at("ln_out.bias");
  out.head = at("head.weight");
  out.layers.resize(size_t(layers));
  for (int l = 0; l < layers; ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".", a = p + "att.";
    Rwkv7LayerParams<R>& y = out.layers[size_t(l)];
    y.ln1_w = at(p + "ln1.weight");
    y.ln1_b = at(p + "ln1.bias");
    y.ln2_w = at(p + "ln2.weight");
    y.ln2_b = at(p + "ln2.bias");
    y.x_r = at(a + "x_r");
    y.x_w = at(a + "x_w");
    y.x_k = at(a + "x_k");
    y.x_v = at(a + "x_v");
    y.x_a = at(a + "x_a");
    y.x_g = at(a + "x_g");
    y.w0 = at(a + "w0");
    y.a0 = at(a + "a0");
    y.v0 = at(a + "v0");
    y.w1 = at(a + "w1");
    y.a1 = at(a + "a1");
    y.v1 = at(a + "v1");
    y.g1 = at(a + "g1");
    y.w2 = at(a + "w2");
    y.a2 = at(a + "a2");
    y.v2 = at(a + "v2");
    y.g2 = at(a + "g2");
    y.k_k = at(a + "k_k");
    y.k_a = at(a + "k_a");
    y.r_k = at(a + "r_k");
    y.receptance = at(a + "receptance.weight");
    y.key = at(a + "key.weight");
    y.value = at(a + "value.weight");
    y.output = at(a + "output.weight");
    y.ln_x_w = at(a + "ln_x.weight");
    y.ln_x_b = at(a + "ln_x.bias");
    y.ffn_x_k = at(p + "ffn.x_k");
    y.ffn_key = at(p + "ffn.key.weight");
    y.ffn_value = at(p + "ffn.value.weight");
  }
  return out;
}

// Reads the dimensions from official tensor names and shapes; throws rwkv::Error (naming
// `source`) for a tensor set that is not an RWKV-7 model.
Rwkv7Dims rwkv7_dims(const std::vector<TensorView>& tensors, const std::string& source);

template <class R>
class Rwkv7Tape;
template <class R>
struct Rwkv7LayerCache;

template <class R>
class Rwkv7Train {
 public:
  // Takes the parameters from official tensors (any float dtype), e.g. a checkpoint's or
  // init_rwkv7()'s. Layer 0's unused v0/v1/v2, when present, are dropped (as released files
  // do); any other unknown, missing or mis-shaped tensor throws rwkv::Error naming `source`.
  Rwkv7Train(const std::vector<TensorView>& tensors, const std::string& source);

  const Rwkv7Dims& dims() const { return dims_; }
  const ParamTable& table() const { return table_; }
  R* params() { return params_.data(); }
  const R* params() const { return params_.data(); }
  R* grads() { return grads_.data(); }
  const R* grads() const { return grads_.data(); }
  void zero_grads();
  // The parameters as official tensors in `dtype` (F32 or BF16), in table order, for saving.
  // The views point into `storage`.
  std::vector<TensorView> export_tensors(DType dtype, std::vector<std::vector<uint8_t>>& storage) const;

  struct Options {
    int wkv_chunk = 16;      // rows between saved WKV states
    bool recompute = false;  // save only each layer's input; redo the layer in the backward
    // Restart the state (token shift and WKV) at every input token 0, the end-of-document
    // token that separates documents in RWKV-LM's data: each document is then trained as if
    // it started a fresh sequence, and no gradient crosses the boundary.
    bool reset_at_eod = false;
  };
  void set_options(const Options& options) { options_ = options; }

  // Parallel forward of B sequences of T tokens (token ids checked: rwkv::Error, nothing
  // changed). state_in: B states (null = zero state); state_out: B final states (null = not
  // wanted). Saves what the backward needs in `tape` and returns the logits (B·T, V) there.
  const R* forward(Rwkv7Tape<R>& tape, const int* tokens, int B, int T, const R* state_in,
                   R* state_out);
  // Mean cross-entropy over the counted targets (< 0: skipped) of the tape's logits, in
  // double; prepares the logits' gradient (scale = weight/count, and L2Wrap with factor
  // weight·l2wrap/count when > 0, spec §4.6) for backward(). *count gets the counted rows.
  // weight: this call's share of a larger mean (1/A for one of A micro-batches or windows).
  double loss(Rwkv7Tape<R>& tape, const int* targets, double l2wrap, int* count = nullptr,
              double weight = 1.0);
  // Accumulates ∂loss/∂params into grads() from the tape's logits gradient (set by loss(), or
  // by the caller through Rwkv7Tape::dlogits()). dstate_out: ∂/∂(final states) (null = 0);
  // dstate_in: receives ∂/∂(initial states) (null = not wanted).
  void backward(Rwkv7Tape<R>& tape, const R* dstate_out, R* dstate_in);

 private:
  // One block over the tape's rows: reads c.x_in, writes the block's output to x_out.
  void layer_forward(Rwkv7Tape<R>& tape, int l, Rwkv7LayerCache<R>& c, R* x_out);
  // dx: ∂/∂(block output) in, ∂/∂(block input) out (in place).
  void layer_backward(Rwkv7Tape<R>& tape, int l, Rwkv7LayerCache<R>& c, R* dx);

  Rwkv7Dims dims_;
  ParamTable table_;
  std::vector<R> params_, grads_;
  Rwkv7Params<R> p_, g_;
  Options options_;
};

// What a forward saves for its backward (one allocation, sized on first use and reused).
template <class R>
class Rwkv7Tape {
 public:
  Rwkv7Tape();
  ~Rwkv7Tape();
  R* logits();   // (B·T, V) after forward
  R* dlogits();  // the same buffer: loss() turns the logits into their gradient in place
  int B() const;
  int T() const;

  struct Impl;  // the buffers (rwkv7_train_impl.h)

 private:
  friend class Rwkv7Train<R>;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rwkv::model
