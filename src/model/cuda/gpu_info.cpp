// The public face of the GPU for programs: how many, their measured ceilings, and page-locked
// host memory for what they return.
#include <cuda_runtime.h>

#include "model/page_locked.h"
#include "ops/cuda/kernels.h"
#include "rwkv/model.h"

namespace rwkv::model {

void* alloc_page_locked(size_t bytes) {
  if (cuda::device_count() == 0) return nullptr;
  void* p = nullptr;
  if (cudaMallocHost(&p, bytes) != cudaSuccess) {
    cudaGetLastError();  // clear it: ordinary memory serves instead
    return nullptr;
  }
  return p;
}

void free_page_locked(void* p) {
  if (p) cudaFreeHost(p);
}

}  // namespace rwkv::model

namespace rwkv {

int cuda_device_count() { return cuda::device_count(); }

GpuCeilings measure_gpu_ceilings(int device) {
  cuda::Context ctx(device);
  GpuCeilings c;
  c.name = cuda::device_description(device);
  c.copy_gb_per_s = cuda::measure_copy_bandwidth(size_t(1) << 30);
  c.gemm_tflops = cuda::measure_gemm_tflops(ctx, 8192);
  return c;
}

}  // namespace rwkv
