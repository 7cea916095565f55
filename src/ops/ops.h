// The hot ops of every model, each in two implementations with one signature:
//   ref::  plain loops, written for clarity; the reference kept forever (DESIGN §4)
//   cpu::  the fast CPU path (SIMD with runtime ISA dispatch, OpenBLAS GEMM, OpenMP threads)
// Models call them through a Kernels table, so a whole model runs on either and tests compare.
#pragma once
#include <cstdint>

#include "rwkv/dtype.h"

namespace rwkv::ops {

// A weight matrix in nn.Linear layout: (rows = out, cols = in), row-major, stored dtype.
struct Matrix {
  DType dtype = DType::F32;
  int rows = 0;
  int cols = 0;
  const void* data = nullptr;
  size_t nbytes() const { return size_t(rows) * size_t(cols) * dtype_size(dtype); }
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

struct Kernels {
  const char* name;
  // y[M, W.rows] = x[M, W.cols] · Wᵀ (overwrites y).
  void (*linear)(const Matrix& W, const float* x, int M, float* y);
  // Recurrent WKV over the T rows, one token after another.
  void (*wkv7_recurrent)(const Wkv7Head& head);
  // Parallel (chunked) WKV over the T rows; equal to wkv7_recurrent up to fp32 rounding.
  void (*wkv7_parallel)(const Wkv7Head& head);
};

const Kernels& ref_kernels();
const Kernels& cpu_kernels();

namespace ref {
void linear(const Matrix& W, const float* x, int M, float* y);
void wkv7_recurrent(const Wkv7Head& head);
// The chunked form of spec §4.5 in plain loops, chunk length `chunk`.
void wkv7_chunked(const Wkv7Head& head, int chunk);
}  // namespace ref

namespace cpu {
void linear(const Matrix& W, const float* x, int M, float* y);
void wkv7_recurrent(const Wkv7Head& head);
void wkv7_chunked(const Wkv7Head& head);
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
