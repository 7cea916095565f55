// cuBLASLt, opened at run time (dlopen) the first time a GPU model needs it: the library is
// ~500 MB, and linking it would slow every start of every program, GPU or not.
#pragma once
#include <cublasLt.h>

namespace rwkv::cuda {

struct CublasLt {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtDestroy) destroy;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&cublasLtMatmul) matmul;
  decltype(&cublasLtGetStatusString) status_string;
};

// The loaded entry points; throws rwkv::Error naming the library if it cannot be opened.
const CublasLt& cublaslt();
// Throws rwkv::Error for a failed cuBLASLt call.
void check_lt(cublasStatus_t status, const char* what);

}  // namespace rwkv::cuda
