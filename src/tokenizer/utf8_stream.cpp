// Utf8Stream: holds back only a tail that can still become a valid UTF-8 character, so text is
// printed as soon as possible and invalid bytes are never held.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "rwkv/tokenizer.h"

namespace rwkv {
namespace {

bool is_continuation(uint8_t b) { return (b & 0xC0) == 0x80; }

// The length of the sequence a lead byte starts; 0 for ASCII (complete by itself), continuation
// bytes and bytes that never occur in UTF-8 (C0, C1, F5..FF).
size_t sequence_length(uint8_t lead) {
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Whether `second` may follow `lead`: RFC 3629 narrows it after these leads to rule out
// overlong forms, surrogates and code points above U+10FFFF.
bool valid_second(uint8_t lead, uint8_t second) {
  switch (lead) {
    case 0xE0: return second >= 0xA0 && second <= 0xBF;
    case 0xED: return second >= 0x80 && second <= 0x9F;
    case 0xF0: return second >= 0x90 && second <= 0xBF;
    case 0xF4: return second >= 0x80 && second <= 0x8F;
    default: return is_continuation(second);
  }
}

// Where a still-completable, incomplete sequence at the end of `bytes` starts (a lead byte and
// at most two continuation bytes), or bytes.size() if there is none.
size_t incomplete_tail(std::string_view bytes) {
  const size_t n = bytes.size();
  for (size_t k = 1; k <= std::min<size_t>(3, n); ++k) {
    const auto b = uint8_t(bytes[n - k]);
    if (is_continuation(b)) continue;
    const bool completable =
        sequence_length(b) > k && (k == 1 || valid_second(b, uint8_t(bytes[n - k + 1])));
    return completable ? n - k : n;
  }
  return n;
}

}  // namespace

std::string Utf8Stream::push(std::string_view bytes) {
  pending_ += bytes;
  const size_t ready = incomplete_tail(pending_);
  std::string out = pending_.substr(0, ready);
  pending_.erase(0, ready);
  return out;
}

std::string Utf8Stream::flush() { return std::exchange(pending_, {}); }

}  // namespace rwkv
