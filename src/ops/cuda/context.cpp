#include "ops/cuda/cublaslt.h"
#include "ops/cuda/kernels.h"

namespace rwkv::cuda {

Context::Context(int device_index) : device(device_index) {
  use_device(device);
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

void Context::synchronize() { RWKV_CUDA_CHECK(cudaStreamSynchronize(stream)); }

}  // namespace rwkv::cuda
