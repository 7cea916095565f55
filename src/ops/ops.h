// The hot ops of every model, each in two implementations with one signature:
//   ref::  plain loops, written for clarity; the reference kept forever (DESIGN §4)
//   cpu::  the fast CPU path (SIMD with runtime ISA dispatch, OpenBLAS GEMM, OpenMP threads)
// Models call them through a Kernels table, so a whole model runs on either and tests compare.
#pragma once
#include <cstdint>

#include "rwkv/dtype.h"

namespace rwkv::ops {

// A weight matrix in nn.Linear layout: (rows = out, cols = in), row-major, stored dtype.
// Quantized matrices hold whole blocks per row (cols a multiple of 32).
struct Matrix {
  DType dtype = DType::F32;
  int rows = 0;
  int cols = 0;
  const void* data = nullptr;
  // Rows in 8-row panels (ops/qdot.h: 4-bit types, repacked at load for the CPU's kernels)
  // instead of one after another. Only the cpu:: kernels read them; the reference refuses them.
  bool panels = false;
  size_t row_bytes() const { return dtype_nbytes(dtype, size_t(cols)); }
  // Panels pad the rows to a multiple of 8.
  size_t nbytes() const { return size_t(panels ? (rows + 7) / 8 * 8 : rows) * row_bytes(); }
};

// One head of one sequence for the RWKV-7 WKV (spec §2.4, §4.5). Inputs are T rows with a row
// stride (elements) over a [T, C] activation buffer, already offset to this head's N channels.
// State S is N×N, value-major (S[i][j]: i = value, j = key), updated in place.
//   S ← S·diag(exp(w)) + (S a) bᵀ + v kᵀ ;  y = S r
// w is the log-decay (≤ 0), a = −κ̂, b = κ̂⊙α.
struct Wkv7Head {
  int T = 0;
  int N = 0;
  int stride = 0;
  const float* r = nullptr;
  const float* w = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* a = nullptr;
  const float* b = nullptr;
  float* y = nullptr;
  float* S = nullptr;
};

// One sequence of the RWKV-4 WKV (spec §2.1, §3.1) over `channels` channels. k, v, y are T rows
// with a row stride (elements). The state is numerator aa, denominator bb (both scaled by e^{−pp})
// and exponent offset pp per channel, updated in place. w = −exp(time_decay) (≤ 0), u = time_first.
//   wkv_t = (e^{pp−q}·aa + e^{u+k−q}·v) / (e^{pp−q}·bb + e^{u+k−q}),  q = max(pp, u+k)
// then aa, bb, pp absorb e^{k}, e^{k}·v with decay e^{w}. Every exponent evaluated is ≤ 0.
// The parallel form of RWKV-4 is this same scan over T (channels independent, spec §4.1).
// pp is a running fp32 sum: it drifts by about T·|pp|·2^-24 over T tokens, as in every fp32
// implementation (the logits do not depend on pp's absolute value).
struct Wkv4Seq {
  int T = 0;
  int channels = 0;
  int stride = 0;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* w = nullptr;  // (channels)
  const float* u = nullptr;  // (channels)
  float* y = nullptr;
  float* aa = nullptr;       // (channels) each
  float* bb = nullptr;
  float* pp = nullptr;
};

// One head of one sequence for the RWKV-5/6 WKV (spec §2.2, §2.3, §4.3). r, w, k, v, y are T rows
// with a row stride over a [T, C] buffer, offset to this head. S is N×N, key-major (S[i][j]:
// i = key, j = value), updated in place. w is the log-decay λ = log d (≤ 0) per token and channel
// (RWKV-5 repeats its constant decay on every row; −∞, i.e. d = 0, is allowed); u is the bonus (N).
//   y_j = Σ_i r_i (u_i k_i v_j + S_ij) ;  S_ij ← e^{w_i} S_ij + k_i v_j
struct Wkv6Head {
  int T = 0;
  int N = 0;
  int stride = 0;
  const float* r = nullptr;
  const float* w = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* u = nullptr;
  float* y = nullptr;
  float* S = nullptr;
};

// One of several independent products y[M, W.rows] = x[M, W.cols] · Wᵀ.
struct Product {
  Matrix W;
  const float* x = nullptr;
  float* y = nullptr;
};

struct Kernels {
  const char* name;
  // y[M, W.rows] = x[M, W.cols] · Wᵀ (overwrites y).
  void (*linear)(const Matrix& W, const float* x, int M, float* y);
  // n independent products of M rows each (no output aliases another product's input). The
  // CPU runs a decode step's products in one team of threads: one fork and join, not n.
  void (*linear_many)(const Product* products, int n, int M);
  // Recurrent WKV over the T rows, one token after another.
  void (*wkv7_recurrent)(const Wkv7Head& head);
  // WKV over a whole sequence (forward, prefill): the parallel (chunked) form, equal to
  // wkv7_recurrent up to fp32 rounding. Not on the CPU: there the one-pass recurrent scan is
  // ~2.7x faster at head size 64 (bench_ops Wkv7: the chunked form does twice the FLOPs, in
  // products too small to run at GEMM speed), and takes this place; cpu::wkv7_chunked stays
  // tested against the reference.
  void (*wkv7_parallel)(const Wkv7Head& head);
  // RWKV-4 WKV scan (both forms).
  void (*wkv4)(const Wkv4Seq& seq);
  // y = σ(x), y = tanh(x) for n values (in place when y == x).
  void (*sigmoid)(const float* x, float* y, size_t n);
  void (*tanh)(const float* x, float* y, size_t n);
  // RWKV-5/6 WKV, one token after another / chunked (§4.3); equal up to fp32 rounding.
  void (*wkv6_recurrent)(const Wkv6Head& head);
  void (*wkv6_parallel)(const Wkv6Head& head);
};

const Kernels& ref_kernels();
const Kernels& cpu_kernels();

// Gradients of one head's WKV-7 (spec §4.4). The head's S is the state BEFORE its T rows (left
// unchanged); dy has the rows' stride; dS_out = ∂L/∂S_T (N×N, null = 0). Outputs have the rows'
// stride (dr, dw, dk, dv, da, db; dw is w.r.t. the log-decay w) and dS0 = ∂L/∂S_0 (N×N).
struct Wkv7Grads {
  const float* dy = nullptr;
  const float* dS_out = nullptr;
  float *dr = nullptr, *dw = nullptr, *dk = nullptr, *dv = nullptr, *da = nullptr, *db = nullptr;
  float* dS0 = nullptr;
};

namespace ref {
void linear(const Matrix& W, const float* x, int M, float* y);
void linear_many(const Product* products, int n, int M);
void wkv7_recurrent(const Wkv7Head& head);
// The chunked form of spec §4.5 in plain loops, chunk length `chunk`.
void wkv7_chunked(const Wkv7Head& head, int chunk);
// Exact per-step backward of wkv7_recurrent: recomputes and keeps every state, fp64 sums.
void wkv7_backward(const Wkv7Head& head, const Wkv7Grads& grads);
void wkv4(const Wkv4Seq& seq);
void wkv6_recurrent(const Wkv6Head& head);
// The chunked form of spec §4.3 in plain loops, chunk length `chunk`.
void wkv6_chunked(const Wkv6Head& head, int chunk);
void sigmoid(const float* x, float* y, size_t n);
void tanh(const float* x, float* y, size_t n);
}  // namespace ref

struct QuantizedVectors;  // ops/qdot.h

namespace cpu {
void linear(const Matrix& W, const float* x, int M, float* y);
void linear_many(const Product* products, int n, int M);
// Rows [r0, r1) of y[M, W.rows] = x[M, W.cols]·Wᵀ for M ≤ 4 vectors on the calling thread, for
// callers that split a product among their own threads. Quantized weights read xq (x quantized
// for them, ops/qdot.h); other weights read x.
void matvec_rows(const Matrix& W, const float* x, const QuantizedVectors* xq, int M, float* y,
                 int r0, int r1);
void wkv7_recurrent(const Wkv7Head& head);
void wkv7_chunked(const Wkv7Head& head);
// y[i] = 1/(1 + e^{−x[i]}) and tanh(x[i]) for n values, in place when y == x: the element-wise
// passes' scalar expf/tanhf calls cost more than their multiplies (within a few ulps of them).
void sigmoid(const float* x, float* y, size_t n);
void tanh(const float* x, float* y, size_t n);
void wkv4(const Wkv4Seq& seq);
void wkv6_recurrent(const Wkv6Head& head);
void wkv6_chunked(const Wkv6Head& head);
// Threads used by the CPU kernels (OpenMP and OpenBLAS). 0 = all cores.
void set_num_threads(int n);
int num_threads();
// Machine ceilings for benchmarks, measured with the current thread count: streaming read
// bandwidth over a buffer of `bytes` (GB/s), and sgemm throughput at an M×K·K×N shape (GFLOP/s).
double measure_read_bandwidth(size_t bytes);
double measure_sgemm_gflops(int M, int N, int K);
// Which SIMD target the dispatcher picked ("AVX2", "SSE4", ...).
const char* simd_target();
}  // namespace cpu

}  // namespace rwkv::ops
