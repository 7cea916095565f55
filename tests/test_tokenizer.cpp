// Tokenizers: the World vocabulary parser and greedy encoder (spec §6.1), the bytes tokenizer,
// UTF-8 streaming and vocabulary lookup.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include <nlohmann/json.hpp>

#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/tokenizer.h"
#include "testing.h"
#include "tokenizer/vocab_literal.h"

namespace rwkv {
namespace {

const std::string kVocab = "vocab/rwkv_vocab_v20230424.txt";

const Tokenizer& world() {
  static const std::unique_ptr<Tokenizer> tokenizer =
      load_world_tokenizer(test::shared_path(kVocab));
  return *tokenizer;
}

std::string write_temp(const std::string& name, const std::string& content) {
  const std::string path = test::temp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

// Lines `b+1 b'\xHH' 1` for every byte: the minimum a loadable World vocabulary needs.
std::string single_byte_lines() {
  std::string lines;
  for (int b = 0; b < 256; ++b) {
    char line[32];
    std::snprintf(line, sizeof line, "%d b'\\x%02x' 1\n", b + 1, b);
    lines += line;
  }
  return lines;
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

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += char(std::stoi(hex.substr(i, 2), nullptr, 16));
  }
  return out;
}

TEST(WorldTokenizer, SpecVectors) {
  RWKV_REQUIRE_SHARED(kVocab);
  const Tokenizer& tok = world();
  EXPECT_EQ(tok.name(), "world");
  EXPECT_EQ(tok.vocab_size(), 65530);
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int>{33155, 40213}));
  EXPECT_EQ(tok.encode("User: hi\n\nAssistant:"),
            (std::vector<int>{24281, 59, 4571, 261, 5585, 41693, 59}));
  EXPECT_EQ(tok.encode("The Eiffel tower is in the city of"),
            (std::vector<int>{6699, 304, 25740, 109, 39990, 4600, 4596, 22590, 30449, 4706}));
  const std::string mixed = std::string(" \t") + '\0' + "\u00e9\U0001F600";
  EXPECT_EQ(tok.encode(mixed), (std::vector<int>{264, 1, 2503, 3319, 153, 129}));
  EXPECT_EQ(tok.encode("\n"), std::vector<int>{11});
  EXPECT_EQ(tok.encode("\n\n"), std::vector<int>{261});
  EXPECT_EQ(tok.encode(""), std::vector<int>{});
}

// The \xHH pitfall: a code point in a str literal, a byte in a bytes literal.
TEST(WorldTokenizer, StrAndBytesEscapesDiffer) {
  RWKV_REQUIRE_SHARED(kVocab);
  EXPECT_EQ(world().decode(2423), "\xC2\x80");
  EXPECT_EQ(world().decode(129), "\x80");
}

TEST(WorldTokenizer, EveryLineOfTheFixture) {
  RWKV_REQUIRE_SHARED(kVocab);
  RWKV_REQUIRE_SHARED("fixtures/tokenizers/world.jsonl");
  std::ifstream in(test::shared_path("fixtures/tokenizers/world.jsonl"));
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    const std::string bytes = j.contains("text") ? j["text"].get<std::string>()
                                                 : from_hex(j["bytes_hex"].get<std::string>());
    const auto ids = j["ids"].get<std::vector<int>>();
    SCOPED_TRACE(line.substr(0, 120));
    EXPECT_EQ(world().encode(bytes), ids);
    EXPECT_EQ(world().decode(ids), bytes);
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

// Greedy longest match returns a whole token for its own bytes, since tokens are unique.
TEST(WorldTokenizer, EveryTokenEncodesToItself) {
  RWKV_REQUIRE_SHARED(kVocab);
  for (int id = 1; id < world().vocab_size(); ++id) {
    ASSERT_EQ(world().encode(world().decode(id)), std::vector<int>{id});
  }
}

TEST(WorldTokenizer, DecodeBounds) {
  RWKV_REQUIRE_SHARED(kVocab);
  EXPECT_EQ(world().decode(0), "");  // end-of-text
  EXPECT_EQ(world().decode(std::vector<int>{33155, 0, 40213}), "Hello world");
  EXPECT_NE(error_of([] { world().decode(-1); }).find("-1"), std::string::npos);
  EXPECT_NE(error_of([] { world().decode(65530); }).find("65530"), std::string::npos);
}

TEST(WorldTokenizer, LoadTimeAndEncodeSpeed) {
  RWKV_REQUIRE_SHARED(kVocab);
  RWKV_REQUIRE_SHARED("fixtures/tokenizers/world.jsonl");
  using Clock = std::chrono::steady_clock;
  double load_s = 1e9;
  for (int i = 0; i < 5; ++i) {
    const auto start = Clock::now();
    load_world_tokenizer(test::shared_path(kVocab));
    load_s = std::min(load_s, std::chrono::duration<double>(Clock::now() - start).count());
  }
  // Mixed English, code, CJK and odd bytes: the fixture texts repeated to about 8 MB.
  const std::string sample = read_file(test::shared_path("fixtures/tokenizers/world.jsonl"));
  std::string text;
  while (text.size() < (8u << 20)) text += sample;
  std::vector<int> ids;
  double encode_s = 1e9;
  for (int i = 0; i < 3; ++i) {
    const auto start = Clock::now();
    ids = world().encode(text);
    encode_s = std::min(encode_s, std::chrono::duration<double>(Clock::now() - start).count());
  }
  EXPECT_EQ(world().decode(ids), text);
  std::cout << "[ INFO     ] vocab load " << load_s * 1e3 << " ms, encode "
            << text.size() / encode_s / 1e6 << " MB/s (" << text.size() / double(ids.size())
            << " bytes/token)\n";
}

TEST(WorldTokenizer, LoadsHandWrittenVocab) {
  // Spaces and quotes inside literals, every escape kind, a CRLF line, ids out of order.
  const std::string path = write_temp(
      "small_vocab.txt",
      single_byte_lines() +
          "258 'abc' 3\n"
          "257 'ab' 2\n"
          "259 \"it's\" 4\r\n"
          "260 'a b' 3\n"
          "261 '\\u00e9t\\xe9' 5\n"
          "262 '\\U0001F600' 4\n"
          "263 '\\\\\\'\\\"\\n\\t\\r' 6\n"
          "264 b'\\xff\\xfe' 2\n"
          "266 '\\0\\a\\b\\f\\v' 5\n");
  const auto tok = load_world_tokenizer(path);
  EXPECT_EQ(tok->vocab_size(), 267);
  EXPECT_EQ(tok->encode("abcd"), (std::vector<int>{258, 'd' + 1}));
  EXPECT_EQ(tok->encode("aba b"), (std::vector<int>{257, 260}));
  EXPECT_EQ(tok->encode("it's"), std::vector<int>{259});
  EXPECT_EQ(tok->encode("\u00e9t\u00e9"), std::vector<int>{261});
  EXPECT_EQ(tok->decode(262), "\U0001F600");
  EXPECT_EQ(tok->decode(263), "\\'\"\n\t\r");
  EXPECT_EQ(tok->decode(264), "\xff\xfe");
  EXPECT_EQ(tok->decode(266), std::string("\0\a\b\f\v", 5));
  EXPECT_EQ(tok->decode(1), std::string(1, '\0'));
  EXPECT_NE(error_of([&] { tok->decode(265); }).find("265"), std::string::npos);  // a gap
  EXPECT_NE(error_of([&] { tok->decode(267); }).find("267"), std::string::npos);
}

TEST(VocabLiteral, Escapes) {
  EXPECT_EQ(parse_python_literal("'\\x80'"), "\xC2\x80");
  EXPECT_EQ(parse_python_literal("b'\\x80'"), "\x80");
  EXPECT_EQ(parse_python_literal("'\\101\\7'"), "A\x07");
  EXPECT_EQ(parse_python_literal("'\\777'"), "\u01FF");
  EXPECT_EQ(parse_python_literal("\"'\""), "'");
  EXPECT_EQ(parse_python_literal("'\"'"), "\"");
  EXPECT_EQ(parse_python_literal("'\\u4e2d'"), "\u4e2d");
  EXPECT_EQ(parse_python_literal("''"), "");
}

struct BadVocab {
  const char* what;
  std::string content;
  const char* where;    // the file:line prefix expected after the file name
  const char* message;  // part of the expected message
};

TEST(WorldTokenizer, MalformedVocabFilesGiveClearErrors) {
  const std::vector<BadVocab> cases = {
      {"empty file", "", "", "no tokens"},
      {"no spaces", "1\n", ":1:", "expected `<id> <literal> <nbytes>`"},
      {"one space", "1 'a'\n", ":1:", "expected `<id> <literal> <nbytes>`"},
      {"unquoted literal", "1 a 1\n", ":1:", "quoted"},
      {"bad escape", "1 'a' 1\n2 '\\q' 1\n", ":2:", "unknown escape \\q"},
      {"short hex escape", "1 '\\x4' 1\n", ":1:", "2 hex digits"},
      {"\\u in bytes", "1 b'\\u0041' 1\n", ":1:", "not allowed in a bytes literal"},
      {"surrogate", "1 '\\ud800' 3\n", ":1:", "surrogate"},
      {"non-ASCII in bytes", "1 b'\xc3\xa9' 2\n", ":1:", "non-ASCII"},
      {"unterminated quote", "1 'abc 3\n", ":1:", "unterminated"},
      {"escaped closing quote", "1 'abc\\' 3\n", ":1:", "unterminated"},
      {"unescaped quote", "1 'it's' 4\n", ":1:", "after the closing"},
      {"nbytes mismatch", "1 '\\x80' 1\n", ":1:", "has 2 bytes but the line says 1"},
      {"non-numeric id", "one 'a' 1\n", ":1:", "id `one`"},
      {"negative id", "-1 'a' 1\n", ":1:", "id `-1`"},
      {"non-numeric nbytes", "1 'a' x\n", ":1:", "byte count `x`"},
      {"id 0", "0 'a' 1\n", ":1:", "reserved for end-of-text"},
      {"huge id", "99999999 'a' 1\n", ":1:", "too large"},
      {"empty token", "1 '' 0\n", ":1:", "empty token"},
      {"duplicate id", "1 'a' 1\n1 'b' 1\n", ":2:", "already defined on line 1"},
      {"duplicate token", single_byte_lines() + "300 'ab' 2\n301 'ab' 2\n", ": ", "same token"},
      {"missing byte", "1 'a' 1\n", ": ", "no token for the byte 0"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].what);
    const std::string path = write_temp("bad" + std::to_string(i) + ".txt", cases[i].content);
    const std::string message = error_of([&] { load_world_tokenizer(path); });
    EXPECT_NE(message.find(path + cases[i].where), std::string::npos) << message;
    EXPECT_NE(message.find(cases[i].message), std::string::npos) << message;
  }
}

TEST(WorldTokenizer, MissingFileNamesIt) {
  const std::string path = test::temp_dir() + "/no_such_vocab.txt";
  EXPECT_NE(error_of([&] { load_world_tokenizer(path); }).find(path), std::string::npos);
}

TEST(BytesTokenizer, RoundTripsAllBytes) {
  const auto tok = make_bytes_tokenizer();
  EXPECT_EQ(tok->name(), "bytes");
  EXPECT_EQ(tok->vocab_size(), 256);
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  const std::vector<int> ids = tok->encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[size_t(b)], b);
  EXPECT_EQ(tok->decode(ids), all);
  EXPECT_NE(error_of([&] { tok->decode(256); }).find("256"), std::string::npos);
  EXPECT_NE(error_of([&] { tok->decode(-1); }).find("-1"), std::string::npos);
}

TEST(Utf8Stream, HoldsASplitCharacterUntilComplete) {
  Utf8Stream s;
  EXPECT_EQ(s.push("a\xF0\x9F"), "a");
  EXPECT_EQ(s.push("\x98"), "");
  EXPECT_EQ(s.push("\x80z"), "\U0001F600z");
  EXPECT_EQ(s.flush(), "");
}

TEST(Utf8Stream, PassesInvalidBytesAtOnce) {
  Utf8Stream s;
  EXPECT_EQ(s.push("\xFF"), "\xFF");
  EXPECT_EQ(s.push("\xE0\x80"), "\xE0\x80");  // overlong: can never complete
  EXPECT_EQ(s.push("\xED\xA0"), "\xED\xA0");  // a surrogate
  EXPECT_EQ(s.push("\xF0\x9F"), "");
  EXPECT_EQ(s.push("x"), "\xF0\x9Fx");  // the held sequence can no longer complete
  EXPECT_EQ(s.push("\xC3\xA9\x80"), "\xC3\xA9\x80");  // a stray continuation byte
}

TEST(Utf8Stream, FlushReturnsATruncatedSequence) {
  Utf8Stream s;
  EXPECT_EQ(s.push("caf\xC3"), "caf");
  EXPECT_EQ(s.flush(), "\xC3");
  EXPECT_EQ(s.flush(), "");
}

TEST(Utf8Stream, StreamsWorldTokensOfASplitEmoji) {
  RWKV_REQUIRE_SHARED(kVocab);
  const std::string text = "hi \U0001F600 \u4e2d\u6587";
  Utf8Stream s;
  std::string out;
  for (int id : world().encode(text)) {
    const std::string piece = s.push(world().decode(id));
    EXPECT_EQ(Utf8Stream().push(piece), piece);  // whole characters only
    out += piece;
  }
  out += s.flush();
  EXPECT_EQ(out, text);
}

// Sets or unsets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    value ? setenv(name, value, 1) : unsetenv(name);
  }
  ~ScopedEnv() { old_ ? setenv(name_, old_->c_str(), 1) : unsetenv(name_); }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(FindWorldVocab, SearchOrder) {
  namespace fs = std::filesystem;
  const std::string dir = test::temp_dir() + "/model_dir";
  fs::create_directories(dir);
  const std::string model = dir + "/model.st";
  const std::string elsewhere = write_temp("env_vocab.txt", "1 'a' 1\n");

  ScopedEnv env("RWKV_VOCAB", nullptr);
  EXPECT_EQ(find_world_vocab(elsewhere, model), elsewhere);
  EXPECT_NE(error_of([&] { find_world_vocab(dir + "/nope.txt", model); }).find("nope.txt"),
            std::string::npos);

  const std::string message = error_of([&] { find_world_vocab("", model); });
  for (const char* part : {kWorldVocabFileName, dir.c_str(), "RWKV_VOCAB", "--vocab",
                           "BlinkDL/ChatRWKV", "rwkv_pip_package/src/rwkv/", "BlinkDL/RWKV-LM",
                           "pip"}) {
    EXPECT_NE(message.find(part), std::string::npos) << part << " missing from: " << message;
  }

  {
    ScopedEnv set("RWKV_VOCAB", elsewhere.c_str());
    EXPECT_EQ(find_world_vocab("", model), elsewhere);
  }
  const std::string beside = write_temp(std::string("model_dir/") + kWorldVocabFileName, "");
  ScopedEnv set("RWKV_VOCAB", elsewhere.c_str());
  EXPECT_EQ(fs::path(find_world_vocab("", model)), fs::path(beside));  // beside beats $RWKV_VOCAB
}

}  // namespace
}  // namespace rwkv
