// The CUDA ops that RWKV-4, RWKV-5 and RWKV-6 add to those of kernels.h: their WKV scans, the
// gated GroupNorm of v5/v6, RWKV-6's data-dependent mix and two small element-wise helpers.
// Same conventions as kernels.h: host launchers over device pointers on the Context's stream,
// fp32 activations (row = b·T + t for B sequences of T rows), fp32 states reached through a
// StateRef; each op has a CPU twin that tests/test_cuda_ops_v456.cpp compares it with.
#pragma once
#include <cstddef>

#include "ops/cuda/kernels.h"

namespace rwkv::cuda {

// RWKV-5/6 WKV, recurrent form (spec §2.2, §2.3), for B sequences of T rows and H heads of size
// N ∈ {8, 16, 32, 64, 128} (8: rwkv.cpp's small models; others throw rwkv::Error). A = H·N
// channels per row, c = h·N + i. The log-decay of channel c on a row is −exp(decay[c] + w[row, c])
// when w is given (RWKV-6: decay is time_decay (A), w the LoRA output (B·T, A)) and decay[c]
// itself when w is null (RWKV-5: decay already the log-decay, constant over rows). With d = e^{log-decay} and u the bonus (A):
//   y[row, h·N + j] = Σ_i r_i (u_i k_i v_j + S[i][j]) ;  S[i][j] ← d_i S[i][j] + k_i v_j
// S of head h is key-major (i = key, j = value) at pool + slots[b]·floats + offset + h·N·N: the
// layout of ops::Wkv6Head, whose ref::wkv6_recurrent is the CPU twin. Decode is T = 1.
void wkv6_scan(Context& ctx, int B, int T, int H, int N, const float* r, const float* k,
               const float* v, const float* w, const float* decay, const float* u, float* y,
               StateRef states, size_t offset);

// RWKV-4 WKV with the max-exponent trick (spec §2.1, §3.1) over A channels, for B sequences of T
// rows, multiplied by the receptance: y[row, c] = r[row, c]·wkv[row, c] (r is σ(receptance)
// already). decay (A) is −exp(time_decay), first (A) is time_first. Sequence b's state at
// pool + slots[b]·floats + offset is aa (A), then bb (A), then pp (A). CPU twin: ref::wkv4.
void wkv4_scan(Context& ctx, int B, int T, int A, const float* k, const float* v, const float* r,
               const float* decay, const float* first, float* y, StateRef states, size_t offset);

// RWKV-5/6's GroupNorm of the WKV output, in place over M rows of A = H·N (any N ≥ 1): each head's
// N channels by their own mean and biased variance (x − μ)·rsqrt(σ² + eps), then ·weight[c] +
// bias[c], then ·g[row, c] when g is not null (the gate). CPU twin: model::group_norm, then ·g.
void group_norm_gate(Context& ctx, float* y, const float* g, int M, int H, int N,
                     const float* weight, const float* bias, float eps);

// x[i] += a[i]·b[i] over n values (RWKV-4/5's residual of a gated product, e.g. r ⊙ FFN value).
void mul_add(Context& ctx, float* x, const float* a, const float* b, size_t n);

// dst (M, D), contiguous ← columns [0, D) of M rows of src whose leading dimension is src_ld (the
// caller offsets src to the slab): splits one fused product's output into per-use buffers.
void copy_columns(Context& ctx, const float* src, int src_ld, int M, int D, float* dst);

// RWKV-6's data-dependent token-shift mix (spec §2.3) over M rows of C:
//   out[m, c] = xn[m, c] + delta[m, c]·(mix[c] + offset[m, c])
// xn, delta (the token shift's x̂′ − x̂: token_shift_mix with a null mix), offset and out (M, C);
// mix (C), the static time_maa_* vector. out may alias any input (element-wise: each element is
// read before it is written), e.g. out = offset in place.
void ddlerp(Context& ctx, int M, int C, const float* xn, const float* delta, const float* mix,
            const float* offset, float* out);

}  // namespace rwkv::cuda
