#include <cstdio>

#include "ops/cuda/cuda_common.h"

namespace rwkv::cuda {

void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a sticky launch error so the next call reports its own
  fail("CUDA: ", what, ": ", cudaGetErrorString(status));
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

void use_device(int index) {
  const int n = device_count();
  if (n == 0) fail("CUDA: no GPU is available (no driver or no device)");
  if (index < 0 || index >= n) fail("CUDA: no GPU cuda:", index, " (", n, " found)");
  RWKV_CUDA_CHECK(cudaSetDevice(index));
}

std::string device_description(int index) {
  cudaDeviceProp p{};
  RWKV_CUDA_CHECK(cudaGetDeviceProperties(&p, index));
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor,
                p.multiProcessorCount, double(p.totalGlobalMem) / double(1ull << 30));
  return buf;
}

DeviceBuffer::DeviceBuffer(size_t bytes) { ensure(bytes); }

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

void DeviceBuffer::ensure(size_t bytes) {
  if (bytes <= bytes_) return;
  if (ptr_) RWKV_CUDA_CHECK(cudaFree(ptr_));
  ptr_ = nullptr;
  bytes_ = 0;
  const cudaError_t status = cudaMalloc(&ptr_, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();
    ptr_ = nullptr;
    fail("CUDA: cannot allocate ", bytes, " bytes on the GPU: ", cudaGetErrorString(status));
  }
  bytes_ = bytes;
}

double measure_copy_bandwidth(size_t bytes) {
  DeviceBuffer a(bytes), b(bytes);
  RWKV_CUDA_CHECK(cudaMemset(a.as(), 1, bytes));
  cudaEvent_t start, stop;
  RWKV_CUDA_CHECK(cudaEventCreate(&start));
  RWKV_CUDA_CHECK(cudaEventCreate(&stop));
  RWKV_CUDA_CHECK(cudaMemcpy(b.as(), a.as(), bytes, cudaMemcpyDeviceToDevice));  // warm-up
  const int reps = 10;
  RWKV_CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < reps; ++i) {
    RWKV_CUDA_CHECK(cudaMemcpyAsync(i % 2 ? a.as() : b.as(), i % 2 ? b.as() : a.as(), bytes,
                                    cudaMemcpyDeviceToDevice));
  }
  RWKV_CUDA_CHECK(cudaEventRecord(stop));
  RWKV_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  RWKV_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 2.0 * double(bytes) * reps / (double(ms) * 1e-3) / 1e9;
}

}  // namespace rwkv::cuda
