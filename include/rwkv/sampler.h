// Sampling from logits (spec §8.2, ChatRWKV's PIPELINE conventions): presence/frequency
// penalties with per-token decay, then softmax, top-k, top-p, min-p, temperature on the
// truncated probabilities, seeded RNG.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace rwkv {

// The truncations intersect: each is measured on the untruncated softmax.
struct SamplerConfig {
  float temperature = 1.0f;  // 0 = greedy: argmax of the penalised logits, lowest id on ties
  float top_p = 0.85f;       // 1 = off; 0 = keep only the most likely token (and its ties)
  int top_k = 0;             // 0 = off; exactly k kept, lowest ids on ties
  float min_p = 0.0f;        // drop tokens with p < min_p * p_max; 0 = off
  float presence_penalty = 0.2f;
  float frequency_penalty = 0.2f;
  float penalty_decay = 0.996f;  // every count is multiplied by this after each token
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws rwkv::Error on an invalid config (negative temperature, top_p or min_p outside [0, 1],
  // negative top_k, non-finite penalties, penalty_decay outside [0, 1]) or vocab_size <= 0.
  Sampler(const SamplerConfig& config, int vocab_size);
  // The constructor's checks alone, without allocating the vocabulary-sized buffers.
  static void validate(const SamplerConfig& config, int vocab_size);
  // Picks a token from logits[vocab_size] (not modified), applying the penalties of the tokens
  // accepted so far; -inf masks a token. Throws rwkv::Error on a size mismatch, a NaN or +inf
  // logit, or all -inf. The same seed gives the same tokens on the same SIMD target.
  int sample(std::span<const float> logits);
  // Records a token as generated: counts *= decay, counts[token] += 1. Throws rwkv::Error if the
  // token is outside [0, vocab_size).
  void accept(int token);
  void reset();  // forget the counts (new conversation); the RNG continues
  const SamplerConfig& config() const { return config_; }

 private:
  void penalize(std::span<const float> logits);  // checks the size, fills logits_
  std::span<const int32_t> truncate(double total);
  int draw(std::span<const int32_t> kept, float max_logit, double total);
  size_t pick(std::span<const float> weights, double total);

  SamplerConfig config_;
  int vocab_size_;
  std::vector<float> counts_;  // decayed occurrence counts
  std::vector<uint8_t> seen_;  // accepted since reset(): presence outlives a decayed count
  std::vector<int> seen_ids_;  // the ids with seen_ set, so penalties cost O(distinct tokens)
  std::mt19937_64 rng_;
  // Scratch, sized once.
  std::vector<float> logits_;   // penalised logits
  std::vector<float> probs_;    // exp(logit - max logit)
  std::vector<float> weights_;  // the kept tokens' weights
  std::vector<int32_t> ids_;    // candidate ids, with spare room for vector stores
};

}  // namespace rwkv
