// States after prompt prefixes, kept under a memory budget and evicted least recently used
// first, so that a request whose prompt starts with an earlier prompt (a chat resending its
// history) prefills only the rest.
//
// Entries sit at multiples of a fixed granularity (the scheduler's prefill chunk): the scheduler
// prefills every prompt in chunks that end at those multiples, so a state restored from the
// cache is bit for bit the state a cold run computes at that point, and a cached run gives the
// same tokens as a cold one.
#pragma once
#include <cstddef>
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace rwkv::serve {

class PrefixCache {
 public:
  // budget_bytes 0 turns the cache off. granularity ≥ 1.
  PrefixCache(size_t budget_bytes, int granularity);

  // The longest cached prefix of tokens[0, max_len) whose length is a multiple of the
  // granularity, for states that started from `origin` (0: the model's start state; else an id
  // of the initial state). Copies its state into `state` and returns its length; 0 if none.
  size_t lookup(uint64_t origin, std::span<const int> tokens, size_t max_len,
                std::vector<float>& state);
  // Keeps the state after tokens (whose length must be a multiple of the granularity), evicting
  // old entries to stay within the budget. A state larger than the budget is not kept.
  void insert(uint64_t origin, std::span<const int> tokens, std::span<const float> state);

  int granularity() const { return granularity_; }
  size_t bytes() const { return bytes_; }
  size_t entries() const { return lru_.size(); }

 private:
  struct Entry {
    uint64_t key;
    uint64_t origin;
    std::vector<int> tokens;
    std::vector<float> state;
    size_t bytes() const { return tokens.size() * sizeof(int) + state.size() * sizeof(float); }
  };
  using Lru = std::list<Entry>;  // front: most recently used
  Lru::iterator find(uint64_t key, uint64_t origin, std::span<const int> tokens);

  size_t budget_;
  int granularity_;
  size_t bytes_ = 0;
  Lru lru_;
  std::unordered_multimap<uint64_t, Lru::iterator> index_;  // key: hash of origin and tokens
};

}  // namespace rwkv::serve
