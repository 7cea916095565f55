// `rwkv train` end to end: a tiny model learns a repetitive corpus; a run killed mid-way and
// resumed reproduces the uninterrupted losses and weights exactly (random windows, and
// sequential windows with state passing); checkpoints load back bit-identically; bad data,
// configs and output directories give clear errors; a failed save keeps the old checkpoint.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "model/rwkv7_train.h"
#include "rwkv/checkpoint.h"
#include "rwkv/file_io.h"
#include "testing.h"
#include "train/train_log.h"
#include "train/train_state.h"

extern char** environ;

namespace rwkv {
namespace {

using test::cat_args;
using test::quote;
using test::run_cli;

// A corpus a small model can learn exactly: one sentence with a counter, repeated.
std::string write_corpus(const std::string& dir) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the quick brown fox jumps over the lazy dog " + std::to_string(i % 7) + ". ";
  const std::string path = dir + "/corpus.txt";
  std::ofstream(path) << text;
  return path;
}

const std::string kTiny = "--layers 2 --embd 32 --head-size 16 --ctx 32 --batch 4 --threads 1 -q";

std::string train_args(const std::string& data, const std::string& out, const std::string& extra) {
  return cat_args("train --data", quote(data), "--out", quote(out), kTiny, extra);
}

// The deterministic columns of a log (not the timings).
std::vector<std::tuple<int64_t, int64_t, double, double, double>> losses(const std::string& dir) {
  std::vector<std::tuple<int64_t, int64_t, double, double, double>> out;
  for (const auto& r : train::read_log_csv(dir + "/log.csv")) {
    out.emplace_back(r.step, r.tokens, r.loss, r.lr, r.grad_norm);
  }
  return out;
}

TEST(TrainCli, TinyModelLearnsARepetitiveCorpus) {
  const std::string dir = test::temp_dir() + "/learn";
  const auto r = run_cli(train_args(write_corpus(test::temp_dir()), dir,
                                    "--steps 150 --lr-init 3e-3 --lr-final 3e-4 --warmup-steps 5"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = train::read_log_csv(dir + "/log.csv");
  ASSERT_EQ(rows.size(), 150u);
  EXPECT_GT(rows.front().loss, 5.0);  // ln 256 ≈ 5.5 at the start
  double last = 0;
  for (size_t i = rows.size() - 10; i < rows.size(); ++i) last += rows[i].loss / 10;
  EXPECT_LT(last, 0.3);
  EXPECT_TRUE(std::filesystem::exists(dir + "/loss.svg"));
  // The checkpoint is an ordinary model: greedy generation continues the sentence.
  const auto g = run_cli(cat_args("generate -m", quote(dir + "/model.pth"),
                                  "--tokenizer bytes --temperature 0 --presence-penalty 0",
                                  "--frequency-penalty 0 -n 24 -p", quote("the quick brown")));
  ASSERT_EQ(g.exit_code, 0) << g.err;
  EXPECT_NE(g.out.find("the quick brown fox jumps over"), std::string::npos) << g.out;
  // And `rwkv eval` scores the corpus about as well as training did.
  const auto e = run_cli(cat_args("eval -m", quote(dir + "/model.pth"), "--tokenizer bytes --data",
                                  quote(test::temp_dir() + "/corpus.txt"), "--json"));
  ASSERT_EQ(e.exit_code, 0) << e.err;
  const auto j = nlohmann::json::parse(e.out);
  EXPECT_LT(j["mean_loss"].get<double>(), 0.5) << e.out;
}

// Starts `rwkv train`, kills it (SIGKILL) once its log has `rows` steps, and returns whether
// it was still running then.
bool kill_after_rows(const std::string& args, const std::string& log, size_t rows) {
  const std::string cmd = std::string(RWKV_CLI) + " " + args + " >/dev/null 2>&1";
  pid_t pid = 0;
  const char* argv[] = {"sh", "-c", cmd.c_str(), nullptr};
  // exec so that the pid is rwkv's own.
  const std::string exec_cmd = "exec " + cmd;
  argv[2] = exec_cmd.c_str();
  if (posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) != 0) return false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool killed = false;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return false;  // finished before the kill
    size_t lines = 0;
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);) ++lines;
    if (lines > rows) {
      kill(pid, SIGKILL);
      killed = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return killed;
}

void expect_exact_resume(const std::string& name, const std::string& extra) {
  const std::string corpus = write_corpus(test::temp_dir());
  const std::string whole = test::temp_dir() + "/" + name + "-whole";
  const std::string broken = test::temp_dir() + "/" + name + "-killed";
  const std::string args = "--steps 120 --save-every 10 --save-dtype fp32 " + extra;
  ASSERT_EQ(run_cli(train_args(corpus, whole, args)).exit_code, 0);
  ASSERT_TRUE(kill_after_rows(train_args(corpus, broken, args), broken + "/log.csv", 45))
      << "the run ended before it could be killed";
  const auto r = run_cli(cat_args("train --resume", quote(broken), "-q"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(losses(broken), losses(whole));
  EXPECT_EQ(read_file(broken + "/model.pth"), read_file(whole + "/model.pth"));
}

TEST(TrainCli, KilledAndResumedRunMatchesUninterruptedRun) {
  expect_exact_resume("random", "");
}

TEST(TrainCli, ResumeIsExactWithStatePassingAndBptt) {
  expect_exact_resume("sequential", "--order sequential --bptt 2");
}

// In magic_prime order, window ii = 1 + step·B + row: 2 micro-batches of 2 windows visit the
// windows one batch of 4 does, so the losses agree up to the summation order.
TEST(TrainCli, GradientAccumulationMatchesTheLargerBatch) {
  const std::string corpus = write_corpus(test::temp_dir());
  const std::string big = test::temp_dir() + "/accum-big", small = test::temp_dir() + "/accum-small";
  const std::string common = "--order magic_prime --steps 6 --lr-init 3e-3 --warmup-steps 0";
  ASSERT_EQ(run_cli(cat_args("train --data", quote(corpus), "--out", quote(big), kTiny, common)).exit_code, 0);
  std::string tiny_batch2 = kTiny;
  tiny_batch2.replace(tiny_batch2.find("--batch 4"), 9, "--batch 2");
  auto r = run_cli(cat_args("train --data", quote(corpus), "--out", quote(small), tiny_batch2, common,
                            "--grad-accum 2"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto a = train::read_log_csv(big + "/log.csv"), b = train::read_log_csv(small + "/log.csv");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    EXPECT_NEAR(a[i].loss, b[i].loss, 1e-4 * a[i].loss) << "step " << i;
  }
  r = run_cli(cat_args("train --data", quote(corpus), "--out", quote(small + "2"), kTiny,
                       "--order sequential --grad-accum 2"));
  EXPECT_NE(r.err.find("grad_accum"), std::string::npos) << r.err;
}

TEST(TrainCli, CheckpointLoadsBackBitIdentically) {
  const std::string corpus = write_corpus(test::temp_dir());
  for (const char* dtype : {"fp32", "bf16"}) {
    const std::string dir = test::temp_dir() + "/ckpt-" + dtype;
    ASSERT_EQ(run_cli(train_args(corpus, dir, std::string("--steps 3 --save-dtype ") + dtype)).exit_code, 0);
    const Checkpoint ckpt = Checkpoint::open(dir + "/model.pth");
    const train::TrainState st = train::load_train_state(dir + "/train_state.bin");
    model::Rwkv7Train<float> net(ckpt.tensors(), ckpt.path());
    const std::vector<float>& master = *st.find("params");
    ASSERT_EQ(master.size(), net.table().total);
    for (const model::ParamTensor& t : net.table().tensors) {
      for (size_t i = 0; i < t.numel; ++i) {
        float want = master[t.offset + i];
        if (std::string(dtype) == "bf16") want = bf16_to_f32(f32_to_bf16(want));
        ASSERT_EQ(net.params()[t.offset + i], want) << dtype << " " << t.name << "[" << i << "]";
      }
    }
  }
}

TEST(TrainCli, ConfigFileFlagsWinAndUnknownKeysFail) {
  const std::string corpus = write_corpus(test::temp_dir());
  const std::string dir = test::temp_dir() + "/config";
  std::ofstream(test::temp_dir() + "/cfg.json")
      << R"({"layers": 1, "embd": 32, "head_size": 16, "ctx_len": 16, "batch": 2, "steps": 50, "threads": 1})";
  auto r = run_cli(cat_args("train --config", quote(test::temp_dir() + "/cfg.json"), "--data",
                            quote(corpus), "--out", quote(dir), "--steps 4 -q"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(train::read_log_csv(dir + "/log.csv").size(), 4u);
  const auto saved = nlohmann::json::parse(read_file(dir + "/config.json"));
  EXPECT_EQ(saved["layers"], 1);
  EXPECT_EQ(saved["ctx_len"], 16);
  std::ofstream(test::temp_dir() + "/bad.json") << R"({"layerz": 1})";
  r = run_cli(cat_args("train --config", quote(test::temp_dir() + "/bad.json"), "--data",
                       quote(corpus), "--out", quote(dir + "2")));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("unknown key 'layerz'"), std::string::npos) << r.err;
}

TEST(TrainCli, BadDataAndOutputGiveClearErrors) {
  const std::string corpus = write_corpus(test::temp_dir());
  const std::string base = test::temp_dir() + "/bad";
  std::filesystem::create_directories(base);
  // A corrupt binidx.
  std::ofstream(base + "/data.idx") << "not an index";
  std::ofstream(base + "/data.bin") << "xx";
  auto r = run_cli(train_args(base + "/data", base + "/o1", "--steps 1"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("data.idx"), std::string::npos) << r.err;
  // A context longer than the data.
  std::ofstream(base + "/short.txt") << "tiny";
  r = run_cli(train_args(base + "/short.txt", base + "/o2", "--steps 1"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("longer than"), std::string::npos) << r.err;
  // An output directory that cannot be created (its parent is a file).
  std::ofstream(base + "/file") << "x";
  r = run_cli(train_args(corpus, base + "/file/out", "--steps 1"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("file/out"), std::string::npos) << r.err;
  // Missing data, bad order, bptt without sequential order.
  EXPECT_NE(run_cli(train_args(base + "/none.txt", base + "/o3", "--steps 1")).exit_code, 0);
  r = run_cli(train_args(corpus, base + "/o4", "--order sideways"));
  EXPECT_NE(r.err.find("order"), std::string::npos) << r.err;
  r = run_cli(train_args(corpus, base + "/o5", "--bptt 2"));
  EXPECT_NE(r.err.find("bptt"), std::string::npos) << r.err;
  // A model to fine-tune that is not RWKV-7.
  std::ofstream(base + "/model.pth") << "garbage";
  r = run_cli(train_args(corpus, base + "/o6", "--init-from " + quote(base + "/model.pth")));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("model.pth"), std::string::npos) << r.err;
  // A malformed device; a GPU that is not there (every machine has fewer than 64).
  r = run_cli(train_args(corpus, base + "/o7", "--device gpu"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("device 'gpu'"), std::string::npos) << r.err;
  r = run_cli(train_args(corpus, base + "/o8", "--device cuda:63"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("error:"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("terminate"), std::string::npos) << r.err;
}

TEST(TrainCli, FailedSaveKeepsThePreviousCheckpoint) {
  const std::string corpus = write_corpus(test::temp_dir());
  const std::string dir = test::temp_dir() + "/fullDisk";
  ASSERT_EQ(run_cli(train_args(corpus, dir, "--steps 2")).exit_code, 0);
  const std::string model = read_file(dir + "/model.pth");
  const std::string state = read_file(dir + "/train_state.bin");
  // A file-size limit makes the next save fail like a full disk (EFBIG; SIGXFSZ ignored).
  const std::string cmd = "sh -c " + quote("trap '' XFSZ; ulimit -f 64; exec " + std::string(RWKV_CLI) +
                                           " train --resume " + quote(dir) + " --steps 4 -q") +
                          " >/dev/null 2>" + quote(dir + "/err.txt");
  EXPECT_NE(std::system(cmd.c_str()), 0);
  const std::string err = read_file(dir + "/err.txt");
  EXPECT_NE(err.find("error"), std::string::npos) << err;
  EXPECT_EQ(read_file(dir + "/model.pth"), model);
  EXPECT_EQ(read_file(dir + "/train_state.bin"), state);
  // With room again, the run resumes from the intact checkpoint.
  ASSERT_EQ(run_cli(cat_args("train --resume", quote(dir), "--steps 4 -q")).exit_code, 0);
  EXPECT_EQ(train::read_log_csv(dir + "/log.csv").size(), 4u);
}

TEST(TrainCli, FineTunesAnOfficialCheckpoint) {
  RWKV_REQUIRE_SHARED("fixtures/official/v7/rwkv-v7-L2-D128-V256.pth");
  const std::string dir = test::temp_dir() + "/finetune";
  const auto r = run_cli(cat_args("train --init-from",
                                  quote(test::shared_path("fixtures/official/v7/rwkv-v7-L2-D128-V256.pth")),
                                  "--data", quote(write_corpus(test::temp_dir())), "--out", quote(dir),
                                  "--ctx 32 --batch 2 --steps 20 --lr-init 1e-3 --threads 1 -q"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = train::read_log_csv(dir + "/log.csv");
  EXPECT_LT(rows.back().loss, rows.front().loss - 1.0);
  // The fine-tuned file keeps the official key list (layer 0 without v0/v1/v2).
  const Checkpoint out = Checkpoint::open(dir + "/model.pth");
  const Checkpoint in = Checkpoint::open(test::shared_path("fixtures/official/v7/rwkv-v7-L2-D128-V256.pth"));
  ASSERT_EQ(out.tensors().size(), in.tensors().size());
  for (size_t i = 0; i < in.tensors().size(); ++i) {
    EXPECT_EQ(out.tensors()[i].name, in.tensors()[i].name);
    EXPECT_EQ(out.tensors()[i].shape, in.tensors()[i].shape);
  }
}

}  // namespace
}  // namespace rwkv

namespace rwkv {
namespace {

// PyTorch, when installed (Debian's python3-torch), reads the trainer's checkpoint as the plain
// name → tensor dict official releases are, with the official dtypes and shapes.
TEST(TrainCli, CheckpointLoadsInPyTorch) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no PyTorch (/usr/bin/python3 with torch)";
  }
  const std::string dir = test::temp_dir() + "/torch";
  ASSERT_EQ(run_cli(train_args(write_corpus(test::temp_dir()), dir, "--steps 2")).exit_code, 0);
  const std::string script =
      "import torch, sys\n"
      "d = torch.load(sys.argv[1], map_location='cpu')\n"
      "assert type(d) is dict, type(d)\n"
      "assert all(t.dtype == torch.bfloat16 for t in d.values())\n"
      "print(len(d), tuple(d['emb.weight'].shape), tuple(d['blocks.1.att.r_k'].shape),\n"
      "      tuple(d['blocks.0.att.x_r'].shape), 'blocks.0.att.v0' in d, 'blocks.1.att.v0' in d)\n";
  std::ofstream(dir + "/check.py") << script;
  const std::string out = dir + "/torch.txt";
  ASSERT_EQ(std::system(("/usr/bin/python3 " + quote(dir + "/check.py") + " " + quote(dir + "/model.pth") +
                         " >" + quote(out) + " 2>&1").c_str()),
            0)
      << read_file(out);
  // 2 layers: 4 model-level + 32 (layer 0: ln0, no v0/v1/v2) + 33 (layer 1) tensors.
  EXPECT_EQ(read_file(out), "69 (256, 32) (2, 16) (1, 1, 32) False True\n");
}

}  // namespace
}  // namespace rwkv
