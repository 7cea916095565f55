// The `rwkv` command end to end: real files, real processes.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "rwkv/file_io.h"
#include "testing.h"

namespace rwkv::test {
namespace {

const char* kV7 = "fixtures/official/v7/rwkv-v7-L2-D128-V256-fp32.pth";
const char* kVocab = "vocab/rwkv_vocab_v20230424.txt";

std::string fixture(const std::string& name) { return shared_path("fixtures/official/v7/" + name); }

std::string token_list(const std::vector<int>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

nlohmann::json manifest() { return nlohmann::json::parse(read_file(fixture("manifest.json"))); }

TEST(Cli, HelpForEverySubcommand) {
  for (const char* cmd : {"generate", "chat", "logits", "tokenize", "bench", "info", "init", "grad", "train", "tokenize-data", "eval"}) {
    const auto r = run_cli(std::string(cmd) + " --help");
    EXPECT_EQ(r.exit_code, 0) << cmd;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << cmd << ": " << r.out;
  }
  EXPECT_NE(run_cli("").exit_code, 0);
}

TEST(Cli, LogitsMatchTheOfficialReferenceInBothModes) {
  RWKV_REQUIRE_SHARED(kV7);
  const auto m = manifest();
  const std::string tokens = token_list(m["tokens"].get<std::vector<int>>());
  for (const char* mode : {"step", "seq"}) {
    const std::string out = temp_dir() + "/logits-" + mode + ".bin";
    const auto r = run_cli(cat_args("logits -m", quote(shared_path(kV7)), "--tokens", tokens,
                                    "--mode", mode, "-o", quote(out)));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto got = read_f32_file(out);
    const auto want = read_f32_file(fixture(std::string("logits_") + mode + ".bin"));
    EXPECT_LE(compare(got, want).max_abs, 1e-4) << mode;
  }
}

TEST(Cli, LogitsResumeFromARawOfficialState) {
  RWKV_REQUIRE_SHARED(kV7);
  const auto m = manifest();
  const std::string out = temp_dir() + "/seg2.bin", state_out = temp_dir() + "/seg2.state";
  const auto r = run_cli(cat_args("logits -m", quote(shared_path(kV7)), "--tokens",
                                  token_list(m["seg2_tokens"].get<std::vector<int>>()),
                                  "--state-in", quote(fixture("state_split.bin")), "--state-out",
                                  quote(state_out), "-o", quote(out)));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LE(compare(read_f32_file(out), read_f32_file(fixture("logits_seg2_step.bin"))).max_abs, 1e-4);
  EXPECT_LE(compare(read_f32_file(state_out), read_f32_file(fixture("final_state_seg2_step.bin"))).max_abs,
            2e-4);
}

TEST(Cli, BadInputIsAClearErrorWithNonZeroExit) {
  RWKV_REQUIRE_SHARED(kV7);
  const std::string model = quote(shared_path(kV7));
  struct Case {
    std::string args, message;
  } cases[] = {
      {"logits -m /nonexistent.pth --tokens 1 -o /dev/null", "/nonexistent.pth"},
      {"logits -m " + model + " --tokens 1,256 -o /dev/null", "256"},
      {"logits -m " + model + " --tokens 1,x -o /dev/null", "'x'"},
      {"logits -m " + model + " --tokens 1 --state-in " + quote(fixture("logits_seg2_step.bin")) +
           " -o /dev/null",
       "bytes"},
      {"generate -m " + model + " --tokenizer world -p hi", "RWKV_VOCAB"},
      {"info " + quote(fixture("manifest.json")), "manifest.json"},
      {"tokenize --tokenizer world --vocab /nonexistent.txt --text hi", "/nonexistent.txt"},
  };
  unsetenv("RWKV_VOCAB");
  for (const auto& c : cases) {
    const auto r = run_cli(c.args);
    EXPECT_EQ(r.exit_code, 1) << c.args;
    EXPECT_NE(r.err.find("error"), std::string::npos) << c.args << ": " << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << ": " << r.err;
  }
}

TEST(Cli, BadDeviceIsAClearErrorBeforeTheModelIsRead) {
  // The model file does not exist: the flag is what must be refused, and first.
  for (const char* device : {"bogus", "cuda:", "cuda:x", "cuda:-1", "cuda:1x", "gpu"}) {
    const auto r = run_cli(cat_args("logits -m /nonexistent.pth --tokens 1 -o /dev/null --device",
                                    quote(device)));
    EXPECT_EQ(r.exit_code, 1) << device;
    EXPECT_NE(r.err.find("error: device '" + std::string(device) + "'"), std::string::npos)
        << device << ": " << r.err;
  }
  const auto r = run_cli("bench -m /nonexistent.pth --backend ref --device cuda:1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--backend ref"), std::string::npos) << r.err;
}

TEST(Cli, TokenizePrintsJsonIds) {
  RWKV_REQUIRE_SHARED(kVocab);
  const std::string vocab = quote(shared_path(kVocab));
  auto r = run_cli("tokenize --vocab " + vocab + " --text 'Hello world'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "[33155, 40213]\n");
  r = run_cli("tokenize --vocab " + vocab + " --bytes-hex 8081ff");
  EXPECT_EQ(r.out, "[129, 130, 256]\n");
  r = run_cli("tokenize --tokenizer bytes --text AB");
  EXPECT_EQ(r.out, "[65, 66]\n");
}

TEST(Cli, InfoNamesGenerationAndDimensions) {
  RWKV_REQUIRE_SHARED(kV7);
  const auto r = run_cli("info " + quote(shared_path(kV7)));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const char* s : {"RWKV-7", "x070", "n_layer:     2", "n_embd:      128", "2 x 64",
                        "vocab_size:  256", "dim_ffn:     512", "lora gate:   64"}) {
    EXPECT_NE(r.out.find(s), std::string::npos) << s << " in\n" << r.out;
  }
}

TEST(Cli, InitThenGenerateThenResumeFromTheSavedState) {
  const std::string model = temp_dir() + "/init.pth", state = temp_dir() + "/gen.state";
  auto r = run_cli("init -o " + quote(model) + " --layers 2 --embd 64 --head-size 16 --vocab 256");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("untrained"), std::string::npos);
  r = run_cli("generate -m " + quote(model) + " -p 'Hi there' -n 12 --seed 3 --state-out " +
              quote(state));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Hi there", 0), 0u) << r.out;
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
  EXPECT_TRUE(std::filesystem::exists(state));
  r = run_cli("generate -m " + quote(model) + " -p ' again' -n 4 --state-in " + quote(state));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // Same seed, same prompt: same text.
  const auto a = run_cli("generate -m " + quote(model) + " -p x -n 16 --seed 9");
  const auto b = run_cli("generate -m " + quote(model) + " -p x -n 16 --seed 9");
  EXPECT_EQ(a.out, b.out);
}

TEST(Cli, ChatKeepsGoingAfterABadCommandAndSavesState) {
  RWKV_REQUIRE_SHARED(kV7);
  const std::string other = temp_dir() + "/other.pth", state = temp_dir() + "/chat.state",
                    other_state = temp_dir() + "/other.state";
  ASSERT_EQ(run_cli("init -o " + quote(other) + " --layers 1 --embd 64 --head-size 16").exit_code, 0);
  ASSERT_EQ(run_cli("generate -m " + quote(other) + " -p a -n 1 --state-out " + quote(other_state))
                .exit_code, 0);
  const std::string script = "hello\n/save " + state + "\n/load " + other_state +
                             "\n/reset\n/load " + state + "\nsecond turn\n/quit\n";
  const auto r = run_cli("chat -m " + quote(shared_path(kV7)) + " -n 8 --seed 1", script);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(state));
  EXPECT_NE(r.err.find("state saved"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("another model"), std::string::npos) << r.err;  // refused, kept going
  EXPECT_NE(r.err.find("state loaded"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), 'A') >= 2, true) << r.out;  // two answers
}

TEST(Cli, BenchReportsSpeedBesideCeilings) {
  RWKV_REQUIRE_SHARED(kV7);
  const auto r = run_cli("bench -m " + quote(shared_path(kV7)) +
                         " --json --decode-tokens 8 --prefill-tokens 32 --bandwidth-mib 64 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  for (const char* key : {"decode_tokens_per_s", "prefill_tokens_per_s", "bandwidth_gb_per_s",
                          "decode_bound_tokens_per_s", "gemm_peak_gflops"}) {
    ASSERT_TRUE(j.contains(key)) << key;
    EXPECT_GT(j[key].get<double>(), 0) << key;
  }
}

}  // namespace
}  // namespace rwkv::test
