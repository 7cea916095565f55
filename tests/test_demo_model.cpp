// The embedded demo model (models/fortunes-rwkv7.pth, trained by `rwkv train`, see
// scripts/train-demo-model.sh): an official-layout RWKV-7 that loads in both the inference
// and the training form, writes English-like fortunes, and scores the held-out `wisdom` file.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/rwkv7_train.h"
#include "rwkv/checkpoint.h"
#include "testing.h"

namespace rwkv {
namespace {

const std::string kModel = std::string(RWKV_SOURCE_DIR) + "/models/fortunes-rwkv7.pth";
// Measured when the model was trained (README): 2.237 bits per byte; an untrained model gives 8.
constexpr double kHeldOutBitsPerByte = 2.3;

TEST(DemoModel, IsAnOfficialLayoutRwkv7) {
  const Checkpoint ckpt = Checkpoint::open(kModel);
  const model::Rwkv7Train<float> net(ckpt.tensors(), ckpt.path());
  EXPECT_EQ(net.dims().V, 256);
  EXPECT_EQ(net.dims().L, 4);
  EXPECT_EQ(net.dims().C, 256);
  EXPECT_LT(std::filesystem::file_size(kModel), 20u << 20);
}

TEST(DemoModel, GeneratesText) {
  const auto r = test::run_cli("generate -m " + test::quote(kModel) +
                               " --tokenizer bytes --seed 1 -n 200 -p 'The '");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Mostly letters and spaces (uniform bytes would give about 0.2), and it ends a fortune with
  // the end-of-document token, not a NUL byte.
  size_t letters = 0;
  for (char c : r.out) letters += std::isalpha(static_cast<unsigned char>(c)) || c == ' ';
  EXPECT_GT(double(letters) / double(r.out.size()), 0.6) << r.out;
  EXPECT_EQ(r.out.find('\0'), std::string::npos);
}

TEST(DemoModel, ScoresTheHeldOutFortunes) {
  const std::string wisdom = "/usr/share/games/fortunes/wisdom";
  if (!std::filesystem::exists(wisdom)) GTEST_SKIP() << "Debian's fortunes package is not installed";
  const auto r = test::run_cli("eval -m " + test::quote(kModel) + " --tokenizer bytes --data " +
                               wisdom + " --ctx 4096 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const double bpb = nlohmann::json::parse(r.out)["bits_per_byte"].get<double>();
  EXPECT_LT(bpb, kHeldOutBitsPerByte) << r.out;
}

}  // namespace
}  // namespace rwkv
