// RWKV-7: the two forms against each other on random weights, and bad checkpoints. (The official
// fixtures of every generation are checked in test_generations.cpp.)
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>

#include "ops/ops.h"
#include "rwkv/error.h"
#include "rwkv/model.h"
#include "testing.h"

namespace rwkv {
namespace {

using test::random_tokens;
using test::slice;

// ---- Properties on random weights -------------------------------------------------------------

TEST(Rwkv7Forms, ParallelEqualsRecurrentOnLongAndOddSequences) {
  test::V7Dims dims;
  dims.head_size = 16;
  auto model = load_model(test::random_v7_checkpoint(dims, 7));
  test::expect_parallel_equals_recurrent(*model, {1, 2, 15, 16, 17, 63, 100, 1024}, 2e-4);
}

TEST(Rwkv7Forms, SplitAndCarryStateAtArbitraryPoints) {
  test::V7Dims dims;
  auto model = load_model(test::random_v7_checkpoint(dims, 8));
  test::expect_split_and_carry(*model, 77, {1, 16, 31, 32, 50, 76}, 2e-4);
}

TEST(Rwkv7Forms, BatchedSequencesAreIndependent) {
  test::V7Dims dims;
  auto model = load_model(test::random_v7_checkpoint(dims, 9));
  const size_t V = size_t(dims.vocab), S = model->state_spec().floats;
  const int B = 5, T = 19;
  const test::SoloRuns alone = test::run_alone(*model, B, T);
  const auto& [seqs, flat, want_logits, want_states] = alone;
  // Parallel form over [B, T] and batched recurrent steps.
  std::vector<std::vector<float>> st_par(B, std::vector<float>(S)), st_step(B, std::vector<float>(S));
  std::vector<float*> p_par, p_step;
  for (int b = 0; b < B; ++b) {
    model->init_state(st_par[size_t(b)].data());
    model->init_state(st_step[size_t(b)].data());
    p_par.push_back(st_par[size_t(b)].data());
    p_step.push_back(st_step[size_t(b)].data());
  }
  std::vector<float> par(size_t(B * T) * V);
  model->forward(flat.data(), B, T, p_par.data(), par.data(), LogitsMode::All);
  std::vector<float> step_logits(size_t(B * T) * V), one(size_t(B) * V);
  for (int t = 0; t < T; ++t) {
    std::vector<int> col(B);
    for (int b = 0; b < B; ++b) col[size_t(b)] = seqs[size_t(b)][size_t(t)];
    model->step(col.data(), B, p_step.data(), one.data());
    for (int b = 0; b < B; ++b)
      std::copy_n(one.data() + size_t(b) * V, V, step_logits.data() + (size_t(b) * T + size_t(t)) * V);
  }
  for (int b = 0; b < B; ++b) {
    EXPECT_LE(test::compare(slice(par, size_t(b) * T, T, V), want_logits[size_t(b)]).max_abs, 2e-4);
    EXPECT_LE(test::compare(slice(step_logits, size_t(b) * T, T, V), want_logits[size_t(b)]).max_abs, 2e-4);
    EXPECT_LE(test::compare(st_par[size_t(b)], want_states[size_t(b)]).max_abs, 2e-4);
    EXPECT_LE(test::compare(st_step[size_t(b)], want_states[size_t(b)]).max_abs, 2e-4);
  }
}

// A sequence's decode step gives bit for bit the same logits and state whether it runs alone or
// with up to three others (the matrix-vector kernels' per-row arithmetic does not depend on the
// number of input vectors): the server's batching relies on it to keep seeded results fixed.
TEST(Rwkv7Forms, DecodeStepsOfUpToFourSequencesAreBatchInvariant) {
  test::V7Dims dims;
  dims.n_embd = 128;
  dims.head_size = 32;
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q5_1,
                   DType::Q8_G64, DType::Q4_G64, DType::Q4_G128}) {
    LoadOptions opt;
    opt.weight_dtype = dt;
    auto model = load_model(test::random_v7_checkpoint(dims, 12), opt);
    const size_t V = size_t(dims.vocab), S = model->state_spec().floats;
    for (int B : {2, 3, 4}) {
      std::vector<std::vector<float>> together(static_cast<size_t>(B), std::vector<float>(S));
      std::vector<std::vector<float>> alone = together;
      std::vector<float*> ptrs;
      for (int b = 0; b < B; ++b) {
        model->init_state(together[size_t(b)].data());
        model->init_state(alone[size_t(b)].data());
        ptrs.push_back(together[size_t(b)].data());
      }
      std::vector<float> batch_logits(size_t(B) * V), one_logits(V);
      for (int t = 0; t < 6; ++t) {
        const std::vector<int> tokens = random_tokens(size_t(B), dims.vocab, unsigned(100 * B + t));
        model->step(tokens.data(), B, ptrs.data(), batch_logits.data());
        for (int b = 0; b < B; ++b) {
          float* state = alone[size_t(b)].data();
          model->step(&tokens[size_t(b)], 1, &state, one_logits.data());
          ASSERT_TRUE(std::equal(one_logits.begin(), one_logits.end(), batch_logits.begin() + ptrdiff_t(size_t(b) * V)))
              << dtype_name(dt) << " B " << B << " step " << t << " sequence " << b;
        }
      }
      for (int b = 0; b < B; ++b) EXPECT_EQ(together[size_t(b)], alone[size_t(b)]) << dtype_name(dt);
    }
  }
}

// Decode steps of up to four sequences run in one team of threads (model/rwkv7_step.h). Against
// the layer-by-layer path (RWKV_CPU_FUSED_STEP=0) only LayerNorm's fp64 sums are taken in another
// order, so float weights agree to fp32 rounding; with quantized weights an input element next
// to a rounding boundary of its 8-bit quantization could land on the other side, moving a
// product by one input step (absmax/127) times one weight. (Rounded to fp32 the statistics have
// come out equal, and so every result.) And bit for bit the same at 1, 2 and 3 threads.
TEST(Rwkv7Forms, FusedDecodeStepMatchesLayerByLayerAtAnyThreadCount) {
  test::V7Dims dims;
  dims.n_embd = 128;
  dims.head_size = 32;
  const auto ckpt = test::random_v7_checkpoint(dims, 13);
  const size_t V = size_t(dims.vocab);
  for (DType dt : {DType::F32, DType::BF16, DType::Q8_0, DType::Q8_G128, DType::Q4_G64, DType::Q5_1}) {
    LoadOptions opt;
    opt.weight_dtype = dt;
    auto fused = load_model(ckpt, opt);
    setenv("RWKV_CPU_FUSED_STEP", "0", 1);
    auto layered = load_model(ckpt, opt);
    unsetenv("RWKV_CPU_FUSED_STEP");
    const size_t S = fused->state_spec().floats;
    for (int B : {1, 3, 4}) {
      // Per thread count: logits of every step and the final states, fused; then layered.
      auto run = [&](Model& model, int threads) {
        ops::cpu::set_num_threads(threads);
        std::vector<std::vector<float>> states(static_cast<size_t>(B), std::vector<float>(S));
        std::vector<float*> ptrs;
        for (auto& st : states) {
          model.init_state(st.data());
          ptrs.push_back(st.data());
        }
        std::vector<float> logits(size_t(12 * B) * V);
        for (int t = 0; t < 12; ++t) {
          const auto tokens = random_tokens(size_t(B), dims.vocab, unsigned(10 * B + t));
          model.step(tokens.data(), B, ptrs.data(), logits.data() + size_t(t * B) * V);
        }
        for (auto& st : states) logits.insert(logits.end(), st.begin(), st.end());
        return logits;
      };
      const std::vector<float> one = run(*fused, 1);
      for (int threads : {2, 3}) {
        EXPECT_TRUE(run(*fused, threads) == one) << dtype_name(dt) << " B " << B << " threads " << threads;
      }
      const auto d = test::compare(run(*layered, 2), one);
      EXPECT_LE(d.max_abs, is_quantized(dt) ? 2e-3 : 1e-4) << dtype_name(dt) << " B " << B;
      std::printf("%s B %d: fused vs layer by layer, max abs %.2e\n", dtype_name(dt), B, d.max_abs);
    }
  }
  ops::cpu::set_num_threads(0);
}

TEST(Rwkv7Forms, CpuMatchesReferenceBackendForEveryWeightDtype) {
  test::V7Dims dims;
  dims.n_embd = 128;
  dims.head_size = 64;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    auto ckpt = test::random_v7_checkpoint(dims, 10, dt);
    LoadOptions ref_opt;
    ref_opt.backend = Backend::Ref;
    auto ref = load_model(ckpt, ref_opt), cpu = load_model(ckpt);
    EXPECT_EQ(cpu->weight_dtype(), dt);
    const auto d = test::compare_steps(*ref, *cpu, random_tokens(40, dims.vocab, 5));
    EXPECT_LE(d.logits.max_abs, 1e-4) << dtype_name(dt);
    EXPECT_LE(d.state.max_abs, 1e-4) << dtype_name(dt);
  }
}

TEST(Rwkv7Errors, TokenOutOfRangeIsAnErrorAndLeavesTheStateAlone) {
  test::V7Dims dims;
  auto model = load_model(test::random_v7_checkpoint(dims, 11));
  std::vector<float> state(model->state_spec().floats, 0.5f), logits(size_t(dims.vocab) * 3);
  const auto before = state;
  float* states[] = {state.data()};
  const int bad[] = {1, dims.vocab, 2};
  EXPECT_THROW(model->step(&bad[1], 1, states, logits.data()), Error);
  EXPECT_THROW(model->forward(bad, 1, 3, states, logits.data(), LogitsMode::All), Error);
  const int negative = -1;
  EXPECT_THROW(model->step(&negative, 1, states, logits.data()), Error);
  EXPECT_EQ(state, before);
}

}  // namespace
}  // namespace rwkv

namespace rwkv {
namespace {

// A copy of `base` with tensors changed by `edit`, sharing base's bytes.
std::shared_ptr<const Checkpoint> edited(std::shared_ptr<const Checkpoint> base,
                                         const std::function<void(std::vector<TensorView>&)>& edit) {
  std::vector<TensorView> tensors = base->tensors();
  edit(tensors);
  return std::make_shared<const Checkpoint>("edited.pth", "memory", std::move(tensors),
                                            std::vector<std::shared_ptr<const void>>{base});
}

void expect_load_error(std::shared_ptr<const Checkpoint> ckpt, const std::string& message) {
  try {
    load_model(ckpt);
    ADD_FAILURE() << "loaded; expected an error mentioning " << message;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}

TEST(Rwkv7Errors, BadCheckpointsAreClearErrors) {
  test::V7Dims dims;
  auto base = test::random_v7_checkpoint(dims, 12);
  ASSERT_NO_THROW(load_model(base));
  // Not an RWKV checkpoint at all.
  expect_load_error(edited(base, [](auto& t) {
                      for (auto& x : t) x.name = "fc." + x.name;
                    }),
                    "not an RWKV checkpoint");
  // A missing tensor.
  expect_load_error(edited(base, [](auto& t) {
                      std::erase_if(t, [](const TensorView& x) { return x.name == "blocks.1.att.a2"; });
                    }),
                    "blocks.1.att.a2");
  // A mis-shaped tensor.
  expect_load_error(edited(base, [](auto& t) {
                      for (auto& x : t) {
                        if (x.name == "blocks.0.ffn.value.weight") std::swap(x.shape[0], x.shape[1]);
                      }
                    }),
                    "blocks.0.ffn.value.weight");
  // An unknown tensor (an unsupported variant such as DeepEmbed).
  expect_load_error(edited(base, [](auto& t) {
                      TensorView extra = t.back();
                      extra.name = "blocks.0.ffn.s_emb.weight";
                      t.push_back(extra);
                    }),
                    "blocks.0.ffn.s_emb.weight");
  // Heads that do not cover the width.
  expect_load_error(edited(base, [](auto& t) {
                      for (auto& x : t) {
                        if (x.name.find("r_k") != std::string::npos) x.shape = {1, 16};
                      }
                    }),
                    "r_k");
}

}  // namespace
}  // namespace rwkv
