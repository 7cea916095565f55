// Forward and backward of the per-row ops that training needs (spec §2.4, §4, §4.6), written
// once as plain loops: they are their own reference. Templated on the scalar: float for
// training, double for finite-difference checks (explicitly instantiated for both).
//
// Conventions:
// - Buffers are row-major; M rows (M = B·T), C (or K, N, V) columns.
// - Every *_backward ACCUMULATES (+=) into its gradient outputs (dx, dweight, ...), so a tensor
//   read by several consumers, or a parameter shared by all rows, sums its gradients in place.
//   Callers zero the buffers once per step. Gradient outputs may be null when not wanted.
// - Statistics (mean, rstd) saved by a forward are what its backward reads.
#pragma once
#include <cstddef>

namespace rwkv::ops::train {

// LayerNorm over rows of C (biased variance): out = (x − mean)·rstd·weight + bias.
// mean, rstd: (M). out may not alias x.
template <class R>
void layer_norm_forward(const R* x, int M, int C, const R* weight, const R* bias, R eps, R* out,
                        R* mean, R* rstd);
template <class R>
void layer_norm_backward(const R* dout, const R* x, int M, int C, const R* weight, const R* mean,
                         const R* rstd, R* dx, R* dweight, R* dbias);

// GroupNorm of each row's H groups of N channels (C = H·N), each by its own mean and biased
// variance, then the per-channel affine (RWKV's ln_x, spec §2.4). mean, rstd: (M, H).
template <class R>
void group_norm_forward(const R* x, int M, int H, int N, const R* weight, const R* bias, R eps,
                        R* out, R* mean, R* rstd);
template <class R>
void group_norm_backward(const R* dout, const R* x, int M, int H, int N, const R* weight,
                         const R* mean, const R* rstd, R* dx, R* dweight, R* dbias);

// Token shift over B sequences of T rows of C: delta[b,t] = x[b,t−1] − x[b,t], where
// x[b,−1] = prev[b] (prev: (B, C); null means zeros, the start of a document). reset (B·T,
// optional): a nonzero entry starts a new document at that row, whose previous token is zeros.
template <class R>
void token_shift_forward(const R* x, const R* prev, int B, int T, int C, R* delta,
                         const unsigned char* reset = nullptr);
// dx[b,t] += ddelta[b,t+1] − ddelta[b,t] (t+1 < T);  dprev[b] += ddelta[b,0] (each term only
// where the forward used that previous row).
template <class R>
void token_shift_backward(const R* ddelta, int B, int T, int C, R* dx, R* dprev,
                          const unsigned char* reset = nullptr);

// L2 normalisation of each row's H groups of N: out = x / max(‖x‖₂, eps) (F.normalize).
template <class R>
void l2_normalize_forward(const R* x, int M, int H, int N, R eps, R* out);
template <class R>
void l2_normalize_backward(const R* dout, const R* x, int M, int H, int N, R eps, R* dx);

// nn.Linear without bias: y[M,N] = x[M,K]·Wᵀ with W (N, K) row-major (official `.weight`).
// y is overwritten. Backward: dx[M,K] += dy·W ; dW[N,K] += dyᵀ·x. OpenBLAS (s/d gemm).
template <class R>
void linear_forward(const R* x, const R* W, int M, int K, int N, R* y);
template <class R>
void linear_backward(const R* dy, const R* x, const R* W, int M, int K, int N, R* dx, R* dW);

// Plain product y[M,N] = x[M,K]·A with A (K, N) row-major (official LoRA tensors w1, w2, ...).
// y is overwritten. Backward: dx += dy·Aᵀ ; dA += xᵀ·dy.
template <class R>
void matmul_forward(const R* x, const R* A, int M, int K, int N, R* y);
template <class R>
void matmul_backward(const R* dy, const R* x, const R* A, int M, int K, int N, R* dx, R* dA);

// Cross-entropy of M rows of V logits against targets (a target < 0 skips its row: no loss, zero
// gradient). Returns Σ over rows of −log softmax(logits)[target], summed in double, and the
// number of counted rows in *count. Writes (overwrites) dlogits = scale·(softmax − onehot) for
// counted rows, 0 for skipped ones; with l2wrap > 0 it adds L2Wrap (spec §4.6): at each counted
// row's first argmax, dlogits += l2wrap·max_logit (the loss value is unchanged). dlogits may
// alias logits.
template <class R>
double cross_entropy(const R* logits, const int* targets, int M, int V, R scale, R l2wrap,
                     R* dlogits, int* count);

// WKV-7 of one head of one sequence for training (spec §4.4, §4.5), value-major state as in
// ops::Wkv7Head: S ← S·diag(e^w) + (S a) bᵀ + v kᵀ ; y = S r. Rows have a stride over [T, C].
// The forward keeps the state before every `chunk` rows in `checkpoints` ((⌈T/chunk⌉, N, N));
// the backward recomputes the states inside each chunk from its checkpoint and runs the exact
// per-step backward of §4.4 through them, newest chunk first (official kernels: chunk 16).
template <class R>
struct Wkv7Train {
  int T = 0, N = 0, stride = 0, chunk = 16;
  const R *r = nullptr, *w = nullptr, *k = nullptr, *v = nullptr, *a = nullptr, *b = nullptr;
  R* y = nullptr;            // forward output (T rows)
  R* S = nullptr;            // forward: S₀ in, S_T out (N×N)
  R* checkpoints = nullptr;  // (⌈T/chunk⌉, N, N), written by forward, read by backward
  // (T) or null: a nonzero entry restarts S from zero before that row (a new document); no
  // gradient flows into the state before it.
  const unsigned char* reset = nullptr;
};
template <class R>
void wkv7_train_forward(const Wkv7Train<R>& head);
// Overwrites dr, dw (w.r.t. the log-decay w), dk, dv, da, db (rows with the head's stride) and
// dS0 = ∂L/∂S₀ (N×N; may be null; may alias dS_T). dy has the stride too; dS_T = ∂L/∂S_T
// (null = 0).
// scratch: wkv7_train_scratch(chunk, N) elements.
template <class R>
void wkv7_train_backward(const Wkv7Train<R>& head, const R* dy, const R* dS_T, R* dr, R* dw,
                         R* dk, R* dv, R* da, R* db, R* dS0, R* scratch);
// The same WKV-7 in its chunked form (spec §4.5), chunks of Lc ∈ [1, 64] rows: matrix products
// within a chunk, the state carried between chunks; the backward by reverse mode through the
// chunk's matrices. The plain-loop reference of the GPU's tensor-core kernels (internally fp64;
// a document reset ends a chunk). Forward: y and S (S₀ in, S_T out); backward: as wkv7_train_backward
// (head.S is S₀ again; checkpoints and scratch unused).
template <class R>
void wkv7_chunked_forward(const Wkv7Train<R>& head, int Lc);
template <class R>
void wkv7_chunked_backward(const Wkv7Train<R>& head, int Lc, const R* dy, const R* dS_T, R* dr, R* dw, R* dk,
                           R* dv, R* da, R* db, R* dS0);

inline size_t wkv7_train_scratch(int chunk, int N) {
  return size_t(chunk + 3) * size_t(N) * size_t(N) + size_t(chunk) * size_t(N);
}

}  // namespace rwkv::ops::train
