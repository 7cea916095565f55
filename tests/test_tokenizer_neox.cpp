// The GPT-NeoX-20B tokenizer (spec §6.2): `20B_tokenizer.json` read as Hugging Face
// `tokenizers` reads it. The expected ids below were produced by `tokenizers` 0.23 itself (its
// Node binding), as was ../shared/fixtures/tokenizers/neox.jsonl.
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/tokenizer.h"
#include "testing.h"
#include "tokenizer/bpe.h"

namespace rwkv {
namespace {

const std::string kJson = "vocab/20B_tokenizer.json";
const std::string kFixture = "fixtures/tokenizers/neox.jsonl";

// Loaded once for the whole test program: the file is 2.4 MB.
const Tokenizer& neox() {
  static const std::unique_ptr<Tokenizer> tokenizer =
      load_neox_tokenizer(test::shared_path(kJson));
  return *tokenizer;
}

std::string write_temp(const std::string& name, const std::string& content) {
  const std::string path = test::temp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

// The message of the rwkv::Error that `f` throws; fails the test if it throws none.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an rwkv::Error";
  return {};
}

std::vector<int> repeat(const std::vector<int>& ids, int times) {
  std::vector<int> out;
  for (int i = 0; i < times; ++i) out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

TEST(NeoxTokenizer, NameSizeAndNewlines) {
  RWKV_REQUIRE_SHARED(kJson);
  EXPECT_EQ(neox().name(), "neox");
  EXPECT_EQ(neox().vocab_size(), 50277);
  EXPECT_EQ(neox().encode("\n"), std::vector<int>{187});
  EXPECT_EQ(neox().encode("\n\n"), std::vector<int>{535});
  EXPECT_EQ(neox().encode(""), std::vector<int>{});
}

TEST(NeoxTokenizer, EveryLineOfTheFixture) {
  RWKV_REQUIRE_SHARED(kJson);
  RWKV_REQUIRE_SHARED(kFixture);
  std::ifstream in(test::shared_path(kFixture));
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    const auto text = j["text"].get<std::string>();
    SCOPED_TRACE(line.substr(0, 120));
    const std::vector<int> ids = neox().encode(text);
    EXPECT_EQ(ids, j["ids"].get<std::vector<int>>());
    EXPECT_EQ(neox().decode(ids), text);
    EXPECT_EQ(neox().decode(ids), j["decoded"].get<std::string>());
    ++checked;
  }
  EXPECT_EQ(checked, 20);
}

// Added tokens, runs of spaces, NFC, the whitespace class of the regex, contractions, long
// words (the heap merge path), control characters.
TEST(NeoxTokenizer, MatchesHuggingFaceOnTrickyTexts) {
  RWKV_REQUIRE_SHARED(kJson);
  const struct {
    std::string text;
    std::vector<int> ids;
  } cases[] = {
      {"<|endoftext|>", {0}},
      {"a<|endoftext|>b", {66, 0, 67}},
      {"<|endoftext|><|padding|>", {0, 1}},
      {"Hello<|endoftext|> world", {12092, 0, 1533}},
      {"<|endoftext", {29, 93, 423, 1171, 1156}},
      {" ", {209}},
      {"  ", {50276}},
      {"   x", {50275, 89}},
      {std::string(24, ' '), {50254}},
      {std::string(25, ' '), {50254, 209}},
      {std::string(30, ' ') + "x", {50254, 50272, 89}},
      {std::string("x").append(50, ' '), {89, 50254, 50254, 50276}},
      {" \n", {2490}},
      {"  \n  ", {50276, 187, 50276}},
      {"\t\t", {623}},
      {"a  \n b", {66, 50276, 187, 270}},
      {"  \t  x", {50276, 186, 50276, 89}},
      {"   \n\n   \n", {50275, 535, 50275, 187}},
      {"\r\n\r\n", {15971}},
      // NFC: e + U+0301 composes; U+212B (Angstrom) becomes U+00C5; jamo compose to a syllable;
      // marks are reordered by combining class; U+FB01 (a compatibility ligature) stays.
      {"e\u0301", {860}},
      {"cafe\u0301 caf\u00e9", {68, 2320, 860, 36241}},
      {"\u212b", {18221}},
      {"\u1100\u1161\u11a8", {26532, 212}},
      {"\uac00\u11a8", {26532, 212}},
      {"A\u030a\u0323", {9702, 243, 136, 221}},
      {"ab\u0300\u0301c", {357, 136, 211, 136, 212, 68}},
      {"\u0915\u093c", {24381, 2483, 122}},  // a composition exclusion: stays decomposed
      {"Z\u0327\u0301", {129, 119, 136, 102}},
      {"\ufb01 \u00bd", {46992, 212, 24142}},
      // White space as Oniguruma's \s sees it: NEL, NBSP, ideographic space, line separator.
      {"\u0085", {16643}},
      {"a\u0085b", {66, 16643, 67}},
      {"a \u0085 b", {66, 1191, 216, 270}},
      {"a\u0085\u0085 b", {66, 16643, 16643, 270}},
      {"x\u00a0y", {89, 575, 90}},
      {"x \u00a0 y", {89, 17345, 340}},
      {"x\u3000y", {89, 19409, 90}},
      {"a\u2028b", {66, 40702, 67}},
      {"\u200b\u200bx", {12882, 12882, 89}},
      {"\u1680x", {157, 237, 211, 89}},
      {"x \u202f y", {89, 541, 109, 340}},
      {"a\vb\fc", {66, 188, 67, 189, 68}},
      {std::string("\0x\1", 3), {177, 89, 178}},
      {"it's 'quoted' 'S I'M don\u2019t", {262, 434, 686, 371, 4225, 8, 686, 52, 309, 8, 46, 1053, 457, 85}},
      {"....!!!???", {2391, 15844, 33186}},
      {"\U0001F468\u200d\U0001F469\u200d\U0001F467",
       {14931, 228, 103, 325, 224, 14931, 228, 104, 325, 224, 14931, 228, 102}},
      {std::string(200, 'x'), repeat({34576}, 25)},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_EQ(neox().encode(c.text), c.ids);
  }
  std::string letters, digits;
  for (int i = 0; i < 30; ++i) letters += "abcdefghij";
  for (int i = 0; i < 20; ++i) digits += "1234567890";
  EXPECT_EQ(neox().encode(letters), repeat({19758, 1545, 18068, 1944}, 30));
  std::vector<int> digit_ids = {42594};
  for (int id : repeat({43784, 39154, 1857}, 19)) digit_ids.push_back(id);
  digit_ids.insert(digit_ids.end(), {25025, 2270});
  EXPECT_EQ(neox().encode(digits), digit_ids);
}

TEST(NeoxTokenizer, DecodesAddedTokensAndRejectsBadIds) {
  RWKV_REQUIRE_SHARED(kJson);
  EXPECT_EQ(neox().decode(187), "\n");
  EXPECT_EQ(neox().decode(50254), std::string(24, ' '));
  EXPECT_EQ(neox().decode(50276), "  ");
  EXPECT_EQ(neox().decode(0), "");  // special tokens print nothing, like World's id 0
  EXPECT_EQ(neox().decode(1), "");
  EXPECT_EQ(neox().decode(std::vector<int>{12092, 0, 1533}), "Hello world");
  for (int id : {-1, 50277, 50303, 1 << 30}) {
    EXPECT_NE(error_of([&] { neox().decode(id); }).find(std::to_string(id)), std::string::npos);
  }
}

// BPE need not encode a token's bytes as that token, but decoding must give the bytes back
// (for every token that is whole characters).
TEST(NeoxTokenizer, EveryTokenRoundTrips) {
  RWKV_REQUIRE_SHARED(kJson);
  for (int id = 2; id < neox().vocab_size(); ++id) {
    const std::string bytes = neox().decode(id);
    if (bpe::valid_utf8_prefix(bytes) != bytes.size()) continue;  // part of a character
    ASSERT_EQ(neox().decode(neox().encode(bytes)), bytes) << "id " << id;
  }
}

// Invalid UTF-8: no crash; invalid runs are BPE-encoded bytes and round-trip, except the
// bytes without a token (C0, C1, F5..FF), which become U+FFFD.
TEST(NeoxTokenizer, InvalidUtf8) {
  RWKV_REQUIRE_SHARED(kJson);
  const std::vector<int> replacement = neox().encode("\uFFFD");
  for (const std::string text : {"caf\xC3", "\x80\x80" "abc", "a\xE2\x82", "\xF0\x9F\x98 x",
                                 "\xED\xA0\x80", "\xE0\x80\xAF", "\xF4\x90\x80\x80",
                                 "x\xE2\x82\xBF\xBF  y"}) {
    SCOPED_TRACE(text);
    EXPECT_EQ(neox().decode(neox().encode(text)), text);
  }
  EXPECT_EQ(neox().encode("x\xE2\x82<|endoftext|>").back(), 0);
  std::vector<int> want = neox().encode("abc");
  want.insert(want.end(), replacement.begin(), replacement.end());
  EXPECT_EQ(neox().encode("abc\xFF"), want);
  EXPECT_EQ(neox().decode(neox().encode("\xC0\xF5z")), "\uFFFD\uFFFDz");

  // Random byte strings: never a crash. Drawn from bytes that never form a character at or
  // above U+0300 (so NFC leaves every valid part alone) and all have tokens, they round-trip.
  std::mt19937 rng(5);
  for (int i = 0; i < 2000; ++i) {
    std::string any(rng() % 40, '\0'), safe(rng() % 40, '\0');
    for (char& c : any) c = char(rng());
    for (char& c : safe) {
      const uint32_t r = rng() % (0xCC - 2);
      c = char(r < 0xC0 ? r : r + 2);  // 00..BF, C2..CB
    }
    neox().encode(any);
    ASSERT_EQ(neox().decode(neox().encode(safe)), safe);
  }
}

TEST(NeoxTokenizer, HugeInputsDoNotBreakTheRegexOrTheMerges) {
  RWKV_REQUIRE_SHARED(kJson);
  for (const std::string& text : {std::string(300000, ' ') + "x", std::string(300000, 'a'),
                                 std::string(300000, '7'), std::string(300000, '\xFF'),
                                 std::string(100000, '\n') + std::string(100000, '\t') + "!"}) {
    const std::vector<int> ids = neox().encode(text);
    if (text[0] == '\xFF') continue;
    EXPECT_EQ(neox().decode(ids), text);
  }
}

TEST(NeoxTokenizer, EncodesFromSeveralThreads) {
  RWKV_REQUIRE_SHARED(kJson);
  RWKV_REQUIRE_SHARED(kFixture);
  const std::string text = read_file(test::shared_path(kFixture));
  const std::vector<int> want = neox().encode(text);
  std::vector<std::vector<int>> got(4);
  std::vector<std::thread> threads;
  for (auto& g : got) threads.emplace_back([&] { for (int i = 0; i < 20; ++i) g = neox().encode(text); });
  for (auto& t : threads) t.join();
  for (const auto& g : got) EXPECT_EQ(g, want);
}

// Long texts go through the word cache, short ones do not: the ids must be the same. The
// fixture's lines end in "\n" before "{", where pre-tokenisation always cuts.
TEST(NeoxTokenizer, WordCacheDoesNotChangeIds) {
  RWKV_REQUIRE_SHARED(kJson);
  RWKV_REQUIRE_SHARED(kFixture);
  const std::string sample = read_file(test::shared_path(kFixture));
  std::string text;
  std::vector<int> want;
  for (int copy = 0; copy < 20; ++copy) {
    for (size_t start = 0; start < sample.size();) {
      const size_t end = std::min(sample.find('\n', start), sample.size() - 1) + 1;
      const std::string line = sample.substr(start, end - start);
      const std::vector<int> ids = neox().encode(line);
      want.insert(want.end(), ids.begin(), ids.end());
      text += line;
      start = end;
    }
  }
  EXPECT_EQ(neox().encode(text), want);
}

TEST(NeoxTokenizer, LoadTimeAndEncodeSpeed) {
  RWKV_REQUIRE_SHARED(kJson);
  RWKV_REQUIRE_SHARED(kFixture);
  using Clock = std::chrono::steady_clock;
  auto start = Clock::now();
  load_neox_tokenizer(test::shared_path(kJson));
  const double load_s = std::chrono::duration<double>(Clock::now() - start).count();
  // Mixed English, code, CJK, emoji: the fixture's JSON lines repeated to about 4 MB.
  const std::string sample = read_file(test::shared_path(kFixture));
  std::string text;
  while (text.size() < (4u << 20)) text += sample;
  std::vector<int> ids;
  double encode_s = 1e9;
  for (int i = 0; i < 2; ++i) {
    start = Clock::now();
    ids = neox().encode(text);
    encode_s = std::min(encode_s, std::chrono::duration<double>(Clock::now() - start).count());
  }
  EXPECT_EQ(neox().decode(ids), text);
  std::cout << "[ INFO     ] load " << load_s * 1e3 << " ms, encode " << text.size() / encode_s / 1e6
            << " MB/s (" << text.size() / double(ids.size()) << " bytes/token)\n";
}

// ---- a small hand-made tokenizer.json: added-token flags, normalized added tokens,
// add_prefix_space, merge order; ids from `tokenizers` on the same file ----

nlohmann::json small_tokenizer_json(bool add_prefix_space) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[bpe::byte_to_unicode()[size_t(b)]] = b;
  const std::vector<std::string> merges = {"a b", "ab c", "\u0120 a", "\u0120a b"};
  for (size_t i = 0; i < merges.size(); ++i) {
    std::string merged = merges[i];
    merged.erase(merged.find(' '), 1);
    vocab[merged] = 256 + int(i);
  }
  auto added = [](int id, const char* content, bool lstrip, bool rstrip, bool single_word,
                  bool normalized, bool special) {
    return nlohmann::json{{"id", id},         {"content", content}, {"single_word", single_word},
                          {"lstrip", lstrip}, {"rstrip", rstrip},   {"normalized", normalized},
                          {"special", special}};
  };
  return {
      {"version", "1.0"},
      {"added_tokens",
       {added(260, "<mask>", true, false, false, false, true),
        added(261, "[R]", false, true, false, false, false),
        added(262, "xyz", false, false, true, true, false),
        added(263, "e\u0301", false, false, false, true, false)}},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"vocab", vocab}, {"merges", merges}}},
  };
}

TEST(NeoxTokenizer, AddedTokenFlagsAndPrefixSpaceLikeHuggingFace) {
  const auto plain = load_neox_tokenizer(write_temp("small.json", small_tokenizer_json(false).dump()));
  const auto prefixed =
      load_neox_tokenizer(write_temp("small_prefix.json", small_tokenizer_json(true).dump()));
  EXPECT_EQ(plain->vocab_size(), 264);
  const struct {
    std::string text;
    std::vector<int> plain, prefixed;
  } cases[] = {
      {"abc <mask> abc", {257, 260, 32, 257}, {32, 257, 260, 32, 257}},  // lstrip
      {"a   <mask>b", {97, 260, 98}, {258, 260, 32, 98}},
      {"x<mask>", {120, 260}, {32, 120, 260}},
      {"[R]   abc", {261, 257}, {261, 32, 257}},  // rstrip
      {"[R]\n\nx", {261, 120}, {261, 32, 120}},
      {"xyz axyz xyzb (xyz) _xyz",  // single_word; '_' counts as a word character
       {262, 258, 120, 121, 122, 32, 120, 121, 122, 98, 32, 40, 262, 41, 32, 95, 120, 121, 122},
       {262, 258, 120, 121, 122, 32, 120, 121, 122, 98, 32, 40, 262, 32, 41, 32, 95, 120, 121, 122}},
      {"caf\u00e9 cafe\u0301", {99, 97, 102, 263, 32, 99, 97, 102, 263},  // matched after NFC
       {32, 99, 97, 102, 263, 32, 99, 97, 102, 263}},
      {"ab[R]\n<mask>", {256, 261, 260}, {32, 256, 261, 260}},
      {"abc<mask>abc", {257, 260, 257}, {32, 257, 260, 32, 257}},
      {"ababab", {256, 256, 256}, {32, 256, 256, 256}},
      {" ab abc", {32, 256, 32, 257}, {32, 256, 32, 257}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_EQ(plain->encode(c.text), c.plain);
    EXPECT_EQ(prefixed->encode(c.text), c.prefixed);
  }
  EXPECT_EQ(plain->decode(260), "");  // special
  EXPECT_EQ(plain->decode(261), "[R]");
  EXPECT_EQ(plain->decode(263), "e\u0301");  // the content as written
  EXPECT_EQ(plain->decode(259), " ab");
}

TEST(NeoxTokenizer, BadFilesAreClearErrors) {
  EXPECT_NE(error_of([] { load_neox_tokenizer("/nonexistent/20B_tokenizer.json"); })
                .find("/nonexistent/20B_tokenizer.json"),
            std::string::npos);
  const nlohmann::json good = small_tokenizer_json(false);
  struct Case {
    const char* what;
    std::string content;
    const char* message;
  };
  auto edited = [&](auto edit) {
    nlohmann::json j = good;
    edit(j);
    return j.dump();
  };
  const std::string dumped = good.dump();
  const Case cases[] = {
      {"truncated", dumped.substr(0, dumped.size() / 2), "not valid JSON"},
      {"empty", "", "not valid JSON"},
      {"not an object", "[1, 2]", "top level"},
      {"no model", edited([](auto& j) { j.erase("model"); }), "model"},
      {"no vocab", edited([](auto& j) { j["model"].erase("vocab"); }), "model.vocab"},
      {"no merges", edited([](auto& j) { j["model"].erase("merges"); }), "model.merges"},
      {"vocab id a string", edited([](auto& j) { j["model"]["vocab"]["ab"] = "x"; }), "model.vocab[\"ab\"]"},
      {"negative id", edited([](auto& j) { j["model"]["vocab"]["ab"] = -3; }), "-3"},
      {"two tokens, one id", edited([](auto& j) { j["model"]["vocab"]["abc"] = 256; }), "256"},
      {"merge of an unknown token", edited([](auto& j) { j["model"]["merges"].push_back("q zz"); }), "\"zz\""},
      {"merge result unknown", edited([](auto& j) { j["model"]["merges"].push_back("b c"); }), "\"bc\""},
      {"merge not a pair", edited([](auto& j) { j["model"]["merges"].push_back("a b c"); }), "merges[4]"},
      {"merge of a number", edited([](auto& j) { j["model"]["merges"].push_back(7); }), "merges[4]"},
      {"a byte without a token", edited([](auto& j) { j["model"]["vocab"].erase("a"); }), "byte 97"},
      {"unigram", edited([](auto& j) { j["model"]["type"] = "Unigram"; }), "Unigram"},
      {"dropout", edited([](auto& j) { j["model"]["dropout"] = 0.1; }), "dropout"},
      {"NFKC", edited([](auto& j) { j["normalizer"]["type"] = "NFKC"; }), "NFKC"},
      {"metaspace", edited([](auto& j) { j["pre_tokenizer"]["type"] = "Metaspace"; }), "Metaspace"},
      {"added id missing", edited([](auto& j) { j["added_tokens"][1].erase("id"); }), "added_tokens[1].id"},
      {"added content a number", edited([](auto& j) { j["added_tokens"][0]["content"] = 5; }), "added_tokens[0].content"},
      {"added flag a string", edited([](auto& j) { j["added_tokens"][2]["lstrip"] = "yes"; }), "lstrip"},
  };
  for (const auto& c : cases) {
    const std::string path = write_temp("bad.json", c.content);
    const std::string message = error_of([&] { load_neox_tokenizer(path); });
    EXPECT_NE(message.find(path), std::string::npos) << c.what << ": " << message;
    EXPECT_NE(message.find(c.message), std::string::npos) << c.what << ": " << message;
  }
  // The newer merges format, ["left", "right"], loads too.
  const std::string pairs = edited([](auto& j) {
    for (auto& m : j["model"]["merges"]) {
      const std::string s = m;
      m = nlohmann::json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
    }
  });
  EXPECT_EQ(load_neox_tokenizer(write_temp("pairs.json", pairs))->encode("abc"), std::vector<int>{257});
}

TEST(NeoxTokenizer, LoadTokenizerByKindAndFindVocab) {
  EXPECT_EQ(load_tokenizer("bytes", "")->name(), "bytes");
  EXPECT_NE(error_of([] { load_tokenizer("gpt2", "x"); }).find("gpt2"), std::string::npos);
  unsetenv("RWKV_NEOX_VOCAB");
  const std::string message = error_of([] { find_neox_vocab("", "/models/RWKV-4-Pile.pth"); });
  for (const char* part : {"/models/20B_tokenizer.json", "RWKV_NEOX_VOCAB", "ChatRWKV", "--vocab"}) {
    EXPECT_NE(message.find(part), std::string::npos) << part << " in " << message;
  }
  EXPECT_NE(error_of([] { find_neox_vocab("/nonexistent.json", ""); }).find("/nonexistent.json"),
            std::string::npos);
  if (test::shared_exists(kJson)) {
    EXPECT_EQ(load_tokenizer("neox", test::shared_path(kJson))->name(), "neox");
    setenv("RWKV_NEOX_VOCAB", test::shared_path(kJson).c_str(), 1);
    EXPECT_EQ(find_neox_vocab("", "/models/RWKV-4-Pile.pth"), test::shared_path(kJson));
    unsetenv("RWKV_NEOX_VOCAB");
  }
}

// ---- the BPE pieces on their own ----

TEST(Bpe, HeapAndQuadraticMergesAgree) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 50; ++trial) {
    // Random rules over a 6-symbol alphabet, merged ids from 100 up, ranks shuffled.
    bpe::MergeTable table;
    int next_id = 100;
    for (int r = 0; r < 40; ++r) {
      const int left = int(rng() % 6) + (rng() % 3 == 0 ? 100 + int(rng() % 10) : 0);
      const int right = int(rng() % 6);
      table.add(left, right, int(rng() % 30), next_id++);
    }
    for (int w = 0; w < 20; ++w) {
      std::vector<int> word(rng() % 120);
      for (int& s : word) s = int(rng() % 6);
      std::vector<int> a = word, b = word;
      table.merge_quadratic(a);
      table.merge_with_heap(b);
      ASSERT_EQ(a, b);
    }
  }
}

TEST(Bpe, SplitterMatchesTheOnigurumaPreTokenizer) {
  // Pre-token boundaries from `tokenizers`' ByteLevel pre-tokenizer.
  const bpe::Splitter splitter(bpe::kGpt2Pattern);
  const struct {
    std::string text;
    std::vector<std::string> pieces;
  } cases[] = {
      {"\u0085!", {"\u0085", "!"}},                // NEL is white space
      {"\u0085\u0085x", {"\u0085", "\u0085", "x"}},
      {"a\u0085 x", {"a", "\u0085", " x"}},
      {"\u180e!", {"\u180e!"}},                    // U+180E is not (PCRE2's \s says it is)
      {"\u200b!", {"\u200b!"}},
      {"\x1c!", {"\x1c!"}},
      {"\u00a0!", {"\u00a0", "!"}},
      {"x\u00a0\u00a0", {"x", "\u00a0\u00a0"}},
      {"a\u2028 b", {"a", "\u2028", " b"}},
      {"I'm   here's 42x", {"I", "'m", "  ", " here", "'s", " 42", "x"}},
  };
  for (const auto& c : cases) {
    std::vector<std::string_view> pieces;
    splitter.split(c.text, pieces);
    EXPECT_EQ(std::vector<std::string>(pieces.begin(), pieces.end()), c.pieces) << c.text;
  }
}

TEST(Bpe, Utf8Validation) {
  EXPECT_EQ(bpe::valid_utf8_prefix("abc\u00e9\U0001F600"), 9u);
  EXPECT_EQ(bpe::valid_utf8_prefix("ab\xC0\x80"), 2u);      // overlong
  EXPECT_EQ(bpe::valid_utf8_prefix("ab\xED\xA0\x80"), 2u);  // surrogate
  EXPECT_EQ(bpe::valid_utf8_prefix("\xF4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(bpe::valid_utf8_prefix("\xE2\x82"), 0u);         // truncated
  EXPECT_EQ(bpe::invalid_utf8_run("\xE2\x82" "A"), 2u);
  EXPECT_EQ(bpe::invalid_utf8_run("\xFF\xC3\xA9"), 1u);
}

// ---- the command line ----

TEST(NeoxCli, TokenizePrintsIds) {
  RWKV_REQUIRE_SHARED(kJson);
  const std::string vocab = test::quote(test::shared_path(kJson));
  auto r = test::run_cli("tokenize --tokenizer neox --vocab " + vocab + " --text 'Hello, world!'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "[12092, 13, 1533, 2]\n");
  // --tokenizer auto takes a .json vocabulary for NeoX.
  r = test::run_cli("tokenize --vocab " + vocab + " --text " + test::quote("a\n\n<|endoftext|>"));
  EXPECT_EQ(r.out, "[66, 535, 0]\n") << r.err;
  r = test::run_cli("tokenize --tokenizer neox --vocab " + vocab + " --bytes-hex 616263");
  EXPECT_EQ(r.out, "[19758]\n") << r.err;
  r = test::run_cli("tokenize --tokenizer neox --vocab /nonexistent.json --text hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/nonexistent.json"), std::string::npos) << r.err;
  unsetenv("RWKV_NEOX_VOCAB");
  r = test::run_cli("tokenize --tokenizer neox --text hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("RWKV_NEOX_VOCAB"), std::string::npos) << r.err;
}

// A model with the NeoX vocabulary size picks the NeoX tokenizer by itself.
TEST(NeoxCli, GenerateWithANeoxSizedModel) {
  RWKV_REQUIRE_SHARED(kJson);
  test::V7Dims dims;
  dims.n_layer = 1;
  dims.n_embd = 32;
  dims.vocab = 50277;
  const std::string path = test::temp_dir() + "/neox.pth", model = test::quote(path);
  save_pth(path, test::random_v7_checkpoint(dims, 1)->tensors());
  unsetenv("RWKV_NEOX_VOCAB");
  auto r = test::run_cli("generate -m " + model + " -p hi -n 2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("20B_tokenizer.json"), std::string::npos) << r.err;
  r = test::run_cli("generate -m " + model + " -p 'Hello, world' -n 3 --seed 1 --vocab " +
                    test::quote(test::shared_path(kJson)));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Hello, world", 0), 0u) << r.out;
  EXPECT_NE(r.err.find("prompt 3 tokens"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace rwkv
