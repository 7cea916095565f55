// Every CLI command on every generation and file format: official .pth files of RWKV-4/5/6 and
// rwkv.cpp model files, through real processes.
#include <nlohmann/json.hpp>

#include <algorithm>

#include "rwkv/file_io.h"
#include "testing.h"

namespace rwkv::test {
namespace {

struct Model {
  const char* dir;    // fixtures/official/<dir>
  const char* file;   // checkpoint file name
  const char* names;  // what `rwkv info` must print
};

const Model kOfficial[] = {
    {"v4", "rwkv-v4-L2-D64-V256-fp32.pth", "RWKV-4"},
    {"v5", "rwkv-v5-L2-D64-V256-fp32.pth", "generation 5.0"},
    {"v5.1", "rwkv-v5_1-L2-D64-V256-fp32.pth", "generation 5.1"},
    {"v5.2", "rwkv-v5_2-L2-D128-V256-fp32.pth", "generation 5.2"},
    {"v6", "rwkv-v6-L2-D128-V256-fp32.pth", "RWKV-6"},
};

std::string token_list(const std::vector<int>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

TEST(CliGenerations, InfoAndLogitsMatchTheOfficialReferenceInBothModes) {
  for (const Model& m : kOfficial) {
    const std::string dir = std::string("fixtures/official/") + m.dir + "/";
    if (!shared_exists(dir + m.file)) GTEST_SKIP() << "../shared/" << dir << " not present";
    const std::string model = quote(shared_path(dir + m.file));
    auto r = run_cli("info " + model);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find(m.names), std::string::npos) << m.dir << ":\n" << r.out;
    const auto manifest = nlohmann::json::parse(read_file(shared_path(dir + "manifest.json")));
    const std::string tokens = token_list(manifest["tokens"].get<std::vector<int>>());
    for (const char* mode : {"step", "seq"}) {
      const std::string out = temp_dir() + "/" + m.dir + "-" + mode + ".bin";
      const std::string state = temp_dir() + "/" + m.dir + "-" + mode + ".state";
      r = run_cli(cat_args("logits -m", model, "--tokens", tokens, "--mode", mode, "-o", quote(out),
                           "--state-out", quote(state)));
      ASSERT_EQ(r.exit_code, 0) << r.err;
      const auto want = read_f32_file(shared_path(dir + "logits_" + mode + ".bin"));
      EXPECT_LE(compare(read_f32_file(out), want).max_abs, 1e-4) << m.dir << " " << mode;
      const auto want_state = read_f32_file(shared_path(dir + "final_state_step.bin"));
      EXPECT_LE(compare(read_f32_file(state), want_state).max_abs, 2e-4) << m.dir << " " << mode;
    }
    // Resume from the official raw split state.
    const std::string out = temp_dir() + "/" + m.dir + "-seg2.bin";
    r = run_cli(cat_args("logits -m", model, "--tokens",
                         token_list(manifest["seg2_tokens"].get<std::vector<int>>()), "--state-in",
                         quote(shared_path(dir + "state_split.bin")), "-o", quote(out)));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_LE(compare(read_f32_file(out), read_f32_file(shared_path(dir + "logits_seg2_step.bin"))).max_abs,
              1e-4)
        << m.dir;
  }
}

TEST(CliGenerations, GenerateSavesAndResumesStateForEveryGeneration) {
  for (const Model& m : kOfficial) {
    const std::string path = std::string("fixtures/official/") + m.dir + "/" + m.file;
    if (!shared_exists(path)) GTEST_SKIP() << "../shared/" << path << " not present";
    const std::string model = quote(shared_path(path));
    const std::string state = temp_dir() + "/" + m.dir + ".rwkvstate";
    auto r = run_cli("generate -m " + model + " -p 'Hi there' -n 8 --seed 3 --state-out " + quote(state));
    ASSERT_EQ(r.exit_code, 0) << m.dir << ": " << r.err;
    r = run_cli("generate -m " + model + " -p ' again' -n 4 --state-in " + quote(state));
    EXPECT_EQ(r.exit_code, 0) << m.dir << ": " << r.err;
    // Another generation's state is refused, naming both.
    const std::string other = std::string(m.dir) == "v4" ? "v6" : "v4";
    const Model& o = *std::find_if(std::begin(kOfficial), std::end(kOfficial),
                                   [&](const Model& x) { return x.dir == other; });
    r = run_cli("generate -m " + quote(shared_path("fixtures/official/" + other + "/" + o.file)) +
                " -p x -n 1 --state-in " + quote(state));
    EXPECT_NE(r.exit_code, 0) << m.dir;
    EXPECT_NE(r.err.find("state"), std::string::npos) << r.err;
  }
}

TEST(CliGenerations, RwkvCppFilesWorkLikeCheckpoints) {
  const std::string dir = "reference/rwkv.cpp-tiny/";
  for (const char* stem : {"tiny-rwkv-4v0-660K-Q5_1", "tiny-rwkv-5v1-730K-FP16",
                           "tiny-rwkv-6v0-3m-Q5_0", "tiny-rwkv-7v0-834K-FP32"}) {
    const std::string path = dir + stem + ".bin";
    if (!shared_exists(path)) GTEST_SKIP() << "../shared/" << path << " not present";
    const std::string model = quote(shared_path(path));
    auto r = run_cli("info " + model);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("rwkv.cpp"), std::string::npos) << r.out;
    // The first three bytes of the reference text through `logits`, against rwkv.cpp's rows
    // (the bounds of test_rwkvcpp_models.cpp; these files are the ones with the loosest).
    const std::string out = temp_dir() + "/" + stem + ".logits";
    r = run_cli(cat_args("logits -m", model, "--tokens 34,105,110 --mode seq -o", quote(out)));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto want = read_f32_file(shared_path(dir + stem + ".steps.f32"));
    want.resize(3 * 256);
    EXPECT_LE(compare(read_f32_file(out), want).max_abs, 1.0) << stem;
    r = run_cli("generate -m " + model + " -p 'The ' -n 8 --seed 1");
    EXPECT_EQ(r.exit_code, 0) << stem << ": " << r.err;
    r = run_cli("bench -m " + model + " --json --decode-tokens 4 --prefill-tokens 16 --bandwidth-mib 16 -t 1");
    ASSERT_EQ(r.exit_code, 0) << stem << ": " << r.err;
    EXPECT_GT(nlohmann::json::parse(r.out)["decode_tokens_per_s"].get<double>(), 0) << stem;
  }
}

}  // namespace
}  // namespace rwkv::test
