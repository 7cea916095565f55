// What the CUDA models share: state pools in GPU memory.
#pragma once
#include <memory>

#include "ops/cuda/kernels.h"
#include "rwkv/model.h"

namespace rwkv::model {

// n states of `floats` each in one device allocation, zeroed (the start of a sequence for
// RWKV-5/6/7), used on ctx's stream.
std::unique_ptr<StatePool> make_cuda_state_pool(std::shared_ptr<cuda::Context> ctx, int n,
                                                size_t floats);
// The device base of a pool made by make_cuda_state_pool on ctx, after checking that it is one,
// then check_pool_slots(pool, floats, slots, B); rwkv::Error otherwise.
float* cuda_state_pool_data(StatePool& pool, const cuda::Context& ctx, size_t floats,
                            const int* slots, int B);

}  // namespace rwkv::model
