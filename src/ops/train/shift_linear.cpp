// Token shift (spec §2.4) and the two matrix products of training: nn.Linear (x·Wᵀ) and the
// plain product of the LoRA tensors (x·A), forward and backward. The products go to OpenBLAS;
// the backward ones pass beta = 1 so that BLAS itself does the += the header promises.
#include <cblas.h>

#include <algorithm>

#include "ops/train.h"
#include "rwkv/error.h"

namespace rwkv::ops::train {
namespace {

void check_dims(const char* op, int a, int b, int c) {
  if (a < 0 || b < 0 || c < 0) fail(op, ": negative dimension (", a, ", ", b, ", ", c, ")");
}

void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const float* A, int lda,
               const float* B, int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, A, lda, B, ldb, beta, C, ldc);
}
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const double* A,
               int lda, const double* B, int ldb, double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, 1.0, A, lda, B, ldb, beta, C, ldc);
}

// C[m,n] = op(A)·op(B) + beta·C, row-major, with beta 0 (overwrite) or 1 (accumulate).
// Empty shapes never reach BLAS: a zero leading dimension is an error there (xerbla), and an
// empty sum (k = 0) is still a product of zeros, which the overwrite case must write.
template <class R>
void gemm(bool trans_a, bool trans_b, int m, int n, int k, const R* A, int lda, const R* B, int ldb,
          R beta, R* C, int ldc) {
  if (!C || m == 0 || n == 0) return;
  if (k == 0) {
    if (beta == R(0)) {
      for (int i = 0; i < m; ++i) std::fill_n(C + size_t(i) * size_t(ldc), n, R(0));
    }
    return;
  }
  blas_gemm(trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k, A,
            lda, B, ldb, beta, C, ldc);
}

}  // namespace

template <class R>
void token_shift_forward(const R* x, const R* prev, int B, int T, int C, R* delta,
                         const unsigned char* reset) {
  check_dims("token_shift_forward", B, T, C);
  const size_t c = size_t(C);
  for (size_t b = 0; b < size_t(B); ++b) {
    for (size_t t = 0; t < size_t(T); ++t) {
      const size_t o = (b * size_t(T) + t) * c;
      const R* x_cur = x + o;
      R* d = delta + o;
      const bool restart = reset && reset[b * size_t(T) + t];
      if (t > 0 && !restart) {
        const R* x_prev = x_cur - c;
        for (size_t i = 0; i < c; ++i) d[i] = x_prev[i] - x_cur[i];
      } else if (t == 0 && prev && !restart) {
        const R* x_prev = prev + b * c;
        for (size_t i = 0; i < c; ++i) d[i] = x_prev[i] - x_cur[i];
      } else {  // start of a document: the previous token is zeros
        for (size_t i = 0; i < c; ++i) d[i] = -x_cur[i];
      }
    }
  }
}

template <class R>
void token_shift_backward(const R* ddelta, int B, int T, int C, R* dx, R* dprev,
                          const unsigned char* reset) {
  check_dims("token_shift_backward", B, T, C);
  const size_t c = size_t(C);
  for (size_t b = 0; b < size_t(B); ++b) {
    const size_t seq = b * size_t(T) * c;
    if (dx) {
      // x[b,t] enters delta[b,t] with −1 and delta[b,t+1] (as the previous token) with +1.
      for (size_t t = 0; t < size_t(T); ++t) {
        const R* dd = ddelta + seq + t * c;
        R* g = dx + seq + t * c;
        if (t + 1 < size_t(T) && !(reset && reset[b * size_t(T) + t + 1])) {
          for (size_t i = 0; i < c; ++i) g[i] += dd[c + i] - dd[i];
        } else {
          for (size_t i = 0; i < c; ++i) g[i] -= dd[i];
        }
      }
    }
    if (dprev && T > 0 && !(reset && reset[b * size_t(T)])) {
      for (size_t i = 0; i < c; ++i) dprev[b * c + i] += ddelta[seq + i];
    }
  }
}

template <class R>
void linear_forward(const R* x, const R* W, int M, int K, int N, R* y) {
  check_dims("linear_forward", M, K, N);
  gemm(false, true, M, N, K, x, K, W, K, R(0), y, N);  // y = x·Wᵀ
}

template <class R>
void linear_backward(const R* dy, const R* x, const R* W, int M, int K, int N, R* dx, R* dW) {
  check_dims("linear_backward", M, K, N);
  gemm(false, false, M, K, N, dy, N, W, K, R(1), dx, K);  // dx[M,K] += dy·W
  gemm(true, false, N, K, M, dy, N, x, K, R(1), dW, K);   // dW[N,K] += dyᵀ·x
}

template <class R>
void matmul_forward(const R* x, const R* A, int M, int K, int N, R* y) {
  check_dims("matmul_forward", M, K, N);
  gemm(false, false, M, N, K, x, K, A, N, R(0), y, N);  // y = x·A
}

template <class R>
void matmul_backward(const R* dy, const R* x, const R* A, int M, int K, int N, R* dx, R* dA) {
  check_dims("matmul_backward", M, K, N);
  gemm(false, true, M, K, N, dy, N, A, N, R(1), dx, K);  // dx[M,K] += dy·Aᵀ
  gemm(true, false, K, N, M, x, K, dy, N, R(1), dA, N);  // dA[K,N] += xᵀ·dy
}

// The two scalars the header promises: float for training, double for gradient checks.
template void token_shift_forward<float>(const float*, const float*, int, int, int, float*,
                                         const unsigned char*);
template void token_shift_forward<double>(const double*, const double*, int, int, int, double*,
                                          const unsigned char*);
template void token_shift_backward<float>(const float*, int, int, int, float*, float*,
                                          const unsigned char*);
template void token_shift_backward<double>(const double*, int, int, int, double*, double*,
                                           const unsigned char*);
template void linear_forward<float>(const float*, const float*, int, int, int, float*);
template void linear_forward<double>(const double*, const double*, int, int, int, double*);
template void linear_backward<float>(const float*, const float*, const float*, int, int, int,
                                     float*, float*);
template void linear_backward<double>(const double*, const double*, const double*, int, int, int,
                                      double*, double*);
template void matmul_forward<float>(const float*, const float*, int, int, int, float*);
template void matmul_forward<double>(const double*, const double*, int, int, int, double*);
template void matmul_backward<float>(const float*, const float*, const float*, int, int, int,
                                     float*, float*);
template void matmul_backward<double>(const double*, const double*, const double*, int, int, int,
                                      double*, double*);

}  // namespace rwkv::ops::train
