#include "rwkv/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "rwkv/error.h"

namespace rwkv {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

SamplerConfig plain(float temperature) {
  SamplerConfig c;
  c.temperature = temperature;
  c.top_p = 1.0f;
  c.presence_penalty = 0.0f;
  c.frequency_penalty = 0.0f;
  c.seed = 42;
  return c;
}

std::vector<float> log_of(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(float(std::log(p)));
  return out;
}

std::vector<float> normal_logits(int n, float sd, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& x : out) x = normal(rng);
  return out;
}

// The expected sampling distribution: probs restricted to `kept`, raised to 1/T, renormalised.
std::vector<double> tempered(const std::vector<double>& probs, const std::vector<int>& kept,
                             double temperature) {
  std::vector<double> out(probs.size(), 0.0);
  for (int i : kept) out[size_t(i)] = std::pow(probs[size_t(i)], 1.0 / temperature);
  const double total = std::accumulate(out.begin(), out.end(), 0.0);
  for (double& q : out) q /= total;
  return out;
}

std::vector<int> draw_counts(Sampler& sampler, const std::vector<float>& logits, int draws) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[size_t(sampler.sample(logits))];
  return counts;
}

// Every observed frequency within 5 standard deviations of its expectation (with a fixed seed
// this either always passes or always fails); never-expected tokens never drawn.
void expect_matches(const std::vector<int>& counts, const std::vector<double>& expected) {
  const double n = std::accumulate(counts.begin(), counts.end(), 0.0);
  for (size_t i = 0; i < counts.size(); ++i) {
    if (expected[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " should be truncated";
      continue;
    }
    const double sigma = std::sqrt(expected[i] * (1 - expected[i]) / n);
    EXPECT_NEAR(counts[i] / n, expected[i], 5 * sigma + 1e-12) << "token " << i;
  }
}

int greedy_index(const std::vector<float>& logits) {
  return int(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

TEST(Sampler, GreedyPicksArgmax) {
  const std::vector<float> logits = normal_logits(5000, 2.0f, 1);
  Sampler sampler(plain(0.0f), 5000);
  EXPECT_EQ(sampler.sample(logits), greedy_index(logits));
  // Ties go to the lowest id.
  Sampler tied(plain(0.0f), 4);
  EXPECT_EQ(tied.sample(std::vector<float>{0.5f, 2.0f, 2.0f, -kInf}), 1);
}

TEST(Sampler, SameSeedSameSequenceOtherSeedDiffers) {
  const std::vector<float> logits = normal_logits(1000, 1.0f, 2);
  auto sequence = [&](uint64_t seed) {
    SamplerConfig c;  // defaults: top_p 0.85 and the penalties, so accept() matters too
    c.seed = seed;
    Sampler sampler(c, 1000);
    std::vector<int> out;
    for (int i = 0; i < 200; ++i) {
      out.push_back(sampler.sample(logits));
      sampler.accept(out.back());
    }
    return out;
  };
  EXPECT_EQ(sequence(7), sequence(7));
  EXPECT_NE(sequence(7), sequence(8));
}

TEST(Sampler, TopK1AndTopP0AreGreedyAtAnyTemperature) {
  const std::vector<float> logits = normal_logits(1000, 1.0f, 3);
  const int best = greedy_index(logits);
  for (float t : {0.1f, 1.0f, 5.0f, 100.0f}) {
    SamplerConfig k1 = plain(t);
    k1.top_k = 1;
    SamplerConfig p0 = plain(t);
    p0.top_p = 0.0f;
    for (const SamplerConfig& c : {k1, p0}) {
      Sampler sampler(c, 1000);
      for (int i = 0; i < 300; ++i) ASSERT_EQ(sampler.sample(logits), best) << "T=" << t;
    }
  }
}

struct Case {
  const char* name;
  float top_p;
  int top_k;
  float min_p;
  float temperature;
  std::vector<int> kept;  // worked out by hand from the spec
};

TEST(Sampler, EmpiricalDistributionMatchesTruncationAndTemperature) {
  const std::vector<double> probs = {0.4, 0.25, 0.15, 0.1, 0.06, 0.04};
  const std::vector<Case> cases = {
      {"untruncated", 1.0f, 0, 0.0f, 1.0f, {0, 1, 2, 3, 4, 5}},
      {"untruncated T=2", 1.0f, 0, 0.0f, 2.0f, {0, 1, 2, 3, 4, 5}},
      // cumsum 0.4, 0.65, 0.8 >= 0.7: cutoff 0.15.
      {"top_p=0.7", 0.7f, 0, 0.0f, 1.0f, {0, 1, 2}},
      {"top_p=0.7 T=0.5", 0.7f, 0, 0.0f, 0.5f, {0, 1, 2}},
      {"top_p=0.7 T=2", 0.7f, 0, 0.0f, 2.0f, {0, 1, 2}},
      {"top_k=3 T=0.5", 1.0f, 3, 0.0f, 0.5f, {0, 1, 2}},
      {"top_k=3 T=2", 1.0f, 3, 0.0f, 2.0f, {0, 1, 2}},
      {"top_k=2", 1.0f, 2, 0.0f, 1.0f, {0, 1}},
      // p >= 0.2 × 0.4 = 0.08.
      {"min_p=0.2", 1.0f, 0, 0.2f, 1.0f, {0, 1, 2, 3}},
      {"min_p=0.2 T=0.5", 1.0f, 0, 0.2f, 0.5f, {0, 1, 2, 3}},
      {"min_p=0.2 T=2", 1.0f, 0, 0.2f, 2.0f, {0, 1, 2, 3}},
      // top_p keeps 4 (cumsum 0.9 >= 0.85), min_p keeps p >= 0.2: the intersection.
      {"top_p=0.85 min_p=0.5", 0.85f, 0, 0.5f, 1.0f, {0, 1}},
      // top_k keeps 2 of the 3 that top_p keeps.
      {"top_p=0.7 top_k=2 T=2", 0.7f, 2, 0.0f, 2.0f, {0, 1}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    SamplerConfig config = plain(c.temperature);
    config.top_p = c.top_p;
    config.top_k = c.top_k;
    config.min_p = c.min_p;
    Sampler sampler(config, int(probs.size()));
    expect_matches(draw_counts(sampler, log_of(probs), 20000),
                   tempered(probs, c.kept, c.temperature));
  }
}

TEST(Sampler, TopPKeepsTiesAtTheCutoffTopKDoesNot) {
  const std::vector<double> probs = {0.4, 0.2, 0.2, 0.2};
  SamplerConfig p = plain(1.0f);
  p.top_p = 0.5f;  // cumsum 0.4, 0.6: cutoff 0.2, shared by three tokens
  Sampler top_p(p, 4);
  expect_matches(draw_counts(top_p, log_of(probs), 20000), probs);

  SamplerConfig k = plain(1.0f);
  k.top_k = 2;  // exactly two: the tie goes to the lowest id
  Sampler top_k(k, 4);
  expect_matches(draw_counts(top_k, log_of(probs), 20000), tempered(probs, {0, 1}, 1.0));
}

std::vector<double> softmax(const std::vector<float>& logits) {
  const double max = *std::max_element(logits.begin(), logits.end());
  std::vector<double> probs;
  for (float x : logits) probs.push_back(std::exp(x - max));
  const double total = std::accumulate(probs.begin(), probs.end(), 0.0);
  for (double& p : probs) p /= total;
  return probs;
}

// The reference kept set, by the spec's recipe: full sorts in double, one rule at a time.
std::vector<int> reference_kept(const std::vector<double>& probs, const SamplerConfig& c) {
  std::vector<int> by_rank(probs.size());
  std::iota(by_rank.begin(), by_rank.end(), 0);
  std::stable_sort(by_rank.begin(), by_rank.end(),
                   [&](int a, int b) { return probs[size_t(a)] > probs[size_t(b)]; });
  double cutoff = 0;
  for (double cumulative = 0; int id : by_rank) {
    cumulative += probs[size_t(id)];
    cutoff = probs[size_t(id)];
    if (cumulative >= c.top_p) break;
  }
  if (c.top_p >= 1.0f) cutoff = 0;
  const double p_max = probs[size_t(by_rank[0])];
  std::vector<int> kept;
  for (size_t rank = 0; rank < by_rank.size(); ++rank) {
    const double p = probs[size_t(by_rank[rank])];
    const bool in_k = c.top_k == 0 || rank < size_t(c.top_k);
    if (in_k && p >= cutoff && p >= double(c.min_p) * p_max) kept.push_back(by_rank[rank]);
  }
  std::sort(kept.begin(), kept.end());
  return kept;
}

// Groups the tokens by expected rank into 10 bins of about equal mass and compares the draws
// per bin (many tokens are too rare to compare one by one).
void expect_binned_match(const std::vector<int>& counts, const std::vector<double>& expected) {
  std::vector<int> by_rank(expected.size());
  std::iota(by_rank.begin(), by_rank.end(), 0);
  std::sort(by_rank.begin(), by_rank.end(),
            [&](int a, int b) { return expected[size_t(a)] > expected[size_t(b)]; });
  std::vector<double> bin_mass(10, 0.0);
  std::vector<int> bin_count(10, 0);
  double cumulative = 0;
  for (int id : by_rank) {
    if (expected[size_t(id)] == 0.0) {
      ASSERT_EQ(counts[size_t(id)], 0) << "token " << id << " should be truncated";
      continue;
    }
    const size_t bin = std::min<size_t>(9, size_t(cumulative * 10));
    cumulative += expected[size_t(id)];
    bin_mass[bin] += expected[size_t(id)];
    bin_count[bin] += counts[size_t(id)];
  }
  expect_matches(bin_count, bin_mass);
}

// A large vocabulary takes the candidate gathering and radix select paths; compare the draws
// with a full-sort reference.
TEST(Sampler, LargeVocabularyTopPMatchesFullSortReference) {
  constexpr int kVocab = 65536;
  // Logit spreads from flat (top-p keeps half the vocabulary) to peaked (a few hundred).
  const std::pair<float, float> spreads_and_temperatures[] = {
      {1.0f, 1.0f}, {3.0f, 0.7f}, {6.0f, 1.5f}};
  for (const auto& [sd, temperature] : spreads_and_temperatures) {
    SCOPED_TRACE(testing::Message() << "sd=" << sd << " T=" << temperature);
    const std::vector<float> logits = normal_logits(kVocab, sd, 4);
    SamplerConfig c = plain(temperature);
    c.top_p = 0.85f;
    Sampler sampler(c, kVocab);
    const std::vector<double> probs = softmax(logits);
    expect_binned_match(draw_counts(sampler, logits, 3000),
                        tempered(probs, reference_kept(probs, c), temperature));
  }
}

// 2048 weights within 0.1% of each other, in tied pairs: the radix select needs all three of its
// levels, and every token's membership is tested. A high temperature makes the kept tokens
// about equally likely, so 20 draws per kept token leave none undrawn.
TEST(Sampler, KeptSetsAreExactWhenWeightsAreClose) {
  constexpr int kVocab = 2048;
  std::vector<float> logits(kVocab);
  for (int i = 0; i < kVocab; ++i) logits[size_t(i)] = -1e-6f * float(i / 2);
  const std::vector<double> probs = softmax(logits);
  auto with = [](float top_p, int top_k, float min_p) {
    SamplerConfig c = plain(1000.0f);
    c.top_p = top_p;
    c.top_k = top_k;
    c.min_p = min_p;
    return c;
  };
  // top_k = 301 splits the tied pair (300, 301); min_p falls between pairs 150 and 151.
  for (const SamplerConfig& c : {with(0.15f, 0, 0.0f), with(1.0f, 301, 0.0f),
                                 with(1.0f, 0, 0.9998495f), with(0.3f, 400, 0.0f)}) {
    SCOPED_TRACE(testing::Message() << "top_p=" << c.top_p << " top_k=" << c.top_k
                                    << " min_p=" << c.min_p);
    const std::vector<int> kept = reference_kept(probs, c);
    Sampler sampler(c, kVocab);
    const std::vector<int> counts = draw_counts(sampler, logits, 20 * int(kept.size()));
    std::vector<int> drawn;
    for (int id = 0; id < kVocab; ++id)
      if (counts[size_t(id)] > 0) drawn.push_back(id);
    ASSERT_EQ(drawn, kept);
  }
}

// One likely token over a flat floor: the head above the first candidate threshold holds too
// little mass, so the sampler must widen its search.
TEST(Sampler, FlatTailWidensTheCandidateSearch) {
  constexpr int kVocab = 65536;
  std::vector<float> logits(kVocab, -10.0f);
  logits[123] = 0.0f;
  const double tail = std::exp(-10.0);
  const double p_head = 1.0 / (1.0 + (kVocab - 1) * tail);  // about 0.25
  SamplerConfig c = plain(1.0f);
  c.top_p = 0.85f;  // reaches into the tail, whose tokens all tie at the cutoff
  Sampler wide(c, kVocab);
  constexpr int kDraws = 1000;
  const std::vector<int> counts = draw_counts(wide, logits, kDraws);
  const auto distinct = std::count_if(counts.begin(), counts.end(), [](int n) { return n > 0; });
  EXPECT_NEAR(counts[123] / double(kDraws), p_head, 5 * std::sqrt(p_head * (1 - p_head) / kDraws));
  EXPECT_GT(distinct, 500);  // about 750 draws from the 65535 tail tokens

  c.top_p = 0.2f;  // the head alone is enough
  Sampler narrow(c, kVocab);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(narrow.sample(logits), 123);
}

TEST(Sampler, NegativeInfinityMasksAToken) {
  Sampler sampler(plain(1.0f), 3);
  const std::vector<float> logits = {0.0f, -kInf, 0.0f};
  for (int i = 0; i < 1000; ++i) ASSERT_NE(sampler.sample(logits), 1);
}

// Greedy choice between token 0 (logit 1) and token 1 (logit `rival`) after accepting `tokens`.
int greedy_after(const SamplerConfig& config, float rival, const std::vector<int>& tokens) {
  Sampler sampler(config, 3);
  for (int t : tokens) sampler.accept(t);
  return sampler.sample(std::vector<float>{1.0f, rival, -50.0f});
}

TEST(Sampler, PenaltiesLowerAnAcceptedTokenByTheFormula) {
  SamplerConfig c = plain(0.0f);
  c.presence_penalty = 0.2f;
  c.frequency_penalty = 0.3f;
  c.penalty_decay = 1.0f;
  constexpr float kMargin = 0.01f;
  EXPECT_EQ(greedy_after(c, 0.9f, {}), 0);
  // One occurrence: 1 - (0.2 + 1 × 0.3) = 0.5.
  EXPECT_EQ(greedy_after(c, 0.5f + kMargin, {0}), 1);
  EXPECT_EQ(greedy_after(c, 0.5f - kMargin, {0}), 0);
  // Two: 1 - (0.2 + 2 × 0.3) = 0.2.
  EXPECT_EQ(greedy_after(c, 0.2f + kMargin, {0, 0}), 1);
  EXPECT_EQ(greedy_after(c, 0.2f - kMargin, {0, 0}), 0);
  // The same penalties apply when sampling (top_k = 1 at T = 1).
  SamplerConfig sampled = c;
  sampled.temperature = 1.0f;
  sampled.top_k = 1;
  EXPECT_EQ(greedy_after(sampled, 0.5f + kMargin, {0}), 1);
  EXPECT_EQ(greedy_after(sampled, 0.5f - kMargin, {0}), 0);
}

TEST(Sampler, DecayShrinksTheFrequencyPartButNotThePresence) {
  SamplerConfig c = plain(0.0f);
  c.presence_penalty = 0.2f;
  c.frequency_penalty = 0.4f;
  c.penalty_decay = 0.5f;
  constexpr float kMargin = 0.01f;
  // Accepting 0 then 2: count_0 = 0.5, penalty 0.2 + 0.5 × 0.4 = 0.4.
  EXPECT_EQ(greedy_after(c, 0.6f + kMargin, {0, 2}), 1);
  EXPECT_EQ(greedy_after(c, 0.6f - kMargin, {0, 2}), 0);
  // Then 2 again: count_0 = 0.25, penalty 0.3.
  EXPECT_EQ(greedy_after(c, 0.7f + kMargin, {0, 2, 2}), 1);
  EXPECT_EQ(greedy_after(c, 0.7f - kMargin, {0, 2, 2}), 0);
  // Long after: the count has decayed away, the presence penalty (0.2) remains.
  std::vector<int> later = {0};
  later.resize(200, 2);
  EXPECT_EQ(greedy_after(c, 0.8f + kMargin, later), 1);
  EXPECT_EQ(greedy_after(c, 0.8f - kMargin, later), 0);
}

TEST(Sampler, ResetForgetsThePenalties) {
  SamplerConfig c = plain(0.0f);
  c.presence_penalty = 1.0f;
  Sampler sampler(c, 3);
  const std::vector<float> logits = {1.0f, 0.5f, 0.0f};
  sampler.accept(0);
  EXPECT_EQ(sampler.sample(logits), 1);
  sampler.reset();
  EXPECT_EQ(sampler.sample(logits), 0);
}

TEST(Sampler, InvalidConfigsThrow) {
  auto with = [](auto change) {
    SamplerConfig c;
    change(c);
    return c;
  };
  const std::vector<SamplerConfig> bad = {
      with([](SamplerConfig& c) { c.temperature = -0.1f; }),
      with([](SamplerConfig& c) { c.temperature = std::nanf(""); }),
      with([](SamplerConfig& c) { c.temperature = kInf; }),
      with([](SamplerConfig& c) { c.top_p = -0.01f; }),
      with([](SamplerConfig& c) { c.top_p = 1.01f; }),
      with([](SamplerConfig& c) { c.top_p = std::nanf(""); }),
      with([](SamplerConfig& c) { c.top_k = -1; }),
      with([](SamplerConfig& c) { c.min_p = -0.01f; }),
      with([](SamplerConfig& c) { c.min_p = 1.5f; }),
      with([](SamplerConfig& c) { c.presence_penalty = kInf; }),
      with([](SamplerConfig& c) { c.frequency_penalty = std::nanf(""); }),
      with([](SamplerConfig& c) { c.penalty_decay = 1.5f; }),
  };
  for (size_t i = 0; i < bad.size(); ++i)
    EXPECT_THROW(Sampler(bad[i], 10), Error) << "config " << i;
  EXPECT_THROW(Sampler(SamplerConfig{}, 0), Error);
}

TEST(Sampler, InvalidLogitsAndTokensThrow) {
  Sampler sampler(SamplerConfig{}, 4);
  EXPECT_THROW(sampler.sample(std::vector<float>{0, 1, 2}), Error);
  EXPECT_THROW(sampler.sample(std::vector<float>{0, 1, 2, 3, 4}), Error);
  EXPECT_THROW(sampler.sample(std::vector<float>{0, std::nanf(""), 2, 3}), Error);
  EXPECT_THROW(sampler.sample(std::vector<float>{0, kInf, 2, 3}), Error);
  EXPECT_THROW(sampler.sample(std::vector<float>(4, -kInf)), Error);
  EXPECT_THROW(sampler.accept(-1), Error);
  EXPECT_THROW(sampler.accept(4), Error);
  Sampler greedy(plain(0.0f), 4);
  EXPECT_THROW(greedy.sample(std::vector<float>{0, std::nanf(""), 2, 3}), Error);
}

}  // namespace
}  // namespace rwkv
