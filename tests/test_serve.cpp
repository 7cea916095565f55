// The serving layer in process (serve/): prefix cache, request parsing, named states, and the
// engine's batching on the embedded demo model: concurrent jobs give exactly the tokens each
// gives alone, a cached prefix gives the same tokens as a cold run, cancelled and timed-out
// jobs free their slots. The HTTP side with real clients: tests/serve/.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "rwkv/session.h"
#include "rwkv/streamed_text.h"
#include "serve/api.h"
#include "serve/engine.h"
#include "serve/prefix_cache.h"
#include "serve/state_store.h"
#include "testing.h"

namespace rwkv::serve {
namespace {

using nlohmann::json;
const std::string kModel = std::string(RWKV_SOURCE_DIR) + "/models/fortunes-rwkv7.pth";

std::shared_ptr<Model> demo_model() {
  static std::shared_ptr<Model> model = load_model(kModel);
  return model;
}

// ---- StreamedText ----

TEST(StreamedText, HoldsBackPrefixesAndCutsAtStop) {
  StreamedText t({"\n\nUser:", "END"});
  EXPECT_FALSE(t.push("Hello"));
  EXPECT_EQ(t.take(), "Hello");
  EXPECT_FALSE(t.push(" wor"));
  EXPECT_FALSE(t.push("ld\n"));
  EXPECT_EQ(t.take(), " world");  // "\n" may start the stop string
  EXPECT_FALSE(t.push("\nUs"));
  EXPECT_EQ(t.take(), "");
  EXPECT_TRUE(t.push("er: next"));
  EXPECT_EQ(t.take(), "");
  EXPECT_EQ(t.finish(), "");
  EXPECT_EQ(t.text(), "Hello world");
}

TEST(StreamedText, NeverSplitsUtf8AndFlushesAtTheEnd) {
  StreamedText t({"zz"});
  const std::string euro = "\xe2\x82\xac";
  EXPECT_FALSE(t.push(euro.substr(0, 2)));
  EXPECT_EQ(t.take(), "");
  EXPECT_FALSE(t.push(euro.substr(2) + "z"));
  EXPECT_EQ(t.take(), euro);  // "z" held back
  EXPECT_EQ(t.finish(), "z");
}

// ---- PrefixCache ----

TEST(PrefixCache, FindsTheLongestAlignedPrefixOfTheSameOrigin) {
  PrefixCache cache(1 << 20, 4);
  const std::vector<int> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  cache.insert(0, std::span(tokens).first(4), std::vector<float>{4.f});
  cache.insert(0, std::span(tokens).first(8), std::vector<float>{8.f});
  cache.insert(7, std::span(tokens).first(8), std::vector<float>{-8.f});
  std::vector<float> state;
  EXPECT_EQ(cache.lookup(0, tokens, 9, state), 8u);
  EXPECT_EQ(state, std::vector<float>{8.f});
  EXPECT_EQ(cache.lookup(0, tokens, 7, state), 4u);  // max_len caps it
  EXPECT_EQ(state, std::vector<float>{4.f});
  EXPECT_EQ(cache.lookup(7, tokens, 10, state), 8u);
  EXPECT_EQ(state, std::vector<float>{-8.f});
  EXPECT_EQ(cache.lookup(3, tokens, 10, state), 0u);  // another origin
  const std::vector<int> other = {1, 2, 3, 4, 5, 6, 0, 8};
  EXPECT_EQ(cache.lookup(0, other, 8, state), 4u);  // diverges inside the second block
  EXPECT_THROW(cache.insert(0, std::span(tokens).first(5), std::vector<float>{}), Error);
}

TEST(PrefixCache, EvictsLeastRecentlyUsedWithinItsBudget) {
  const size_t entry = 4 * sizeof(int) + 100 * sizeof(float);
  PrefixCache cache(3 * entry, 4);
  std::vector<float> state(100), got;
  for (int i = 0; i < 3; ++i) cache.insert(0, std::vector<int>{i, i, i, i}, state);
  EXPECT_EQ(cache.entries(), 3u);
  EXPECT_EQ(cache.lookup(0, std::vector<int>{0, 0, 0, 0, 9}, 4, got), 4u);  // 0 is now recent
  cache.insert(0, std::vector<int>{3, 3, 3, 3}, state);                       // evicts 1
  EXPECT_EQ(cache.entries(), 3u);
  EXPECT_LE(cache.bytes(), 3 * entry);
  EXPECT_EQ(cache.lookup(0, std::vector<int>{1, 1, 1, 1, 9}, 4, got), 0u);
  EXPECT_EQ(cache.lookup(0, std::vector<int>{0, 0, 0, 0, 9}, 4, got), 4u);
  PrefixCache off(0, 4);
  off.insert(0, std::vector<int>{1, 2, 3, 4}, state);
  EXPECT_EQ(off.entries(), 0u);
}

// ---- Requests ----

struct Parse {
  std::unique_ptr<Tokenizer> tokenizer = make_bytes_tokenizer();
  ApiLimits limits;
  ApiRequest operator()(const std::string& body, bool chat = false) const {
    return parse_request(json::parse(body), chat, *tokenizer, 256, SamplerConfig{}, limits);
  }
  // The parameter a bad body is refused for.
  std::string refused(const std::string& body, bool chat = false) const {
    try {
      (*this)(body, chat);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << body;
      return e.param;
    }
    ADD_FAILURE() << "accepted: " << body;
    return {};
  }
};

TEST(ApiRequest, ParsesCompletionParameters) {
  Parse parse;
  const ApiRequest r = parse(R"({"model": "m", "prompt": "ab", "max_tokens": 7, "temperature": 0.5,
      "top_p": 0.9, "top_k": 5, "min_p": 0.1, "presence_penalty": 0.3, "frequency_penalty": -0.2,
      "stop": ["x", "yz"], "seed": 42, "stream": true, "stream_options": {"include_usage": true},
      "n": 1, "state": "s1", "save_state": "s2", "logit_bias": {"0": -100, "65": 2.5}})");
  EXPECT_EQ(r.job.prompt, (std::vector<int>{'a', 'b'}));
  EXPECT_EQ(r.job.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.job.sampler.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.job.sampler.top_p, 0.9f);
  EXPECT_EQ(r.job.sampler.top_k, 5);
  EXPECT_FLOAT_EQ(r.job.sampler.min_p, 0.1f);
  EXPECT_FLOAT_EQ(r.job.sampler.presence_penalty, 0.3f);
  EXPECT_FLOAT_EQ(r.job.sampler.frequency_penalty, -0.2f);
  EXPECT_EQ(r.job.sampler.seed, 42u);
  EXPECT_EQ(r.job.stop, (std::vector<std::string>{"x", "yz"}));
  EXPECT_EQ(r.job.stop_tokens, std::vector<int>{0});
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.state, "s1");
  EXPECT_EQ(r.save_state, "s2");
  EXPECT_EQ(r.job.logit_bias, (std::vector<std::pair<int, float>>{{0, -100.f}, {65, 2.5f}}));
  EXPECT_EQ(parse(R"({"prompt": [5, 6, 7]})").job.prompt, (std::vector<int>{5, 6, 7}));
  EXPECT_EQ(parse(R"({"prompt": ["ab"]})").job.prompt, (std::vector<int>{'a', 'b'}));
  EXPECT_EQ(parse(R"({"prompt": "a"})").job.max_tokens, parse.limits.default_max_tokens);
}

TEST(ApiRequest, RefusesBadParametersByName) {
  Parse parse;
  EXPECT_EQ(parse.refused(R"({})"), "prompt");
  EXPECT_EQ(parse.refused(R"({"prompt": ""})"), "prompt");
  EXPECT_EQ(parse.refused(R"({"prompt": 5})"), "prompt");
  EXPECT_EQ(parse.refused(R"({"prompt": [1, 256]})"), "prompt");
  EXPECT_EQ(parse.refused(R"({"prompt": [1, -1]})"), "prompt");
  EXPECT_EQ(parse.refused(R"({"prompt": ["a", "b"]})"), "prompt");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "max_tokens": 0})"), "max_tokens");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "max_tokens": 100000})"), "max_tokens");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "max_tokens": 1.5})"), "max_tokens");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "temperature": 3})"), "temperature");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "temperature": "hot"})"), "temperature");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "top_p": -0.1})"), "top_p");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "top_k": -1})"), "top_k");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "presence_penalty": 2.5})"), "presence_penalty");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]})"), "stop");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "stop": [1]})"), "stop");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "n": 2})"), "n");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "echo": true})"), "echo");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "logprobs": 2})"), "logprobs");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "logit_bias": {"1": 500}})"), "logit_bias");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "logit_bias": {"x": 5}})"), "logit_bias");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "logit_bias": {"256": 5}})"), "logit_bias");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "logit_bias": [1]})"), "logit_bias");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "stream": "yes"})"), "stream");
  EXPECT_EQ(parse.refused(R"({"prompt": "a", "seed": "x"})"), "seed");
  EXPECT_EQ(parse.refused(R"([1, 2])"), "");
  EXPECT_EQ(parse.refused(R"({})", true), "messages");
  EXPECT_EQ(parse.refused(R"({"messages": []})", true), "messages");
  EXPECT_EQ(parse.refused(R"({"messages": [{"content": "x"}]})", true), "messages[0]");
  EXPECT_EQ(parse.refused(R"({"messages": [{"role": "tool", "content": "x"}]})", true), "messages[0].role");
  EXPECT_EQ(parse.refused(R"({"messages": [{"role": "user", "content": 3}]})", true), "messages[0].content");
  EXPECT_EQ(parse.refused(R"({"messages": [{"role": "user", "content": "x"}], "tools": []})", true), "tools");
  parse.limits.max_prompt_tokens = 3;
  EXPECT_EQ(parse.refused(R"({"prompt": "abcd"})"), "prompt");
}

TEST(ApiRequest, ChatTemplateTokenizesEachMessageAlone) {
  Parse parse;
  const ApiRequest r = parse(R"({"messages": [
      {"role": "system", "content": "Be brief.\r\n\r\n\r\nReally."},
      {"role": "user", "content": [{"type": "text", "text": "  hi  "}]},
      {"role": "assistant", "content": "Hello."},
      {"role": "user", "content": "bye"}]})", true);
  EXPECT_EQ(parse.tokenizer->decode(r.job.prompt),
            "System: Be brief.\nReally.\n\nUser: hi\n\nAssistant: Hello.\n\nUser: bye\n\nAssistant:");
  EXPECT_EQ(r.job.stop, std::vector<std::string>{"\n\n"});
  EXPECT_EQ(clean_message("a\n\n\nb\r\nc \n"), "a\nb\nc");
}

TEST(ApiResponse, ChatRepliesStartAtTheirFirstVisibleCharacter) {
  ReplyStart reply;
  EXPECT_EQ(reply(" "), "");
  EXPECT_EQ(reply("\n "), "");
  EXPECT_EQ(reply(" Hi"), "Hi");
  EXPECT_EQ(reply(" there"), " there");
}

TEST(ApiResponse, HasTheOpenAiShape) {
  const ResponseMeta meta{"cmpl-1", "m", 5, false};
  Usage usage{3, 2, 1};
  const json r = response_json(meta, "hi", Finish::Length, usage);
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["choices"][0]["text"], "hi");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["usage"]["total_tokens"], 5);
  EXPECT_EQ(r["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
  const ResponseMeta chat{"chatcmpl-1", "m", 5, true};
  EXPECT_EQ(chunk_json(chat, "x", std::nullopt)["choices"][0]["delta"]["content"], "x");
  EXPECT_EQ(chunk_json(chat, "", Finish::Stop)["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(ApiError(429, "busy").body()["error"]["type"], "rate_limit_error");
  // Generated bytes that are not UTF-8 go out as U+FFFD instead of failing the answer.
  EXPECT_EQ(wire(json{{"text", "a\xa3" "b"}}), "{\"text\":\"a\xef\xbf\xbd" "b\"}");
}

// ---- Named states ----

TEST(StateStore, ValidatesNamesSavesLoadsAndStaysBounded) {
  auto model = demo_model();
  const std::string dir = test::temp_dir() + "/states";
  std::filesystem::remove_all(dir);
  const size_t floats = model->state_spec().floats;
  StateStore store(dir, *model, 2, 1 << 30);
  for (const char* bad : {"", "../x", "a/b", ".hidden", "-x", "a b", "x.state",
                          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}) {
    EXPECT_FALSE(StateStore::valid_name(bad)) << bad;
    EXPECT_THROW(store.check_save(bad), ApiError) << bad;
  }
  EXPECT_TRUE(StateStore::valid_name("chat_42-b"));
  std::vector<float> state(floats, 0.25f);
  store.save("one", state);
  EXPECT_EQ(store.load("one"), state);
  store.save("one", state);  // replacing a name does not count twice
  store.save("two", state);
  try {
    store.save("three", state);
    ADD_FAILURE() << "a third file fitted in a folder bounded to two";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 507);
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/three.state"));
  EXPECT_EQ(store.names(), (std::vector<std::string>{"one", "two"}));
  try {
    store.load("absent");
    ADD_FAILURE();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 404);
  }
  std::ofstream(dir + "/junk.state") << "not a state";
  try {
    store.load("junk");
    ADD_FAILURE();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
  }
  StateStore off("", *model, 2, 1 << 30);
  EXPECT_THROW(off.load("one"), ApiError);
}

TEST(StateStore, LoadsAStateTunedCheckpoint) {
  auto model = demo_model();
  const ModelInfo& info = model->info();
  const std::string dir = test::temp_dir() + "/tuned";
  std::filesystem::remove_all(dir);
  StateStore store(dir, *model, 10, 1 << 30);
  // blocks.L.att.time_state (H, N, N), fp32, value l + position / 1e6.
  const size_t per = size_t(info.n_head) * size_t(info.head_size) * size_t(info.head_size);
  std::vector<std::vector<float>> data(size_t(info.n_layer), std::vector<float>(per));
  std::vector<TensorView> tensors;
  for (int l = 0; l < info.n_layer; ++l) {
    for (size_t i = 0; i < per; ++i) data[size_t(l)][i] = float(l) + float(i) * 1e-6f;
    tensors.push_back({cat("blocks.", l, ".att.time_state"), DType::F32,
                       {info.n_head, info.head_size, info.head_size}, data[size_t(l)].data()});
  }
  save_pth(dir + "/tuned.pth", tensors);
  const std::vector<float> state = store.load("tuned");
  std::vector<float> start(state.size());
  model->init_state(start.data());
  for (const StatePiece& piece : model->state_layout()) {
    if (piece.name.ends_with(".att_kv")) {
      const int l = std::stoi(piece.name.substr(7));
      // RWKV-7 keeps (H, N_value, N_key), the training kernels' layout: copied as is.
      EXPECT_TRUE(std::equal(data[size_t(l)].begin(), data[size_t(l)].end(), state.begin() + ptrdiff_t(piece.offset)))
          << piece.name;
    } else {
      EXPECT_TRUE(std::equal(start.begin() + ptrdiff_t(piece.offset), start.begin() + ptrdiff_t(piece.offset + piece.numel),
                             state.begin() + ptrdiff_t(piece.offset)))
          << piece.name << " keeps its start value";
    }
  }
  // A layer missing, or the wrong shape: refused with 400.
  tensors.pop_back();
  save_pth(dir + "/partial.pth", tensors);
  tensors[0].shape = {1, int64_t(per)};
  tensors[0].shape[1] -= 1;
  save_pth(dir + "/bad.pth", tensors);
  for (const char* name : {"partial", "bad"}) {
    try {
      store.load(name);
      ADD_FAILURE() << name;
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << name;
    }
  }
}

// ---- Engine ----

struct Result {
  std::string text;
  Event done;
};

Result collect(Stream& stream) {
  Result r;
  for (Event e;;) {
    if (!stream.next(e, std::chrono::milliseconds(60000))) {
      ADD_FAILURE() << "no event for a minute";
      return r;
    }
    if (e.kind == Event::Kind::Text) {
      r.text += e.text;
    } else {
      r.done = std::move(e);
      return r;
    }
  }
}

Job job_for(const std::string& prompt, uint64_t seed, int max_tokens = 40) {
  Job job;
  for (unsigned char c : prompt) job.prompt.push_back(c);
  job.sampler.temperature = 1.0f;
  job.sampler.top_p = 0.9f;
  job.sampler.seed = seed;
  job.max_tokens = max_tokens;
  job.stop_tokens = {0};
  return job;
}

// A job that runs until it is stopped from outside.
Job endless(const std::string& prompt, uint64_t seed) {
  Job job = job_for(prompt, seed, 1 << 30);
  job.stop_tokens.clear();
  return job;
}

EngineOptions engine_options(int slots) {
  EngineOptions o;
  o.slots = slots;
  o.prefill_chunk = 16;
  o.decode_group = 4;
  o.cache_bytes = 0;
  return o;
}

const std::vector<std::string> kPrompts = {
    "Q: Why did the programmer", "Never trust a", "The secret of life is",
    "A journey of a thousand miles", "If at first you don't succeed, try", "You will meet"};

TEST(Engine, ConcurrentJobsGiveExactlyTheirTokensAlone) {
  auto model = demo_model();
  auto tokenizer = std::shared_ptr<const Tokenizer>(make_bytes_tokenizer());
  const int n = 12;
  std::vector<Result> alone(n), together(n);
  {
    Engine engine(model, tokenizer, engine_options(1));
    for (int i = 0; i < n; ++i) {
      auto s = engine.submit(job_for(kPrompts[size_t(i) % kPrompts.size()], uint64_t(i)));
      alone[size_t(i)] = collect(*s);
    }
  }
  Engine engine(model, tokenizer, engine_options(8));  // 12 jobs through 8 slots
  std::vector<std::shared_ptr<Stream>> streams;
  for (int i = 0; i < n; ++i) {
    streams.push_back(engine.submit(job_for(kPrompts[size_t(i) % kPrompts.size()], uint64_t(i))));
  }
  for (int i = 0; i < n; ++i) together[size_t(i)] = collect(*streams[size_t(i)]);
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(together[size_t(i)].text, alone[size_t(i)].text) << "job " << i;
    EXPECT_EQ(together[size_t(i)].done.finish, alone[size_t(i)].done.finish);
    EXPECT_EQ(together[size_t(i)].done.usage.completion_tokens,
              alone[size_t(i)].done.usage.completion_tokens);
    EXPECT_GT(alone[size_t(i)].text.size(), 0u);
  }
}

// Prompts prefilled together (prefill_batch > 1, as on a GPU): prompts of different lengths
// advance together without crossing their chunk ends, and give the greedy tokens they give
// alone (batched products round differently, so sampled tokens are not compared).
TEST(Engine, BatchedPrefillGivesTheGreedyTokensAlone) {
  auto model = demo_model();
  auto tokenizer = std::shared_ptr<const Tokenizer>(make_bytes_tokenizer());
  const auto greedy = [](int i) {
    Job job = job_for(kPrompts[size_t(i) % kPrompts.size()] + std::string(size_t(3 * i), '.'), uint64_t(i), 30);
    job.sampler.temperature = 0;
    return job;
  };
  const int n = 10;
  std::vector<Result> alone(n);
  {
    Engine engine(model, tokenizer, engine_options(1));
    for (int i = 0; i < n; ++i) alone[size_t(i)] = collect(*engine.submit(greedy(i)));
  }
  EngineOptions o = engine_options(8);
  o.prefill_batch = 8;
  o.cache_bytes = 64 << 20;
  Engine engine(model, tokenizer, o);
  std::vector<std::shared_ptr<Stream>> streams;
  for (int i = 0; i < n; ++i) streams.push_back(engine.submit(greedy(i)));
  for (int i = 0; i < n; ++i) {
    const Result r = collect(*streams[size_t(i)]);
    EXPECT_EQ(r.text, alone[size_t(i)].text) << "job " << i;
    EXPECT_EQ(r.done.usage.prompt_tokens, alone[size_t(i)].done.usage.prompt_tokens);
  }
  // Their chunk-end states went to the cache.
  const Result again = collect(*engine.submit(greedy(n - 1)));
  EXPECT_EQ(again.done.usage.cached_tokens, (again.done.usage.prompt_tokens - 1) / 16 * 16);
  EXPECT_EQ(again.text, alone[size_t(n - 1)].text);
}

TEST(Engine, MatchesASessionWithTheSameSampler) {
  auto model = demo_model();
  auto tokenizer = std::shared_ptr<const Tokenizer>(make_bytes_tokenizer());
  Job job = job_for("The secret of life is", 7, 60);
  job.want_final_state = true;
  Session session(model, tokenizer, job.sampler);
  session.prefill("The secret of life is");
  GenerateOptions opt;
  opt.max_tokens = 60;
  opt.stop_tokens = {0};
  const GenerateResult want = session.generate(opt);
  Engine engine(model, tokenizer, engine_options(2));
  const Result got = collect(*engine.submit(job));
  EXPECT_EQ(got.text, want.text);
  ASSERT_EQ(got.done.final_state.size(), session.state().size());
  const test::ErrorStats e = test::compare(got.done.final_state, session.state());
  EXPECT_LT(e.max_abs, 1e-4) << "final state vs the session's (different prefill chunks)";
}

TEST(Engine, CachedPrefixGivesTheColdTokensAndSkipsThePrompt) {
  auto model = demo_model();
  auto tokenizer = std::shared_ptr<const Tokenizer>(make_bytes_tokenizer());
  EngineOptions o = engine_options(2);
  o.cache_bytes = 64 << 20;
  Engine engine(model, tokenizer, o);
  const std::string history =
      "Q: What is the meaning of it all?\nA: Nobody knows, but the cookies are good.\n%\n";
  const Result cold = collect(*engine.submit(job_for(history + "Q: And tomorrow?", 3)));
  EXPECT_EQ(cold.done.usage.cached_tokens, 0);
  const Result warm = collect(*engine.submit(job_for(history + "Q: And tomorrow?", 3)));
  EXPECT_EQ(warm.text, cold.text);
  const int len = int(history.size() + 16);
  EXPECT_EQ(warm.done.usage.cached_tokens, (len - 1) / 16 * 16);
  // A longer conversation reuses the shared part.
  const Result next = collect(*engine.submit(job_for(history + "Q: And tomorrow? Q: Why?", 4)));
  EXPECT_GE(next.done.usage.cached_tokens, int(history.size()) / 16 * 16);
  EngineOptions cold_o = engine_options(2);
  Engine cold_engine(model, tokenizer, cold_o);
  EXPECT_EQ(collect(*cold_engine.submit(job_for(history + "Q: And tomorrow? Q: Why?", 4))).text,
            next.text);
}

TEST(Engine, CancelledAndTimedOutJobsFreeTheirSlot) {
  auto model = demo_model();
  auto tokenizer = std::shared_ptr<const Tokenizer>(make_bytes_tokenizer());
  Engine engine(model, tokenizer, engine_options(1));
  auto first = engine.submit(endless("Never trust a", 1));
  Event e;
  ASSERT_TRUE(first->next(e, std::chrono::milliseconds(60000)));  // it is running
  first->cancel();
  Job late = endless("Never trust a", 2);
  late.timeout_s = 0.3;
  const Result timed_out = collect(*engine.submit(late));
  EXPECT_EQ(timed_out.done.finish, Finish::Timeout);
  const Result after = collect(*engine.submit(job_for("Never trust a", 3, 5)));
  EXPECT_EQ(after.done.finish, Finish::Length);
  EXPECT_EQ(after.done.usage.completion_tokens, 5);
  EXPECT_EQ(engine.stats().active, 0);
}

TEST(Engine, RefusesInvalidJobsAndAFullQueue) {
  auto model = demo_model();
  auto tokenizer = std::shared_ptr<const Tokenizer>(make_bytes_tokenizer());
  EngineOptions o = engine_options(1);
  o.max_queued = 1;
  Engine engine(model, tokenizer, o);
  EXPECT_THROW(engine.submit(Job{}), Error);
  Job bad = job_for("x", 1);
  bad.prompt.push_back(256);
  EXPECT_THROW(engine.submit(bad), Error);
  Job wrong_state = job_for("x", 1);
  wrong_state.initial_state.resize(3);
  EXPECT_THROW(engine.submit(wrong_state), Error);
  Job bad_sampler = job_for("x", 1);
  bad_sampler.sampler.top_p = 2;
  EXPECT_THROW(engine.submit(bad_sampler), Error);
  // One running, one queued: the third is refused.
  auto running = engine.submit(endless("Never", 1));
  Event e;
  ASSERT_TRUE(running->next(e, std::chrono::milliseconds(60000)));
  auto queued = engine.submit(job_for("Never", 2, 3));
  ASSERT_NE(queued, nullptr);
  EXPECT_EQ(engine.submit(job_for("Never", 3, 3)), nullptr);
  running->cancel();
  EXPECT_EQ(collect(*queued).done.finish, Finish::Length);
}

TEST(Engine, ShutdownEndsEveryJob) {
  auto model = demo_model();
  auto tokenizer = std::shared_ptr<const Tokenizer>(make_bytes_tokenizer());
  auto engine = std::make_unique<Engine>(model, tokenizer, engine_options(1));
  auto running = engine->submit(endless("Never", 1));
  auto queued = engine->submit(endless("Never", 2));
  Event e;
  ASSERT_TRUE(running->next(e, std::chrono::milliseconds(60000)));
  engine->shutdown();
  EXPECT_EQ(collect(*running).done.finish, Finish::Cancelled);
  EXPECT_EQ(collect(*queued).done.finish, Finish::Cancelled);
  EXPECT_EQ(engine->submit(job_for("Never", 3, 3)), nullptr);
}

// The engine on a GPU (skipped without one): concurrent greedy jobs give the tokens they give
// alone, and a cached prefix the cold tokens. (Seeded sampling is not compared: the GPU's
// batched products round differently from its one-sequence ones.)
TEST(EngineCuda, BatchesAndCachesOnTheGpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  LoadOptions gpu;
  gpu.backend = Backend::Cuda;
  std::shared_ptr<Model> model = load_model(kModel, gpu);
  auto tokenizer = std::shared_ptr<const Tokenizer>(make_bytes_tokenizer());
  const auto greedy = [](const std::string& prompt, int i) {
    Job job = job_for(prompt, uint64_t(i), 40);
    job.sampler.temperature = 0;
    return job;
  };
  const int n = 12;
  std::vector<Result> alone(n);
  EngineOptions one = engine_options(1);
  one.decode_group = 0;
  {
    Engine engine(model, tokenizer, one);
    for (int i = 0; i < n; ++i) alone[size_t(i)] = collect(*engine.submit(greedy(kPrompts[size_t(i) % 6] + std::string(size_t(i), '!'), i)));
  }
  EngineOptions many = engine_options(8);
  many.decode_group = 0;
  many.prefill_batch = 8;
  many.cache_bytes = 64 << 20;
  Engine engine(model, tokenizer, many);
  std::vector<std::shared_ptr<Stream>> streams;
  for (int i = 0; i < n; ++i) streams.push_back(engine.submit(greedy(kPrompts[size_t(i) % 6] + std::string(size_t(i), '!'), i)));
  int same = 0;
  for (int i = 0; i < n; ++i) {
    const Result r = collect(*streams[size_t(i)]);
    EXPECT_TRUE(r.done.finish == Finish::Stop || r.done.finish == Finish::Length);
    same += r.text == alone[size_t(i)].text;
  }
  EXPECT_EQ(same, n) << "greedy texts equal to their alone runs";
  const std::string history(100, 'x');
  const Result cold = collect(*engine.submit(greedy(history + "Never trust a", 1)));
  const Result warm = collect(*engine.submit(greedy(history + "Never trust a", 1)));
  EXPECT_EQ(warm.done.usage.cached_tokens, int(history.size() + 13 - 1) / 16 * 16);
  EXPECT_EQ(warm.text, cold.text);
}

}  // namespace
}  // namespace rwkv::serve
