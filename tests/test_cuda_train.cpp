// RWKV-7 training on the GPU (model/rwkv7_train_cuda.h, `rwkv train --device cuda`): the loss,
// every parameter gradient, the final state and the state gradient against the CPU training form
// (fp32) and against the official fp64 gradients, within bounds for bf16 matrix products; the
// recompute option; a 50-step training run against the CPU's loss trajectory; resume; errors.
// Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "model/rwkv7_train.h"
#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "rwkv/model.h"
#include "testing.h"
#include "train/train_log.h"
#include "train/trainer.h"

#ifdef RWKV_WITH_CUDA
#include "cuda_testing.h"
#include "model/rwkv7_train_cuda.h"

namespace rwkv {
namespace {

using model::Rwkv7Tape;
using model::Rwkv7Train;
using model::Rwkv7TrainCuda;


struct Batch {
  int B = 0, T = 0;
  std::vector<int> tokens, targets;
  std::vector<float> state_in, dstate_out;  // empty: none
};

Batch random_batch(int B, int T, int V, size_t state_floats, bool states, uint32_t seed) {
  std::mt19937 rng(seed);
  Batch b{B, T, {}, {}, {}, {}};
  std::uniform_int_distribution<int> tok(0, V - 1);
  for (int i = 0; i < B * T; ++i) {
    b.tokens.push_back(tok(rng));
    b.targets.push_back(i % 11 == 5 ? -1 : tok(rng));  // some rows skipped
  }
  if (states) {
    std::normal_distribution<float> n(0.f, 0.3f);
    for (size_t i = 0; i < size_t(B) * state_floats; ++i) b.state_in.push_back(n(rng));
    for (size_t i = 0; i < size_t(B) * state_floats; ++i) b.dstate_out.push_back(0.01f * n(rng));
  }
  return b;
}

struct Result {
  double loss = 0;
  std::vector<float> grads, state_out, dstate_in;
};

Result run_cpu(const std::vector<TensorView>& tensors, const Batch& b, double l2wrap,
               const Rwkv7Train<float>::Options& options = {}) {
  Rwkv7Train<float> net(tensors, "cpu");
  net.set_options(options);
  Rwkv7Tape<float> tape;
  const size_t S = size_t(b.B) * net.dims().state_floats();
  Result r;
  r.state_out.resize(S);
  r.dstate_in.resize(S);
  net.zero_grads();
  net.forward(tape, b.tokens.data(), b.B, b.T, b.state_in.empty() ? nullptr : b.state_in.data(), r.state_out.data());
  r.loss = net.loss(tape, b.targets.data(), l2wrap);
  net.backward(tape, b.dstate_out.empty() ? nullptr : b.dstate_out.data(), r.dstate_in.data());
  r.grads.assign(net.grads(), net.grads() + net.table().total);
  return r;
}

Result run_gpu(Rwkv7TrainCuda& net, const Batch& b, double l2wrap) {
  const size_t S = size_t(b.B) * net.dims().state_floats();
  Result r;
  r.state_out.assign(S, NAN);
  r.dstate_in.assign(S, NAN);
  r.grads.assign(net.table().total, NAN);
  net.zero_grads();
  net.forward(0, b.tokens.data(), b.B, b.T, b.state_in.empty() ? nullptr : b.state_in.data(), r.state_out.data());
  r.loss = net.loss(0, b.targets.data(), l2wrap);
  net.backward(0, b.dstate_out.empty() ? nullptr : b.dstate_out.data(), r.dstate_in.data());
  net.read_grads(r.grads.data());
  return r;
}

// The gradients that bf16 rounding moves most at the start of a sequence (see kGradBound).
bool exposed(const std::string& name) {
  for (const char* part : {"emb.", "ln0.", "ln1.", ".x_r", ".x_k", ".x_a", ".a0", ".a1", ".a2", ".k_a",
                           "receptance.", "att.key."}) {
    if (name.find(part) != std::string::npos) return true;
  }
  return false;
}

// Every tensor's gradient within `bound` (relative norm), the exposed ones within
// `exposed_bound`; prints the worst.
void expect_grads_close(const model::ParamTable& table, const std::vector<float>& got,
                        const std::vector<float>& want, double bound, const char* what,
                        double exposed_bound = 0) {
  double worst = 0;
  std::string worst_name;
  for (const model::ParamTensor& t : table.tensors) {
    const double e = test::rel_norm_error(got.data() + t.offset, want.data() + t.offset, t.numel);
    EXPECT_LE(e, exposed_bound > 0 && exposed(t.name) ? exposed_bound : bound) << what << ": " << t.name;
    if (!(e <= worst)) worst = e, worst_name = t.name;
  }
  std::printf("%s: worst gradient error %.2e (%s)\n", what, worst, worst_name.c_str());
}

// bf16 inputs to every matrix product and to the WKV (unit roundoff 2⁻⁹ per rounding, several
// on every path, through three layers). The gradients most exposed are those of r, k and the
// in-context rate in the lowest layers at the start of a sequence: there the WKV output of a
// head is nearly a multiple of one v, GroupNorm removes that scale, and what is left of ∂y is
// mostly rounding. Rounding only the WKV's inputs, output and gradients to bf16 in the CPU
// form (an experiment, measured on this machine) moves those gradients by up to 0.32 in the
// head-64 zero-state case below (every other tensor < 3e-2; head 32: all < 3e-2), and the
// official fixture's by up to 3.6e-2: the GPU's errors there (0.25, 8.1e-2) are that rounding.
constexpr double kGradBound = 3e-2, kExposedBound = 0.4, kLossBound = 5e-3, kStateBound = 2e-2;

TEST(CudaTrain, MatchesTheCpuTrainingForm) {
  RWKV_REQUIRE_GPU();
  struct Case {
    int head, T;
    bool states;
  };
  // A window inside a sequence (a state in, a state gradient out), and a long window from
  // the zero state.
  for (const Case cs : {Case{32, 37, true}, Case{64, 37, true}, Case{32, 150, false}, Case{64, 150, false}}) {
    test::V7Dims dims;
    dims.n_layer = 3, dims.n_embd = 128, dims.head_size = cs.head, dims.vocab = 97, dims.lora = 16;
    const auto ckpt = test::random_v7_checkpoint(dims, 21);
    Rwkv7TrainCuda gpu(ckpt->tensors(), "gpu", 0);
    const Batch b = random_batch(2, cs.T, dims.vocab, gpu.dims().state_floats(), cs.states, 5);
    const Result want = run_cpu(ckpt->tensors(), b, 1e-4);
    const Result got = run_gpu(gpu, b, 1e-4);
    SCOPED_TRACE(testing::Message() << "head " << cs.head << " T " << cs.T << (cs.states ? " with states" : ""));
    EXPECT_NEAR(got.loss, want.loss, kLossBound * want.loss);
    // From the zero state with head size 64 the exposed gradients are mostly bf16 rounding.
    const bool zero_start = !cs.states && cs.head == 64;
    expect_grads_close(gpu.table(), got.grads, want.grads, kGradBound, "GPU vs CPU",
                       zero_start ? kExposedBound : 0);
    const double se = test::rel_norm_error(got.state_out.data(), want.state_out.data(), want.state_out.size());
    const double de = test::rel_norm_error(got.dstate_in.data(), want.dstate_in.data(), want.dstate_in.size());
    std::printf("head %d T %d%s: loss %.6f vs %.6f, state_out %.2e, dstate_in %.2e\n", cs.head, cs.T,
                cs.states ? " states" : "", got.loss, want.loss, se, de);
    EXPECT_LE(se, kStateBound);
    EXPECT_LE(de, zero_start ? kExposedBound : kGradBound);
  }
}

// reset_at_eod: the end-of-document token (0) restarts the WKV state and the token shift, on
// rows placed to hit every case of the kernels — the first row of a window with a state in, a
// chunk's first and last rows (16, 31), two resets in one chunk, two in a row, one near the end.
TEST(CudaTrain, DocumentResetsMatchTheCpuTrainingForm) {
  RWKV_REQUIRE_GPU();
  for (int head : {32, 64}) {
    test::V7Dims dims;
    dims.n_layer = 2, dims.n_embd = 128, dims.head_size = head, dims.vocab = 97, dims.lora = 16;
    const auto ckpt = test::random_v7_checkpoint(dims, 23);
    Rwkv7TrainCuda gpu(ckpt->tensors(), "gpu", 0);
    const Rwkv7Train<float>::Options options{.wkv_chunk = 16, .recompute = false, .reset_at_eod = true};
    gpu.set_options(options);
    Batch b = random_batch(2, 70, dims.vocab, gpu.dims().state_floats(), true, 7);
    for (int& t : b.tokens) t = t == 0 ? 1 : t;  // resets only where placed
    for (int row : {0, 16, 31, 40, 45, 46, 68}) b.tokens[size_t(row)] = 0;
    for (int row : {3, 35, 36, 50}) b.tokens[size_t(70 + row)] = 0;
    const Result want = run_cpu(ckpt->tensors(), b, 1e-4, options);
    const Result plain = run_cpu(ckpt->tensors(), b, 1e-4);
    const Result got = run_gpu(gpu, b, 1e-4);
    SCOPED_TRACE(testing::Message() << "head " << head);
    // The resets matter: a document started two rows before the end leaves another final state.
    EXPECT_GT(test::rel_norm_error(plain.state_out.data(), want.state_out.data(), want.state_out.size()), 0.1);
    EXPECT_NEAR(got.loss, want.loss, kLossBound * want.loss);
    // Every document starts from the zero state: with head size 64 the exposed gradients are
    // mostly bf16 rounding there, as in MatchesTheCpuTrainingForm (measured 6.4e-2 on x_r,
    // 5.1e-2 on receptance; every other tensor < 3e-2; the kernels alone match fp64 to 5e-3).
    expect_grads_close(gpu.table(), got.grads, want.grads, kGradBound, "resets, GPU vs CPU",
                       head == 64 ? kExposedBound : 0);
    EXPECT_LE(test::rel_norm_error(got.state_out.data(), want.state_out.data(), want.state_out.size()), kStateBound);
    EXPECT_LE(test::rel_norm_error(got.dstate_in.data(), want.dstate_in.data(), want.dstate_in.size()), kGradBound);
  }
}

TEST(CudaTrain, OfficialGradients) {
  RWKV_REQUIRE_SHARED(test::kTrainFixtureDir);
  RWKV_REQUIRE_GPU();
  const std::string dir = test::shared_path(test::kTrainFixtureDir);
  const test::TrainFixture f = test::load_train_fixture();
  const nlohmann::json& manifest = f.manifest;
  Batch b;
  b.B = f.B, b.T = f.T, b.tokens = f.inputs, b.targets = f.targets;
  const Checkpoint ckpt = Checkpoint::open(test::shared_path("fixtures/official/v7/rwkv-v7-L2-D128-V256-fp32.pth"));
  Rwkv7TrainCuda gpu(ckpt.tensors(), ckpt.path(), 0);
  const Result got = run_gpu(gpu, b, 0.0);
  const double want_loss = test::read_f64_file(dir + "/loss.f64.bin")[0];
  EXPECT_NEAR(got.loss, want_loss, kLossBound * want_loss);
  // T = 32 from the zero state: the exposed case above (measured worst 8.1e-2 on an H200).
  double worst = 0;
  for (const auto& g : manifest["grads"]) {
    const model::ParamTensor* t = gpu.table().find(g["name"]);
    ASSERT_NE(t, nullptr);
    const auto ref = test::read_f64_file(dir + "/" + std::string(g["file"]));
    ASSERT_EQ(ref.size(), t->numel);
    const double e = test::rel_norm_error(got.grads.data() + t->offset, ref.data(), ref.size());
    EXPECT_LE(e, 0.12) << t->name;
    worst = std::max(worst, e);
  }
  std::printf("official fixture: loss %.8f vs %.8f, worst gradient error %.2e\n", got.loss, want_loss, worst);
}

TEST(CudaTrain, RecomputeGivesTheSameGradients) {
  RWKV_REQUIRE_GPU();
  test::V7Dims dims;
  dims.n_layer = 2, dims.n_embd = 64, dims.head_size = 32, dims.vocab = 50;
  const auto ckpt = test::random_v7_checkpoint(dims, 3);
  Rwkv7TrainCuda gpu(ckpt->tensors(), "gpu", 0);
  const Batch b = random_batch(3, 20, dims.vocab, gpu.dims().state_floats(), true, 9);
  const Result plain = run_gpu(gpu, b, 1e-4);
  gpu.set_options({.wkv_chunk = 16, .recompute = true});
  const Result again = run_gpu(gpu, b, 1e-4);
  EXPECT_EQ(plain.loss, again.loss);
  // The same kernels on the same inputs in the same order (no atomics): the same bits.
  EXPECT_EQ(again.grads, plain.grads);
  EXPECT_EQ(plain.dstate_in, again.dstate_in);
}

TEST(CudaTrain, SplitWindowsCarryStateAndGradient) {
  // Two windows of T/2 with the state carried and its gradient passed back equal one window
  // of T: the BPTT path of the sequential order.
  RWKV_REQUIRE_GPU();
  test::V7Dims dims;
  dims.n_layer = 2, dims.n_embd = 64, dims.head_size = 32, dims.vocab = 50;
  const auto ckpt = test::random_v7_checkpoint(dims, 4);
  Rwkv7TrainCuda gpu(ckpt->tensors(), "gpu", 0);
  const int B = 2, T = 40, half = 20;
  const Batch whole = random_batch(B, T, dims.vocab, gpu.dims().state_floats(), false, 12);
  const Result one = run_gpu(gpu, whole, 0.0);
  Batch a{B, half, {}, {}, {}, {}}, c{B, half, {}, {}, {}, {}};
  for (int s = 0; s < B; ++s) {
    for (int t = 0; t < T; ++t) {
      Batch& dst = t < half ? a : c;
      dst.tokens.push_back(whole.tokens[size_t(s) * T + t]);
      dst.targets.push_back(whole.targets[size_t(s) * T + t]);
    }
  }
  const size_t S = size_t(B) * gpu.dims().state_floats();
  std::vector<float> mid(S), dmid(S), grads(gpu.table().total);
  // Each window's loss is its own mean: weight them by their counted rows.
  const auto counted = [](const std::vector<int>& t) {
    return double(std::count_if(t.begin(), t.end(), [](int x) { return x >= 0; }));
  };
  const double na = counted(a.targets), nc = counted(c.targets);
  gpu.zero_grads();
  gpu.forward(0, a.tokens.data(), B, half, nullptr, mid.data());
  const double la = gpu.loss(0, a.targets.data(), 0.0, nullptr, na / (na + nc));
  gpu.forward(1, c.tokens.data(), B, half, mid.data(), nullptr);
  const double lc = gpu.loss(1, c.targets.data(), 0.0, nullptr, nc / (na + nc));
  gpu.backward(1, nullptr, dmid.data());
  gpu.backward(0, dmid.data(), nullptr);
  gpu.read_grads(grads.data());
  EXPECT_NEAR((la * na + lc * nc) / (na + nc), one.loss, 1e-4 * one.loss);
  expect_grads_close(gpu.table(), grads, one.grads, 1e-2, "split windows");
}

TEST(CudaTrain, RejectsWhatItCannotRun) {
  RWKV_REQUIRE_GPU();
  test::V7Dims dims;
  dims.n_layer = 1, dims.n_embd = 64, dims.head_size = 16, dims.vocab = 50;
  EXPECT_THROW(Rwkv7TrainCuda(test::random_v7_checkpoint(dims, 1)->tensors(), "h16", 0), Error);
  dims.head_size = 32;
  Rwkv7TrainCuda gpu(test::random_v7_checkpoint(dims, 1)->tensors(), "gpu", 0);
  std::vector<int> bad = {1, 2, 50};
  EXPECT_THROW(gpu.forward(0, bad.data(), 1, 3, nullptr, nullptr), Error);
  std::vector<int> ok = {1, 2, 3}, bad_targets = {1, 99, 2};
  gpu.forward(0, ok.data(), 1, 3, nullptr, nullptr);
  EXPECT_THROW(gpu.loss(0, bad_targets.data(), 0.0), Error);
  EXPECT_THROW(gpu.backward(5, nullptr, nullptr), Error);
  EXPECT_THROW(Rwkv7TrainCuda(test::random_v7_checkpoint(dims, 1)->tensors(), "gpu", 99), Error);
}

// ---- the training loop ----

train::TokenData corpus() {
  std::string text;
  for (int i = 0; i < 400; ++i) text += "the quick brown fox jumps over the lazy dog " + std::to_string(i % 7) + ". ";
  return train::TokenData(std::vector<int>(text.begin(), text.end()));
}

train::TrainConfig tiny_config(const std::string& out, const std::string& device) {
  train::TrainConfig c;
  c.layers = 2, c.embd = 64, c.head_size = 32, c.vocab = 256;
  c.ctx_len = 64, c.batch = 4, c.steps = 50, c.warmup_steps = 5;
  c.lr_init = 3e-3, c.lr_final = 3e-4;
  c.out_dir = out;
  c.device = device;
  return c;
}

std::vector<train::LogRow> run(const train::TrainConfig& c, const train::TokenData& data, bool resume = false) {
  train::train(c, data, resume, nullptr);
  return train::read_log_csv(c.out_dir + "/log.csv");
}

TEST(CudaTrain, FiftyStepsFollowTheCpuLossTrajectory) {
  RWKV_REQUIRE_GPU();
  const train::TokenData data = corpus();
  const std::string dir = test::temp_dir();
  const auto cpu = run(tiny_config(dir + "/cpu", "cpu"), data);
  const auto gpu = run(tiny_config(dir + "/gpu", "cuda"), data);
  ASSERT_EQ(cpu.size(), 50u);
  ASSERT_EQ(gpu.size(), 50u);
  // The GPU step has no atomics and no order-dependent sums: a second run repeats every loss.
  const auto again = run(tiny_config(dir + "/gpu2", "cuda"), data);
  ASSERT_EQ(again.size(), 50u);
  for (size_t s = 0; s < gpu.size(); ++s) EXPECT_EQ(again[s].loss, gpu[s].loss) << "step " << s;
  // Each step's bf16 gradient noise (≈ 1e-2, above) moves the weights a little off the CPU's
  // path, and the paths drift apart slowly. The drift does not shrink with the loss: on an H200 the
  // WKV's sequential forward and its chunked forward (equally close to fp64) track each other to
  // step 20 and then differ by chance, each with a worst gap of ~7e-3 absolute (6.96e-3 at step 16,
  // loss 0.72; 6.86e-3 at step 36, loss 0.13), hence the floor of 1e-2.
  double worst = 0;
  for (size_t s = 0; s < cpu.size(); ++s) {
    const double e = std::abs(gpu[s].loss - cpu[s].loss);
    worst = std::max(worst, e);
    std::printf("step %2zu: CPU %.5f GPU %.5f gap %.2e\n", s, cpu[s].loss, gpu[s].loss, e);
    EXPECT_LE(e, 1e-2 + 3e-2 * cpu[s].loss) << "step " << s << ": GPU " << gpu[s].loss << ", CPU " << cpu[s].loss;
  }
  std::printf("50 steps: loss %.4f → %.4f (CPU) and %.4f → %.4f (GPU), worst gap %.2e\n",
              cpu.front().loss, cpu.back().loss, gpu.front().loss, gpu.back().loss, worst);
  EXPECT_LT(gpu.back().loss, 0.6 * gpu.front().loss);  // it learns
  // The saved model loads and runs on the CPU.
  EXPECT_NO_THROW(load_model(dir + "/gpu/model.pth"));
}

TEST(CudaTrain, ResumedRunFollowsTheUninterruptedOne) {
  RWKV_REQUIRE_GPU();
  const train::TokenData data = corpus();
  const std::string dir = test::temp_dir();
  train::TrainConfig c = tiny_config(dir + "/whole", "cuda");
  c.steps = 20;
  c.exit_tokens = c.steps * c.tokens_per_step();  // the schedule must not depend on --steps
  const auto whole = run(c, data);
  c.out_dir = dir + "/split";
  c.steps = 12;
  run(c, data);
  c.steps = 20;
  const auto split = run(c, data, true);
  ASSERT_EQ(split.size(), 20u);
  for (size_t s = 0; s < whole.size(); ++s) {
    // Only the embedding gradient's atomic additions may differ in order.
    EXPECT_NEAR(split[s].loss, whole[s].loss, 1e-3 * whole[s].loss) << "step " << s;
  }
}

}  // namespace
}  // namespace rwkv

#endif  // RWKV_WITH_CUDA
