// WKV-7 for training on the GPU: bf16 activations, fp32 state, the decay given before its
// sigmoid as RWKV-LM's kernels take it (z; decay = exp(−e^{−1/2}·σ(z)), spec §2.4), an initial
// state in and a final state out (BPTT across windows), any T.
//   forward   y = WKV(r, z, k, v, a, b) from S0; saves S after every 16 rows (transposed) and
//             S·a per row
//   backward  ∂L/∂(r, z, k, v, a, b) and ∂L/∂S0 from ∂L/∂y and ∂L/∂S_T; sequentially
//             (Wkv7Form) it walks the rows backwards, undoing each row's update from the
//             checkpoint after its chunk (the decay is ≥ e^{−e^{−1/2}} ≈ 0.545, so dividing by it
//             is stable over 16 rows); below a document reset, where the state cannot be undone,
//             it is recomputed forward from the checkpoint before the chunk
// Layouts: activations (B, T, H, N) = rows of C = H·N; states (B, H, N, N) value-major.
#pragma once
#include <cuda_bf16.h>

#include "ops/cuda/kernels.h"

namespace rwkv::cuda {

constexpr int kWkv7TrainChunk = 16;

// Which form runs the passes: the sequential scans (wkv7_train.cu) or the chunked form on tensor
// cores (wkv7_chunked_forward.cu, wkv7_chunked.cu; not with document resets, which always run
// sequentially). The chunked form's products take TF32 operands, in 3xTF32 (about fp32) on the
// forward's state path and where the decay gradient's sums cancel: its state is as close as fp32's,
// its state gradient within ~2e-4, its bf16 outputs about as close as the sequential kernels'. Both
// write the same checkpoints and S·a; the sequential backward undoes rows from the checkpoints
// (dividing by the decays), which would magnify the chunked forward's small differences, so a
// chunked forward is followed by the chunked backward.
// Auto: both passes chunked while the heads (B·H) fit one wave of the chunked backward's blocks
// (B·H ≤ SMs), else both sequential: at 512 heads the chunked backward (one 184 KB block per
// head) is 1.7× slower than the sequential one, more than its forward gains.
// RWKV_CUDA_WKV7_CHUNKED_FORWARD=0 keeps Auto's forward sequential (its earlier choice).
// The forward and the backward of one window must be given the same form.
enum class Wkv7Form { Auto, Sequential, Chunked };

struct Wkv7Train {
  int B = 0, T = 0, H = 0, N = 0;
  const __nv_bfloat16 *r = nullptr, *z = nullptr, *k = nullptr, *v = nullptr, *a = nullptr,
                      *b = nullptr;
  __nv_bfloat16* y = nullptr;
  const float* s0 = nullptr;   // (B, H, N, N) or null = zeros
  float* sT = nullptr;         // (B, H, N, N) or null
  float* checkpoints = nullptr;  // wkv7_train_checkpoint_floats()
  float* sa = nullptr;           // (B, T, H, N)
  // (B, T) or null: a nonzero entry restarts S from zero before that row (a new document; no
  // gradient flows into the state before it), as ops::train's reset.
  const unsigned char* reset = nullptr;
  Wkv7Form form = Wkv7Form::Auto;
};

struct Wkv7TrainGrads {
  const __nv_bfloat16* dy = nullptr;
  const float* dsT = nullptr;  // (B, H, N, N) or null = zeros
  __nv_bfloat16 *dr = nullptr, *dz = nullptr, *dk = nullptr, *dv = nullptr, *da = nullptr, *db = nullptr;
  float* ds0 = nullptr;        // (B, H, N, N) or null
};

size_t wkv7_train_checkpoint_floats(int B, int T, int H, int N);
// Whether the forward (backward) pass of p runs in the chunked form.
bool wkv7_train_chunked(const Context& ctx, const Wkv7Train& p, bool backward);
// N ∈ {32, 64}; rwkv::Error otherwise.
void wkv7_train_forward(Context& ctx, const Wkv7Train& p);
void wkv7_train_backward(Context& ctx, const Wkv7Train& p, const Wkv7TrainGrads& g);

}  // namespace rwkv::cuda
