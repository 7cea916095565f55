// Internals of the RWKV-7 training form shared by rwkv7_train.cpp (model level) and
// rwkv7_train_layer.cpp (one block): the tape's buffers.
#pragma once
#include <vector>

#include "model/rwkv7_train.h"

namespace rwkv::model {

// What one block's forward saves, over M = B·T rows.
template <class R>
struct Rwkv7LayerCache {
  R* x_in;                          // (M, C) block input
  R *h, *ln1_mean, *ln1_rstd;       // (M, C) ln1 output; (M), (M)
  R *r, *k_raw, *v_raw, *v;         // (M, C) projections; v after the value residual
  R *w_h, *logw;                    // (M, Dw) tanh hidden; (M, C) log-decay
  R *a_h, *alpha;                   // (M, Da) hidden; (M, C) in-context learning rate
  R *g_h, *g;                       // (M, Dg) sigmoid hidden; (M, C) gate
  R *v_h, *v_gate;                  // (M, Dv) hidden; (M, C) residual gate (layer ≥ 1)
  R *kn, *k2;                       // (M, C) normalised κ̂; k after k_a
  R *y, *gn_mean, *gn_rstd;         // (M, C) WKV output; (M, H) ln_x statistics
  R* z;                             // (M, C) ln_x output + bonus (before the gate)
  R* checkpoints;                   // (B, H, chunks, N, N) WKV states
  R *x_mid, *h2, *ln2_mean, *ln2_rstd;  // (M, C) after time mix; (M, C) ln2 output; (M), (M)
  R* ffn_pre;                       // (M, F) ffn.key output before relu²
};

// Gradient buffers reused by every block's backward, (M, C) unless noted.
template <class R>
struct Rwkv7Scratch {
  R* dx;                            // the running ∂/∂(residual stream)
  R *dh, *ddelta, *dmix;            // ln input grad, token-shift grad, one mix's grad
  R *dr, *dk2, *dv, *dlogw, *da, *db, *dalpha, *dg, *dz, *dk, *dvf;
  R *tmp, *tmp2;                    // (M, C)
  R *dlora;                         // (M, max LoRA width)
  R *dffn;                          // (M, F)
  R *wkv;                           // per (b, h): ops::train::wkv7_train_scratch(chunk, N)
  R *prev;                          // (B, C) token-shift start rows
};

template <class R>
struct Rwkv7Tape<R>::Impl {
  int B = 0, T = 0, M = 0, chunks = 0;
  bool recompute = false;
  std::vector<int> tokens;            // (M)
  std::vector<unsigned char> reset;   // (M) rows where the state restarts (reset_at_eod)
  std::vector<R> state_in;            // (B, state) the initial states (zeros if none given)
  std::vector<R> state_out;           // (B, state) forward's final states
  std::vector<R> dstate;              // (B, state) backward: ∂/∂(final) in, ∂/∂(initial) out
  std::vector<R> buffer;              // everything below points into it
  std::vector<Rwkv7LayerCache<R>> layers;  // L caches, or 1 shared when recomputing
  std::vector<R*> x_in;               // per layer (M, C): the block inputs
  R *x0_mean, *x0_rstd;               // ln0 statistics (M)
  R* v_first;                         // (M, C) layer 0's v
  R* dv_first;                        // (M, C) its gradient, summed over layers ≥ 1
  R *x_last, *xo, *out_mean, *out_rstd;  // (M, C) last block output, ln_out output; (M), (M)
  R* logits;                          // (M, V)
  Rwkv7Scratch<R> s;
  const unsigned char* reset_rows() const { return reset.empty() ? nullptr : reset.data(); }
  size_t allocated_for = 0;           // key of the current layout
};

}  // namespace rwkv::model
