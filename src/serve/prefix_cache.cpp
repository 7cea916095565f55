#include "serve/prefix_cache.h"

#include <algorithm>

#include "rwkv/error.h"

namespace rwkv::serve {
namespace {

// FNV-1a over the tokens' values, started from the origin: one pass gives every prefix's key.
constexpr uint64_t kPrime = 0x100000001b3ull;
uint64_t seed(uint64_t origin) { return (0xcbf29ce484222325ull ^ origin) * kPrime; }
uint64_t extend(uint64_t h, int token) {
  const auto t = static_cast<uint32_t>(token);
  for (int b = 0; b < 4; ++b) h = (h ^ ((t >> (8 * b)) & 0xff)) * kPrime;
  return h;
}

}  // namespace

PrefixCache::PrefixCache(size_t budget_bytes, int granularity)
    : budget_(budget_bytes), granularity_(granularity) {
  if (granularity < 1) fail("prefix cache: granularity must be ≥ 1, got ", granularity);
}

PrefixCache::Lru::iterator PrefixCache::find(uint64_t key, uint64_t origin,
                                             std::span<const int> tokens) {
  const auto [lo, hi] = index_.equal_range(key);
  for (auto it = lo; it != hi; ++it) {
    const Entry& e = *it->second;
    if (e.origin == origin && std::ranges::equal(e.tokens, tokens)) return it->second;
  }
  return lru_.end();
}

size_t PrefixCache::lookup(uint64_t origin, std::span<const int> tokens, size_t max_len,
                           std::vector<float>& state) {
  if (lru_.empty()) return 0;
  max_len = std::min(max_len, tokens.size());
  const size_t g = size_t(granularity_);
  std::vector<uint64_t> keys;  // keys[i]: the key of the first (i + 1)·g tokens
  uint64_t h = seed(origin);
  for (size_t i = 0; i + g <= max_len; i += g) {
    for (size_t j = i; j < i + g; ++j) h = extend(h, tokens[j]);
    keys.push_back(h);
  }
  for (size_t i = keys.size(); i-- > 0;) {
    const size_t len = (i + 1) * g;
    const auto it = find(keys[i], origin, tokens.first(len));
    if (it == lru_.end()) continue;
    lru_.splice(lru_.begin(), lru_, it);
    state = it->state;
    return len;
  }
  return 0;
}

void PrefixCache::insert(uint64_t origin, std::span<const int> tokens,
                         std::span<const float> state) {
  if (tokens.empty() || tokens.size() % size_t(granularity_) != 0) {
    fail("prefix cache: a prefix of ", tokens.size(), " tokens is not a multiple of ",
         granularity_);
  }
  uint64_t key = seed(origin);
  for (int t : tokens) key = extend(key, t);
  if (auto it = find(key, origin, tokens); it != lru_.end()) {  // refresh
    lru_.splice(lru_.begin(), lru_, it);
    return;
  }
  Entry entry{key, origin, {tokens.begin(), tokens.end()}, {state.begin(), state.end()}};
  if (entry.bytes() > budget_) return;
  while (bytes_ + entry.bytes() > budget_) {
    Entry& old = lru_.back();
    const auto [lo, hi] = index_.equal_range(old.key);
    for (auto it = lo; it != hi; ++it) {
      if (&*it->second == &old) {
        index_.erase(it);
        break;
      }
    }
    bytes_ -= old.bytes();
    lru_.pop_back();
  }
  bytes_ += entry.bytes();
  lru_.push_front(std::move(entry));
  index_.emplace(key, lru_.begin());
}

}  // namespace rwkv::serve
