// The CUDA ops of the models (DESIGN: ops/ backends). Host-callable launchers over device
// pointers, all on one Context's stream; each has a plain-loop twin on the CPU that the tests
// compare it with (tests/test_cuda_ops.cpp). Activations are fp32 rows of C; matrices are
// ops::Matrix with a device data pointer, fp32 / fp16 / bf16; states stay fp32.
#pragma once
#include <cublasLt.h>

#include <array>
#include <map>
#include <tuple>

#include "ops/cuda/cuda_common.h"
#include "ops/ops.h"

namespace rwkv::cuda {

// A stream, a cuBLASLt handle with its workspace, and the scratch the GEMM path needs.
class Context {
 public:
  explicit Context(int device);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  void synchronize();

  int device = 0;
  int sms = 0;  // multiprocessors
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  DeviceBuffer workspace;  // cuBLASLt's
  DeviceBuffer x16;        // activations converted to the weights' 16-bit type
  DeviceBuffer reduce;     // partial sums of reductions (train_ops.h col_sum)
  DeviceBuffer wkv7_chunks;  // the chunked WKV-7 forward's per-chunk products (wkv7_chunked_forward.cu)
  // Grows whenever a buffer above moves: CUDA graphs captured before hold stale pointers.
  int generation = 0;
  void ensure_x16(size_t bytes) {
    if (bytes > x16.bytes()) ++generation;
    x16.ensure(bytes);
  }
  // A cuBLASLt plan per GEMM shape (M, rows, cols, dtype, accumulate): made once, because
  // making descriptors and asking for heuristics costs more host time than a small product.
  struct GemmPlan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  std::map<std::tuple<int, int, int, int, bool>, GemmPlan> plans;
  // Sets p.algo to cuBLASLt's first choice for p's descriptors within the workspace; when there
  // is none, destroys p's descriptors and returns false.
  bool choose_algorithm(GemmPlan& p);
  // The general products of training (gemm.h): M, N, K, lda, ldb, ldc, trans_a, trans_b, accumulate.
  using GemmKey = std::array<int, 9>;
  std::map<GemmKey, GemmPlan> gemm_plans;
};

// What a matrix product applies to its result.
enum class Act : int { None, Tanh, Sigmoid, SqRelu, Silu };

// y[M, W.rows] = act(x[M, W.cols] · Wᵀ), or y += x·Wᵀ with accumulate (act must be None).
// Few rows (decode) run a matrix-vector kernel that streams W once for all rows; more rows run
// cuBLASLt (16-bit inputs, fp32 accumulation and output; fp32 weights in full fp32, no TF32).
void linear(Context& ctx, const ops::Matrix& W, const float* x, int M, float* y, Act act = Act::None,
            bool accumulate = false);

// Several independent products over the same M rows in one launch (the projections of a block
// that read different inputs). At most kMaxJobs; M ≤ kGemvRows runs one kernel, else each job
// goes through linear().
struct LinearJob {
  ops::Matrix W;
  const float* x = nullptr;
  float* y = nullptr;
  Act act = Act::None;
  bool accumulate = false;
};
constexpr int kMaxJobs = 8;
// Up to this many rows the matrix-vector kernel wins (measured in dev/cuda_lab on an H200: at
// 8 rows it reads each activation 8× per weight and runs at a third of cuBLASLt's speed).
constexpr int kGemvRows = 4;
void linear_jobs(Context& ctx, const LinearJob* jobs, int n, int M);

// A bf16 n×n×n product on the prefill path (cuBLASLt, fp32 accumulation and output) on random
// data, TFLOP/s: the ceiling prefill and training benchmarks quote.
double measure_gemm_tflops(Context& ctx, int n);

// x[m] = emb[tokens[m]] in fp32 (tokens on the device, already checked to be in range).
void embed(Context& ctx, const int* tokens, int M, const ops::Matrix& emb, float* x);

// LayerNorm of M rows of C; input row m at in + m·in_ld (eps, biased variance). out may alias in
// when in_ld == C. mean and rstd (M each, both or neither) receive the rows' statistics.
void layer_norm(Context& ctx, const float* in, int in_ld, float* out, int M, int C,
                const float* weight, const float* bias, float eps = 1e-5f, float* mean = nullptr,
                float* rstd = nullptr);

// The states of a batch: B sequences, sequence b's state at pool + slots[b]·floats.
struct StateRef {
  float* pool = nullptr;
  const int* slots = nullptr;  // (B), on the device
  size_t floats = 0;
};

// Token shift and mixes for B sequences of T rows of C (spec §2.4):
//   out_j[b,t] = xn[b,t] + (prev − xn[b,t])⊙mix_j, prev = xn[b,t−1] or the state at t = 0,
// then the state's shift vector (at `offset`) ← xn[b,T−1]. A null mix_j gives the difference
// itself, out_j = prev − xn (RWKV-6's data-dependent mixes start from it).
struct ShiftMix {
  int n = 0;  // mixes, ≤ 6
  const float* mix[6] = {};
  float* out[6] = {};
};
void token_shift_mix(Context& ctx, const float* xn, int B, int T, int C, StateRef states,
                     size_t offset, const ShiftMix& mixes);

// x ← act(x) over n values.
void activate(Context& ctx, float* x, size_t n, Act act);

// RWKV-7's per-head preparation of the WKV inputs over M rows (spec §2.4), in place:
//   v ← v + (v_first − v)⊙σ(v0 + v_lora)   (layers > 0; layer 0 stores v_first ← v instead)
//   κ̂ = normalise_head(k⊙k_k), α = σ(a0 + a), w ← −e^{−1/2}σ(w0 + w)   (the log-decay)
//   k ← k⊙(1 + (α − 1)⊙k_a), a ← −κ̂, b ← κ̂⊙α
struct Rwkv7Prepare {
  float *w, *k, *v, *a, *b, *v_first;
  const float* v_lora;  // null in layer 0
  const float *w0, *a0, *v0, *k_k, *k_a;
};
void rwkv7_prepare(Context& ctx, int M, int H, int N, const Rwkv7Prepare& p);

// The WKV-7 recurrence over T rows for B sequences and H heads of size N (N ∈ {16, 32, 64, 128}),
// one token after another (spec §2.4), the state at `offset` in each sequence's state:
//   S ← S·diag(e^w) + (S a) bᵀ + v kᵀ ;  y = S r      (S value-major, fp32)
void wkv7_scan(Context& ctx, int B, int T, int H, int N, const float* r, const float* w,
               const float* k, const float* v, const float* a, const float* b, float* y,
               StateRef states, size_t offset);

// RWKV-7's output of the time mix, per head over M rows, in place on y:
//   y ← (GroupNorm(y)·ln_w + ln_b + (Σ r⊙k⊙r_k)·v) ⊙ g
struct Rwkv7Output {
  float* y;
  const float *r, *k, *v, *g, *r_k, *ln_w, *ln_b;
};
void rwkv7_output(Context& ctx, int M, int H, int N, const Rwkv7Output& o, float eps);

}  // namespace rwkv::cuda
