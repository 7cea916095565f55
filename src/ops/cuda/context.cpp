#include "ops/cuda/cublaslt.h"
#include "ops/cuda/kernels.h"

namespace rwkv::cuda {

Context::Context(int device_index) : device(device_index) {
  use_device(device);
  RWKV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  RWKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  check_lt(cublaslt().create(&lt), "create");
  workspace.ensure(32u << 20);  // what cuBLASLt's Hopper kernels like to have
}

Context::~Context() {
  const auto destroy = [](GemmPlan& p) {
    const CublasLt& l = cublaslt();
    l.layout_destroy(p.a), l.layout_destroy(p.b), l.layout_destroy(p.c), l.desc_destroy(p.desc);
  };
  for (auto& [key, p] : plans) destroy(p);
  for (auto& [key, p] : gemm_plans) destroy(p);
  if (lt) cublaslt().destroy(lt);
  if (stream) cudaStreamDestroy(stream);
}

bool Context::choose_algorithm(GemmPlan& p) {
  const CublasLt& l = cublaslt();
  cublasLtMatmulPreference_t pref;
  check_lt(l.pref_create(&pref), "preference");
  const uint64_t ws = workspace.bytes();
  l.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = l.heuristic(lt, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
  l.pref_destroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    l.layout_destroy(p.a), l.layout_destroy(p.b), l.layout_destroy(p.c), l.desc_destroy(p.desc);
    return false;
  }
  p.algo = result.algo;
  return true;
}

void Context::synchronize() { RWKV_CUDA_CHECK(cudaStreamSynchronize(stream)); }

}  // namespace rwkv::cuda
