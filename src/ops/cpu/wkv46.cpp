// Fast CPU RWKV-4 and RWKV-5/6 WKV. (Placeholder: the reference kernels, until tuned ones land.)
#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace rwkv::ops::cpu {

void wkv4(const Wkv4Seq& s) { ref::wkv4(s); }
void wkv6_recurrent(const Wkv6Head& h) { ref::wkv6_recurrent(h); }
void wkv6_chunked(const Wkv6Head& h) { ref::wkv6_chunked(h, kWkvChunk); }

}  // namespace rwkv::ops::cpu

namespace rwkv::ops::ref {
// Placeholder until the chunked form lands.
void wkv6_chunked(const Wkv6Head& h, int) { wkv6_recurrent(h); }
}  // namespace rwkv::ops::ref
