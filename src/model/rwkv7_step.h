// RWKV-7's decode step on the CPU for up to four sequences, in one team of threads (spec §2.4).
//
// Layer by layer, a decode step forks and joins the threads once per set of products (six times
// a layer) and does the rest on one thread in between. At the 0.1B size the products stream
// about 4 ms of weights per int4 token and the rest took another ~1.5 ms: the other thread
// waiting, and one thread rewriting activations the other had just written (each such cache line
// has to leave the other core first).
//
// Here the threads stay in one parallel region for the whole step and split every vector by
// channels: a thread owns the same channels in every phase (whole heads and whole quantization
// groups), does their element-wise work, computes the product rows that land on them and
// quantizes its groups of the next product's input. Seven barriers a layer separate the phases:
//   A  LayerNorm (from per-unit partial sums), token shift, the six mixes
//   B  r, k, v; the LoRAs' first products (their rows split among the threads) and activations
//   C  the LoRAs' second products, the WKV's inputs and state update per owned head, GroupNorm,
//      bonus, gate
//   D  the output projection added to the residual, partial sums for LayerNorm
//   E  LayerNorm, token shift and mix of the channel mix
//   F  its key projection for the owned hidden units, ReLU²
//   G  its value projection added to the residual, partial sums for the next LayerNorm
// then ln_out and the head (rows split). LayerNorm's mean and variance add fp64 sums per unit of
// channels in unit order, and every product row is computed alone, so results do not depend on
// the number of threads. The math is the layer-by-layer path's; only LayerNorm's order of sums
// differs.
#pragma once
#include <memory>
#include <vector>

#include "model/base.h"
#include "model/rwkv7_weights.h"
#include "ops/qdot.h"

namespace rwkv::model {

class Rwkv7Step {
 public:
  static constexpr int kMaxBatch = 4;

  // Null when these weights do not fit the channel split (a quantization group that does not
  // divide the widths, or two groups for one input); the layer-by-layer path runs them.
  static std::unique_ptr<Rwkv7Step> create(const ModelInfo& info, const CommonWeights& common,
                                           const std::vector<Rwkv7Layer>& layers,
                                           const std::vector<ChannelMix>& ffn);

  // One token for each of B ≤ kMaxBatch sequences (ids already checked); logits (B, V).
  void run(const int* tokens, int B, float* const* states, float* logits);

 private:
  struct Span {
    int begin = 0, end = 0;
  };
  // What one thread owns: channels, hidden units of the channel mix, its share of the head's
  // rows and of the LoRAs' first products (rows numbered across the four, in order).
  struct Share {
    int id = 0;
    Span channels, hidden, head, lora;
  };
  // Inputs quantized for one layer's products (none where the consumers are float).
  struct LayerInputs {
    std::unique_ptr<ops::QuantizedVectors> xr, xw, xk, xv, xa, xg, y, ffn;
    std::unique_ptr<ops::QuantizedVectors> hidden;  // the channel mix's hidden layer
  };
  // A thread's own copies of the LoRA hiddens quantized (for quantized second products).
  struct LoraInputs {
    ops::QuantizedVectors w, a, g, v;
  };

  Rwkv7Step(const ModelInfo& info, const CommonWeights& common,
            const std::vector<Rwkv7Layer>& layers, const std::vector<ChannelMix>& ffn);
  Share share(int id, int threads) const;
  void embed(const Share& s, const int* tokens);
  void layer(int l, const Share& s, float* const* states);
  void head(const Share& s, float* logits);
  void barrier();

  // LayerNorm of x's owned channels into out (null: in place), from partial sums `parity`.
  void norm_owned(const Span& c, int parity, const float* w, const float* b, float* out);
  // Token shift and mixes of the owned channels of out_ (x̂): δ = x̂′ − x̂ with x̂′ at shift_offset
  // in each state (which then takes x̂), and out[k] = x̂ + δ⊙mix[k] for each of n mixes.
  void shift_and_mix(float* const* states, size_t shift_offset, int n, const float* const* mix,
                     float* const* out, const Span& c);
  // x += out_ over the owned channels (a projection's output added to the residual).
  void add_out_to_residual(const Span& c);
  // Sums of x's owned units into partial buffer `parity`.
  void partial_sums(const Span& c, int parity);
  // Owned groups [span) of `B` vectors x (rows of `cols`) into q, if quantized.
  void quantize(ops::QuantizedVectors* q, const float* x, const Span& span);
  void rows(const ops::Matrix& W, const float* x, const ops::QuantizedVectors* xq, float* y,
            const Span& r);

  const ModelInfo& info_;
  const CommonWeights& common_;
  const std::vector<Rwkv7Layer>& layers_;
  const std::vector<ChannelMix>& ffn_;
  int B_ = 0;
  int unit_ = 0, hidden_unit_ = 0;  // channels and hidden units per share, multiples of both
  int lora_rows_[4] = {}, lora_total_ = 0;  // first products' rows: decay, iclr, gate, value

  // Activations, (kMaxBatch, width) each; one allocation.
  std::vector<float> buffer_;
  float *x_, *xr_, *xw_, *xk_, *xv_, *xa_, *xg_, *r_, *k_, *v_, *w_, *a_, *g_, *vl_, *b_, *y_,
      *v_first_, *out_, *ffn_x_, *hidden_, *lw_, *la_, *lg_, *lv_;
  std::vector<double> partial_;  // (2 parities, kMaxBatch, units, {Σx, Σx²})
  std::vector<LayerInputs> inputs_;
  std::vector<LoraInputs> lora_inputs_;  // per thread
  std::unique_ptr<ops::QuantizedVectors> head_input_;
};

}  // namespace rwkv::model
