// FNV-1a 64-bit: state-file checksums, model fingerprints, per-tensor RNG keys.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace rwkv {

constexpr uint64_t kFnv1a64Basis = 0xcbf29ce484222325ull;

// Continues hash h over n bytes (start with kFnv1a64Basis).
inline uint64_t fnv1a64(const void* data, size_t n, uint64_t h = kFnv1a64Basis) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}
inline uint64_t fnv1a64(std::string_view s) { return fnv1a64(s.data(), s.size()); }

}  // namespace rwkv
