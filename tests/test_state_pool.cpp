// State pools (Model::new_state_pool, step_pooled, forward_pooled) on CPU models: the pooled forms
// are the pointer forms over the pool's slots, bit for bit, and every bad call is refused before
// any state changes; HostFloats, the host memory for what a model returns.
#include <string>
#include <utility>
#include <vector>

#include "model/host_state_pool.h"
#include "rwkv/error.h"
#include "rwkv/model.h"
#include "testing.h"

namespace rwkv {
namespace {

std::unique_ptr<Model> small_model(uint32_t seed = 1, int n_layer = 2) {
  test::V7Dims dims;
  dims.n_layer = n_layer;
  return load_model(test::random_v7_checkpoint(dims, seed));
}

std::vector<float> read_slot(const StatePool& pool, int slot) {
  std::vector<float> state(pool.floats());
  pool.read(slot, state.data());
  return state;
}

// Distinct, realistic states: each the state after a different random prompt.
std::vector<std::vector<float>> prompted_states(Model& model, int n) {
  std::vector<std::vector<float>> states;
  for (int i = 0; i < n; ++i) {
    std::vector<float> s(model.state_spec().floats);
    model.init_state(s.data());
    test::run_steps(model, test::random_tokens(size_t(3 + i), model.info().vocab_size, 40 + i), s);
    states.push_back(s);
  }
  return states;
}

// Runs `call` expecting rwkv::Error with `needle` in its message.
template <typename F>
void expect_error(F call, const std::string& needle) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one naming '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// HostFloats: zeroed, movable, page-locked only where a GPU is there; a pooled step writes into it.
TEST(HostFloats, ZeroedMovableAndUsableAsLogits) {
  HostFloats empty;
  EXPECT_EQ(empty.size(), 0u);
  EXPECT_EQ(empty.data(), nullptr);
  HostFloats a(1000, true);
  ASSERT_NE(a.data(), nullptr);
  EXPECT_EQ(a.size(), 1000u);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a.data()[i], 0.f) << i;
  EXPECT_EQ(a.page_locked(), cuda_device_count() > 0);
  EXPECT_FALSE(HostFloats(10, false).page_locked());  // a CPU model's: ordinary memory
  a.data()[7] = 3.f;
  HostFloats b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(b.size(), 1000u);
  EXPECT_EQ(b.data()[7], 3.f);
  a = HostFloats(5, false);
  b = std::move(a);
  EXPECT_EQ(b.size(), 5u);

  auto model = small_model();
  const int V = model->info().vocab_size, B = 2;
  auto pool = model->new_state_pool(B);
  const int slots[] = {0, 1}, tokens[] = {3, 5};
  EXPECT_EQ(model->cuda_device(), -1);
  HostFloats logits(size_t(B) * V, model->cuda_device() >= 0);
  std::vector<float> want(size_t(B) * V);
  auto pool2 = model->new_state_pool(B);
  model->step_pooled(tokens, B, *pool, slots, logits.data());
  model->step_pooled(tokens, B, *pool2, slots, want.data());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(logits.data()[i], want[i]) << i;
}

TEST(StatePool, PooledFormsEqualThePointerFormsBitForBit) {
  auto model = small_model();
  const int V = model->info().vocab_size, B = 3, T = 5;
  const int slots[B] = {4, 0, 2};  // out of order, with gaps
  auto pool = model->new_state_pool(5);
  auto host = prompted_states(*model, B);
  for (int b = 0; b < B; ++b) pool->write(slots[b], host[size_t(b)].data());
  float* states[B] = {host[0].data(), host[1].data(), host[2].data()};
  auto expect_same_states = [&](const char* after) {
    for (int b = 0; b < B; ++b) EXPECT_EQ(read_slot(*pool, slots[b]), host[size_t(b)]) << after;
  };

  std::vector<float> want(size_t(B) * size_t(T) * size_t(V)), got(want.size());
  for (int i = 0; i < 3; ++i) {
    const auto tokens = test::random_tokens(size_t(B), V, 7 + i);
    model->step(tokens.data(), B, states, want.data());
    model->step_pooled(tokens.data(), B, *pool, slots, got.data());
    EXPECT_EQ(got, want) << "step " << i;
    expect_same_states("step");
  }
  for (LogitsMode mode : {LogitsMode::All, LogitsMode::Last, LogitsMode::None}) {
    const auto tokens = test::random_tokens(size_t(B) * size_t(T), V, 20 + int(mode));
    model->forward(tokens.data(), B, T, states, want.data(), mode);
    model->forward_pooled(tokens.data(), B, T, *pool, slots, got.data(), mode);
    EXPECT_EQ(got, want) << "forward, mode " << int(mode);
    expect_same_states("forward");
  }
  // Slots no sequence used keep the start state.
  const std::vector<float> start(pool->floats(), 0.f);
  EXPECT_EQ(read_slot(*pool, 1), start);
  EXPECT_EQ(read_slot(*pool, 3), start);
}

TEST(StatePool, ReadWriteAndCopyRoundTrip) {
  auto model = small_model();
  auto pool = model->new_state_pool(3);
  ASSERT_EQ(pool->size(), 3);
  ASSERT_EQ(pool->floats(), model->state_spec().floats);
  std::vector<float> start(pool->floats());
  model->init_state(start.data());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(read_slot(*pool, i), start);
  std::vector<float> pattern(pool->floats());
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = float(i % 251) * 0.25f - 3.f;
  pool->write(1, pattern.data());
  EXPECT_EQ(read_slot(*pool, 1), pattern);
  pool->copy(2, 1);
  EXPECT_EQ(read_slot(*pool, 2), pattern);
  EXPECT_EQ(read_slot(*pool, 0), start);
  pool->copy(1, 1);
  EXPECT_EQ(read_slot(*pool, 1), pattern);

  for (int bad : {-1, 3}) {
    expect_error([&] { pool->write(bad, pattern.data()); }, "slot " + std::to_string(bad));
    expect_error([&] { pool->read(bad, pattern.data()); }, "slot " + std::to_string(bad));
    expect_error([&] { pool->copy(bad, 0); }, "slot " + std::to_string(bad));
    expect_error([&] { pool->copy(0, bad); }, "slot " + std::to_string(bad));
  }
  EXPECT_EQ(read_slot(*pool, 0), start);
  EXPECT_THROW(model->new_state_pool(0), Error);
}

TEST(StatePool, NewSlotsHoldTheModelsStartState) {
  // RWKV-4's start state is not all zeros (its WKV exponent tracker starts very negative).
  const char* v4 = "fixtures/official/v4/rwkv-v4-L2-D64-V256-fp32.pth";
  RWKV_REQUIRE_SHARED(v4);
  auto model = load_model(test::shared_path(v4));
  std::vector<float> start(model->state_spec().floats);
  model->init_state(start.data());
  auto pool = model->new_state_pool(2);
  EXPECT_EQ(read_slot(*pool, 0), start);
  EXPECT_EQ(read_slot(*pool, 1), start);
}

TEST(StatePool, CopiedSlotsAreIndependentForks) {
  auto model = small_model(2);
  const int V = model->info().vocab_size;
  auto pool = model->new_state_pool(2);
  const auto prompt = test::random_tokens(9, V, 3);
  const int first = 0, second = 1;
  std::vector<float> logits(static_cast<size_t>(V)), again(static_cast<size_t>(V));
  model->forward_pooled(prompt.data(), 1, 9, *pool, &first, logits.data(), LogitsMode::Last);
  pool->copy(second, first);
  const int token = 5;
  model->step_pooled(&token, 1, *pool, &first, logits.data());
  const auto forked = read_slot(*pool, second);
  EXPECT_NE(read_slot(*pool, first), forked);  // the step moved only its own slot
  model->step_pooled(&token, 1, *pool, &second, again.data());
  EXPECT_EQ(again, logits);
  EXPECT_EQ(read_slot(*pool, second), read_slot(*pool, first));
}

// A pool of the right length that no CPU model made, as a GPU model's would be.
class ForeignPool : public StatePool {
 public:
  explicit ForeignPool(size_t floats) : floats_(floats) {}
  int size() const override { return 4; }
  size_t floats() const override { return floats_; }
  void write(int, const float*) override {}
  void read(int, float*) const override {}
  void copy(int, int) override {}

 private:
  size_t floats_;
};

TEST(StatePool, BadCallsAreRefusedBeforeAnythingRuns) {
  auto model = small_model(3);
  const int V = model->info().vocab_size;
  auto pool = model->new_state_pool(4);
  auto host = prompted_states(*model, 4);
  for (int i = 0; i < 4; ++i) pool->write(i, host[size_t(i)].data());
  const int tokens[3] = {1, 2, 3};
  std::vector<float> logits(3 * size_t(V));
  struct Case {
    const char* what;
    std::vector<int> slots;
    std::string needle;
  } cases[] = {
      {"duplicate", {0, 2, 0}, "slot 0 is used by two sequences"},
      {"past the end", {1, 4, 2}, "slot 4"},
      {"negative", {1, -1, 2}, "slot -1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    expect_error([&] { model->step_pooled(tokens, 3, *pool, c.slots.data(), logits.data()); },
                 c.needle);
    expect_error([&] {
      model->forward_pooled(tokens, 3, 1, *pool, c.slots.data(), logits.data(), LogitsMode::All);
    }, c.needle);
  }
  const int slot = 1;
  expect_error([&] { model->step_pooled(tokens, 0, *pool, &slot, logits.data()); }, "batch of 0");
  expect_error([&] {
    model->forward_pooled(tokens, 1, 0, *pool, &slot, logits.data(), LogitsMode::All);
  }, "0 tokens");
  // A token outside the vocabulary: the model's own check, also before any state moves.
  const int bad_token = V;
  EXPECT_THROW(model->step_pooled(&bad_token, 1, *pool, &slot, logits.data()), Error);

  // Another model's pool (states of another length), and a pool of another device.
  auto other = small_model(4, /*n_layer=*/3);
  auto other_pool = other->new_state_pool(4);
  expect_error([&] { model->step_pooled(tokens, 1, *other_pool, &slot, logits.data()); },
               "another model");
  expect_error([&] { other->step_pooled(tokens, 1, *pool, &slot, logits.data()); },
               "another model");
  ForeignPool foreign(pool->floats());
  expect_error([&] { model->step_pooled(tokens, 1, foreign, &slot, logits.data()); },
               "another device");
  expect_error([&] {
    model->forward_pooled(tokens, 1, 3, foreign, &slot, logits.data(), LogitsMode::Last);
  }, "another device");

  for (int i = 0; i < 4; ++i) EXPECT_EQ(read_slot(*pool, i), host[size_t(i)]) << "slot " << i;
}

TEST(StatePool, SlotCheckIsSharedByEveryModel) {
  // The helper a GPU model calls before its kernels run.
  ForeignPool pool(10);
  const int good[2] = {3, 0}, twice[2] = {2, 2}, outside[1] = {4};
  EXPECT_NO_THROW(model::check_pool_slots(pool, 10, good, 2));
  EXPECT_THROW(model::check_pool_slots(pool, 11, good, 2), Error);
  EXPECT_THROW(model::check_pool_slots(pool, 10, twice, 2), Error);
  EXPECT_THROW(model::check_pool_slots(pool, 10, outside, 1), Error);
  EXPECT_THROW(model::check_pool_slots(pool, 10, good, 0), Error);
}

}  // namespace
}  // namespace rwkv
