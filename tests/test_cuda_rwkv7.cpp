// RWKV-7 on the GPU: both forms against each other and against the CPU model, batches of pooled
// states, the official bf16 file through the matrix-product path, sessions, and bad input.
// (The official fp32/bf16 fixtures through the GPU step and sequence forms are in
// test_generations.cpp.) Every test skips without a GPU.
#include <random>

#include <nlohmann/json.hpp>

#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/model.h"
#include "rwkv/session.h"
#include "rwkv/tokenizer.h"
#include "testing.h"

namespace rwkv {
namespace {

using test::random_tokens;
using test::slice;

LoadOptions on_gpu(std::optional<DType> dtype = std::nullopt) {
  LoadOptions o;
  o.backend = Backend::Cuda;
  o.weight_dtype = dtype;
  return o;
}

TEST(CudaRwkv7, ParallelEqualsRecurrentOnLongAndOddSequences) {
  RWKV_REQUIRE_GPU();
  for (int N : {16, 32, 64}) {
    test::V7Dims dims;
    dims.head_size = N;
    dims.n_embd = 2 * N;
    auto model = load_model(test::random_v7_checkpoint(dims, 7), on_gpu());
    test::expect_parallel_equals_recurrent(*model, {1, 2, 8, 9, 15, 16, 17, 63, 100, 1024}, 2e-4);
  }
}

TEST(CudaRwkv7, SplitAndCarryStateAtArbitraryPoints) {
  RWKV_REQUIRE_GPU();
  test::V7Dims dims;
  auto model = load_model(test::random_v7_checkpoint(dims, 8), on_gpu());
  test::expect_split_and_carry(*model, 77, {1, 8, 9, 16, 31, 50, 76}, 2e-4);
}

// The GPU model equals the CPU model on random weights of every dtype, in both forms.
TEST(CudaRwkv7, MatchesTheCpuModel) {
  RWKV_REQUIRE_GPU();
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    test::V7Dims dims;
    dims.n_embd = 128;
    dims.head_size = 64;
    dims.vocab = 301;
    auto ckpt = test::random_v7_checkpoint(dims, 11, dtype);
    auto cpu = load_model(ckpt);
    auto gpu = load_model(ckpt, on_gpu());
    EXPECT_EQ(gpu->state_spec(), cpu->state_spec());  // state files move between devices
    const auto tokens = random_tokens(40, dims.vocab, 5);
    const auto d = test::compare_steps(*cpu, *gpu, tokens);
    const std::vector<float>& want = d.want_logits;
    // Steps keep activations in fp32 on both: fp32 rounding only.
    EXPECT_LE(d.logits.max_abs, 2e-4) << dtype_name(dtype);
    EXPECT_LE(d.state.max_abs, 2e-4) << dtype_name(dtype);
    // The sequence form runs 16-bit weights through cuBLASLt with 16-bit activations: each
    // product's inputs are rounded once (≤ 2^-8 relative for bf16, 2^-11 for fp16), which moves
    // logits of this size (|logit| ≲ 5) by ≲ 1e-2 for bf16.
    std::vector<float> seq(tokens.size() * size_t(dims.vocab)), s_gpu(gpu->state_spec().floats);
    gpu->init_state(s_gpu.data());
    float* states[] = {s_gpu.data()};
    gpu->forward(tokens.data(), 1, int(tokens.size()), states, seq.data(), LogitsMode::All);
    const double tol = dtype == DType::BF16 ? 3e-2 : dtype == DType::F16 ? 4e-3 : 2e-4;
    EXPECT_LE(test::compare(seq, want).max_abs, tol) << dtype_name(dtype);
  }
}

// A batch of pooled states in scattered slots gives each sequence what it gives alone.
TEST(CudaRwkv7, PooledBatchesAreIndependent) {
  RWKV_REQUIRE_GPU();
  test::V7Dims dims;
  auto model = load_model(test::random_v7_checkpoint(dims, 9), on_gpu());
  const size_t V = size_t(dims.vocab), S = model->state_spec().floats;
  const int B = 5, T = 19;
  const std::vector<int> slots = {6, 0, 3, 7, 1};
  const test::SoloRuns alone = test::run_alone(*model, B, T);
  const auto& [seqs, flat, want_logits, want_states] = alone;
  auto par = model->new_state_pool(8), rec = model->new_state_pool(8);
  std::vector<float> logits(size_t(B * T) * V, std::nanf(""));
  model->forward_pooled(flat.data(), B, T, *par, slots.data(), logits.data(), LogitsMode::All);
  // The steps' logits land in page-locked memory (HostFloats), as rwkv bench and the server take them.
  EXPECT_EQ(model->cuda_device(), 0);
  HostFloats one(size_t(B) * V, model->cuda_device() >= 0);
  EXPECT_TRUE(one.page_locked());
  std::vector<float> step_logits(size_t(B * T) * V);
  for (int t = 0; t < T; ++t) {
    std::vector<int> col(B);
    for (int b = 0; b < B; ++b) col[size_t(b)] = seqs[size_t(b)][size_t(t)];
    model->step_pooled(col.data(), B, *rec, slots.data(), one.data());
    for (int b = 0; b < B; ++b) {
      std::copy_n(one.data() + size_t(b) * V, V, step_logits.data() + (size_t(b) * T + size_t(t)) * V);
    }
  }
  std::vector<float> st(S);
  for (int b = 0; b < B; ++b) {
    EXPECT_LE(test::compare(slice(logits, size_t(b) * T, T, V), want_logits[size_t(b)]).max_abs, 2e-4);
    EXPECT_LE(test::compare(slice(step_logits, size_t(b) * T, T, V), want_logits[size_t(b)]).max_abs, 2e-4);
    par->read(slots[size_t(b)], st.data());
    EXPECT_LE(test::compare(st, want_states[size_t(b)]).max_abs, 2e-4);
    rec->read(slots[size_t(b)], st.data());
    EXPECT_LE(test::compare(st, want_states[size_t(b)]).max_abs, 2e-4);
  }
  // Untouched slots keep the start state; a copied slot is an independent fork.
  for (int slot : {2, 4, 5}) {
    par->read(slot, st.data());
    EXPECT_EQ(st, std::vector<float>(S, 0.f));
  }
  par->copy(2, 6);
  par->read(2, st.data());
  EXPECT_LE(test::compare(st, want_states[0]).max_abs, 2e-4);
}

// The official bf16 file through the sequence form (cuBLASLt on bf16 activations): the logits of
// the package (fp32 math on the same weights) within the bound MatchesTheCpuModel derives.
TEST(CudaRwkv7, OfficialBf16FileInTheSequenceForm) {
  RWKV_REQUIRE_GPU();
  RWKV_REQUIRE_SHARED("fixtures/official/v7/manifest.json");
  const std::string dir = test::shared_path("fixtures/official/v7");
  auto model = load_model(dir + "/rwkv-v7-L2-D128-V256.pth", on_gpu());
  EXPECT_EQ(model->weight_dtype(), DType::BF16);
  const auto manifest = nlohmann::json::parse(read_file(dir + "/manifest.json"));
  const auto tokens = manifest["tokens"].get<std::vector<int>>();
  const auto want = test::read_f32_file(dir + "/logits_step_bf16ckpt.bin");
  std::vector<float> state(model->state_spec().floats, 0.f), got(want.size(), std::nanf(""));
  float* states[] = {state.data()};
  model->forward(tokens.data(), 1, int(tokens.size()), states, got.data(), LogitsMode::All);
  const auto e = test::compare(got, want);
  EXPECT_LE(e.max_abs, 3e-2);
  std::printf("official bf16 file, sequence form on the GPU: max |Δlogit| %.2e\n", e.max_abs);
}

// Decode steps replay as CUDA graphs (one per batch size, pool and logits mode): the same bits as
// launching kernel by kernel, across pools and batch sizes that come and go; layer by layer (this
// small model's default) and with the fused step taking batches 1 and 3.
class CudaRwkv7Graphs : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(FusedStep, CudaRwkv7Graphs, ::testing::Values("", "1"));

TEST_P(CudaRwkv7Graphs, GraphStepsEqualDirectSteps) {
  RWKV_REQUIRE_GPU();
  test::V7Dims dims;
  if (*GetParam()) dims.n_embd = 128, dims.head_size = 64;  // what the fused step takes
  auto ckpt = test::random_v7_checkpoint(dims, 13, DType::BF16);
  if (*GetParam()) setenv("RWKV_CUDA_FUSED_STEP", GetParam(), 1);
  setenv("RWKV_CUDA_GRAPHS", "0", 1);
  auto direct = load_model(ckpt, on_gpu());
  unsetenv("RWKV_CUDA_GRAPHS");
  auto graphed = load_model(ckpt, on_gpu());
  unsetenv("RWKV_CUDA_FUSED_STEP");
  auto pd1 = direct->new_state_pool(12), pd2 = direct->new_state_pool(3);
  auto pg1 = graphed->new_state_pool(12), pg2 = graphed->new_state_pool(3);
  const size_t V = size_t(dims.vocab);
  std::vector<float> a(12 * V), b(12 * V);
  const int slots[] = {5, 1, 7, 0, 2, 3, 4, 6, 8, 9, 10, 11}, small[] = {2, 0, 1};
  for (int i = 0; i < 24; ++i) {
    const int B = i % 3 == 0 ? 1 : i % 3 == 1 ? 3 : 12;  // gemv path and cuBLASLt path
    const bool second = i % 4 == 3 && B <= 3;
    const auto tokens = random_tokens(size_t(B), dims.vocab, uint32_t(i));
    const int* sl = second ? small : slots;
    direct->step_pooled(tokens.data(), B, second ? *pd2 : *pd1, sl, a.data());
    graphed->step_pooled(tokens.data(), B, second ? *pg2 : *pg1, sl, b.data());
    ASSERT_EQ(a, b) << "step " << i;
  }
  std::vector<float> sa(direct->state_spec().floats), sb(sa.size());
  for (int s = 0; s < 12; ++s) {
    pd1->read(s, sa.data());
    pg1->read(s, sb.data());
    EXPECT_EQ(sa, sb) << "slot " << s;
  }
  // A prefill between steps (a larger activation buffer) leaves later steps right.
  const auto prompt = random_tokens(300, dims.vocab, 77);
  const int s0 = 0;
  direct->forward_pooled(prompt.data(), 1, 300, *pd1, &s0, a.data(), LogitsMode::Last);
  graphed->forward_pooled(prompt.data(), 1, 300, *pg1, &s0, b.data(), LogitsMode::Last);
  for (int i = 0; i < 3; ++i) {
    const int t = i + 5;
    direct->step_pooled(&t, 1, *pd1, &s0, a.data());
    graphed->step_pooled(&t, 1, *pg1, &s0, b.data());
    EXPECT_EQ(std::vector<float>(a.begin(), a.begin() + long(V)), std::vector<float>(b.begin(), b.begin() + long(V)));
  }
}

// Decode steps of 1 … 4 sequences run as one fused kernel (16-bit weights, head size 64): the
// logits and states of the layer-by-layer step and of the CPU model, for each batch size in
// scattered slots, over a model whose LoRA widths and vocabulary are not powers of two. (Batches
// over 4 take the matrix-product path with 16-bit activations, tested elsewhere.)
TEST(CudaRwkv7, FusedStepEqualsLayerByLayerStep) {
  RWKV_REQUIRE_GPU();
  for (DType dtype : {DType::BF16, DType::F16}) {
    test::V7Dims dims;
    dims.n_layer = 3;
    dims.n_embd = 192;
    dims.head_size = 64;
    dims.vocab = 1001;
    dims.lora = 24;
    auto ckpt = test::random_v7_checkpoint(dims, 21, dtype);
    auto cpu = load_model(ckpt);
    setenv("RWKV_CUDA_FUSED_STEP", "0", 1);
    auto plain = load_model(ckpt, on_gpu());
    setenv("RWKV_CUDA_FUSED_STEP", "1", 1);  // fails to load unless the fused step runs it
    auto fused = load_model(ckpt, on_gpu());
    unsetenv("RWKV_CUDA_FUSED_STEP");
    Model* models[] = {cpu.get(), plain.get(), fused.get()};
    std::unique_ptr<StatePool> pools[3];
    for (int i = 0; i < 3; ++i) pools[i] = models[i]->new_state_pool(6);
    const size_t V = size_t(dims.vocab), S = cpu->state_spec().floats;
    const int slots[] = {4, 1, 5, 0};
    std::vector<float> logits[3];
    double worst[2] = {0, 0};
    for (int i = 0; i < 24; ++i) {
      const int B = 1 + i % 4;
      const auto tokens = random_tokens(size_t(B), dims.vocab, uint32_t(100 + i));
      for (int j = 0; j < 3; ++j) {
        logits[j].assign(size_t(B) * V, std::nanf(""));
        models[j]->step_pooled(tokens.data(), B, *pools[j], slots, logits[j].data());
      }
      const double vs_plain = test::compare(logits[2], logits[1]).max_abs;
      const double vs_cpu = test::compare(logits[2], logits[0]).max_abs;
      EXPECT_LE(vs_plain, 1e-4) << dtype_name(dtype) << " step " << i << " batch " << B;
      EXPECT_LE(vs_cpu, 2e-4) << dtype_name(dtype) << " step " << i << " batch " << B << " (plain vs cpu "
                              << test::compare(logits[1], logits[0]).max_abs << ")";
      worst[0] = std::max(worst[0], vs_plain);
    }
    std::vector<float> st[3];
    for (int slot = 0; slot < 6; ++slot) {
      for (int j = 0; j < 3; ++j) {
        st[j].resize(S);
        pools[j]->read(slot, st[j].data());
      }
      const auto d = test::compare(st[2], st[0]);
      EXPECT_LE(d.max_abs, 2e-4) << dtype_name(dtype) << " slot " << slot << " (plain vs cpu "
                                 << test::compare(st[1], st[0]).max_abs << ")";
      worst[1] = std::max(worst[1], d.max_abs);
    }
    std::printf("fused step (%s): max |Δlogit| %.2e vs layer by layer, max |Δstate| %.2e vs the CPU\n",
                dtype_name(dtype), worst[0], worst[1]);
  }
}

// The fused step is an optimisation: models it cannot run (fp32 weights, head size 32, LoRA
// widths not multiples of 8) load and decode layer by layer, unless it is required.
TEST(CudaRwkv7, ModelsTheFusedStepCannotRunFallBack) {
  RWKV_REQUIRE_GPU();
  test::V7Dims fp32;
  fp32.n_embd = 128;
  fp32.head_size = 64;
  test::V7Dims head32 = fp32;
  head32.head_size = 32;
  test::V7Dims odd_lora = fp32;
  odd_lora.lora = 12;
  const std::pair<test::V7Dims, DType> cases[] = {{fp32, DType::F32}, {head32, DType::BF16}, {odd_lora, DType::BF16}};
  for (const auto& [dims, dtype] : cases) {
    auto ckpt = test::random_v7_checkpoint(dims, 5, dtype);
    setenv("RWKV_CUDA_FUSED_STEP", "1", 1);
    EXPECT_THROW(load_model(ckpt, on_gpu()), Error);
    unsetenv("RWKV_CUDA_FUSED_STEP");
    auto cpu = load_model(ckpt);
    auto gpu = load_model(ckpt, on_gpu());
    const auto d = test::compare_steps(*cpu, *gpu, random_tokens(12, dims.vocab, 3));
    EXPECT_LE(d.logits.max_abs, 2e-4);
  }
}

TEST(CudaRwkv7, SessionGeneratesWhatTheCpuGenerates) {
  RWKV_REQUIRE_GPU();
  test::V7Dims dims;
  dims.vocab = 256;
  auto ckpt = test::random_v7_checkpoint(dims, 21);
  SamplerConfig greedy;
  greedy.temperature = 0;
  GenerateOptions opt;
  opt.max_tokens = 30;
  std::vector<std::vector<int>> out;
  for (Backend b : {Backend::Cpu, Backend::Cuda}) {
    LoadOptions o;
    o.backend = b;
    Session s(load_model(ckpt, o), make_bytes_tokenizer(), greedy);
    s.prefill("The GPU and the CPU agree. ");
    out.push_back(s.generate(opt).tokens);
  }
  EXPECT_EQ(out[0], out[1]);
}

TEST(CudaRwkv7, BadInputIsAnErrorAndLeavesTheStateAlone) {
  RWKV_REQUIRE_GPU();
  test::V7Dims dims;
  auto ckpt = test::random_v7_checkpoint(dims, 3);
  auto model = load_model(ckpt, on_gpu());
  auto pool = model->new_state_pool(2);
  const int slots[] = {0, 1}, twice[] = {1, 1}, outside[] = {0, 2};
  std::vector<float> logits(2 * size_t(dims.vocab)), before(model->state_spec().floats), after(before);
  int tokens[] = {1, 2};
  model->step_pooled(tokens, 2, *pool, slots, logits.data());
  pool->read(1, before.data());
  int bad[] = {1, dims.vocab};
  EXPECT_THROW(model->step_pooled(bad, 2, *pool, slots, logits.data()), Error);
  EXPECT_THROW(model->step_pooled(tokens, 2, *pool, twice, logits.data()), Error);
  EXPECT_THROW(model->step_pooled(tokens, 2, *pool, outside, logits.data()), Error);
  // A pool from another model (the CPU one) is refused.
  auto cpu = load_model(ckpt);
  auto host_pool = cpu->new_state_pool(2);
  EXPECT_THROW(model->step_pooled(tokens, 2, *host_pool, slots, logits.data()), Error);
  EXPECT_THROW(cpu->step_pooled(tokens, 2, *pool, slots, logits.data()), Error);
  pool->read(1, after.data());
  EXPECT_EQ(after, before);
  EXPECT_THROW(pool->read(2, after.data()), Error);
  // Unsupported head size, quantized weights, missing GPU.
  test::V7Dims odd;
  odd.head_size = 24;
  odd.n_embd = 48;
  EXPECT_THROW(load_model(test::random_v7_checkpoint(odd, 1), on_gpu()), Error);
  EXPECT_THROW(load_model(ckpt, on_gpu(DType::Q8_0)), Error);
  LoadOptions far = on_gpu();
  far.cuda_device = cuda_device_count();
  EXPECT_THROW(load_model(ckpt, far), Error);
}

TEST(CudaRwkv7, WithoutAGpuLoadingSaysSo) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present";
  test::V7Dims dims;
  try {
    load_model(test::random_v7_checkpoint(dims, 3), on_gpu());
    FAIL() << "loaded on a GPU that is not there";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_TRUE(m.find("GPU") != std::string::npos || m.find("CUDA") != std::string::npos) << m;
  }
}

}  // namespace
}  // namespace rwkv
