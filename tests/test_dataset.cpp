// Training data (train/dataset): token sources, the two window orders, and the commands that
// make and score datasets (`rwkv tokenize-data`, `rwkv eval`) end to end.
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "io/binidx.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "testing.h"
#include "train/dataset.h"

namespace rwkv::train {
namespace {

using Order = WindowSampler::Order;

std::vector<int> iota_tokens(size_t n) {
  std::vector<int> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = int(i);
  return v;
}

template <class F>
void expect_error(F f, const std::string& phrase) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << phrase << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(phrase), std::string::npos) << e.what();
  }
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

TEST(TokenData, FromMemory) {
  const TokenData d(std::vector<int>{5, 6, 7, 8});
  EXPECT_EQ(d.size(), 4u);
  int out[3] = {};
  d.read(1, 3, out);
  EXPECT_EQ(std::vector<int>(out, out + 3), (std::vector<int>{6, 7, 8}));
  expect_error([&] { d.read(2, 3, out); }, "past its end");
}

TEST(TokenData, FromBinidxByPrefixBinOrIdx) {
  const std::string prefix = test::temp_dir() + "/data";
  io::write_binidx(prefix, {{1, 2, 3, 0}, {70000, 0}, {9, 0}});  // 70000: int32 tokens
  const std::vector<int> all = {1, 2, 3, 0, 70000, 0, 9, 0};
  for (const std::string& path : {prefix, prefix + ".bin", prefix + ".idx"}) {
    const TokenData d = TokenData::open(path);
    ASSERT_EQ(d.size(), all.size()) << path;
    std::vector<int> got(all.size());
    d.read(0, got.size(), got.data());
    EXPECT_EQ(got, all) << path;
  }
}

TEST(TokenData, OpenErrorsNameThePath) {
  const std::string text = test::temp_dir() + "/plain.txt";
  write_text(text, "hello");
  expect_error([&] { TokenData::open(text); }, text + ": not a binidx dataset");
  expect_error([&] { TokenData::open("/nonexistent/data"); }, "/nonexistent/data");
  expect_error([&] { TokenData::open("/nonexistent/data.bin"); }, "/nonexistent/data.idx");
}

TEST(WindowSampler, RandomOrderIsDeterministicInRangeAndShifted) {
  const TokenData d(iota_tokens(1000));  // token = position, so a window shows its start
  const int T = 16, B = 4;
  const WindowSampler a(d, T, B, Order::Random, 42), again(d, T, B, Order::Random, 42),
      other_seed(d, T, B, Order::Random, 43);
  std::vector<int> in(B * T), tgt(B * T), in2(B * T), tgt2(B * T);
  std::set<std::vector<int>> seen;
  int same_as_other_seed = 0;
  for (int64_t step = 0; step < 50; ++step) {
    a.batch(step, in.data(), tgt.data());
    again.batch(step, in2.data(), tgt2.data());
    EXPECT_EQ(in, in2);
    EXPECT_EQ(tgt, tgt2);
    for (int b = 0; b < B; ++b) {
      const int start = in[size_t(b * T)];
      EXPECT_EQ(size_t(start), a.window_start(step, b));
      EXPECT_LE(start, 1000 - T - 1);
      for (int t = 0; t < T; ++t) {
        EXPECT_EQ(in[size_t(b * T + t)], start + t);
        EXPECT_EQ(tgt[size_t(b * T + t)], start + t + 1);  // targets = inputs shifted by one
      }
    }
    seen.insert(in);
    other_seed.batch(step, in2.data(), tgt2.data());
    same_as_other_seed += in == in2;
  }
  EXPECT_EQ(seen.size(), 50u);  // every step its own batch
  EXPECT_EQ(same_as_other_seed, 0);
  // A resumed run: a sampler made later gives step 37 without replaying steps 0..36.
  const WindowSampler resumed(d, T, B, Order::Random, 42);
  a.batch(37, in.data(), tgt.data());
  resumed.batch(37, in2.data(), tgt2.data());
  EXPECT_EQ(in, in2);
}

TEST(WindowSampler, RandomOrderReachesBothEnds) {
  const TokenData d(iota_tokens(10));
  const WindowSampler s(d, 7, 1, Order::Random, 1);  // starts 0, 1, 2 only
  std::set<size_t> starts;
  for (int64_t step = 0; step < 300; ++step) starts.insert(s.window_start(step, 0));
  EXPECT_EQ(starts, (std::set<size_t>{0, 1, 2}));
}

// Independent of the library: trial division, and the README rule in long double.
uint64_t brute_force_magic_prime(size_t tokens, int ctx) {
  auto prime = [](uint64_t n) {
    if (n < 2) return false;
    for (uint64_t k = 2; k * k <= n; ++k) {
      if (n % k == 0) return false;
    }
    return true;
  };
  const long double limit = (long double)tokens / ctx - 1;
  for (uint64_t p = uint64_t(limit) + 1; p >= 2; --p) {
    if ((long double)p < limit && p % 3 == 2 && prime(p)) return p;
  }
  return 0;
}

TEST(WindowSampler, MagicPrimeFollowsTheReadmeRule) {
  // RWKV-LM README's example: 1498226207 tokens, ctx_len 512 -> 2926181.
  EXPECT_EQ(WindowSampler::magic_prime(1498226207, 512), 2926181u);
  const std::pair<size_t, int> cases[] = {{1498226207, 512}, {10000, 10}, {100, 7},  {100, 4},
                                          {6, 1},            {123457, 64}, {4096, 1024},
                                          {1u << 20, 4096},  {999983, 1}};
  for (const auto& [tokens, ctx] : cases) {
    const uint64_t want = brute_force_magic_prime(tokens, ctx);
    ASSERT_GT(want, 0u) << tokens << "/" << ctx;
    EXPECT_EQ(WindowSampler::magic_prime(tokens, ctx), want) << tokens << "/" << ctx;
  }
  EXPECT_EQ(WindowSampler::magic_prime(6, 1), 2u);  // 6/1 - 1 = 5 is excluded: strictly below
  expect_error([] { WindowSampler::magic_prime(30, 10); }, "too few windows");
}

TEST(WindowSampler, MagicPrimeOrderVisitsEveryWindowOncePerPeriod) {
  const int T = 4;
  const TokenData d(iota_tokens(100));  // 100/4 - 1 = 24 -> p = 23
  for (int B : {1, 5}) {
    const WindowSampler s(d, T, B, Order::MagicPrime, 0);
    ASSERT_EQ(s.prime(), 23u);
    // RWKV-LM: factor = int(23 * 0.618...) = 14; sample 0 is ii = 1 -> (14 * 1) % 23 * 4 = 56.
    EXPECT_EQ(s.window_start(0, 0), 56u);
    std::set<size_t> starts;
    for (int64_t sample = 0; sample < 23; ++sample) {
      const size_t start = s.window_start(sample / B, int(sample % B));
      EXPECT_EQ(start % T, 0u);
      EXPECT_LE(start + T + 1, d.size());
      starts.insert(start);
    }
    EXPECT_EQ(starts.size(), 23u) << "batch " << B;  // a permutation of the 23 aligned starts
    EXPECT_EQ(*starts.rbegin(), 22u * T);
    // The walk has period p: sample 23 is sample 0 again.
    EXPECT_EQ(s.window_start(23 / B, 23 % B), 56u);
    std::vector<int> in(size_t(B * T)), tgt(size_t(B * T));
    s.batch(3, in.data(), tgt.data());
    for (int t = 0; t < B * T; ++t) EXPECT_EQ(tgt[size_t(t)], in[size_t(t)] + 1);
  }
}

TEST(WindowSampler, ContextLongerThanDataIsAnError) {
  const TokenData d(iota_tokens(10));
  expect_error([&] { WindowSampler(d, 10, 1, Order::Random, 0); }, "context longer than data");
  EXPECT_NO_THROW(WindowSampler(d, 9, 1, Order::Random, 0));
  expect_error([&] { WindowSampler(d, 4, 1, Order::MagicPrime, 0); }, "too few windows");
  expect_error([&] { WindowSampler(d, 0, 1, Order::Random, 0); }, "ctx_len");
  expect_error([&] { WindowSampler(d, 4, 0, Order::Random, 0); }, "batch");
  EXPECT_EQ(WindowSampler::parse_order("magic_prime"), Order::MagicPrime);
  EXPECT_EQ(WindowSampler::parse_order("random"), Order::Random);
  expect_error([] { WindowSampler::parse_order("shuffle"); }, "shuffle");
}

// ---- the commands ----

using test::quote;
using test::run_cli;

// Joins arguments with spaces (testing.h's cat_args trips GCC 12's false -Wrestrict warning on
// `"literal" + std::string`).
template <class... Args>
std::string join(const Args&... parts) {
  std::string s;
  ((s.append(s.empty() ? "" : " ").append(parts)), ...);
  return s;
}

std::vector<std::vector<int>> read_documents(const std::string& prefix) {
  const io::BinIdx d = io::BinIdx::open(prefix);
  std::vector<std::vector<int>> docs;
  for (size_t i = 0; i < d.num_sequences(); ++i) {
    std::vector<int> doc(d.sequence_size(i));
    d.read(d.sequence_start(i), doc.size(), doc.data());
    docs.push_back(doc);
  }
  return docs;
}

std::vector<int> bytes_then_0(const std::string& s) {
  std::vector<int> ids(s.begin(), s.end());
  ids.push_back(0);
  return ids;
}

TEST(TokenizeDataCli, TextFilesBecomeOneDocumentEachEndingInToken0) {
  const std::string dir = test::temp_dir(), out = dir + "/text";
  write_text(dir + "/a.txt", "ab\ncd");
  write_text(dir + "/b.txt", "xyz\n");
  const auto r = run_cli(join("tokenize-data", quote(dir + "/a.txt"), quote(dir + "/b.txt"),
                                        "--tokenizer bytes --out", quote(out)));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("2 documents"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("11 tokens"), std::string::npos) << r.out;
  EXPECT_EQ(read_documents(out), (std::vector<std::vector<int>>{bytes_then_0("ab\ncd"), bytes_then_0("xyz\n")}));
}

TEST(TokenizeDataCli, SplitOnALiteralAndSplitLines) {
  const std::string dir = test::temp_dir();
  write_text(dir + "/fortunes", "one\n%\ntwo\n%\nthree\n");
  auto r = run_cli(join("tokenize-data", quote(dir + "/fortunes"),
                                  "--tokenizer bytes --split-on '\\n%\\n' --out", quote(dir + "/f")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_documents(dir + "/f"), (std::vector<std::vector<int>>{
                                            bytes_then_0("one"), bytes_then_0("two"), bytes_then_0("three\n")}));
  write_text(dir + "/lines", "x\n\ny\r\n");
  r = run_cli(join("tokenize-data", quote(dir + "/lines"),
                             "--tokenizer bytes --split-lines --out", quote(dir + "/l")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_documents(dir + "/l"), (std::vector<std::vector<int>>{bytes_then_0("x"), bytes_then_0("y")}));
}

TEST(TokenizeDataCli, JsonlDocumentsAndABadLineNamesItsNumber) {
  const std::string dir = test::temp_dir();
  write_text(dir + "/docs.jsonl", "{\"text\": \"hi\"}\n\n{\"text\": \"\\u00e9!\", \"meta\": 1}\n");
  auto r = run_cli(join("tokenize-data", quote(dir + "/docs.jsonl"), "--tokenizer bytes --out",
                                  quote(dir + "/j")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_documents(dir + "/j"),
            (std::vector<std::vector<int>>{bytes_then_0("hi"), {0xc3, 0xa9, '!', 0}}));
  write_text(dir + "/other.jsonl", "{\"body\": \"ok\"}\n");
  r = run_cli(join("tokenize-data", quote(dir + "/other.jsonl"), "--jsonl-key body",
                             "--tokenizer bytes --out", quote(dir + "/k")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_documents(dir + "/k"), (std::vector<std::vector<int>>{bytes_then_0("ok")}));

  write_text(dir + "/bad.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": oops}\n");
  r = run_cli(join("tokenize-data", quote(dir + "/bad.jsonl"), "--tokenizer bytes --out",
                             quote(dir + "/bad")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(dir + "/bad.jsonl:3:"), std::string::npos) << r.err;
  write_text(dir + "/utf8.jsonl", "{\"text\": \"\xff\"}\n");
  r = run_cli(join("tokenize-data", quote(dir + "/utf8.jsonl"), "--tokenizer bytes --out",
                             quote(dir + "/u")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("utf8.jsonl:1:"), std::string::npos) << r.err;
}

TEST(TokenizeDataCli, ClearErrors) {
  const std::string dir = test::temp_dir();
  write_text(dir + "/ok.txt", "fine");
  write_text(dir + "/empty.txt", "");
  const std::pair<std::string, std::string> cases[] = {
      {"tokenize-data " + quote(dir + "/ok.txt") + " --tokenizer bytes --out /nonexistent-dir/x",
       "/nonexistent-dir"},
      {"tokenize-data " + quote(dir + "/missing.txt") + " --tokenizer bytes --out " + quote(dir + "/m"),
       "missing.txt"},
      {"tokenize-data " + quote(dir + "/empty.txt") + " --tokenizer bytes --out " + quote(dir + "/e"),
       "empty corpus"},
      {"tokenize-data " + quote(dir + "/ok.txt") + " --tokenizer bytes --split-on '\\q' --out " +
           quote(dir + "/q"),
       "unknown escape"},
  };
  for (const auto& [args, phrase] : cases) {
    const auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 1) << args;
    EXPECT_NE(r.err.find(phrase), std::string::npos) << args << ": " << r.err;
  }
}

// A tiny untrained byte-level RWKV-7, made once for the eval tests.
const std::string& tiny_model() {
  static const std::string path = [] {
    const std::string p = test::temp_dir() + "/tiny.pth";
    const auto r = run_cli("init -o " + quote(p) + " --layers 2 --embd 64 --head-size 16 --vocab 256 --dtype fp32");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return p;
  }();
  return path;
}

const std::string kText =
    "RWKV is an RNN with transformer-level LLM performance. It can be directly trained like a "
    "GPT (parallelizable). So it combines the best of RNN and transformer: great performance, "
    "fast inference, saves VRAM, fast training, \"infinite\" ctx_len, and free sentence "
    "embedding. Caf\xc3\xa9 na\xc3\xafve \xe2\x9c\x93.\n";

nlohmann::json eval_json(const std::string& data, const std::string& extra) {
  const auto r = run_cli("eval -m " + quote(tiny_model()) + " --data " + quote(data) + " --json " + extra);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0 ? nlohmann::json::parse(r.out) : nlohmann::json::object();
}

TEST(EvalCli, WindowSizeDoesNotChangeTheLossAndItMatchesTheRecurrentForm) {
  const std::string text = test::temp_dir() + "/eval.txt";
  write_text(text, kText);
  const size_t N = kText.size();  // bytes tokenizer: one token per byte
  const auto small = eval_json(text, "--tokenizer bytes --ctx 7");
  const auto large = eval_json(text, "--tokenizer bytes --ctx 1000");
  ASSERT_TRUE(small.contains("mean_loss") && large.contains("mean_loss"));
  EXPECT_EQ(small["tokens_scored"].get<size_t>(), N - 1);  // the first token has no prediction
  EXPECT_EQ(large["utf8_bytes"].get<size_t>(), N);
  const double loss = large["mean_loss"].get<double>();
  EXPECT_NEAR(small["mean_loss"].get<double>(), loss, 1e-4);
  EXPECT_NEAR(large["perplexity"].get<double>(), std::exp(loss), 1e-9 * std::exp(loss));
  EXPECT_NEAR(large["bits_per_byte"].get<double>(), loss * double(N - 1) / std::log(2.0) / double(N), 1e-9);

  // The same loss from `rwkv logits` in the recurrent form, one token at a time.
  std::string ids;
  for (unsigned char c : kText) {
    if (!ids.empty()) ids += ',';
    ids += std::to_string(int(c));
  }
  const std::string logits_path = test::temp_dir() + "/eval-logits.bin";
  const auto r = run_cli("logits -m " + quote(tiny_model()) + " --mode step --tokens " + ids + " -o " +
                         quote(logits_path));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<float> logits = test::read_f32_file(logits_path);
  ASSERT_EQ(logits.size(), N * 256);
  double total = 0;
  for (size_t t = 0; t + 1 < N; ++t) {
    const float* row = &logits[t * 256];
    double m = -INFINITY, sum = 0;
    for (int v = 0; v < 256; ++v) m = std::max(m, double(row[v]));
    for (int v = 0; v < 256; ++v) sum += std::exp(double(row[v]) - m);
    total += m + std::log(sum) - row[static_cast<unsigned char>(kText[t + 1])];
  }
  EXPECT_NEAR(loss, total / double(N - 1), 1e-4);
  EXPECT_GT(loss, 4.0);  // untrained: near ln 256 = 5.5
}

TEST(EvalCli, BinidxLimitBatchAndProgress) {
  const std::string dir = test::temp_dir();
  write_text(dir + "/corpus.txt", kText);
  ASSERT_EQ(run_cli("tokenize-data " + quote(dir + "/corpus.txt") + " --tokenizer bytes --out " +
                    quote(dir + "/corpus")).exit_code, 0);
  const auto j = eval_json(dir + "/corpus.bin", "--ctx 64");
  EXPECT_EQ(j["format"], "binidx");
  EXPECT_EQ(j["tokens_scored"].get<size_t>(), kText.size());  // N bytes + the final 0, less one
  EXPECT_TRUE(j.contains("bits_per_token"));
  EXPECT_NEAR(j["bits_per_token"].get<double>(), j["mean_loss"].get<double>() / std::log(2.0), 1e-12);
  EXPECT_EQ(eval_json(dir + "/corpus", "--limit-tokens 50")["tokens_scored"].get<size_t>(), 49u);
  EXPECT_EQ(eval_json(dir + "/corpus.txt", "--tokenizer bytes --limit-tokens 50")["utf8_bytes"].get<size_t>(), 50u);
  EXPECT_EQ(eval_json(dir + "/corpus", "--batch 3 --ctx 16")["tokens_scored"].get<size_t>(), kText.size() + 1 - 3);

  const auto r = run_cli("eval -m " + quote(tiny_model()) + " --data " + quote(dir + "/corpus") + " --progress");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
  for (const char* s : {"mean loss", "perplexity", "bits/token"}) {
    EXPECT_NE(r.out.find(s), std::string::npos) << s << " in\n" << r.out;
  }
}

TEST(EvalCli, MissingAndEmptyDataAreClearErrors) {
  const std::string dir = test::temp_dir();
  write_text(dir + "/empty.txt", "");
  write_text(dir + "/one.txt", "x");
  const std::pair<std::string, std::string> cases[] = {
      {dir + "/missing.txt", "missing.txt: no such file"},
      {dir + "/missing.bin", "missing.idx"},
      {dir + "/empty.txt", "empty.txt: empty file"},
      {dir + "/one.txt", "too few"},
  };
  for (const auto& [data, phrase] : cases) {
    const auto r = run_cli("eval -m " + quote(tiny_model()) + " --tokenizer bytes --data " + quote(data));
    EXPECT_EQ(r.exit_code, 1) << data;
    EXPECT_NE(r.err.find(phrase), std::string::npos) << data << ": " << r.err;
  }
}

}  // namespace
}  // namespace rwkv::train
