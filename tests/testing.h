// Helpers shared by the tests: paths to ../shared, fixture loading, error measures.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace rwkv::test {

// Absolute path of ../shared (compiled in). Tests that need it call RWKV_REQUIRE_SHARED(rel).
std::string shared_path(const std::string& relative);
bool shared_exists(const std::string& relative);
// A fresh temp directory for this test process (removed at exit).
std::string temp_dir();

std::vector<float> read_f32_file(const std::string& path);
std::vector<double> read_f64_file(const std::string& path);

// The official RWKV-7 training fixture (../shared/fixtures/official/v7/train): its manifest
// (names and files of the fp64 gradients), the B×T input ids and targets.
constexpr const char* kTrainFixtureDir = "fixtures/official/v7/train";
struct TrainFixture {
  nlohmann::json manifest;
  std::vector<int> inputs, targets;
  int B = 0, T = 0;
};
TrainFixture load_train_fixture();

struct ErrorStats {
  double max_abs = 0;
  double max_rel = 0;  // max |a-b| / max(|b|, 1e-6) over elements with |b| > 1e-3
};
ErrorStats compare(std::span<const float> got, std::span<const float> want);

// n values drawn from N(mean, scale²) in order, one std::normal_distribution<float>.
std::vector<float> normal_floats(size_t n, std::mt19937& rng, float scale = 1.f, float mean = 0.f);

// ‖got − want‖ / ‖want‖ over n values, in double; infinity when got holds a NaN.
template <class A, class B>
double rel_norm_error(const A* got, const B* want, size_t n) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < n; ++i) {
    if (got[i] != got[i]) return 1.0 / 0.0;
    diff += (double(got[i]) - double(want[i])) * (double(got[i]) - double(want[i]));
    norm += double(want[i]) * double(want[i]);
  }
  return diff == 0 ? 0.0 : std::sqrt(diff) / std::max(std::sqrt(norm), 1e-300);
}

}  // namespace rwkv::test

// Skips the current test (with the reason) when ../shared/<rel> is absent.
#define RWKV_REQUIRE_SHARED(rel)                                                       \
  do {                                                                                 \
    if (!::rwkv::test::shared_exists(rel)) GTEST_SKIP() << "../shared/" << (rel) << " not present"; \
  } while (0)

// Skips the current test on a machine without a GPU; for a case's backend, only when it is CUDA.
#define RWKV_REQUIRE_GPU() \
  if (::rwkv::cuda_device_count() == 0) GTEST_SKIP() << "no GPU"
#define RWKV_REQUIRE_BACKEND(backend) \
  if ((backend) == ::rwkv::Backend::Cuda && ::rwkv::cuda_device_count() == 0) GTEST_SKIP() << "no GPU"

#include <memory>

#include "rwkv/checkpoint.h"
#include "rwkv/model.h"

namespace rwkv::test {

// Dimensions of a random RWKV-7 model for property tests.
struct V7Dims {
  int n_layer = 2, n_embd = 64, head_size = 16, vocab = 97, ffn = 0;  // ffn 0 = 4·n_embd
  int lora = 16;
};
// A random RWKV-7 checkpoint in memory, with the official key names and shapes, at the
// magnitudes of ../shared/fixtures/official (decays in their usual range, LoRAs ~N(0, 0.1²)).
std::shared_ptr<const Checkpoint> random_v7_checkpoint(const V7Dims& dims, uint32_t seed,
                                                       DType dtype = DType::F32);

}  // namespace rwkv::test

namespace rwkv::test {

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs the built `rwkv` command with `args` (a shell-quoted string) and optional stdin text.
CommandResult run_cli(const std::string& args, const std::string& input = "");
// Single-quotes a string for the shell.
std::string quote(const std::string& s);
// Joins arguments with spaces.
template <typename... Args>
std::string cat_args(const Args&... args) {
  std::string s;
  ((s += (s.empty() ? "" : " ") + std::string(args)), ...);
  return s;
}

}  // namespace rwkv::test

#include <deque>
#include <initializer_list>

#include "rwkv/tensor.h"

namespace rwkv {
class Model;
}

namespace rwkv::test {

// n token ids in [0, V) from a seeded generator.
std::vector<int> random_tokens(size_t n, int V, uint32_t seed);
// Rows [row0, row0 + rows) of a row-major matrix of `width` columns.
std::vector<float> slice(const std::vector<float>& v, size_t row0, size_t rows, size_t width);
// Runs tokens through `model` one token at a time; returns logits [T, V], updates state.
std::vector<float> run_steps(Model& model, const std::vector<int>& tokens, std::vector<float>& state);
// Models a and b step the same tokens from their start states: a's logits (the reference) and
// b's errors against a's logits and final state.
struct StepsComparison {
  std::vector<float> want_logits;  // a's, [T, V]
  ErrorStats logits, state;
};
StepsComparison compare_steps(Model& a, Model& b, const std::vector<int>& tokens);
// B random sequences of T tokens (seeds 100 + b) and what each gives alone through run_steps from
// the start state: the reference for batched calls.
struct SoloRuns {
  std::vector<std::vector<int>> seqs;
  std::vector<int> flat;  // [B, T] row-major
  std::vector<std::vector<float>> logits, states;
};
SoloRuns run_alone(Model& model, int B, int T);

// The two forms agree: for each length T, one forward() over T random tokens from the start
// state gives the logits (all, and last-only) and state of T step() calls, within `tol`.
void expect_parallel_equals_recurrent(Model& model, std::initializer_list<int> lengths, double tol);
// forward() over T random tokens split at each cut, carrying the state across the two calls,
// gives the logits and state of the recurrent run, within `tol`.
void expect_split_and_carry(Model& model, int T, std::initializer_list<int> cuts, double tol);

// Tensors with deterministic values (sines of the index and a seed); the views point into owned
// storage (none for an empty tensor).
struct TensorSet {
  std::deque<std::vector<uint64_t>> storage;
  std::vector<TensorView> views;
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, int seed);
};

}  // namespace rwkv::test
