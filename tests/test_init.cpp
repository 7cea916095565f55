// The official RWKV-7 initialisation (spec §5.1): key names, order and shapes against the official
// fixture, LoRA widths, the per-channel formulas, orthogonality, determinism, and that the result
// loads and runs as a model.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <map>

#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/init.h"
#include "rwkv/model.h"
#include "init_checks.h"
#include "testing.h"

namespace rwkv {
namespace {

using test::gram_error;
using test::Named;
using test::values;

InitConfig small_f32(int n_layer = 3) {
  InitConfig c;
  c.n_layer = n_layer;
  c.n_embd = 128;
  c.head_size = 32;
  c.vocab_size = 300;  // > C: head gain 0.5·√(V/C)
  c.dim_ffn = 256;
  c.dtype = DType::F32;
  return c;
}


TEST(InitV7, KeysOrderAndShapesMatchTheOfficialFixture) {
  RWKV_REQUIRE_SHARED("fixtures/official/v7/manifest.json");
  const auto manifest = nlohmann::json::parse(
      read_file(test::shared_path("fixtures/official/v7/manifest.json")));
  InitConfig c;  // bf16, like the official files
  c.n_layer = 2;
  c.n_embd = 128;
  c.vocab_size = 256;
  c.head_size = 64;
  c.dim_ffn = 512;
  c.d_decay = 32, c.d_iclr = 32, c.d_value = 32, c.d_gate = 64;
  const OwnedTensors got = init_rwkv7(c);
  const auto& keys = manifest["checkpoint"]["keys"];
  ASSERT_EQ(got.tensors.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(got.tensors[i].name, keys[i]["name"].get<std::string>()) << "position " << i;
    EXPECT_EQ(got.tensors[i].shape, keys[i]["shape"].get<std::vector<int64_t>>())
        << got.tensors[i].name;
    EXPECT_EQ(got.tensors[i].dtype, DType::BF16) << got.tensors[i].name;
  }
}

// Widths of the released models (§1.2). C=768 is read from the LoRA shapes (tiny vocab and FFN keep
// it cheap; block 1 has the value LoRA); C=2048 from the helper, as its C×C orthogonal matrices
// would take seconds.
TEST(InitV7, DefaultLoraWidthsAreTheReleasedOnes) {
  InitConfig c;
  c.n_layer = 2;
  c.n_embd = 768;
  c.vocab_size = 8;
  c.dim_ffn = 32;
  const Named t(init_rwkv7(c));
  EXPECT_EQ(t.at("blocks.1.att.w1").shape, (std::vector<int64_t>{768, 64}));
  EXPECT_EQ(t.at("blocks.1.att.w2").shape, (std::vector<int64_t>{64, 768}));
  EXPECT_EQ(t.at("blocks.1.att.a1").shape, (std::vector<int64_t>{768, 64}));
  EXPECT_EQ(t.at("blocks.1.att.v1").shape, (std::vector<int64_t>{768, 32}));
  EXPECT_EQ(t.at("blocks.1.att.g2").shape, (std::vector<int64_t>{128, 768}));
  const LoraWidths w = released_lora_widths(2048);
  EXPECT_EQ(w.decay, 96);
  EXPECT_EQ(w.iclr, 96);
  EXPECT_EQ(w.value, 64);
  EXPECT_EQ(w.gate, 256);
  EXPECT_EQ(released_lora_widths(64).value, 32);  // the floor of 32
}

TEST(InitV7, PerChannelValuesFollowTheFormulas) {
  const InitConfig c = small_f32();
  const Named t(init_rwkv7(c));
  const int C = c.n_embd, N = c.head_size, L = c.n_layer;
  auto at = [&](const std::string& name, int ch) { return values(t.at(name))[size_t(ch)]; };
  const char* mixes[] = {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g"};
  const double powers[] = {0.2, 0.9, 0.7, 0.7, 0.9, 0.2};
  for (int i = 0; i < L; ++i) {
    const std::string a = "blocks." + std::to_string(i) + ".att.";
    const double r01 = double(i) / (L - 1), r1 = 1.0 - double(i) / L;
    for (int ch : {0, 1, 37, C - 1}) {
      const double ddd = double(ch) / C, lin = double(ch) / (C - 1) - 0.5;
      const double z = ((ch % N) - (N - 1) / 2.0) / ((N - 1) / 2.0), zig = z * std::abs(z);
      for (int j = 0; j < 6; ++j) {
        EXPECT_NEAR(at(a + mixes[j], ch), 1 - std::pow(ddd, powers[j] * r1), 1e-6)
            << a << mixes[j] << " c=" << ch;
      }
      const double www = -6 + 6 * std::pow(double(ch) / (C - 1), 1 + std::pow(r01, 0.3));
      EXPECT_NEAR(at(a + "w0", ch), www + 0.5 + 2.5 * zig, 1e-5) << a << " c=" << ch;
      EXPECT_NEAR(at(a + "a0", ch), -0.19 + 0.3 * zig + 0.4 * lin, 1e-6) << a << " c=" << ch;
      if (i > 0) {
        EXPECT_NEAR(at(a + "v0", ch), 0.73 - 0.4 * lin, 1e-6) << a << " c=" << ch;
      }
      EXPECT_NEAR(at(a + "k_k", ch), 0.71 - 0.1 * lin, 1e-6) << a << " c=" << ch;
      const std::string f = "blocks." + std::to_string(i) + ".ffn.x_k";
      EXPECT_NEAR(at(f, ch), 1 - std::pow(ddd, std::pow(r1, 4)), 1e-6) << f << " c=" << ch;
    }
    for (float v : values(t.at(a + "k_a"))) ASSERT_EQ(v, 1.02f);
    for (float v : values(t.at(a + "r_k"))) ASSERT_EQ(v, -0.04f);
    const float ln_x = float(std::pow((1.0 + i) / L, 0.7));
    for (float v : values(t.at(a + "ln_x.weight"))) ASSERT_EQ(v, ln_x) << a;
  }
}

TEST(InitV7, LayerNormsZerosAndEmbedding) {
  const Named t(init_rwkv7(small_f32()));
  for (const auto& [name, view] : t.views) {
    const bool ln = name.find("ln") != std::string::npos && name.find("ln_x.weight") == name.npos;
    const bool zero = name.ends_with("att.w1") || name.ends_with("att.a1") ||
                      name.ends_with("att.v1") || name.ends_with("att.g1") ||
                      name.ends_with("output.weight") || name.ends_with("ffn.value.weight");
    if (!ln && !zero) continue;
    const float want = ln && name.ends_with(".weight") ? 1.f : 0.f;
    for (float v : values(view)) ASSERT_EQ(v, want) << name;
  }
  const std::vector<float> emb = values(t.at("emb.weight"));
  float biggest = 0;
  for (float v : emb) {
    ASSERT_LE(std::abs(v), 1e-4f);
    biggest = std::max(biggest, std::abs(v));
  }
  EXPECT_GT(biggest, 0.9e-4f);  // spread over the whole range, not all zero
}

TEST(InitV7, OneLayerModelAvoidsTheDivisionByZero) {
  const Named t(init_rwkv7(small_f32(1)));
  const std::vector<float> w0 = values(t.at("blocks.0.att.w0"));
  // r01 = 0: www = −6 + 6·c/(C−1); at the last channel that is 0, zig = 1.
  EXPECT_NEAR(w0.back(), 0 + 0.5 + 2.5, 1e-6);
  EXPECT_EQ(values(t.at("blocks.0.att.ln_x.weight"))[0], 1.f);
}

TEST(InitV7, MatricesAreOrthogonalWithTheirGains) {
  InitConfig c = small_f32();
  c.d_gate = 256;  // > C: ortho_init's extra √(rows/cols)
  const Named t(init_rwkv7(c));
  const double V = c.vocab_size, C = c.n_embd;
  const std::pair<const char*, double> cases[] = {
      {"blocks.1.att.w2", 0.1},                 // (32, 128): rows
      {"blocks.1.att.v2", 0.1},                 //
      {"blocks.2.att.g2", 0.1 * std::sqrt(2)},  // (256, 128): columns
      {"blocks.0.att.receptance.weight", 1.0},  // square
      {"blocks.0.att.key.weight", 0.1},         //
      {"blocks.2.att.value.weight", 1.0},       //
      {"blocks.1.ffn.key.weight", 1.0},         // (256, 128): columns
      {"head.weight", 0.5 * std::sqrt(V / C)},  // (300, 128): columns
  };
  for (const auto& [name, gain] : cases) {
    EXPECT_LT(gram_error(t.at(name), gain), 1e-3 * gain * gain) << name;
  }
  c.vocab_size = 64;  // ≤ C: head gain 0.5, orthonormal rows
  const Named narrow(init_rwkv7(c));
  EXPECT_LT(gram_error(narrow.at("head.weight"), 0.5), 1e-3 * 0.25);
}

bool same_bytes(const TensorView& a, const TensorView& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data, b.data, a.nbytes()) == 0;
}

TEST(InitV7, SameSeedSameBytesOtherSeedOtherWeights) {
  InitConfig c = small_f32(2);
  c.dtype = DType::BF16;
  c.seed = 7;
  const Named a(init_rwkv7(c)), b(init_rwkv7(c));
  const std::vector<TensorView>&ta = a.owned.tensors, &tb = b.owned.tensors;
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) EXPECT_TRUE(same_bytes(ta[i], tb[i])) << ta[i].name;
  c.seed = 8;
  const Named other(init_rwkv7(c));
  for (const char* name : {"emb.weight", "blocks.0.att.w2", "blocks.1.att.key.weight",
                           "blocks.1.ffn.key.weight", "head.weight"}) {
    EXPECT_FALSE(same_bytes(a.at(name), other.at(name))) << name;
  }
  EXPECT_TRUE(same_bytes(a.at("blocks.1.att.w0"), other.at("blocks.1.att.w0")));
  // A tensor's stream depends on its name only, not on what was generated before it.
  c.seed = 7;
  c.n_layer = 3;
  c.vocab_size = 200;
  const Named deeper(init_rwkv7(c));
  EXPECT_TRUE(same_bytes(a.at("blocks.1.att.key.weight"), deeper.at("blocks.1.att.key.weight")));
  EXPECT_TRUE(same_bytes(a.at("blocks.0.ffn.key.weight"), deeper.at("blocks.0.ffn.key.weight")));
}

TEST(InitV7, InvalidConfigsThrow) {
  auto expect_error = [](auto edit, const char* what) {
    InitConfig c = small_f32();
    edit(c);
    EXPECT_THROW(init_rwkv7(c), Error) << what;
  };
  expect_error([](InitConfig& c) { c.n_embd = 100; }, "C not a multiple of N");
  expect_error([](InitConfig& c) { c.n_layer = 0; }, "no layers");
  expect_error([](InitConfig& c) { c.n_embd = 0; }, "C = 0");
  expect_error([](InitConfig& c) { c.vocab_size = 0; }, "V = 0");
  expect_error([](InitConfig& c) { c.head_size = 0; }, "N = 0");
  expect_error([](InitConfig& c) { c.head_size = 1; }, "N = 1 (zigzag divides by N − 1)");
  expect_error([](InitConfig& c) { c.dim_ffn = -4; }, "negative FFN");
  expect_error([](InitConfig& c) { c.d_gate = -1; }, "negative LoRA width");
  InitConfig c = small_f32();
  c.n_embd = 100;
  try {
    init_rwkv7(c);
    ADD_FAILURE() << "no error for n_embd 100, head_size 32";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_size"), std::string::npos) << e.what();
  }
}

TEST(InitV7, LoadsAsAModelAndRuns) {
  InitConfig c;  // bf16 defaults: L2 C128 V256 N64
  c.seed = 3;
  OwnedTensors init = init_rwkv7(c);
  std::vector<std::shared_ptr<const void>> owners(init.storage.begin(), init.storage.end());
  auto ckpt = std::make_shared<const Checkpoint>("init", "memory", init.tensors, owners);
  auto model = load_model(ckpt);
  EXPECT_EQ(model->info().generation, "x070");
  EXPECT_EQ(model->info().n_layer, c.n_layer);
  EXPECT_EQ(model->info().n_embd, c.n_embd);
  EXPECT_EQ(model->info().vocab_size, c.vocab_size);
  std::vector<float> state(model->state_spec().floats), logits(size_t(c.vocab_size));
  model->init_state(state.data());
  float* states[] = {state.data()};
  for (int token : {0, 17, 255, 17}) {
    model->step(&token, 1, states, logits.data());
    float lo = logits[0], hi = logits[0];
    for (float v : logits) {
      ASSERT_TRUE(std::isfinite(v)) << "token " << token;
      lo = std::min(lo, v), hi = std::max(hi, v);
    }
    EXPECT_GT(hi - lo, 0.f) << "token " << token;
  }
}

}  // namespace
}  // namespace rwkv
