// Page-locked host memory through the CUDA runtime (model/cuda/gpu_info.cpp), or none in a build
// without it (model/cuda_absent.cpp): the allocator behind rwkv::HostFloats.
#pragma once
#include <cstddef>

namespace rwkv::model {

// bytes of page-locked host memory, or null (no CUDA backend, no GPU, or the runtime refused).
void* alloc_page_locked(size_t bytes);
void free_page_locked(void* p);

}  // namespace rwkv::model
