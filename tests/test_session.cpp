// The runtime session: chunked prefill, generation with stop conditions and streaming, and
// the state as a first-class object (save, load, fork, reset, raw interop).
#include <filesystem>

#include "rwkv/error.h"
#include "rwkv/session.h"
#include "testing.h"

namespace rwkv {
namespace {

std::shared_ptr<Model> small_model(uint32_t seed = 1) {
  test::V7Dims dims;
  dims.vocab = 256;
  return load_model(test::random_v7_checkpoint(dims, seed));
}

SamplerConfig greedy() {
  SamplerConfig c;
  c.temperature = 0;
  c.presence_penalty = c.frequency_penalty = 0;
  return c;
}

TEST(Session, ChunkedPrefillEqualsOneCallAndSteps) {
  auto model = small_model();
  const std::string prompt = "The quick brown fox jumps over the lazy dog, twice over.";
  Session whole(model, make_bytes_tokenizer(), greedy());
  whole.prefill(prompt);
  Session chunked(model, make_bytes_tokenizer(), greedy());
  chunked.prefill_chunk = 7;
  chunked.prefill(prompt);
  EXPECT_LE(test::compare(chunked.logits(), whole.logits()).max_abs, 1e-4);
  EXPECT_LE(test::compare(chunked.state(), whole.state()).max_abs, 1e-4);
  Session stepped(model, make_bytes_tokenizer(), greedy());
  stepped.prefill_chunk = 1;
  stepped.prefill(prompt);
  EXPECT_LE(test::compare(stepped.logits(), whole.logits()).max_abs, 1e-4);
}

TEST(Session, GenerateNeedsAPromptFirst) {
  Session s(small_model(), make_bytes_tokenizer(), greedy());
  EXPECT_THROW(s.generate({}), Error);
}

TEST(Session, StopStringEndsTheTextBeforeIt) {
  auto model = small_model(2);
  Session probe(model, make_bytes_tokenizer(), greedy());
  probe.prefill("abc");
  GenerateOptions opt;
  opt.max_tokens = 40;
  const std::string free_text = probe.generate(opt).text;
  ASSERT_GE(free_text.size(), 10u);
  // Use a piece of the greedy continuation as the stop string: the text must end right before.
  const std::string stop = free_text.substr(5, 3);
  const size_t first = free_text.find(stop);
  Session s(model, make_bytes_tokenizer(), greedy());
  s.prefill("abc");
  opt.stop = {stop};
  std::string streamed;
  const auto r = s.generate(opt, [&](std::string_view t) {
    streamed += t;
    return true;
  });
  EXPECT_EQ(r.reason, StopReason::StopString);
  EXPECT_EQ(r.text, free_text.substr(0, first));
  EXPECT_EQ(streamed, r.text);  // nothing of the stop string was ever streamed
}

TEST(Session, StopTokenAndMaxTokensAndCallback) {
  auto model = small_model(3);
  Session s(model, make_bytes_tokenizer(), greedy());
  s.prefill("hello");
  GenerateOptions opt;
  opt.max_tokens = 5;
  auto r = s.fork().generate(opt);
  EXPECT_EQ(r.reason, StopReason::MaxTokens);
  EXPECT_EQ(r.tokens.size(), 5u);
  opt.stop_tokens = {r.tokens[2]};
  const auto r2 = s.fork().generate(opt);
  EXPECT_EQ(r2.reason, StopReason::StopToken);
  EXPECT_LE(r2.tokens.size(), 3u);
  int calls = 0;
  opt.stop_tokens.clear();
  const auto r3 = s.fork().generate(opt, [&](std::string_view) { return ++calls < 2; });
  EXPECT_EQ(r3.reason, StopReason::Callback);
  EXPECT_EQ(calls, 2);
}

TEST(Session, ForkIsIndependentAndDeterministic) {
  auto model = small_model(4);
  SamplerConfig c;
  c.seed = 11;
  Session a(model, make_bytes_tokenizer(), c);
  a.prefill("fork me");
  Session b = a.fork();
  GenerateOptions opt;
  opt.max_tokens = 20;
  const auto ra = a.generate(opt), rb = b.generate(opt);
  EXPECT_EQ(ra.tokens, rb.tokens);  // same state, same RNG position
  EXPECT_NE(a.state(), Session(model, make_bytes_tokenizer(), c).state());
}

TEST(Session, SavedStateResumesExactly) {
  auto model = small_model(5);
  const std::string path = test::temp_dir() + "/session.state";
  Session a(model, make_bytes_tokenizer(), greedy());
  a.prefill("remember this");
  a.save_state(path);
  Session b(model, make_bytes_tokenizer(), greedy());
  b.load_state(path);
  EXPECT_EQ(b.state(), a.state());
  a.prefill(" and go on");
  b.prefill(" and go on");
  EXPECT_EQ(b.logits(), a.logits());
  // Raw export/import in the official layout.
  const std::string raw = test::temp_dir() + "/session.raw";
  a.export_raw_state(raw);
  EXPECT_EQ(std::filesystem::file_size(raw), a.state().size() * 4);
  Session c(model, make_bytes_tokenizer(), greedy());
  c.import_raw_state(raw);
  EXPECT_EQ(c.state(), a.state());
  // Reset returns to the start state.
  c.reset();
  EXPECT_EQ(c.state(), Session(model, make_bytes_tokenizer(), greedy()).state());
}

TEST(Session, RefusesAnotherModelsStateAndKeepsItsOwn) {
  auto model = small_model(6), other = small_model(7);
  const std::string path = test::temp_dir() + "/other.state";
  Session o(other, make_bytes_tokenizer(), greedy());
  o.prefill("x");
  o.save_state(path);
  Session s(model, make_bytes_tokenizer(), greedy());
  s.prefill("mine");
  const auto before = s.state();
  try {
    s.load_state(path);
    FAIL() << "loaded another model's state";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_EQ(s.state(), before);
  EXPECT_THROW(s.import_raw_state(test::temp_dir() + "/missing.raw"), Error);
  EXPECT_EQ(s.state(), before);
}

// A model that keeps its states away from the host, as a GPU model does, and counts the copies
// between its pools and the host. It runs only through the pooled forms.
class DeviceLikeModel : public Model {
 public:
  explicit DeviceLikeModel(std::shared_ptr<Model> inner) : inner_(std::move(inner)) {}
  const ModelInfo& info() const override { return inner_->info(); }
  StateSpec state_spec() const override { return inner_->state_spec(); }
  std::vector<StatePiece> state_layout() const override { return inner_->state_layout(); }
  void init_state(float* state) const override { inner_->init_state(state); }
  size_t decode_bytes_per_token() const override { return inner_->decode_bytes_per_token(); }
  DType weight_dtype() const override { return inner_->weight_dtype(); }
  void step(const int*, int, float* const*, float*) override { ADD_FAILURE() << "pointer step"; }
  void forward(const int*, int, int, float* const*, float*, LogitsMode) override {
    ADD_FAILURE() << "pointer forward";
  }
  std::unique_ptr<StatePool> new_state_pool(int n) const override {
    return std::make_unique<Pool>(inner_->new_state_pool(n), copies);
  }
  void step_pooled(const int* tokens, int B, StatePool& pool, const int* slots,
                   float* logits) override {
    inner_->step_pooled(tokens, B, *dynamic_cast<Pool&>(pool).inner, slots, logits);
  }
  void forward_pooled(const int* tokens, int B, int T, StatePool& pool, const int* slots,
                      float* logits, LogitsMode mode) override {
    inner_->forward_pooled(tokens, B, T, *dynamic_cast<Pool&>(pool).inner, slots, logits, mode);
  }

  struct Copies {
    int downloads = 0, uploads = 0;
  };
  std::shared_ptr<Copies> copies = std::make_shared<Copies>();

 private:
  struct Pool : StatePool {
    Pool(std::unique_ptr<StatePool> pool, std::shared_ptr<Copies> counts)
        : inner(std::move(pool)), copies(std::move(counts)) {}
    int size() const override { return inner->size(); }
    size_t floats() const override { return inner->floats(); }
    void write(int slot, const float* state) override {
      ++copies->uploads;
      inner->write(slot, state);
    }
    void read(int slot, float* state) const override {
      ++copies->downloads;
      inner->read(slot, state);
    }
    void copy(int dst, int src) override { inner->copy(dst, src); }
    std::unique_ptr<StatePool> inner;
    std::shared_ptr<Copies> copies;
  };
  std::shared_ptr<Model> inner_;
};

TEST(Session, KeepsTheStateInTheModelsPoolWhileDecoding) {
  auto model = small_model(10);
  auto device = std::make_shared<DeviceLikeModel>(model);
  const auto& copies = *device->copies;
  Session host(model, make_bytes_tokenizer(), greedy());
  Session s(device, make_bytes_tokenizer(), greedy());
  host.prefill("stay on the device");
  s.prefill("stay on the device");
  GenerateOptions opt;
  opt.max_tokens = 12;
  EXPECT_EQ(s.generate(opt).tokens, host.generate(opt).tokens);
  EXPECT_EQ(copies.downloads, 0);
  EXPECT_EQ(copies.uploads, 0);
  // A const look at the state downloads it once and sends nothing back.
  const Session& view = s;
  EXPECT_EQ(view.state(), host.state());
  EXPECT_EQ(view.state(), host.state());
  s.prefill(" on");
  host.prefill(" on");
  EXPECT_EQ(s.logits(), host.logits());
  EXPECT_EQ(copies.downloads, 1);
  EXPECT_EQ(copies.uploads, 0);
  // Saving sees the state the pool holds now.
  const std::string path = test::temp_dir() + "/device.state";
  s.save_state(path);
  EXPECT_EQ(copies.downloads, 2);
  Session loaded(model, make_bytes_tokenizer(), greedy());
  loaded.load_state(path);
  EXPECT_EQ(loaded.state(), host.state());
  // A fork carries the state into a pool of its own; the two go on independently.
  Session forked = s.fork();
  s.prefill("A");
  forked.prefill("B");
  Session host_b = host.fork();
  host.prefill("A");
  host_b.prefill("B");
  EXPECT_EQ(s.logits(), host.logits());
  EXPECT_EQ(forked.logits(), host_b.logits());
  EXPECT_EQ(forked.state(), host_b.state());
  EXPECT_EQ(s.state(), host.state());
}

TEST(Session, StateWrittenThroughTheReferenceIsWhereTheNextStepStarts) {
  for (bool on_device : {false, true}) {
    SCOPED_TRACE(on_device ? "device-like model" : "CPU model");
    auto model = small_model(11);
    std::shared_ptr<Model> runner = model;
    if (on_device) runner = std::make_shared<DeviceLikeModel>(model);
    Session a(model, make_bytes_tokenizer(), greedy());
    a.prefill("first part");
    Session b(runner, make_bytes_tokenizer(), greedy());
    b.prefill("something else entirely");
    b.state() = a.state();
    a.prefill(", second part");
    b.prefill(", second part");
    EXPECT_EQ(b.logits(), a.logits());
    EXPECT_EQ(b.state(), a.state());
    // Copy assignment: an independent session with the same state.
    Session c(runner, make_bytes_tokenizer(), greedy());
    c = b;
    c.prefill("!");
    a.prefill("!");
    EXPECT_EQ(c.logits(), a.logits());
    EXPECT_NE(c.state(), b.state());
    // Reset reaches the pool too.
    c.reset();
    c.prefill("x");
    Session fresh(model, make_bytes_tokenizer(), greedy());
    fresh.prefill("x");
    EXPECT_EQ(c.logits(), fresh.logits());
  }
}

// Length of the valid UTF-8 sequence starting at text[i], or 0 if none starts there.
size_t utf8_sequence(const std::string& text, size_t i) {
  const auto c = uint8_t(text[i]);
  const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > text.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((uint8_t(text[i + k]) & 0xc0) != 0x80) return 0;
  }
  return n;
}

TEST(Session, StreamsWholeUtf8Characters) {
  // The prompt primes a byte-level model with multi-byte characters; whatever it emits, no
  // streamed piece may end inside a valid multi-byte character.
  auto model = small_model(8);
  for (uint64_t seed = 0; seed < 4; ++seed) {
    SamplerConfig c;
    c.seed = seed;
    c.temperature = 1.5f;
    c.top_p = 1;
    Session s(model, make_bytes_tokenizer(), c);
    s.prefill("\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    GenerateOptions opt;
    opt.max_tokens = 200;
    std::vector<size_t> cuts;
    std::string all;
    const auto r = s.generate(opt, [&](std::string_view piece) {
      all += piece;
      cuts.push_back(all.size());
      return true;
    });
    EXPECT_EQ(all, r.text);
    std::vector<bool> inside(all.size() + 1, false);
    for (size_t i = 0; i < all.size();) {
      const size_t n = utf8_sequence(all, i);
      for (size_t k = 1; k < n; ++k) inside[i + k] = true;
      i += n ? n : 1;
    }
    for (size_t cut : cuts) EXPECT_FALSE(inside[cut]) << "piece ends inside a character at " << cut;
  }
}

}  // namespace
}  // namespace rwkv

namespace rwkv {
namespace {

// A tokenizer with fewer ids than the model has rows, like World (65530 of 65536).
class SmallTokenizer : public Tokenizer {
 public:
  std::string name() const override { return "small"; }
  std::vector<int> encode(std::string_view bytes) const override {
    std::vector<int> ids;
    for (unsigned char c : bytes) ids.push_back(c % 100);
    return ids;
  }
  std::string decode(int id) const override {
    if (id < 0 || id >= 100) fail("id ", id, " outside the small vocabulary");
    return std::string(1, char('a' + id % 26));
  }
  int vocab_size() const override { return 100; }
};

TEST(Session, NeverSamplesIdsPastTheTokenizersVocabulary) {
  SamplerConfig c;
  c.temperature = 2;
  c.top_p = 1;
  Session s(small_model(9), std::make_shared<SmallTokenizer>(), c);
  s.prefill("abc");
  GenerateOptions opt;
  opt.max_tokens = 300;
  const auto r = s.generate(opt);
  ASSERT_EQ(r.tokens.size(), 300u);
  for (int t : r.tokens) EXPECT_LT(t, 100);
}

}  // namespace
}  // namespace rwkv
