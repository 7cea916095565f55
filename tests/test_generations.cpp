// Every generation against the official reference (../shared/fixtures/official/<version>), and
// the two forms against each other, on the fixtures' checkpoints (random weights at realistic
// magnitudes) for RWKV-4, 5.0, 5.1, 5.2 and 6 (RWKV-7's form tests are in test_rwkv7.cpp).
#include <nlohmann/json.hpp>

#include <random>

#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/model.h"
#include "testing.h"

namespace rwkv {
namespace {

using test::random_tokens;
using test::slice;

// fixtures/official/README.md: an fp32 engine against the fp32-file fixtures, logits ≤ 1e-4 and
// states ≤ 2e-4 (20× the official code's own step/sequence spread). The bf16 file's logits come
// from the package's bf16 LayerNorm of the embedding (v4–v6), which moves logits by up to ~0.05
// against fp32 math; the README suggests 0.1. RWKV-7 converts to fp32 first: same tight bound.
constexpr double kLogitTol = 1e-4, kStateTol = 2e-4, kBf16LogitTol = 0.1;

struct Fixture {
  nlohmann::json manifest;
  std::vector<int> tokens, seg2;
  int split = 0, V = 0;
  std::string dir;
  std::vector<float> array(const std::string& name) const {
    return test::read_f32_file(dir + "/" + manifest["arrays"][name]["file"].get<std::string>());
  }
  std::string checkpoint(const std::string& which) const {
    return dir + "/" + manifest["checkpoint"][which]["file"].get<std::string>();
  }
};

Fixture load_fixture(const std::string& version) {
  Fixture f;
  f.dir = test::shared_path("fixtures/official/" + version);
  f.manifest = nlohmann::json::parse(read_file(f.dir + "/manifest.json"));
  f.tokens = f.manifest["tokens"].get<std::vector<int>>();
  f.seg2 = f.manifest["seg2_tokens"].get<std::vector<int>>();
  f.split = f.manifest["split"].get<int>();
  f.V = f.manifest["dims"]["vocab_size"].get<int>();
  return f;
}

const char* generation_of(const std::string& version) {
  if (version == "v4") return "4";
  if (version == "v5") return "5.0";
  if (version == "v5.1") return "5.1";
  if (version == "v5.2") return "5.2";
  if (version == "v6") return "x060";
  return "x070";
}

struct Case {
  const char* version;     // fixture directory
  const char* checkpoint;  // "fp32" or "bf16"
  Backend backend;
};

class Official : public ::testing::TestWithParam<Case> {};

TEST_P(Official, MatchesOfficialLogitsAndStatesInBothForms) {
  const std::string version = GetParam().version;
  RWKV_REQUIRE_SHARED("fixtures/official/" + version + "/manifest.json");
  const Fixture f = load_fixture(version);
  LoadOptions opt;
  opt.backend = GetParam().backend;
  RWKV_REQUIRE_BACKEND(opt.backend);
  auto model = load_model(f.checkpoint(GetParam().checkpoint), opt);
  const ModelInfo& info = model->info();
  const auto& dims = f.manifest["dims"];
  EXPECT_EQ(info.generation, generation_of(version));
  EXPECT_EQ(info.n_layer, dims["n_layer"].get<int>());
  EXPECT_EQ(info.n_embd, dims["n_embd"].get<int>());
  EXPECT_EQ(info.dim_att, dims["dim_att"].get<int>());
  EXPECT_EQ(info.dim_ffn, dims["dim_ffn"].get<int>());
  EXPECT_EQ(info.vocab_size, f.V);
  if (dims.contains("n_head")) {
    EXPECT_EQ(info.n_head, dims["n_head"].get<int>());
    EXPECT_EQ(info.head_size, dims["head_size"].get<int>());
  }
  const size_t S = model->state_spec().floats, V = size_t(f.V), T = f.tokens.size();
  ASSERT_EQ(S, f.manifest["state_total_floats"].get<size_t>());
  // The state layout is the package's, piece by piece.
  const auto layout = model->state_layout();
  ASSERT_EQ(layout.size(), f.manifest["state_layout"].size());
  for (size_t i = 0; i < layout.size(); ++i) {
    const auto& want = f.manifest["state_layout"][i];
    EXPECT_EQ(layout[i].name, want["name"].get<std::string>());
    EXPECT_EQ(layout[i].offset, want["offset"].get<size_t>());
    EXPECT_EQ(layout[i].shape, want["shape"].get<std::vector<int64_t>>());
  }

  // Recurrent form, token by token from the zero state.
  std::vector<float> state(S), logits(T * V), split_state;
  model->init_state(state.data());
  float* states[] = {state.data()};
  for (size_t t = 0; t < T; ++t) {
    model->step(&f.tokens[t], 1, states, logits.data() + t * V);
    if (t + 1 == size_t(f.split)) split_state = state;
  }
  const bool bf16 = GetParam().checkpoint == std::string("bf16");
  if (bf16) {
    const double tol = version == "v7" ? kLogitTol : kBf16LogitTol;
    EXPECT_LE(test::compare(logits, f.array("logits_step_bf16ckpt")).max_abs, tol);
    return;  // every other array comes from the fp32 file
  }
  auto e = test::compare(logits, f.array("logits_step"));
  EXPECT_LE(e.max_abs, kLogitTol) << "step logits";
  e = test::compare(state, f.array("final_state_step"));
  EXPECT_LE(e.max_abs, kStateTol) << "step final state";
  e = test::compare(split_state, f.array("state_split"));
  EXPECT_LE(e.max_abs, kStateTol) << "state after the split";

  // Parallel form, one call.
  model->init_state(state.data());
  std::vector<float> seq_logits(T * V, std::nanf(""));
  model->forward(f.tokens.data(), 1, int(T), states, seq_logits.data(), LogitsMode::All);
  e = test::compare(seq_logits, f.array("logits_seq"));
  EXPECT_LE(e.max_abs, kLogitTol) << "sequence logits";
  e = test::compare(state, f.array("final_state_step"));
  EXPECT_LE(e.max_abs, kStateTol) << "sequence final state";

  // Resume from the official split state: step and sequence.
  const size_t T2 = f.seg2.size();
  for (bool parallel : {false, true}) {
    const auto split = f.array("state_split");
    std::copy(split.begin(), split.end(), state.begin());  // states[] points into `state`
    std::vector<float> seg_logits(T2 * V, std::nanf(""));
    if (parallel) {
      model->forward(f.seg2.data(), 1, int(T2), states, seg_logits.data(), LogitsMode::All);
    } else {
      for (size_t t = 0; t < T2; ++t) model->step(&f.seg2[t], 1, states, seg_logits.data() + t * V);
    }
    e = test::compare(seg_logits, f.array(parallel ? "logits_seg2_seq" : "logits_seg2_step"));
    EXPECT_LE(e.max_abs, kLogitTol) << "resumed logits, parallel=" << parallel;
    e = test::compare(state, f.array("final_state_seg2_step"));
    EXPECT_LE(e.max_abs, kStateTol) << "resumed state, parallel=" << parallel;
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const char* v : {"v4", "v5", "v5.1", "v5.2", "v6", "v7"}) {
    for (const char* c : {"fp32", "bf16"}) {
      for (Backend b : {Backend::Cpu, Backend::Ref}) cases.push_back({v, c, b});
    }
  }
  // The GPU (skipped without one).
  for (const char* v : {"v4", "v5", "v5.1", "v5.2", "v6", "v7"}) {
    for (const char* c : {"fp32", "bf16"}) cases.push_back({v, c, Backend::Cuda});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Versions, Official, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) {
                           std::string v = info.param.version;
                           std::replace(v.begin(), v.end(), '.', '_');
                           return v + "_" + info.param.checkpoint +
                                  (info.param.backend == Backend::Ref    ? "_ref"
                                   : info.param.backend == Backend::Cuda ? "_cuda"
                                                                         : "_cpu");
                         });

// ---- The two forms on each generation ---------------------------------------------------------

// The forms on the CPU and on the GPU (skipped without one).
struct FormCase {
  const char* version;
  Backend backend;
};

class Forms : public ::testing::TestWithParam<FormCase> {
 protected:
  void SetUp() override {
    RWKV_REQUIRE_SHARED(std::string("fixtures/official/") + version() + "/manifest.json");
    RWKV_REQUIRE_BACKEND(GetParam().backend);
  }
  const char* version() const { return GetParam().version; }
  std::unique_ptr<Model> load() {
    const Fixture f = load_fixture(version());
    LoadOptions opt;
    opt.backend = GetParam().backend;
    return load_model(f.checkpoint("fp32"), opt);
  }
};

// Agreement bound between forms: fp32 rounding in different orders (the chunked WKV, GEMM vs
// matrix-vector sums), far below the 1e-2 a real bug shows (README).
constexpr double kFormTol = 2e-4;

TEST_P(Forms, ParallelEqualsRecurrentAtOddLengthsAndAcrossChunks) {
  test::expect_parallel_equals_recurrent(*load(), {1, 2, 15, 16, 17, 33, 100}, kFormTol);
}

TEST_P(Forms, SplitAndCarryStateAtArbitraryPoints) {
  test::expect_split_and_carry(*load(), 77, {1, 16, 17, 31, 50, 76}, kFormTol);
}

TEST_P(Forms, BatchedSequencesAreIndependent) {
  auto model = load();
  const size_t V = size_t(model->info().vocab_size), S = model->state_spec().floats;
  const int B = 3, T = 19;
  const test::SoloRuns alone = test::run_alone(*model, B, T);
  const auto& [seqs, flat, want_logits, want_states] = alone;
  std::vector<std::vector<float>> st(B, std::vector<float>(S));
  std::vector<float*> ptrs;
  for (auto& s : st) {
    model->init_state(s.data());
    ptrs.push_back(s.data());
  }
  std::vector<float> par(size_t(B * T) * V);
  model->forward(flat.data(), B, T, ptrs.data(), par.data(), LogitsMode::All);
  for (int b = 0; b < B; ++b) {
    EXPECT_LE(test::compare(slice(par, size_t(b) * T, T, V), want_logits[size_t(b)]).max_abs, kFormTol);
    EXPECT_LE(test::compare(st[size_t(b)], want_states[size_t(b)]).max_abs, kFormTol);
  }
}

// Recurrent steps: fp32 activations against the same (rounded) weights on both sides.
TEST_P(Forms, MatchesReferenceBackendForEveryWeightDtype) {
  const Fixture f = load_fixture(version());
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    LoadOptions ref_opt, cpu_opt;
    ref_opt.backend = Backend::Ref;
    cpu_opt.backend = GetParam().backend;
    ref_opt.weight_dtype = cpu_opt.weight_dtype = dt;
    auto ref = load_model(f.checkpoint("fp32"), ref_opt), cpu = load_model(f.checkpoint("fp32"), cpu_opt);
    EXPECT_EQ(cpu->weight_dtype(), dt);
    const auto d = test::compare_steps(*ref, *cpu, random_tokens(40, f.V, 5));
    EXPECT_LE(d.logits.max_abs, 1e-4) << dtype_name(dt);
    EXPECT_LE(d.state.max_abs, kStateTol) << dtype_name(dt);
  }
}

TEST_P(Forms, TokenOutOfRangeIsAnErrorAndLeavesTheStateAlone) {
  auto model = load();
  const int V = model->info().vocab_size;
  std::vector<float> state(model->state_spec().floats, 0.5f), logits(size_t(V) * 3);
  const auto before = state;
  float* states[] = {state.data()};
  const int bad[] = {1, V, 2};
  EXPECT_THROW(model->step(&bad[1], 1, states, logits.data()), Error);
  EXPECT_THROW(model->forward(bad, 1, 3, states, logits.data(), LogitsMode::All), Error);
  EXPECT_EQ(state, before);
}

TEST_P(Forms, NewStatePoolSlotsStartAtTheInitialState) {
  auto model = load();
  std::vector<float> start(model->state_spec().floats), got(start.size(), std::nanf(""));
  model->init_state(start.data());
  auto pool = model->new_state_pool(3);
  for (int i = 0; i < 3; ++i) {
    pool->read(i, got.data());
    EXPECT_EQ(got, start) << "slot " << i;  // RWKV-4's att_pp starts at −1e30, not 0
  }
}

std::vector<FormCase> form_cases() {
  std::vector<FormCase> cases;
  for (Backend b : {Backend::Cpu, Backend::Cuda}) {
    for (const char* v : {"v4", "v5", "v5.1", "v5.2", "v6"}) cases.push_back({v, b});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Versions, Forms, ::testing::ValuesIn(form_cases()),
                         [](const auto& info) {
                           std::string v = info.param.version;
                           std::replace(v.begin(), v.end(), '.', '_');
                           return v + (info.param.backend == Backend::Cuda ? "_cuda" : "");
                         });

}  // namespace
}  // namespace rwkv
