// Sampling from logits (spec §8.2, ChatRWKV's PIPELINE conventions): presence/frequency
// penalties with per-token decay, then softmax, top-k, top-p, min-p, temperature on the
// truncated probabilities, seeded RNG.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace rwkv {

struct SamplerConfig {
  float temperature = 1.0f;  // 0 = greedy (argmax)
  float top_p = 0.85f;       // 1 = off; 0 = keep only the most likely token
  int top_k = 0;             // 0 = off
  float min_p = 0.0f;        // drop tokens with p < min_p * p_max; 0 = off
  float presence_penalty = 0.2f;
  float frequency_penalty = 0.2f;
  float penalty_decay = 0.996f;  // every count is multiplied by this after each token
  uint64_t seed = 0;
};

class Sampler {
 public:
  Sampler(const SamplerConfig& config, int vocab_size);
  // Picks a token from logits[vocab_size] (not modified), applying the penalties of the tokens
  // accepted so far. Throws rwkv::Error on a size mismatch or invalid config.
  int sample(std::span<const float> logits);
  // Records a token as generated: counts *= decay, counts[token] += 1.
  void accept(int token);
  void reset();  // forget the counts (new conversation); the RNG continues
  const SamplerConfig& config() const { return config_; }

 private:
  SamplerConfig config_;
  int vocab_size_;
  std::vector<float> counts_;
  std::vector<uint8_t> seen_;
  std::mt19937_64 rng_;
  std::vector<float> probs_;       // scratch
  std::vector<int> order_;         // scratch
};

}  // namespace rwkv
