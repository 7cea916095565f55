// What every CUDA source shares: error checks that throw rwkv::Error (the library never aborts),
// device buffers, and the device a model runs on. Host-side C++; no kernels here.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "rwkv/error.h"

namespace rwkv::cuda {

// Throws rwkv::Error naming the call and CUDA's message.
void check(cudaError_t status, const char* what);
#define RWKV_CUDA_CHECK(call) ::rwkv::cuda::check((call), #call)
// After a kernel launch: a bad configuration shows up here, not at the next call.
#define RWKV_CUDA_LAUNCHED(name) ::rwkv::cuda::check(cudaGetLastError(), name)

// Number of usable GPUs (0 when there is no driver or no device; never throws).
int device_count();
// Makes `index` current; throws rwkv::Error if there is no such GPU (names how many exist).
void use_device(int index);
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)".
std::string device_description(int index);

// Whether every pointer allows 16-byte (vector) accesses.
inline bool aligned16(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

// A device allocation, freed on destruction. Moves, never copies.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  // Grows (discarding the contents) to hold at least `bytes`.
  void ensure(size_t bytes);
  template <typename T = void>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Device-to-device copy bandwidth over `bytes`, counting bytes read plus bytes written (GB/s):
// the ceiling that decode benchmarks quote.
double measure_copy_bandwidth(size_t bytes);

}  // namespace rwkv::cuda
