// I consecutive floats or bf16 values between memory and registers, as one vector access where
// I allows (float4 / float2, pairs of bf16); the pointer must be aligned to the vector's size.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace rwkv::cuda {

template <int I>
__device__ __forceinline__ void load(const float* p, float (&v)[I]) {
  if constexpr (I == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
  } else if constexpr (I == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    v[0] = t.x, v[1] = t.y;
  } else {
#pragma unroll
    for (int i = 0; i < I; ++i) v[i] = p[i];
  }
}
template <int I>
__device__ __forceinline__ void store(float* p, const float (&v)[I]) {
  if constexpr (I == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else if constexpr (I == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  } else {
#pragma unroll
    for (int i = 0; i < I; ++i) p[i] = v[i];
  }
}
template <int I>
__device__ __forceinline__ void load(const __nv_bfloat16* p, float (&v)[I]) {
  if constexpr (I == 4) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    v[0] = lo.x, v[1] = lo.y, v[2] = hi.x, v[3] = hi.y;
  } else if constexpr (I % 2 == 0) {
#pragma unroll
    for (int i = 0; i < I; i += 2) {
      const float2 t = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p + i));
      v[i] = t.x, v[i + 1] = t.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < I; ++i) v[i] = __bfloat162float(p[i]);
  }
}
template <int I>
__device__ __forceinline__ void store(__nv_bfloat16* p, const float (&v)[I]) {
  if constexpr (I == 4) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v[0], v[1]), hi = __floats2bfloat162_rn(v[2], v[3]);
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&lo), u.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(p) = u;
  } else if constexpr (I % 2 == 0) {
#pragma unroll
    for (int i = 0; i < I; i += 2) *reinterpret_cast<__nv_bfloat162*>(p + i) = __floats2bfloat162_rn(v[i], v[i + 1]);
  } else {
#pragma unroll
    for (int i = 0; i < I; ++i) p[i] = __float2bfloat16_rn(v[i]);
  }
}

}  // namespace rwkv::cuda
