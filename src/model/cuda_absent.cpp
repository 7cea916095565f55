// Built when nvcc was not found: the CUDA backend's entry points say so.
#include "model/generations.h"
#include "model/page_locked.h"
#include "rwkv/error.h"

namespace rwkv::model {

void* alloc_page_locked(size_t) { return nullptr; }
void free_page_locked(void*) {}

std::unique_ptr<Model> load_cuda_model(std::shared_ptr<const Checkpoint>, const ModelInfo&,
                                       const LoadOptions&) {
  fail("this build has no CUDA backend (nvcc was not found when it was built)");
}

}  // namespace rwkv::model

namespace rwkv {

int cuda_device_count() { return 0; }

GpuCeilings measure_gpu_ceilings(int) {
  fail("this build has no CUDA backend (nvcc was not found when it was built)");
}

}  // namespace rwkv
