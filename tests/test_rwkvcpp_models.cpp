// rwkv.cpp model files (../shared/reference/rwkv.cpp-tiny): small trained byte-level models of
// every generation in FP32, FP16, Q5_0 and Q5_1, against rwkv.cpp's own outputs on each file:
// the logits after every byte of a 63-byte text, the final state, and rwkv.cpp's 3-byte test
// vector — per logit and per state element (max-abs), in both forms.
#include <cstring>
#include <string>

#include "rwkv/model.h"
#include "testing.h"

namespace rwkv {
namespace {

// The 63-byte text of the README (it starts with the quote of rwkv.cpp's prompt `"in`).
const std::string kText = "\"in the beginning the model was small, and it learned to speak.";
const std::string kDir = "reference/rwkv.cpp-tiny/";

struct Tiny {
  const char* stem;    // "4v0-660K"
  const char* format;  // "FP32", "FP16", "Q5_0", "Q5_1"
  Backend backend = Backend::Cpu;
};

// The file on the case's backend; a GPU case skips without a GPU (the GPU keeps Q5 weights as
// fp16: within the same bounds, which rwkv.cpp's own activation rounding sets).
std::unique_ptr<Model> load_tiny(const Tiny& t, const std::string& path) {
  LoadOptions opt;
  opt.backend = t.backend;
  return load_model(test::shared_path(path), opt);
}

// Bounds against rwkv.cpp's outputs on the same file, per format. We decode the stored weights
// exactly and multiply in fp32; rwkv.cpp (ggml) does not:
//  FP32: both sides compute in fp32 from the same weights; only summation order differs
//        (measured ≤ 9e-6 on logits, ≤ 5e-6 on states).
//  FP16: ggml rounds the activation vector to fp16 before every fp16 matrix product, a relative
//        perturbation of up to 2^-11 per input element (measured ≤ 8e-3 logits, ≤ 8e-3 state).
//  Q5_x: ggml quantizes the activation vector to 8 bits per 32-element block (Q8_0 / Q8_1)
//        before every Q5 product: up to 1/254 of the block's largest |x| per element.
// Emulating that rounding of the activations in our reference backend brought the Q5_0 files
// of RWKV-4 and RWKV-7 to ≤ 5e-6 of rwkv.cpp's logits (an experiment, not kept): the decoding
// and the math agree, the rest is rwkv.cpp's activation rounding. RWKV-5/6 amplify it (GroupNorm
// of small per-head vectors; v5's epsilon is 1e-5): measured up to 0.24 (v5) and 0.51 (v6) on
// logits, 0.19 / 0.38 on states, against 0.04 / 0.007 for v4 / v7. The bounds sit about 2× above
// the measured differences of each family.
struct Bounds {
  double logits, state;
};
Bounds bounds_for(const std::string& stem, const std::string& format) {
  if (format == "FP32") return {1e-4, 2e-4};
  if (format == "FP16") return {2e-2, 2e-2};
  const bool group_norm = stem[0] == '5' || stem[0] == '6';
  return group_norm ? Bounds{1.0, 0.8} : Bounds{0.1, 0.02};
}

std::vector<int> text_tokens() {
  std::vector<int> t;
  for (unsigned char c : kText) t.push_back(c);
  return t;
}

// Our state (official package order, per layer: v4 att_x, aa, bb, pp, ffn_x; v5+ att_x, att_kv,
// ffn_x) in rwkv.cpp's order (per layer: ffn_x, att_x, WKV).
std::vector<float> to_rwkvcpp_layout(const Model& model, const std::vector<float>& state) {
  std::vector<float> out;
  const auto layout = model.state_layout();
  const int L = model.info().n_layer;
  const size_t per_layer = layout.size() / size_t(L);
  for (int l = 0; l < L; ++l) {
    const StatePiece* pieces = &layout[size_t(l) * per_layer];
    const StatePiece& ffn = pieces[per_layer - 1];
    out.insert(out.end(), state.begin() + long(ffn.offset), state.begin() + long(ffn.offset + ffn.numel));
    for (size_t i = 0; i + 1 < per_layer; ++i) {
      out.insert(out.end(), state.begin() + long(pieces[i].offset),
                 state.begin() + long(pieces[i].offset + pieces[i].numel));
    }
  }
  return out;
}

class TinyModels : public ::testing::TestWithParam<Tiny> {};

TEST_P(TinyModels, MatchRwkvCppLogitsAndStateInBothForms) {
  const std::string stem = std::string("tiny-rwkv-") + GetParam().stem + "-" + GetParam().format;
  RWKV_REQUIRE_SHARED(kDir + stem + ".bin");
  RWKV_REQUIRE_BACKEND(GetParam().backend);
  auto model = load_tiny(GetParam(), kDir + stem + ".bin");
  const Bounds bound = bounds_for(GetParam().stem, GetParam().format);
  const auto want_logits = test::read_f32_file(test::shared_path(kDir + stem + ".steps.f32"));
  const auto want_state = test::read_f32_file(test::shared_path(kDir + stem + ".state.f32"));
  const auto tokens = text_tokens();
  const size_t V = 256, T = tokens.size(), S = model->state_spec().floats;
  ASSERT_EQ(model->info().vocab_size, 256);
  ASSERT_EQ(want_logits.size(), T * V);
  ASSERT_EQ(want_state.size(), S);

  std::vector<float> state(S), logits(T * V);
  model->init_state(state.data());
  float* states[] = {state.data()};
  for (size_t t = 0; t < T; ++t) model->step(&tokens[t], 1, states, logits.data() + t * V);
  auto e = test::compare(logits, want_logits);
  EXPECT_LE(e.max_abs, bound.logits) << "step logits";
  auto es = test::compare(to_rwkvcpp_layout(*model, state), want_state);
  EXPECT_LE(es.max_abs, bound.state) << "step state";
  RecordProperty("step_logits_max_abs", std::to_string(e.max_abs));
  RecordProperty("step_state_max_abs", std::to_string(es.max_abs));
  std::printf("%s: logits max-abs %.3g (rel %.3g), state max-abs %.3g\n", stem.c_str(), e.max_abs,
              e.max_rel, es.max_abs);

  model->init_state(state.data());
  std::vector<float> seq(T * V);
  model->forward(tokens.data(), 1, int(T), states, seq.data(), LogitsMode::All);
  EXPECT_LE(test::compare(seq, want_logits).max_abs, bound.logits) << "sequence logits";
  EXPECT_LE(test::compare(to_rwkvcpp_layout(*model, state), want_state).max_abs, bound.state)
      << "sequence state";
}

// rwkv.cpp's own test vector: logits after the bytes `"in` from the zero state, computed in full
// precision. Checked per logit for the FP32 and FP16 files; a quantized file's own outputs for the
// same three bytes are rows 0–2 of its .steps.f32, checked above.
class TestVector : public ::testing::TestWithParam<Tiny> {};

TEST_P(TestVector, PerLogitInBothForms) {
  const std::string stem = std::string("tiny-rwkv-") + GetParam().stem + "-" + GetParam().format;
  const std::string expected = kDir + "expected-logits-" + GetParam().stem + ".bin";
  RWKV_REQUIRE_SHARED(kDir + stem + ".bin");
  RWKV_REQUIRE_SHARED(expected);
  RWKV_REQUIRE_BACKEND(GetParam().backend);
  auto model = load_tiny(GetParam(), kDir + stem + ".bin");
  const auto want = test::read_f32_file(test::shared_path(expected));
  const int prompt[] = {34, 105, 110};
  std::vector<float> state(model->state_spec().floats), step(256), seq(256);
  float* states[] = {state.data()};
  model->init_state(state.data());
  for (int t : prompt) model->step(&t, 1, states, step.data());
  model->init_state(state.data());
  model->forward(prompt, 1, 3, states, seq.data(), LogitsMode::Last);
  // FP32: same math, ~1e-6 apart. FP16 files carry their weights' rounding (2^-11 relative)
  // against these full-precision logits: we measured up to 4.5e-3.
  const double tol = GetParam().format == std::string("FP32") ? 1e-4 : 2e-2;
  EXPECT_LE(test::compare(step, want).max_abs, tol) << "serial";
  EXPECT_LE(test::compare(seq, want).max_abs, tol) << "sequence";
  std::printf("%s vs expected-logits: max-abs %.3g\n", stem.c_str(), test::compare(step, want).max_abs);
}

std::vector<Tiny> all_files() {
  std::vector<Tiny> files;
  for (const char* stem : {"4v0-660K", "5v1-730K", "5v2-730K", "7v0-834K"}) {
    for (const char* f : {"FP32", "FP16", "Q5_0", "Q5_1"}) files.push_back({stem, f});
  }
  files.push_back({"6v0-3m", "Q5_0"});
  files.push_back({"6v0-3m", "Q5_1"});
  // Every file again on the GPU.
  const size_t cpu = files.size();
  for (size_t i = 0; i < cpu; ++i) files.push_back({files[i].stem, files[i].format, Backend::Cuda});
  return files;
}

std::string file_name(const ::testing::TestParamInfo<Tiny>& info) {
  std::string name = std::string(info.param.stem) + "_" + info.param.format +
                     (info.param.backend == Backend::Cuda ? "_cuda" : "");
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Files, TinyModels, ::testing::ValuesIn(all_files()), file_name);

std::vector<Tiny> full_precision_files() {
  std::vector<Tiny> files;
  for (const Tiny& t : all_files()) {
    if (t.format == std::string("FP32") || t.format == std::string("FP16")) files.push_back(t);
  }
  return files;
}

INSTANTIATE_TEST_SUITE_P(Files, TestVector, ::testing::ValuesIn(full_precision_files()), file_name);

}  // namespace
}  // namespace rwkv
