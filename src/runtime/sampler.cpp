// Sampling (spec §8.2). It runs once per generated token over the whole vocabulary, so the
// O(vocab) passes are Highway kernels compiled per instruction set and picked at run time
// (DESIGN §6), and truncation selects by radix histograms instead of sorting.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "runtime/sampler.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must follow foreach_target.h.
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

#include <algorithm>
#include <cmath>
#include <limits>

HWY_BEFORE_NAMESPACE();
namespace rwkv::sampling::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Sums of floats run in float vectors over blocks this many vectors long, then in double: the
// vector loop stays in float and the rounding stays at the level of one block.
constexpr size_t kSumBlock = 32;

// The largest of x[0, n); *has_nan tells whether any is NaN (Max itself may drop NaNs).
float MaxOf(const float* x, size_t n, bool* has_nan) {
  const DF d;
  const size_t nl = hn::Lanes(d);
  VF m = hn::Set(d, -std::numeric_limits<float>::infinity());
  VF nan = hn::Zero(d);
  size_t i = 0;
  for (; i + nl <= n; i += nl) {
    const VF v = hn::LoadU(d, x + i);
    m = hn::Max(m, v);
    nan = hn::Or(nan, hn::VecFromMask(d, hn::Ne(v, v)));
  }
  float result = hn::GetLane(hn::MaxOfLanes(d, m));
  *has_nan = !hn::AllFalse(d, hn::MaskFromVec(nan));
  for (; i < n; ++i) {
    result = std::max(result, x[i]);
    *has_nan |= std::isnan(x[i]);
  }
  return result;
}

// w[i] = exp((z[i] - shift) * scale), in place if w == z; returns the sum of w. Exp maps -inf
// (and anything below -104) to 0.
double ExpShifted(const float* z, size_t n, float shift, float scale, float* w) {
  const DF d;
  const size_t nl = hn::Lanes(d);
  const VF vshift = hn::Set(d, shift);
  const VF vscale = hn::Set(d, scale);
  const size_t full = n - n % nl;
  double total = 0;
  for (size_t block = 0; block < full; block += kSumBlock * nl) {
    const size_t end = std::min(full, block + kSumBlock * nl);
    VF acc = hn::Zero(d);
    for (size_t i = block; i < end; i += nl) {
      const VF e = hn::Exp(d, hn::Mul(hn::Sub(hn::LoadU(d, z + i), vshift), vscale));
      hn::StoreU(e, d, w + i);
      acc = hn::Add(acc, e);
    }
    total += hn::GetLane(hn::SumOfLanes(d, acc));
  }
  for (size_t i = full; i < n; ++i) {
    w[i] = std::exp((z[i] - shift) * scale);
    total += w[i];
  }
  return total;
}

// Writes the indices i with w[i] >= threshold to ids; returns their count and adds their sum to
// *mass. Vectors with no index to write are skipped whole: in a peaked distribution, most.
size_t Gather(const float* w, size_t n, float threshold, int32_t* ids, double* mass) {
  const DF d;
  const size_t nl = hn::Lanes(d);
  const VF vthreshold = hn::Set(d, threshold);
  const size_t full = n - n % nl;
  size_t count = 0;
  // Branch-free: ids[count] is always written, and only counted if it passes.
  auto add = [&](size_t i) {
    ids[count] = int32_t(i);
    count += w[i] >= threshold;
  };
  for (size_t block = 0; block < full; block += kSumBlock * nl) {
    const size_t end = std::min(full, block + kSumBlock * nl);
    VF acc = hn::Zero(d);
    for (size_t i = block; i < end; i += nl) {
      const VF v = hn::LoadU(d, w + i);
      const auto in = hn::Ge(v, vthreshold);
      acc = hn::Add(acc, hn::IfThenElseZero(in, v));
      if (hn::AllFalse(d, in)) continue;
      for (size_t j = i; j < i + nl; ++j) add(j);
    }
    *mass += hn::GetLane(hn::SumOfLanes(d, acc));
  }
  for (size_t i = full; i < n; ++i) {
    *mass += w[i] >= threshold ? w[i] : 0.0f;
    add(i);
  }
  return count;
}

}  // namespace rwkv::sampling::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <array>
#include <bit>
#include <functional>

#include "rwkv/error.h"
#include "rwkv/sampler.h"

namespace rwkv {
namespace sampling {
HWY_EXPORT(MaxOf);
HWY_EXPORT(ExpShifted);
HWY_EXPORT(Gather);
}  // namespace sampling

namespace {

bool in_unit_interval(float x) { return x >= 0.0f && x <= 1.0f; }  // false for NaN


// The weight cut by a truncation rule: the weight of the first token, in descending order,
// at which the rule's condition holds, and how many tokens weigh strictly more.
struct Cut {
  float value;
  size_t count_above;
};

// Finishes select_cut on a few values by sorting them. count_above and mass_above: the count
// and mass of the values heavier than all of these.
template <typename Enough>
Cut cut_by_sorting(std::span<float> values, size_t count_above, double mass_above,
                   Enough enough) {
  std::sort(values.begin(), values.end(), std::greater<>());
  size_t i = 0;
  for (double mass = mass_above; i + 1 < values.size(); ++i) {
    mass += values[i];
    if (enough(count_above + i + 1, mass)) break;
  }
  const float cut = values[i];
  const auto first_equal = std::lower_bound(values.begin(), values.end(), cut, std::greater<>());
  return {cut, count_above + size_t(first_equal - values.begin())};
}

constexpr uint32_t kBucketMask = 0x3ff;

struct Histogram {
  std::array<uint32_t, kBucketMask + 1> counts{};
  std::array<double, kBucketMask + 1> masses{};
};

// Counts and sums the values by bucket (bits shift.. of the float, kBucketMask wide). Four
// interleaved histograms keep a run of values in one bucket (a flat tail) from serialising on
// one memory location.
Histogram histogram(std::span<const float> values, int shift) {
  std::array<Histogram, 4> parts{};
  for (size_t i = 0; i < values.size(); ++i) {
    const uint32_t b = (std::bit_cast<uint32_t>(values[i]) >> shift) & kBucketMask;
    ++parts[i % 4].counts[b];
    parts[i % 4].masses[b] += values[i];
  }
  for (uint32_t b = 0; b <= kBucketMask; ++b) {
    for (size_t k = 1; k < parts.size(); ++k) {
      parts[0].counts[b] += parts[k].counts[b];
      parts[0].masses[b] += parts[k].masses[b];
    }
  }
  return parts[0];
}

// Radix select over weights in [0, 1]: the bits of non-negative floats order like the floats,
// so histogram passes over bits 30..20 (at most 0x3f8 for 1.0f), 19..10 and 9..0, each over the
// bucket that holds the answer, find it exactly in O(n), without the unpredictable branches of
// a comparison sort. enough(count, mass) is the rule's condition on the heaviest `count`
// tokens, whose weights sum to `mass`; it must be monotone. If rounding keeps it false, the
// lightest weight is the cut. `values` is scratch: its contents are destroyed.
template <typename Enough>
Cut select_cut(std::span<float> values, Enough enough) {
  constexpr size_t kSortBelow = 64;  // fewer values than this are cheaper to sort
  size_t count_above = 0;
  double mass_above = 0;
  for (const int shift : {20, 10, 0}) {
    if (values.size() < kSortBelow) return cut_by_sorting(values, count_above, mass_above, enough);
    // All equal (a flat tail): that is the cut, and every pass would see them all.
    const auto [lightest, heaviest] = std::minmax_element(values.begin(), values.end());
    if (*lightest == *heaviest) return {*lightest, count_above};
    const Histogram h = histogram(values, shift);
    uint32_t chosen = 0;
    bool found = false;
    for (uint32_t b = kBucketMask + 1; b-- > 0 && !found;) {
      if (h.counts[b] == 0) continue;
      chosen = b;
      found = enough(count_above + h.counts[b], mass_above + h.masses[b]);
      if (!found) {
        count_above += h.counts[b];
        mass_above += h.masses[b];
      }
    }
    if (!found) {  // the lowest bucket holds the lightest weight
      count_above -= h.counts[chosen];
      mass_above -= h.masses[chosen];
    }
    size_t n = 0;
    for (float v : values) {  // branch-free compaction
      values[n] = v;
      n += ((std::bit_cast<uint32_t>(v) >> shift) & kBucketMask) == chosen;
    }
    values = values.first(n);
  }
  return {values.front(), count_above};  // every value left is the same
}

// The weights of `ids`, copied into scratch for select_cut.
std::span<float> weights_of(std::span<const int32_t> ids, const float* probs,
                            std::vector<float>& scratch) {
  for (size_t j = 0; j < ids.size(); ++j) scratch[j] = probs[ids[j]];
  return {scratch.data(), ids.size()};
}

// Keeps exactly k ids, the heaviest; ties at the k-th weight go to the lowest ids (kept is in
// id order).
std::span<int32_t> keep_top_k(std::span<int32_t> kept, const float* probs, size_t k,
                              std::vector<float>& scratch) {
  const Cut cut = select_cut(weights_of(kept, probs, scratch),
                             [k](size_t count, double) { return count >= k; });
  size_t ties = k - cut.count_above;
  size_t n = 0;
  for (int32_t id : kept) {  // branch-free compaction
    const bool tie = probs[id] == cut.value && ties > 0;
    kept[n] = id;
    n += probs[id] > cut.value || tie;
    ties -= tie;
  }
  return kept.first(n);
}

// Keeps the ids whose weight is at least the top-p cutoff: the weight at which the descending
// cumulative mass first reaches target. Ties at the cutoff are kept.
std::span<int32_t> keep_top_p(std::span<int32_t> kept, const float* probs, double target,
                              std::vector<float>& scratch) {
  const Cut cut = select_cut(weights_of(kept, probs, scratch),
                             [target](size_t, double mass) { return mass >= target; });
  size_t n = 0;
  for (int32_t id : kept) {  // branch-free compaction
    kept[n] = id;
    n += probs[id] >= cut.value;
  }
  return kept.first(n);
}

// -inf masks a token; NaN or +inf would poison the softmax, and all -inf leaves nothing.
[[noreturn]] void reject_logits(std::span<const float> logits) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const auto bad =
      std::find_if(logits.begin(), logits.end(), [](float x) { return !(x < kInf); });
  if (bad != logits.end()) fail("sampler: logit ", bad - logits.begin(), " is ", *bad);
  if (std::all_of(logits.begin(), logits.end(), [](float x) { return x == -kInf; }))
    fail("sampler: every logit is -inf");
  fail("sampler: the penalised logits overflow");
}

}  // namespace

void Sampler::validate(const SamplerConfig& c, int vocab_size) {
  if (vocab_size <= 0) fail("sampler: vocab_size must be positive, got ", vocab_size);
  if (!(c.temperature >= 0.0f) || !std::isfinite(c.temperature))
    fail("sampler: temperature must be finite and >= 0, got ", c.temperature);
  if (!in_unit_interval(c.top_p)) fail("sampler: top_p must be in [0, 1], got ", c.top_p);
  if (c.top_k < 0) fail("sampler: top_k must be >= 0, got ", c.top_k);
  if (!in_unit_interval(c.min_p)) fail("sampler: min_p must be in [0, 1], got ", c.min_p);
  if (!std::isfinite(c.presence_penalty) || !std::isfinite(c.frequency_penalty))
    fail("sampler: presence_penalty and frequency_penalty must be finite, got ",
         c.presence_penalty, " and ", c.frequency_penalty);
  if (!in_unit_interval(c.penalty_decay))
    fail("sampler: penalty_decay must be in [0, 1], got ", c.penalty_decay);
}

Sampler::Sampler(const SamplerConfig& config, int vocab_size)
    : config_(config), vocab_size_(vocab_size), rng_(config.seed) {
  validate(config, vocab_size);
  const size_t n = size_t(vocab_size);
  counts_.assign(n, 0.0f);
  seen_.assign(n, 0);
  logits_.resize(n);
  probs_.resize(n);
  weights_.resize(n);
  ids_.resize(n);
}

void Sampler::penalize(std::span<const float> logits) {
  if (logits.size() != size_t(vocab_size_))
    fail("sampler: got ", logits.size(), " logits, expected vocab_size ", vocab_size_);
  std::copy(logits.begin(), logits.end(), logits_.begin());
  for (int id : seen_ids_)
    logits_[id] -= config_.presence_penalty + counts_[id] * config_.frequency_penalty;
}

int Sampler::sample(std::span<const float> logits) {
  penalize(logits);
  bool has_nan = false;
  const float max_logit =
      HWY_DYNAMIC_DISPATCH(sampling::MaxOf)(logits_.data(), logits_.size(), &has_nan);
  if (has_nan || !std::isfinite(max_logit)) reject_logits(logits);
  if (config_.temperature == 0.0f)
    return int(std::find(logits_.begin(), logits_.end(), max_logit) - logits_.begin());
  // probs_ = exp(logit - max): the softmax scaled so that the most likely token weighs 1.
  const double total = HWY_DYNAMIC_DISPATCH(sampling::ExpShifted)(
      logits_.data(), logits_.size(), max_logit, 1.0f, probs_.data());
  return draw(truncate(total), max_logit, total);
}

// Returns the ids that survive top-k, top-p and min-p, in id order: an intersection, as each
// keeps a prefix of the descending order measured on the untruncated softmax. Empty: all ids.
std::span<const int32_t> Sampler::truncate(double total) {
  const bool use_k = config_.top_k > 0 && config_.top_k < vocab_size_;
  const bool use_p = config_.top_p < 1.0f;
  const float floor = config_.min_p;  // p >= min_p × p_max, as the largest weight is 1
  if (!use_k && !use_p && floor == 0.0f) return {};

  // Only the head of the distribution matters: gather the ids above a guess, then above a
  // threshold sure to hold the top-p mass (the ids below it weigh at most vocab × threshold),
  // then above the floor, which holds every id kept.
  const double target = double(config_.top_p) * total;
  const float sure = use_p ? float(0.5 * (1.0 - config_.top_p) * total / vocab_size_) : 0.0f;
  size_t n = 0;
  float previous = -1.0f;
  for (const float guess : {std::max(1e-4f, sure), sure, floor}) {
    const float threshold = std::max(guess, floor);
    if (threshold == previous) continue;
    previous = threshold;
    double mass = 0;
    n = HWY_DYNAMIC_DISPATCH(sampling::Gather)(probs_.data(), probs_.size(), threshold,
                                               ids_.data(), &mass);
    if (threshold == floor || (use_k && n >= size_t(config_.top_k)) || (use_p && mass >= target))
      break;
  }

  std::span<int32_t> kept(ids_.data(), n);
  if (use_k && kept.size() > size_t(config_.top_k))
    kept = keep_top_k(kept, probs_.data(), size_t(config_.top_k), weights_);
  if (use_p) kept = keep_top_p(kept, probs_.data(), target, weights_);
  return kept;
}

// Samples from the kept ids (all if empty) with weights p^(1/T), computed as
// exp((logit - max) / T) so that a low temperature neither underflows nor loses precision.
// total: the sum of probs_.
int Sampler::draw(std::span<const int32_t> kept, float max_logit, double total) {
  const bool tempered = config_.temperature != 1.0f;
  // Clamped: with 1/T = inf, the most likely token would get exp(0 × inf) = NaN.
  const float inv_t =
      float(std::min(1.0 / double(config_.temperature), double(std::numeric_limits<float>::max())));
  std::span<const float> weights;
  if (kept.empty()) {
    if (tempered)
      total = HWY_DYNAMIC_DISPATCH(sampling::ExpShifted)(logits_.data(), logits_.size(),
                                                         max_logit, inv_t, probs_.data());
    weights = probs_;
  } else {
    float* w = weights_.data();
    const size_t n = kept.size();
    if (tempered) {
      for (size_t j = 0; j < n; ++j) w[j] = logits_[kept[j]];
      total = HWY_DYNAMIC_DISPATCH(sampling::ExpShifted)(w, n, max_logit, inv_t, w);
    } else {
      total = 0;
      for (size_t j = 0; j < n; ++j) total += w[j] = probs_[kept[j]];
    }
    weights = {w, n};
  }
  const size_t i = pick(weights, total);
  return kept.empty() ? int(i) : kept[i];
}

// Draws an index with probability weights[i] / total by a cumulative scan.
size_t Sampler::pick(std::span<const float> weights, double total) {
  // 53 random bits: a uniform double in [0, 1) that does not depend on the standard library.
  const double u = double(rng_() >> 11) * 0x1.0p-53 * total;
  double cumulative = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    cumulative += weights[i];
    if (cumulative > u) return i;
  }
  // Rounding put u past the last weight: take the last index that can be drawn.
  for (size_t i = weights.size(); i-- > 0;)
    if (weights[i] > 0) return i;
  return 0;
}

void Sampler::accept(int token) {
  if (token < 0 || token >= vocab_size_)
    fail("sampler: accepted token ", token, " is outside the vocabulary [0, ", vocab_size_, ")");
  // Eager decay over the ids seen so far: exact, and no costlier than applying the penalties.
  // Counts below 1e-30 are flushed to 0 (a penalty change under 1e-30 × frequency_penalty) so
  // that long conversations never pay for denormal arithmetic.
  for (int id : seen_ids_) {
    const float c = counts_[id] * config_.penalty_decay;
    counts_[id] = c < 1e-30f ? 0.0f : c;
  }
  counts_[token] += 1.0f;
  if (!seen_[token]) {
    seen_[token] = 1;
    seen_ids_.push_back(token);
  }
}

void Sampler::reset() {
  for (int id : seen_ids_) {
    counts_[id] = 0.0f;
    seen_[id] = 0;
  }
  seen_ids_.clear();
}

}  // namespace rwkv
#endif  // HWY_ONCE
