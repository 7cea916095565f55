// Device helpers shared by the kernels: 16-bit loads, activations, warp and block sums, and the
// grid-stride loop of the element-wise kernels with its launch size.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstddef>

namespace rwkv::cuda {

// Thread-wide loop over i ∈ [0, n) however many blocks were launched.
#define GRID_STRIDE(i, n) \
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < (n); i += size_t(gridDim.x) * blockDim.x)

// Blocks of `threads` for a grid-stride loop over n values: one value per thread up to 65536
// blocks (at least one block).
inline int grid_for(size_t n, int threads = 256) {
  return int(std::max<size_t>(1, std::min<size_t>((n + size_t(threads) - 1) / size_t(threads), 65536)));
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Eight 16-bit values packed in 16 bytes, as fp32.
__device__ __forceinline__ void unpack8(const uint4& u, const __nv_bfloat16*, float* f) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ void unpack8(const uint4& u, const __half*, float* f) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// Eight consecutive weights as fp32 from one 16-byte load (two for fp32); p 16-byte aligned.
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* f) {
  unpack8(__ldg(reinterpret_cast<const uint4*>(p)), p, f);
}
__device__ __forceinline__ void load8(const __half* p, float* f) {
  unpack8(__ldg(reinterpret_cast<const uint4*>(p)), p, f);
}
__device__ __forceinline__ void load8(const float* p, float* f) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p));
  const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + __expf(-x)); }

// act: 0 none, 1 tanh, 2 sigmoid, 3 squared ReLU, 4 SiLU (the values of cuda::Act).
__device__ __forceinline__ float apply_act(float x, int act) {
  switch (act) {
    case 1: return tanhf(x);
    case 2: return sigmoidf(x);
    case 3: { const float z = fmaxf(x, 0.f); return z * z; }
    case 4: return x * sigmoidf(x);
    default: return x;
  }
}

// Asks L2 for the 128-byte line at q (no register written, nothing waits for it).
__device__ __forceinline__ void prefetch_l2(const void* q) { asm volatile("prefetch.global.L2 [%0];" ::"l"(q)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result.
// `scratch` holds 32 floats; calls in a row need a __syncthreads() between them (done here).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < warps ? scratch[lane] : 0.f;
  return warp_sum(t);
}

}  // namespace rwkv::cuda
