// The element-wise, per-row and per-head ops of RWKV-7 training on the GPU, forward and
// backward (spec §2.4, §4): the CUDA twins of ops::train and of the loops in
// model/rwkv7_train_layer.cpp, over fp32 rows of C (M = B·T rows), with the inputs of matrix
// products written in bf16 directly (gemm.h takes bf16). Every backward ACCUMULATES (+=) into
// gradients of parameters; gradients of activations are overwritten unless said otherwise.
// Column sums over rows (the gradients of per-channel parameters) are two-pass and in a fixed
// order, so they are deterministic.
#pragma once
#include <cuda_bf16.h>

#include <initializer_list>
#include <vector>

#include "ops/cuda/kernels.h"

namespace rwkv::cuda::train {

using bf16 = __nv_bfloat16;

// Rows of B sequences held in strided memory: row b at base + b·stride (floats); base null =
// zeros (a sequence's start).
struct Rows {
  const float* base = nullptr;
  size_t stride = 0;
};
struct MutRows {
  float* base = nullptr;
  size_t stride = 0;
};

// LayerNorm forward with its statistics: out = (x − mean)·rstd·w + b (biased variance).
void layer_norm_forward(Context& ctx, const float* x, int M, int C, const float* w, const float* b,
                        float eps, float* out, float* mean, float* rstd);
// dx += ∂/∂x (dx may be null); dw += Σ dout·x̂, db += Σ dout. scratch: M·C floats (dout·x̂), used
// only where C > 1024 or C % 4 ≠ 0 (else the rows stay in registers and the sums too).
void layer_norm_backward(Context& ctx, const float* dout, const float* x, int M, int C, const float* w,
                         const float* mean, const float* rstd, float* dx, float* dw, float* db,
                         float* scratch);

// The token shift and up to 6 mixes in one pass: delta[b,t] = x[b,t−1] − x[b,t] (x[b,−1] = prev
// row b; prev.base null = zeros; reset (B·T, device, or null): a nonzero entry starts a new
// document at that row, whose previous token is zeros, as ops::train's reset), written only where
// delta is not null; out_j = bf16(x + delta⊙mu_j).
struct Mixes {
  int n = 0;
  const float* mu[6] = {};
  bf16* out[6] = {};
};
void shift_mix_bf16(Context& ctx, const float* x, Rows prev, int B, int T, int C, const Mixes& mixes, float* delta,
                    const unsigned char* reset = nullptr);
// dx[b,t] += ddelta[b,t+1] − ddelta[b,t] (t+1 < T); dprev row b = ddelta[b,0] (overwritten);
// each term only where the forward used that previous row.
void token_shift_backward(Context& ctx, const float* ddelta, int B, int T, int C, float* dx,
                          MutRows dprev, const unsigned char* reset = nullptr);
// The backward of n ≤ 6 mixes of the same (h, δ): dh = Σ_j dout_j and ddelta = Σ_j dout_j⊙mu_j
// (both overwritten), dmu_j += Σ_rows dout_j⊙δ. One pass over the rows: each dout_j is read once,
// and dh, ddelta written once (not read and rewritten per mix).
struct MixGrads {
  int n = 0;
  const float* dout[6] = {};
  const float* mu[6] = {};
  float* dmu[6] = {};
};
void mix_backward(Context& ctx, const MixGrads& g, const float* delta, int M, int C, float* dh, float* ddelta);

// out[c] += Σ_m a[m,c]·b[m,c] (b null: Σ a): partial sums over blocks of kColSumRows rows into
// ctx.reduce, then one pass adding them in order (col_finish).
constexpr int kColSumRows = 128;
void col_sum(Context& ctx, const float* a, const float* b, int M, int C, float* out);
// The second pass, for up to 8 sums at once whose partial rows follow each other (sum s at
// partial + s·chunks·C): outs[s][c] += Σ_k partial[(s·chunks + k)·C + c] in a fixed order; a null
// output is skipped.
void col_finish(Context& ctx, const float* partial, int chunks, int C, std::initializer_list<float*> outs);

// dst rows b (B rows of C, strided) += src rows b (strided).
void add_rows(Context& ctx, Rows src, int B, int C, MutRows dst);

// y ← y⊙(1 − h²) (tanh: h = tanh output), y⊙h(1 − h) (sigmoid: h = its output), or y unchanged
// (none); then out = bf16(y).
void activation_backward_bf16(Context& ctx, const float* dy, const float* h, size_t n, Act act,
                              bf16* out);
// x ← act(x) in place, and out = bf16(x).
void activate_bf16(Context& ctx, float* x, size_t n, Act act, bf16* out);
// out = bf16(relu(pre)²).
void sqrelu_bf16(Context& ctx, const float* pre, size_t n, bf16* out);
// out = bf16(dy·2·relu(pre)).
void sqrelu_backward_bf16(Context& ctx, const float* dy, const float* pre, size_t n, bf16* out);

// RWKV-7's per-head preparation (spec §2.4) for training, over M rows of H heads of N:
//   z ← w0 + z (the decay before its sigmoid), α ← σ(a0 + α),
//   layer > 0: gate ← σ(v0 + gate), v = v_raw + (v_first − v_raw)⊙gate; layer 0: v = v_first = v_raw,
//   kn = normalize_head(k_raw⊙k_k) (F.normalize, eps 1e-12), k2 = k_raw⊙(1 + (α − 1)⊙k_a).
// With wkv16[0] set, the same kernel writes the WKV kernel's bf16 inputs as rwkv7_wkv_inputs does
// (r read from r).
struct PrepareForward {
  float *z, *alpha, *gate, *v, *kn, *k2, *v_first;
  const float *k_raw, *v_raw;
  const float *w0, *a0, *v0, *k_k, *k_a;
  bool first_layer;
  const float* r = nullptr;
  bf16* wkv16[6] = {};  // r, z, k, v, a, b
};
void rwkv7_prepare_forward(Context& ctx, int M, int H, int N, const PrepareForward& p);
// The WKV kernel's bf16 inputs: r, z, k2, v, a = −kn, b = kn⊙α.
struct WkvInputs {
  const float *r, *z, *k2, *v, *kn, *alpha;
  bf16 *r16, *z16, *k16, *v16, *a16, *b16;
};
void rwkv7_wkv_inputs(Context& ctx, size_t n, const WkvInputs& p);

// Output of the time mix: zo = GroupNorm(y)·ln_w + ln_b + (Σ_head r⊙k2⊙r_k)·v (saved with the
// GroupNorm statistics), and x16 = bf16(zo⊙g), the output projection's input.
struct OutputForward {
  const bf16* y;
  const float *r, *k2, *v, *g, *r_k, *ln_w, *ln_b;
  float *zo, *mean, *rstd;  // (M, C), (M, H), (M, H)
  bf16* x16;
};
void rwkv7_output_forward(Context& ctx, int M, int H, int N, float eps, const OutputForward& p);
// x16 = bf16(zo⊙g) again (backward recomputes it rather than keeping it).
void gate_bf16(Context& ctx, const float* zo, const float* g, size_t n, bf16* x16);
// From dx = ∂/∂(zo⊙g): dg16 = bf16(dx⊙zo) (the gate LoRA's input gradient); dz = dx⊙g through
// GroupNorm into dy16 (the WKV output's gradient) and through the bonus into dr, dk2, dv
// (overwritten); and the column sums added to the gradients of ln_w (Σ dz⊙ŷ), ln_b (Σ dz) and r_k
// (Σ dsb⊙r⊙k2).
struct OutputBackward {
  const float* dx;
  const bf16* y;
  const float *zo, *mean, *rstd, *r, *k2, *v, *g, *r_k, *ln_w;
  bf16* dg16;
  float *dr, *dk2, *dv;
  bf16* dy16;
  float *d_ln_w, *d_ln_b, *d_rk;  // += column sums
};
void rwkv7_output_backward(Context& ctx, int M, int H, int N, const OutputBackward& p);
// Back through the preparation, from the bonus's dr, dk2, dv (fp32) plus the WKV's bf16
// gradients dr16 … db16, into the bf16 inputs of the matrix products' backward: out_r, out_k (of
// k_raw), out_v (of the value projection), out_alpha (of α before its sigmoid), out_gate (of the
// gate before its sigmoid, layer > 0); the decay's (before its sigmoid) is dz16 itself. The outputs
// may be the WKV gradients' own buffers (each element is read before the same thread writes it).
// Also dv_first (+=, layer > 0; read in layer 0) and the column sums added to the gradients of
// k_a, k_k, w0 (Σ dz), a0 (Σ dalpha) and v0 (Σ dgate, layer > 0).
struct PrepareBackward {
  const bf16 *dr16, *dz16, *dk16, *dv16, *da16, *db16;
  const float *k_raw, *v_raw, *kn, *alpha, *gate, *v_first, *k_k, *k_a;
  const float *dr, *dk2, *dv;  // the bonus's terms
  bf16 *out_r, *out_k, *out_v, *out_alpha, *out_gate;
  float* dv_first;
  bool first_layer;
  float *d_ka, *d_kk, *d_w0, *d_a0, *d_v0;  // += column sums
};
void rwkv7_prepare_backward(Context& ctx, int M, int H, int N, const PrepareBackward& p);

// Cross-entropy rows (spec §4.6): for counted rows (target ≥ 0) loss[m] = −log softmax[target]
// and dlogits16 = bf16(scale·(softmax − onehot)) plus l2wrap·max at the first argmax; skipped
// rows: loss 0, dlogits 0.
void cross_entropy(Context& ctx, const float* logits, const int* targets, int M, int V, float scale,
                   float l2wrap, float* loss, bf16* dlogits16);

// The rows of a batch grouped by token, built on the host for embed_backward: one int array
// [ids (unique) | starts (unique + 1) | rows (M)] — group u is token ids[u], whose rows are
// rows[starts[u] .. starts[u+1]) in increasing order.
struct TokenRows {
  std::vector<int> data;
  int unique = 0;
};
TokenRows group_rows_by_token(const int* tokens, size_t M, int V);
// The most ints TokenRows::data holds for M rows (every token distinct).
constexpr size_t token_rows_capacity(size_t M) { return 3 * M + 1; }

// demb[token] += Σ dx[rows of that token], each row's sum in row order: deterministic (the
// same bits every run), unlike atomic adds. `grouped` is TokenRows::data on the device.
void embed_backward(Context& ctx, const int* grouped, int unique, const float* dx, int M, int C,
                    float* demb);

// Σ g² over n values into *out (a device double, overwritten); deterministic.
void sum_squares(Context& ctx, const float* g, size_t n, double* out);
// One AdamW group (train/optimizer.h's formula) with the gradient scaled by grad_scale first,
// and the bf16 copy of the parameters refreshed.
struct AdamWGroup {
  size_t offset = 0, count = 0;
  float lr = 0, weight_decay = 0;
};
void adamw(Context& ctx, float* params, const float* grads, float* m, float* v, bf16* params16,
           const AdamWGroup& group, float beta1, float beta2, float eps, float correction1,
           float correction2, float grad_scale);

}  // namespace rwkv::cuda::train
