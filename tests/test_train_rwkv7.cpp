// The RWKV-7 training form: loss and every gradient against the official training code's fp64
// dump (../shared/fixtures/official/v7/train), through the library and through `rwkv grad`;
// finite differences of the whole model in double (parameters and the initial state); the
// forward equal to the inference fixture; split-and-carry with the state gradient (BPTT);
// the recompute knob and the WKV chunk length change nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "model/rwkv7_train.h"
#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "testing.h"

namespace rwkv {
namespace {

using model::Rwkv7Tape;
using model::Rwkv7Train;
const char* kTrainDir = test::kTrainFixtureDir;
const char* kCheckpoint = "fixtures/official/v7/rwkv-v7-L2-D128-V256-fp32.pth";

using test::load_train_fixture;
using test::TrainFixture;

template <class R>
void expect_fixture_gradients(double loss_tol, double grad_tol) {
  const TrainFixture f = load_train_fixture();
  const Checkpoint ckpt = Checkpoint::open(test::shared_path(kCheckpoint));
  Rwkv7Train<R> net(ckpt.tensors(), ckpt.path());
  Rwkv7Tape<R> tape;
  net.forward(tape, f.inputs.data(), f.B, f.T, nullptr, nullptr);
  // The training form's logits against the fixture's fp64 ones.
  const auto logits = test::read_f64_file(test::shared_path(std::string(kTrainDir) + "/logits.f64.bin"));
  ASSERT_EQ(logits.size(), size_t(f.B) * f.T * net.dims().V);
  EXPECT_LT(test::rel_norm_error(tape.logits(), logits.data(), logits.size()), grad_tol);
  const double loss = net.loss(tape, f.targets.data(), 0.0);
  const double want = test::read_f64_file(test::shared_path(std::string(kTrainDir) + "/loss.f64.bin"))[0];
  EXPECT_NEAR(loss, want, loss_tol * want);
  net.backward(tape, nullptr, nullptr);
  size_t checked = 0;
  for (const auto& g : f.manifest["grads"]) {
    const std::string name = g["name"];
    const model::ParamTensor* t = net.table().find(name);
    ASSERT_NE(t, nullptr) << name;
    const auto ref = test::read_f64_file(test::shared_path(std::string(kTrainDir) + "/" + std::string(g["file"])));
    ASSERT_EQ(ref.size(), t->numel) << name;
    const double err = test::rel_norm_error(net.grads() + t->offset, ref.data(), ref.size());
    EXPECT_LE(err, grad_tol) << name;
    ++checked;
  }
  EXPECT_EQ(checked, net.table().tensors.size());  // every parameter has a reference
}

TEST(TrainRwkv7, OfficialGradientsFp32) {
  RWKV_REQUIRE_SHARED(kTrainDir);
  // Measured: loss 1.2e-8 relative, gradients ≤ 2.2e-6.
  expect_fixture_gradients<float>(1e-6, 1e-4);
}

TEST(TrainRwkv7, OfficialGradientsFp64) {
  RWKV_REQUIRE_SHARED(kTrainDir);
  // Same maths in double: only the summation order differs from the reference.
  expect_fixture_gradients<double>(1e-12, 1e-9);
}

TEST(TrainRwkv7, GradCommandWritesOfficialGradients) {
  RWKV_REQUIRE_SHARED(kTrainDir);
  const TrainFixture f = load_train_fixture();
  const std::string dir = test::temp_dir() + "/grad";
  const std::string batch = test::temp_dir() + "/batch.json";
  std::ofstream(batch) << nlohmann::json{{"input_ids", f.manifest["input_ids"]},
                                         {"targets", f.manifest["targets"]}}.dump();
  const auto r = test::run_cli(test::cat_args("grad -m", test::quote(test::shared_path(kCheckpoint)),
                                              "--batch", test::quote(batch), "--out", test::quote(dir)));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream loss_file(dir + "/loss.txt");
  double loss = 0;
  loss_file >> loss;
  const double want = test::read_f64_file(test::shared_path(std::string(kTrainDir) + "/loss.f64.bin"))[0];
  EXPECT_NEAR(loss, want, 1e-6 * want);
  for (const auto& g : f.manifest["grads"]) {
    const auto got = test::read_f32_file(dir + "/" + std::string(g["name"]) + ".f32");
    const auto ref = test::read_f64_file(test::shared_path(std::string(kTrainDir) + "/" + std::string(g["file"])));
    ASSERT_EQ(got.size(), ref.size()) << g["name"];
    EXPECT_LE(test::rel_norm_error(got.data(), ref.data(), ref.size()), 1e-4) << g["name"];
  }
}

TEST(TrainRwkv7, GradCommandRejectsBadBatches) {
  RWKV_REQUIRE_SHARED(kTrainDir);
  const std::string model = test::quote(test::shared_path(kCheckpoint));
  const std::string dir = test::temp_dir();
  const auto run = [&](const std::string& json) {
    std::ofstream(dir + "/bad.json") << json;
    return test::run_cli(test::cat_args("grad -m", model, "--batch", dir + "/bad.json", "--out", dir + "/g"));
  };
  for (const char* bad : {"{", R"({"input_ids": [[1,2]]})", R"({"input_ids": [[1,2]], "targets": [[1]]})",
                          R"({"input_ids": [[1,2],[3]], "targets": [[1,2],[3]]})",
                          R"({"input_ids": [[1,999]], "targets": [[1,2]]})",
                          R"({"input_ids": [[1,2]], "targets": [[1,256]]})"}) {
    const auto r = run(bad);
    EXPECT_NE(r.exit_code, 0) << bad;
    EXPECT_NE(r.err.find("error"), std::string::npos) << bad << ": " << r.err;
  }
}

// ---- finite differences and properties on a tiny random model, in double ----------------

std::vector<TensorView> tiny_model(std::shared_ptr<const Checkpoint>& keep, uint32_t seed) {
  test::V7Dims dims;
  dims.n_layer = 2;
  dims.n_embd = 8;
  dims.head_size = 4;
  dims.vocab = 11;
  dims.ffn = 12;
  dims.lora = 3;
  keep = test::random_v7_checkpoint(dims, seed);
  return keep->tensors();
}

// L = Σ w_i·logits_i + Σ u·state_out (random projections), so every output matters.
struct Objective {
  std::vector<double> w_logits, w_state;
};

double evaluate(Rwkv7Train<double>& net, Rwkv7Tape<double>& tape, const std::vector<int>& tokens,
                int B, int T, const std::vector<double>& state_in, const Objective& obj) {
  std::vector<double> state_out(state_in.size());
  const double* logits = net.forward(tape, tokens.data(), B, T, state_in.data(), state_out.data());
  double L = 0;
  for (size_t i = 0; i < obj.w_logits.size(); ++i) L += obj.w_logits[i] * logits[i];
  for (size_t i = 0; i < state_out.size(); ++i) L += obj.w_state[i] * state_out[i];
  return L;
}

void expect_finite_differences(bool reset_at_eod) {
  std::shared_ptr<const Checkpoint> keep;
  Rwkv7Train<double> net(tiny_model(keep, 7), "tiny");
  const auto& d = net.dims();
  const int B = 2, T = 7;  // T not a multiple of the chunk
  net.set_options({.wkv_chunk = 3, .recompute = false, .reset_at_eod = reset_at_eod});
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0, 1);
  std::vector<int> tokens(size_t(B) * T);
  for (int& t : tokens) t = int(rng() % unsigned(d.V));
  if (reset_at_eod) {  // document boundaries inside a chunk, at a chunk start and at row 0
    tokens[2] = tokens[3] = tokens[size_t(T)] = tokens[size_t(T) + 5] = 0;
  }
  std::vector<double> state(size_t(B) * d.state_floats());
  for (double& s : state) s = 0.5 * normal(rng);
  Objective obj;
  obj.w_logits.resize(size_t(B) * T * d.V);
  obj.w_state.resize(state.size());
  for (double& w : obj.w_logits) w = normal(rng);
  for (double& w : obj.w_state) w = normal(rng);

  Rwkv7Tape<double> tape;
  evaluate(net, tape, tokens, B, T, state, obj);
  std::copy(obj.w_logits.begin(), obj.w_logits.end(), tape.dlogits());
  std::vector<double> dstate_in(state.size());
  net.zero_grads();
  net.backward(tape, obj.w_state.data(), dstate_in.data());
  const std::vector<double> grads(net.grads(), net.grads() + net.table().total);

  // h balances truncation (~h²) against rounding (~1e-16·|L|/h) for these O(1) values.
  const double h = 1e-5;
  const auto central = [&](double& x) {
    const double x0 = x;
    x = x0 + h;
    const double up = evaluate(net, tape, tokens, B, T, state, obj);
    x = x0 - h;
    const double down = evaluate(net, tape, tokens, B, T, state, obj);
    x = x0;
    return (up - down) / (2 * h);
  };
  // Every element of every parameter tensor: the model is tiny.
  double worst = 0;
  for (const model::ParamTensor& t : net.table().tensors) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < t.numel; ++i) {
      const double fd = central(net.params()[t.offset + i]);
      diff += (fd - grads[t.offset + i]) * (fd - grads[t.offset + i]);
      norm += fd * fd;
    }
    // Central differences carry ~1e-16·|L|/h ≈ 1e-10 of rounding per element: tensors with
    // small gradients (x_w, through the decay LoRA) are judged against that floor.
    const double err = std::sqrt(diff) / std::max(std::sqrt(norm), 1e-12);
    worst = std::max(worst, err);
    EXPECT_LT(std::sqrt(diff), 1e-6 * std::sqrt(norm) + 1e-9 * std::sqrt(double(t.numel))) << t.name;
  }
  double diff = 0, norm = 0;
  for (size_t i = 0; i < state.size(); ++i) {
    const double fd = central(state[i]);
    diff += (fd - dstate_in[i]) * (fd - dstate_in[i]);
    norm += fd * fd;
  }
  EXPECT_LT(std::sqrt(diff) / std::sqrt(norm), 1e-6) << "initial state";
  ::testing::Test::RecordProperty("worst_parameter_rel_error", std::to_string(worst));
}

TEST(TrainRwkv7, FiniteDifferencesOfParametersAndInitialState) { expect_finite_differences(false); }

TEST(TrainRwkv7, FiniteDifferencesWithDocumentResets) { expect_finite_differences(true); }

// With reset_at_eod, everything from a token 0 on is what a fresh sequence starting there gives.
TEST(TrainRwkv7, ResetAtEndOfDocumentStartsAFreshSequence) {
  std::shared_ptr<const Checkpoint> keep;
  const auto tensors = tiny_model(keep, 13);
  Rwkv7Train<double> net(tensors, "tiny");
  net.set_options({.wkv_chunk = 4, .recompute = false, .reset_at_eod = true});
  const std::vector<int> doc = {5, 3, 9, 1, 0, 7, 2, 8, 4, 6, 10};  // token 0 at row 4
  const size_t V = 11, S = net.dims().state_floats();
  std::vector<double> random_state(S, 0.25), out_whole(S), out_tail(S);
  Rwkv7Tape<double> tape_whole, tape_tail;
  const double* whole = net.forward(tape_whole, doc.data(), 1, int(doc.size()), random_state.data(), out_whole.data());
  const double* tail = net.forward(tape_tail, doc.data() + 4, 1, int(doc.size()) - 4, nullptr, out_tail.data());
  EXPECT_LT(test::rel_norm_error(whole + 4 * V, tail, (doc.size() - 4) * V), 1e-13);
  EXPECT_LT(test::rel_norm_error(out_whole.data(), out_tail.data(), S), 1e-13);
}

// Gradients of one pass over T tokens equal those of two passes carrying the state forward and
// its gradient backward (what training over windows with BPTT does), and neither the recompute
// knob nor the WKV chunk length changes them.
TEST(TrainRwkv7, SplitAndCarryRecomputeAndChunksAgree) {
  std::shared_ptr<const Checkpoint> keep;
  const auto tensors = tiny_model(keep, 11);
  const int B = 3, T = 20, split = 9;
  std::mt19937 rng(5);
  std::vector<int> tokens(size_t(B) * T), targets(size_t(B) * T);
  for (int& t : tokens) t = int(rng() % 11u);
  for (int& t : targets) t = int(rng() % 11u);

  Rwkv7Train<double> whole(tensors, "tiny");
  Rwkv7Tape<double> tape;
  std::vector<double> final_whole(size_t(B) * whole.dims().state_floats());
  whole.forward(tape, tokens.data(), B, T, nullptr, final_whole.data());
  const double loss = whole.loss(tape, targets.data(), 0.0);
  whole.backward(tape, nullptr, nullptr);

  for (const auto& options : {Rwkv7Train<double>::Options{16, true}, Rwkv7Train<double>::Options{1, false},
                              Rwkv7Train<double>::Options{5, true}, Rwkv7Train<double>::Options{64, false}}) {
    Rwkv7Train<double> net(tensors, "tiny");
    net.set_options(options);
    Rwkv7Tape<double> tape_a, tape_b;
    const size_t S = net.dims().state_floats();
    std::vector<int> in_a, in_b, tg_a, tg_b;
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t < T; ++t) {
        (t < split ? in_a : in_b).push_back(tokens[size_t(b) * T + t]);
        (t < split ? tg_a : tg_b).push_back(targets[size_t(b) * T + t]);
      }
    }
    std::vector<double> mid(size_t(B) * S), fin(size_t(B) * S), dmid(size_t(B) * S);
    net.forward(tape_a, in_a.data(), B, split, nullptr, mid.data());
    net.forward(tape_b, in_b.data(), B, T - split, mid.data(), fin.data());
    EXPECT_LT(test::rel_norm_error(fin.data(), final_whole.data(), fin.size()), 1e-12);
    // Each segment's mean is over its own rows: weight them back to the mean over all rows.
    int na = 0, nb = 0;
    const double la = net.loss(tape_a, tg_a.data(), 0.0, &na);
    const double lb = net.loss(tape_b, tg_b.data(), 0.0, &nb);
    EXPECT_NEAR((la * na + lb * nb) / (na + nb), loss, 1e-12);
    for (double* p : {tape_a.dlogits(), tape_b.dlogits()}) {
      const size_t rows = p == tape_a.dlogits() ? size_t(na) : size_t(nb);
      for (size_t i = 0; i < rows * 11; ++i) p[i] *= double(rows) / (na + nb);
    }
    net.backward(tape_b, nullptr, dmid.data());
    net.backward(tape_a, dmid.data(), nullptr);
    EXPECT_LT(test::rel_norm_error(net.grads(), whole.grads(), net.table().total), 1e-11)
        << "chunk " << options.wkv_chunk << " recompute " << options.recompute;
  }
}

TEST(TrainRwkv7, RejectsBadTokensAndForeignModels) {
  std::shared_ptr<const Checkpoint> keep;
  const auto tensors = tiny_model(keep, 1);
  Rwkv7Train<float> net(tensors, "tiny");
  Rwkv7Tape<float> tape;
  const std::vector<int> bad = {1, 2, 11};
  EXPECT_THROW(net.forward(tape, bad.data(), 1, 3, nullptr, nullptr), Error);
  EXPECT_THROW(net.forward(tape, bad.data(), 0, 3, nullptr, nullptr), Error);
  auto missing = tensors;
  missing.pop_back();
  EXPECT_THROW(Rwkv7Train<float>(missing, "m"), Error);
  auto unknown = tensors;
  unknown.push_back(unknown.back());
  unknown.back().name = "blocks.0.att.mystery";
  EXPECT_THROW(Rwkv7Train<float>(unknown, "u"), Error);
  auto reshaped = tensors;
  for (auto& t : reshaped) {
    if (t.name == "blocks.0.att.key.weight") t.shape = {4, 16};
  }
  EXPECT_THROW(Rwkv7Train<float>(reshaped, "r"), Error);
}

}  // namespace
}  // namespace rwkv
