// What the CUDA models share: state pools in GPU memory.
#pragma once
#include <memory>

#include "ops/cuda/kernels.h"
#include "rwkv/model.h"

namespace rwkv::model {

// Carves one device allocation into aligned pieces; measure with a null base first.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* take(size_t n) {
    T* at = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += (n * sizeof(T) + 255) / 256 * 256;  // 256-byte aligned (cuBLASLt, 16-byte loads)
    return at;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

// n states of `floats` each in one device allocation, used on ctx's stream. Every slot starts
// as `start` (floats values: the model's init_state), or zeroed when it is null (RWKV-5/6/7).
std::unique_ptr<StatePool> make_cuda_state_pool(std::shared_ptr<cuda::Context> ctx, int n,
                                                size_t floats, const float* start = nullptr);
// The device base of a pool made by make_cuda_state_pool on ctx, after checking that it is one,
// then check_pool_slots(pool, floats, slots, B); rwkv::Error otherwise.
float* cuda_state_pool_data(StatePool& pool, const cuda::Context& ctx, size_t floats,
                            const int* slots, int B);

}  // namespace rwkv::model
