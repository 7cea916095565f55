// Helpers of the CUDA tests: device copies of host data, outputs poisoned with NaN before a
// kernel runs (an element it fails to write shows up), and copies back.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/cuda/kernels.h"
#include "rwkv/model.h"
#include "rwkv/dtype.h"

#include "testing.h"  // RWKV_REQUIRE_GPU

namespace rwkv::test {

// One context on the first GPU for a test program's kernel calls.
inline cuda::Context& cuda_context() {
  static cuda::Context ctx(0);
  return ctx;
}

inline cuda::DeviceBuffer upload(const void* data, size_t bytes) {
  cuda::DeviceBuffer b(bytes > 4 ? bytes : 4);
  RWKV_CUDA_CHECK(cudaMemcpy(b.as(), data, bytes, cudaMemcpyHostToDevice));
  return b;
}
template <class T>
cuda::DeviceBuffer upload(const std::vector<T>& v) {
  return upload(v.data(), v.size() * sizeof(T));
}
// Every byte 0xff: NaN as fp32 and as bf16.
inline cuda::DeviceBuffer poisoned_bytes(size_t bytes) {
  cuda::DeviceBuffer b(bytes > 4 ? bytes : 4);
  RWKV_CUDA_CHECK(cudaMemset(b.as(), 0xff, bytes));
  return b;
}
// After every stream of the device is done.
inline std::vector<float> download_f32(const cuda::DeviceBuffer& b, size_t n) {
  RWKV_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> v(n);
  RWKV_CUDA_CHECK(cudaMemcpy(v.data(), b.as(), n * 4, cudaMemcpyDeviceToHost));
  return v;
}
inline std::vector<float> download_bf16(const cuda::DeviceBuffer& b, size_t n) {
  RWKV_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> bits(n);
  RWKV_CUDA_CHECK(cudaMemcpy(bits.data(), b.as(), n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(bits[i]);
  return v;
}

}  // namespace rwkv::test
