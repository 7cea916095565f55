// RWKV-7's whole decode step (T = 1 for a few sequences) as one persistent kernel.
//
// Decoding one token reads every weight once and does almost no arithmetic, so its floor is the
// weights' bytes over HBM bandwidth. Kernel by kernel (~12 launches per layer) a step spends most
// of its time between launches: each matrix-vector kernel ramps its loads up and drains them,
// and each small kernel costs a few microseconds for a few kilobytes. Here one block per SM
// stays resident for the whole step and runs the layers in five phases separated by grid-wide
// barriers, each phase a set of independent jobs spread over every block:
//   1. LayerNorm + token shift + mixes (every block stages them for its own rows), the r/k/v
//      projections and the LoRAs' first products;
//   2. per (sequence, head): the LoRAs' second products, the WKV's preparation and its state
//      update; the gate's second product on the remaining rows;
//   3. GroupNorm + bonus + gate (staged), the output projection added to the residual;
//   4. LayerNorm + token shift + mix (staged), the channel mix's key projection with ReLU²;
//   5. the channel mix's value projection added to the residual.
// Then ln_out and the head. The math is the layer-by-layer path's (fp32 activations and
// state, fp32 sums); only the order of the sums differs. The RWKV-7 model uses it for single
// sequences of models of width ≥ 2048, where it measured faster or level (dev/NOTES.md has the
// figures and what was tried).
#pragma once
#include "ops/cuda/kernels.h"

namespace rwkv::cuda {

// One layer's tensors (device pointers). Matrices are (out, in) row-major in the step's weight
// type; v1/v2 are null in layer 0.
struct Rwkv7StepLayer {
  const float *ln1_w, *ln1_b, *x_r, *x_w, *x_k, *x_v, *x_a, *x_g;
  const float *w0, *a0, *v0, *k_k, *k_a, *r_k, *ln_x_w, *ln_x_b;
  const void *receptance, *key, *value, *output;  // (C, C)
  const void *w1, *w2, *a1, *a2, *v1, *v2, *g1, *g2;
  const float *ln2_w, *ln2_b, *ffn_x_k;
  const void *ffn_key, *ffn_value;  // (F, C), (C, F)
};

struct Rwkv7StepModel {
  DType dtype = DType::BF16;  // of every matrix, the embedding and the head included
  int n_layer = 0, C = 0, H = 0, N = 0, F = 0, V = 0;
  int lw = 0, la = 0, lv = 0, lg = 0;  // LoRA widths: decay, in-context rate, value, gate
  float group_norm_eps = 0.f;
  const void *emb = nullptr, *head = nullptr;  // (V, C)
  const float *ln0_w = nullptr, *ln0_b = nullptr, *ln_out_w = nullptr, *ln_out_b = nullptr;
  const Rwkv7StepLayer* layers = nullptr;  // n_layer of them, in device memory
  size_t layer_floats = 0;                 // state floats per layer (spec's matrix-state layout)
};

// Device activations of one step, rows M = B: x, xn, r, k, v, g, y, v_first (M × C); the LoRA
// hiddens (M × width); hidden (M × F); logits (M × V). barrier: kRwkv7StepBarrierWords
// unsigned ints, zero before the first step.
constexpr int kRwkv7StepBarrierWords = 32 + 1024;
struct Rwkv7StepBuffers {
  float *x, *xn, *r, *k, *v, *g, *y, *v_first;
  float *hw, *ha, *hv, *hg;
  float *hidden, *logits;
  unsigned* barrier;
  // Null, or 8 zeroed counters: the nanoseconds each step spends in the embedding, in each of
  // a layer's five phases (summed over layers) and in the head, then the number of steps.
  unsigned long long* profile;
};

// The largest batch the fused step runs for this model on the current device: 0 when it cannot
// (weights not fp16/bf16, head size not 64, a width not a multiple of 8, too little shared
// memory for even one sequence).
int rwkv7_step_max_batch(Context& ctx, const Rwkv7StepModel& m);

// One decode step of B ≤ rwkv7_step_max_batch sequences: tokens (B) and the states' slots on
// the device; logits written when `logits`.
void rwkv7_step(Context& ctx, const Rwkv7StepModel& m, const Rwkv7StepBuffers& buf,
                const int* tokens, int B, StateRef states, bool logits);

}  // namespace rwkv::cuda
