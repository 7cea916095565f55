// Entry points of the runtime-dispatched RWKV-4 and RWKV-5/6 WKV kernels (ops/cpu/simd_wkv46.cpp).
#pragma once
#include "ops/ops.h"

namespace rwkv::ops::cpu {

// Any channel count (the last channels that do not fill a vector go through a padded copy).
void simd_wkv4(const Wkv4Seq& s);
// Need h.N % simd_lanes_f32() == 0 and h.N <= kMaxHeadSize (ops/cpu/simd.h).
void simd_wkv6_recurrent(const Wkv6Head& h);
void simd_wkv6_chunked(const Wkv6Head& h);

}  // namespace rwkv::ops::cpu
