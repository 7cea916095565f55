// Token sources and training windows for the trainer.
//   TokenData      all tokens of a dataset as one stream: a Megatron binidx (memory-mapped
//                  through io::BinIdx, documents back to back as RWKV-LM reads them) or an
//                  in-memory vector (tests, small experiments).
//   WindowSampler  batches of ctx_len + 1 token windows (inputs = the first ctx_len, targets =
//                  the same shifted by one). Every window is a pure function of (seed, step,
//                  row): a resumed run needs to save only the step to replay the exact sequence.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/binidx.h"

namespace rwkv::train {

class TokenData {
 public:
  // Opens a binidx dataset from PREFIX.bin, PREFIX.idx or PREFIX itself. Throws rwkv::Error
  // naming the path for anything else (a text file, a missing file, a broken index).
  static TokenData open(const std::string& path);
  // Tokens held in memory.
  explicit TokenData(std::vector<int> tokens);

  size_t size() const;  // all tokens
  // Tokens [start, start + n) into out; throws rwkv::Error past the end.
  void read(size_t start, size_t n, int* out) const;
  // "PREFIX (binidx)" or "memory": for messages.
  const std::string& source() const { return source_; }

 private:
  TokenData() = default;
  std::optional<io::BinIdx> binidx_;
  std::vector<int> tokens_;
  std::string source_;
};

class WindowSampler {
 public:
  enum class Order {
    Random,      // start uniform in [0, size - ctx_len - 1], counter-based RNG
    MagicPrime,  // RWKV-LM's pile mode: a full-period walk over ctx_len-aligned starts (no seed)
  };
  // Keeps a reference to data, which must outlive the sampler.
  // Throws rwkv::Error for ctx_len or batch < 1, for data shorter than ctx_len + 1 tokens
  // ("context longer than data"), and for MagicPrime when no magic prime fits the data.
  WindowSampler(const TokenData& data, int ctx_len, int batch, Order order, uint64_t seed);

  // RWKV-LM README: "the largest 3n+2 prime smaller than datalen/ctxlen-1", with the division
  // exact (so p · ctx_len < tokens - ctx_len). Such a p makes x -> x³ mod p a permutation,
  // which is why every aligned window is visited once per p samples. Throws rwkv::Error if
  // there is none (fewer than 4 windows' worth of data).
  static uint64_t magic_prime(size_t tokens, int ctx_len);
  // "random" / "magic_prime" (also "magic-prime"); throws rwkv::Error for anything else.
  static Order parse_order(const std::string& name);

  // Where window (step, row) starts in the data. step >= 0, 0 <= row < batch.
  size_t window_start(int64_t step, int row) const;
  // inputs and targets: [batch, ctx_len] row-major each; targets[t] = inputs[t + 1] within a row.
  void batch(int64_t step, int* inputs, int* targets) const;

  int ctx_len() const { return ctx_len_; }
  int batch_size() const { return batch_; }
  Order order() const { return order_; }
  uint64_t prime() const { return prime_; }  // 0 for Random

 private:
  const TokenData& data_;
  int ctx_len_, batch_;
  Order order_;
  uint64_t seed_;
  uint64_t prime_ = 0, factor_ = 0;
};

}  // namespace rwkv::train
