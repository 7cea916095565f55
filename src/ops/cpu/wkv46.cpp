// Fast CPU RWKV-4 and RWKV-5/6 WKV: the SIMD kernels of simd_wkv46.cpp, or the plain-loop
// references for head sizes they do not take (N not a multiple of the vector lanes, N > 256).
#include "ops/cpu/simd.h"
#include "ops/cpu/simd_wkv46.h"
#include "ops/ops.h"

namespace rwkv::ops::cpu {

static bool simd_head_ok(const Wkv6Head& h) {
  return h.N <= kMaxHeadSize && h.N % int(simd_lanes_f32()) == 0;
}

void wkv4(const Wkv4Seq& s) { simd_wkv4(s); }

void wkv6_recurrent(const Wkv6Head& h) {
  if (simd_head_ok(h)) return simd_wkv6_recurrent(h);
  ref::wkv6_recurrent(h);
}

void wkv6_chunked(const Wkv6Head& h) {
  if (simd_head_ok(h)) return simd_wkv6_chunked(h);
  ref::wkv6_chunked(h, kWkvChunk);
}

}  // namespace rwkv::ops::cpu
