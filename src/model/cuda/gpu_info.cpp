// The public face of the GPU for programs: how many, and their measured ceilings.
#include "ops/cuda/kernels.h"
#include "rwkv/model.h"

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
