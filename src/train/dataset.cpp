#include "train/dataset.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "rwkv/error.h"

namespace rwkv::train {
namespace {

using u128 = unsigned __int128;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

uint64_t mul_mod(uint64_t a, uint64_t b, uint64_t m) { return uint64_t(u128(a) * b % m); }

uint64_t pow_mod(uint64_t base, uint64_t exp, uint64_t m) {
  uint64_t result = 1 % m;
  for (base %= m; exp; exp >>= 1, base = mul_mod(base, base, m)) {
    if (exp & 1) result = mul_mod(result, base, m);
  }
  return result;
}

// Deterministic Miller-Rabin: these bases decide every n < 2^64.
bool is_prime(uint64_t n) {
  if (n < 2) return false;
  constexpr uint64_t kBases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
  for (uint64_t p : kBases) {
    if (n % p == 0) return n == p;
  }
  uint64_t d = n - 1;
  int r = 0;
  for (; d % 2 == 0; d /= 2) ++r;
  for (uint64_t a : kBases) {
    uint64_t x = pow_mod(a, d, n);
    if (x == 1 || x == n - 1) continue;
    bool composite = true;
    for (int i = 1; i < r && composite; ++i) {
      x = mul_mod(x, x, n);
      if (x == n - 1) composite = false;
    }
    if (composite) return false;
  }
  return true;
}

// splitmix64's finaliser: a counter-based generator needs only a good 64-bit mix.
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

// ---- TokenData ----

TokenData TokenData::open(const std::string& path) {
  std::string prefix = path;
  if (ends_with(path, ".bin") || ends_with(path, ".idx")) {
    prefix = path.substr(0, path.size() - 4);
  } else if (!std::filesystem::exists(path + ".idx")) {
    if (std::filesystem::exists(path)) {
      fail(path, ": not a binidx dataset (expected PREFIX.bin + PREFIX.idx; give the .bin, the "
                 ".idx or the prefix; text becomes binidx with `rwkv tokenize-data`)");
    }
    fail(path, ": no such dataset (looked for ", path, ", ", path, ".idx and ", path, ".bin)");
  }
  TokenData d;
  d.binidx_ = io::BinIdx::open(prefix);
  d.source_ = prefix + " (binidx)";
  return d;
}

TokenData::TokenData(std::vector<int> tokens) : tokens_(std::move(tokens)), source_("memory") {}

size_t TokenData::size() const { return binidx_ ? binidx_->num_tokens() : tokens_.size(); }

void TokenData::read(size_t start, size_t n, int* out) const {
  if (binidx_) return binidx_->read(start, n, out);
  if (start > tokens_.size() || n > tokens_.size() - start) {
    fail("token data (", source_, "): tokens [", start, ", ", start + n, ") are past its end (",
         tokens_.size(), " tokens)");
  }
  std::copy_n(tokens_.begin() + ptrdiff_t(start), n, out);
}

// ---- WindowSampler ----

uint64_t WindowSampler::magic_prime(size_t tokens, int ctx_len) {
  if (ctx_len < 1) fail("magic_prime: ctx_len ", ctx_len, " must be at least 1");
  // p < tokens/ctx_len - 1 exactly  <=>  (p + 1) · ctx_len < tokens  <=>  p < ceil(tokens/ctx) - 1.
  const uint64_t ctx = uint64_t(ctx_len);
  const uint64_t bound = (uint64_t(tokens) + ctx - 1) / ctx;  // p + 1 < bound
  for (uint64_t p = bound >= 2 ? bound - 2 : 0; p >= 2; --p) {
    if (p % 3 == 2 && is_prime(p)) return p;
  }
  fail("magic_prime: ", tokens, " tokens hold too few windows of ctx_len ", ctx_len,
       " (need a prime 3n+2 below tokens/ctx_len - 1 = ", double(tokens) / double(ctx) - 1, ")");
}

WindowSampler::Order WindowSampler::parse_order(const std::string& name) {
  if (name == "random") return Order::Random;
  if (name == "magic_prime" || name == "magic-prime") return Order::MagicPrime;
  fail("sampling order '", name, "' is not known (expected random or magic_prime)");
}

WindowSampler::WindowSampler(const TokenData& data, int ctx_len, int batch, Order order,
                             uint64_t seed)
    : data_(data), ctx_len_(ctx_len), batch_(batch), order_(order), seed_(seed) {
  if (ctx_len < 1) fail("window sampler: ctx_len ", ctx_len, " must be at least 1");
  if (batch < 1) fail("window sampler: batch ", batch, " must be at least 1");
  if (data.size() < size_t(ctx_len) + 1) {
    fail(data.source(), ": context longer than data: a window of ctx_len ", ctx_len,
         " needs ", ctx_len + 1, " tokens, the data has ", data.size());
  }
  if (order == Order::MagicPrime) {
    prime_ = magic_prime(data.size(), ctx_len);
    // RWKV-LM: factor = int(magic_prime * (math.sqrt(5) - 1) / 2), the same double arithmetic.
    factor_ = uint64_t(double(prime_) * ((std::sqrt(5.0) - 1) / 2));
  }
}

size_t WindowSampler::window_start(int64_t step, int row) const {
  if (step < 0) fail("window sampler: step ", step, " is negative");
  if (row < 0 || row >= batch_) fail("window sampler: row ", row, " is outside [0, ", batch_, ")");
  const uint64_t sample = uint64_t(step) * uint64_t(batch_) + uint64_t(row);
  if (order_ == Order::MagicPrime) {
    // RWKV-LM: ii = 1 + sample; i = ((factor · ii³) mod p) · ctx_len. Reducing ii mod p first
    // gives the same residue as Python's big integers without overflowing.
    const uint64_t ii = (sample + 1) % prime_;
    const uint64_t cube = mul_mod(mul_mod(ii, ii, prime_), ii, prime_);
    return size_t(mul_mod(factor_, cube, prime_)) * size_t(ctx_len_);
  }
  // Counter-based: each (seed, step, row) hashes to its own 64 bits; nothing to checkpoint.
  const uint64_t h = splitmix64(splitmix64(splitmix64(seed_) ^ uint64_t(step)) ^ uint64_t(row));
  const uint64_t starts = uint64_t(data_.size()) - uint64_t(ctx_len_);  // [0, size - ctx - 1]
  return size_t((u128(h) * starts) >> 64);  // Lemire's multiply-shift: uniform up to 2^-64 bias
}

void WindowSampler::batch(int64_t step, int* inputs, int* targets) const {
  const size_t T = size_t(ctx_len_);
  std::vector<int> window(T + 1);
  for (int b = 0; b < batch_; ++b) {
    data_.read(window_start(step, b), T + 1, window.data());
    std::copy_n(window.begin(), T, inputs + size_t(b) * T);
    std::copy_n(window.begin() + 1, T, targets + size_t(b) * T);
  }
}

}  // namespace rwkv::train
