// `rwkv quantize` and its file: which tensors become int8/int4, the safetensors layout read back
// (and malformed ones refused), the official fixtures of every generation quantized within a bound
// derived from each model's own sensitivity, rwkv.cpp's tiny RWKV-7 decoding the same greedy
// tokens at int8, and the command end to end with its quality report.
#include <algorithm>
#include <cmath>
#include <optional>
#include <cstring>
#include <filesystem>
#include <random>

#include "model/quantize.h"
#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/model.h"
#include "testing.h"

namespace rwkv::test {
namespace {

struct Fixture {
  const char* dir;
  const char* file;
};
constexpr Fixture kFixtures[] = {
    {"v4", "rwkv-v4-L2-D64-V256-fp32.pth"},     {"v5", "rwkv-v5-L2-D64-V256-fp32.pth"},
    {"v5.1", "rwkv-v5_1-L2-D64-V256-fp32.pth"}, {"v5.2", "rwkv-v5_2-L2-D128-V256-fp32.pth"},
    {"v6", "rwkv-v6-L2-D128-V256-fp32.pth"},    {"v7", "rwkv-v7-L2-D128-V256-fp32.pth"}};

std::string fixture_path(const Fixture& f, const std::string& name) {
  return shared_path(std::string("fixtures/official/") + f.dir + "/" + name);
}

std::vector<int> fixture_tokens(const Fixture& f) {
  const auto m = nlohmann::json::parse(read_file(fixture_path(f, "manifest.json")));
  return m["tokens"].get<std::vector<int>>();
}

// Logits [T, V] after each token, one step at a time from the start state.
std::vector<float> step_logits(Model& model, const std::vector<int>& tokens) {
  const size_t V = size_t(model.info().vocab_size);
  std::vector<float> state(model.state_spec().floats), logits(tokens.size() * V);
  model.init_state(state.data());
  float* states[] = {state.data()};
  for (size_t t = 0; t < tokens.size(); ++t) model.step(&tokens[t], 1, states, logits.data() + t * V);
  return logits;
}

std::string write_quantized(const Checkpoint& ckpt, int bits, int group, const std::string& name,
                            model::QuantizedCheckpoint* out = nullptr) {
  model::QuantizeOptions opt;
  opt.bits = bits;
  opt.group = group;
  model::QuantizedCheckpoint q = model::quantize_checkpoint(ckpt, opt);
  const std::string path = temp_dir() + "/" + name + ".safetensors";
  save_safetensors(path, q.tensors);
  if (out) *out = std::move(q);
  return path;
}

TEST(Quantize, ProjectionsAndEmbeddingOnlyTheRestAsStored) {
  RWKV_REQUIRE_SHARED("fixtures/official/v7");
  const Checkpoint ckpt = Checkpoint::open(fixture_path(kFixtures[5], kFixtures[5].file));
  for (int bits : {8, 4}) {
    model::QuantizeOptions opt;
    opt.bits = bits;
    opt.group = 32;
    const auto q = model::quantize_checkpoint(ckpt, opt);
    ASSERT_EQ(q.tensors.size(), ckpt.tensors().size());
    for (size_t i = 0; i < q.tensors.size(); ++i) {
      const TensorView& in = ckpt.tensors()[i];
      const TensorView& t = q.tensors[i];
      EXPECT_EQ(t.name, in.name);
      EXPECT_EQ(t.shape, in.shape);
      const bool projection = in.shape.size() == 2 && in.name.ends_with(".weight") && in.name != "emb.weight";
      if (in.name == "emb.weight") {
        EXPECT_EQ(t.dtype, DType::Q8_0) << in.name;  // gathered: int8 whatever --type
      } else if (projection) {
        EXPECT_EQ(t.dtype, bits == 8 ? DType::Q8_0 : DType::Q4_0) << in.name;
      } else {  // LoRAs, mixes, decays, norms: the input's own bytes
        EXPECT_EQ(t.data, in.data) << in.name;
        EXPECT_EQ(t.dtype, in.dtype) << in.name;
      }
    }
    EXPECT_EQ(q.errors.size(), 2u * 6u + 2u);  // 6 projections per layer, head, embedding
    EXPECT_TRUE(q.notes.empty());
    size_t in = 0, out = 0;
    for (const TensorView& t : ckpt.tensors()) in += t.nbytes();
    for (const TensorView& t : q.tensors) out += t.nbytes();
    EXPECT_EQ(q.bytes_in, in);
    EXPECT_EQ(q.bytes_out, out);
  }
  model::QuantizeOptions opt;
  opt.bits = 4;
  opt.quantize_embedding = false;
  const auto q = model::quantize_checkpoint(ckpt, opt);
  EXPECT_EQ(q.tensors.front().dtype, DType::F32);  // emb.weight
  EXPECT_THROW(model::quantized_dtype(4, 16), Error);
  EXPECT_THROW(model::quantized_dtype(2, 32), Error);
}

TEST(Quantize, RowsThatAreNotWholeGroupsFallBackToGroupsOf32) {
  RWKV_REQUIRE_SHARED("fixtures/official/v4");
  const Checkpoint ckpt = Checkpoint::open(fixture_path(kFixtures[0], kFixtures[0].file));  // C = 64
  model::QuantizeOptions opt;
  opt.bits = 4;
  opt.group = 128;
  const auto q = model::quantize_checkpoint(ckpt, opt);
  ASSERT_FALSE(q.notes.empty());
  for (const auto& e : q.errors) {
    const bool wide = e.shape[1] % 128 == 0;
    if (e.name == "emb.weight") continue;
    EXPECT_EQ(e.to, wide ? DType::Q4_G128 : DType::Q4_0) << e.name;
  }
}

TEST(Quantize, SafetensorsRoundTripAndLoad) {
  RWKV_REQUIRE_SHARED("fixtures/official/v7");
  const Checkpoint ckpt = Checkpoint::open(fixture_path(kFixtures[5], kFixtures[5].file));
  model::QuantizedCheckpoint q;
  const std::string path = write_quantized(ckpt, 4, 64, "roundtrip", &q);
  const Checkpoint back = Checkpoint::open(path);
  ASSERT_EQ(back.tensors().size(), q.tensors.size());
  for (size_t i = 0; i < q.tensors.size(); ++i) {
    const TensorView &a = q.tensors[i], &b = back.tensors()[i];
    EXPECT_EQ(b.name, a.name);
    EXPECT_EQ(b.dtype, a.dtype) << a.name;
    EXPECT_EQ(b.shape, a.shape) << a.name;
    ASSERT_EQ(b.nbytes(), a.nbytes());
    EXPECT_EQ(0, std::memcmp(a.data, b.data, a.nbytes())) << a.name;
  }
  const auto model = load_model(path);  // (its fp32 LoRAs outweigh its int4 matrices)
  EXPECT_EQ(model->info().n_layer, 2);
}

// A safetensors file from a header (JSON) and data bytes.
std::string safetensors_file(const std::string& name, const nlohmann::json& header, size_t data_bytes) {
  const std::string text = header.dump();
  std::vector<char> bytes(8 + text.size() + data_bytes, '\x11');
  for (size_t i = 0; i < 8; ++i) bytes[i] = char((uint64_t(text.size()) >> (8 * i)) & 0xff);
  std::copy(text.begin(), text.end(), bytes.begin() + 8);
  const std::string path = temp_dir() + "/" + name + ".safetensors";
  write_file_atomic(path, bytes.data(), bytes.size());
  return path;
}

TEST(Quantize, MalformedQuantizedFilesAreRefusedByName) {
  using Json = nlohmann::json;
  const Json q8 = {{"dtype", "U8"}, {"shape", {2, 34}}, {"data_offsets", {0, 68}}};
  const Json meta = {{"rwkv.quantized", "1"}, {"rwkv.dtype.w", "q8_0"}};
  const std::string ok = safetensors_file("ok", {{"__metadata__", meta}, {"w", q8}}, 68);
  const Checkpoint c = Checkpoint::open(ok);
  ASSERT_EQ(c.tensors().size(), 1u);
  EXPECT_EQ(c.tensors()[0].dtype, DType::Q8_0);
  EXPECT_EQ(c.tensors()[0].shape, (std::vector<int64_t>{2, 32}));
  struct Case {
    std::string name;
    Json header;
    size_t bytes;
    std::string message;
  } cases[] = {
      {"no-metadata", {{"w", q8}}, 68, "'U8'"},
      {"version", {{"__metadata__", {{"rwkv.quantized", "2"}, {"rwkv.dtype.w", "q8_0"}}}, {"w", q8}}, 68, "version"},
      {"unknown", {{"__metadata__", {{"rwkv.quantized", "1"}, {"rwkv.dtype.w", "q3_k"}}}, {"w", q8}}, 68, "unknown quantized type"},
      {"not-quantized", {{"__metadata__", {{"rwkv.quantized", "1"}, {"rwkv.dtype.w", "bf16"}}}, {"w", q8}}, 68, "not a quantized type"},
      {"missing", {{"__metadata__", {{"rwkv.quantized", "1"}, {"rwkv.dtype.w", "q8_0"}, {"rwkv.dtype.x", "q8_0"}}}, {"w", q8}}, 68, "'x'"},
      {"partial-block", {{"__metadata__", meta}, {"w", {{"dtype", "U8"}, {"shape", {2, 33}}, {"data_offsets", {0, 66}}}}}, 66, "whole"},
      {"not-u8", {{"__metadata__", meta}, {"w", {{"dtype", "F16"}, {"shape", {2, 34}}, {"data_offsets", {0, 136}}}}}, 136, "U8"},
      {"short", {{"__metadata__", meta}, {"w", {{"dtype", "U8"}, {"shape", {2, 34}}, {"data_offsets", {0, 60}}}}}, 60, "needs"},
      {"truncated", {{"__metadata__", meta}, {"w", q8}}, 40, "truncated"},
  };
  for (const Case& k : cases) {
    const std::string path = safetensors_file(k.name, k.header, k.bytes);
    try {
      Checkpoint::open(path);
      ADD_FAILURE() << k.name << ": opened";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(k.message), std::string::npos) << k.name << ": " << e.what();
    }
  }
}

// The bound: quantizing adds to each quantized tensor an error of measured RMS e_w (and the 8-bit
// inputs of its products the equivalent of at most ~1% of the weights' RMS, see below); the
// logits of the fixture's 64 steps may move at most 3 times as far as they move when the fp32
// model's same tensors get Gaussian noise of that RMS (the model's own sensitivity, averaged over
// two draws). Input rounding: x̂ − x is uniform within ±d_x/2, d_x = absmax/127 of a 32–128
// element group (absmax ≲ 3.5 RMS for these activations), so Σ_j w_j(x̂_j − x_j) has the variance of
// weight noise of RMS rms(w)·3.5/127/√12 ≈ 0.008·rms(w): 0.01 is taken.
TEST(Quantize, OfficialFixturesOfEveryGenerationWithinTheirSensitivityBound) {
  for (const Fixture& f : kFixtures) {
    if (!shared_exists(std::string("fixtures/official/") + f.dir)) GTEST_SKIP() << "../shared/fixtures/official absent";
    auto ckpt = std::make_shared<const Checkpoint>(Checkpoint::open(fixture_path(f, f.file)));
    const std::vector<int> tokens = fixture_tokens(f);
    auto fp32 = load_model(ckpt);
    const auto reference = step_logits(*fp32, tokens);
    EXPECT_LE(compare(reference, read_f32_file(fixture_path(f, "logits_step.bin"))).max_abs, 1e-4) << f.dir;
    for (const auto& [bits, group] : {std::pair{8, 32}, {8, 128}, {4, 32}, {4, 64}, {4, 128}}) {
      model::QuantizedCheckpoint q;
      const std::string path = write_quantized(*ckpt, bits, group, cat(f.dir, "-", bits, "-", group), &q);
      auto quantized = load_model(path);
      const double moved = rel_norm_error(step_logits(*quantized, tokens).data(), reference.data(), reference.size());
      double noise = 0;
      for (unsigned seed : {1u, 2u}) {
        std::mt19937 rng(seed);
        std::vector<TensorView> tensors = ckpt->tensors();
        std::vector<std::shared_ptr<const void>> owners;
        for (const auto& e : q.errors) {
          auto it = std::find_if(tensors.begin(), tensors.end(), [&](const TensorView& t) { return t.name == e.name; });
          ASSERT_EQ(it->dtype, DType::F32);
          const auto* w = static_cast<const float*>(it->data);
          const size_t n = size_t(it->numel());
          double sq = 0;
          for (size_t i = 0; i < n; ++i) sq += double(w[i]) * w[i];
          const double rms = std::sqrt(sq / double(n));
          const double sigma = std::sqrt(std::pow(e.rel_rms * rms, 2) + std::pow(0.01 * rms, 2));
          auto noisy = std::make_shared<std::vector<float>>(w, w + n);
          std::normal_distribution<double> z(0, sigma);
          for (float& v : *noisy) v += float(z(rng));
          it->data = noisy->data();
          owners.push_back(noisy);
        }
        owners.push_back(ckpt);
        auto perturbed = load_model(std::make_shared<const Checkpoint>("noise", "pth", tensors, owners));
        noise += rel_norm_error(step_logits(*perturbed, tokens).data(), reference.data(), reference.size()) / 2;
      }
      std::printf("%s int%d group %d: logits moved %.4f (noise of the same size: %.4f)\n", f.dir,
                  bits, group, moved, noise);
      EXPECT_LE(moved, 3 * noise) << f.dir << " int" << bits << " group " << group;
    }
  }
}

// rwkv.cpp's tiny RWKV-7 (trained) converted to int8 at load decodes the fp32 model's greedy
// tokens.
TEST(Quantize, TinyTrainedV7DecodesTheSameGreedyTokensAtInt8) {
  const std::string file = "reference/rwkv.cpp-tiny/tiny-rwkv-7v0-834K-FP32.bin";
  RWKV_REQUIRE_SHARED(file);
  auto greedy = [&](std::optional<DType> dtype) {
    LoadOptions opt;
    opt.weight_dtype = dtype;
    auto model = load_model(shared_path(file), opt);
    std::vector<float> state(model->state_spec().floats), logits(256);
    model->init_state(state.data());
    float* states[] = {state.data()};
    std::vector<int> out;
    for (unsigned char c : std::string("The quick brown fox ")) {
      const int token = c;
      model->step(&token, 1, states, logits.data());
    }
    for (int i = 0; i < 32; ++i) {
      const int next = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
      out.push_back(next);
      model->step(&next, 1, states, logits.data());
    }
    return out;
  };
  const auto want = greedy(std::nullopt);
  for (DType t : {DType::Q8_0, DType::Q8_G64}) {
    const auto got = greedy(t);
    size_t same = 0;
    while (same < got.size() && got[same] == want[same]) ++same;
    std::printf("%s: the first %zu of 32 greedy tokens equal fp32's\n", dtype_name(t), same);
    EXPECT_GE(same, 16u) << dtype_name(t);
  }
}

TEST(Quantize, CommandWritesAFileEveryCommandLoadsAndReports) {
  RWKV_REQUIRE_SHARED("fixtures/official/v7");
  const std::string in = fixture_path(kFixtures[5], kFixtures[5].file);
  const std::string out = temp_dir() + "/cli-int4.safetensors";
  auto r = run_cli(cat_args("quantize", quote(in), quote(out), "--type int4 --group 64 --report --json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tensors"].size(), 14u);
  const double top1 = j["text"]["top1_agreement"], po = j["text"]["perplexity_original"],
               pq = j["text"]["perplexity_quantized"], kl = j["text"]["mean_kl"];
  EXPECT_GE(top1, 0.0);
  EXPECT_LE(top1, 1.0);
  EXPECT_TRUE(std::isfinite(po) && po > 1 && std::isfinite(pq) && pq > 1);
  EXPECT_GE(kl, 0.0);
  for (const auto& t : j["tensors"]) EXPECT_LT(t["rel_rms_error"].get<double>(), 0.2) << t["name"];
  r = run_cli("generate -m " + quote(out) + " -p hello -n 8 --temperature 0");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // logits and bench load it too; the logits are the in-process model's.
  const std::vector<int> ids = {1, 2, 3, 200, 17};
  const std::string logits_file = temp_dir() + "/cli-int4-logits.bin";
  r = run_cli("logits -m " + quote(out) + " --tokens 1,2,3,200,17 -o " + quote(logits_file));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto model = load_model(out);
  const auto want = step_logits(*model, ids);
  EXPECT_EQ(compare(read_f32_file(logits_file), want).max_abs, 0.0);
  r = run_cli("bench -m " + quote(out) + " --json --decode-tokens 4 --prefill-tokens 16 --bandwidth-mib 64 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GT(nlohmann::json::parse(r.out)["decode_tokens_per_s"].get<double>(), 0) << r.out;
  r = run_cli(cat_args("quantize", quote(in), quote(out), "--type int8"));  // replaces the file
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("q8_g64"), std::string::npos) << r.out;
  struct Case {
    std::string args, message;
  } cases[] = {
      {cat_args("quantize", quote(out), quote(out + "2"), "--type int4"), "quantized already"},
      {cat_args("quantize", quote(in), quote(in), "--type int4"), "input file"},
      {cat_args("quantize", quote(in), quote(out), "--type int4 --group 48"), "48"},
      {cat_args("quantize", quote(in), quote(out), "--type int2"), "int2"},
      {"quantize /nonexistent.pth " + quote(out) + " --type int8", "/nonexistent.pth"},
  };
  for (const Case& k : cases) {
    r = run_cli(k.args);
    EXPECT_NE(r.exit_code, 0) << k.args;
    EXPECT_NE((r.out + r.err).find(k.message), std::string::npos) << k.args << ": " << r.err;
  }
  const std::string tiny = "reference/rwkv.cpp-tiny/tiny-rwkv-7v0-834K-FP32.bin";
  if (shared_exists(tiny)) {
    r = run_cli(cat_args("quantize", quote(shared_path(tiny)), quote(out), "--type int8"));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("rwkv.cpp"), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace rwkv::test
