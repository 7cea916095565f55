#include "testing.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "rwkv/file_io.h"

namespace rwkv::test {

std::string shared_path(const std::string& relative) {
  const char* env = std::getenv("RWKV_SHARED_DIR");
  return std::string(env && *env ? env : RWKV_SHARED_DIR) + "/" + relative;
}

bool shared_exists(const std::string& relative) {
  return std::filesystem::exists(shared_path(relative));
}

std::string temp_dir() {
  static std::string dir = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "rwkv-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) std::abort();
    return tmpl;
  }();
  static struct Cleanup {
    ~Cleanup() { std::error_code ec; std::filesystem::remove_all(dir, ec); }
  } cleanup;
  return dir;
}

std::vector<float> read_f32_file(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

std::vector<double> read_f64_file(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<double> out(bytes.size() / 8);
  std::memcpy(out.data(), bytes.data(), out.size() * 8);
  return out;
}

ErrorStats compare(std::span<const float> got, std::span<const float> want) {
  EXPECT_EQ(got.size(), want.size());
  ErrorStats s;
  const size_t n = std::min(got.size(), want.size());
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(double(got[i]) - double(want[i]));
    if (!(d <= s.max_abs)) s.max_abs = std::isnan(d) ? INFINITY : d;
    if (std::fabs(want[i]) > 1e-3) s.max_rel = std::max(s.max_rel, d / std::fabs(double(want[i])));
  }
  return s;
}

std::vector<float> normal_floats(size_t n, std::mt19937& rng, float scale, float mean) {
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TrainFixture load_train_fixture() {
  TrainFixture f;
  std::ifstream in(shared_path(std::string(kTrainFixtureDir) + "/manifest.json"));
  f.manifest = nlohmann::json::parse(in);
  f.B = f.manifest["B"];
  f.T = f.manifest["T"];
  for (const auto& row : f.manifest["input_ids"]) {
    for (int v : row) f.inputs.push_back(v);
  }
  for (const auto& row : f.manifest["targets"]) {
    for (int v : row) f.targets.push_back(v);
  }
  return f;
}

}  // namespace rwkv::test

#include <random>

namespace rwkv::test {

std::shared_ptr<const Checkpoint> random_v7_checkpoint(const V7Dims& d, uint32_t seed,
                                                       DType dtype) {
  std::mt19937 rng(seed);
  const int C = d.n_embd, F = d.ffn ? d.ffn : 4 * C, H = C / d.head_size, V = d.vocab;
  std::vector<TensorView> tensors;
  auto storage = std::make_shared<std::vector<std::vector<uint8_t>>>();
  auto add = [&](const std::string& name, std::vector<int64_t> shape, auto gen) {
    TensorView t{name, dtype, shape, nullptr};
    const size_t n = size_t(t.numel());
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = gen(i % size_t(shape.back()));
    storage->emplace_back(dtype_nbytes(dtype, n));
    convert_from_f32(dtype, v.data(), storage->back().data(), n);
    t.data = storage->back().data();
    tensors.push_back(t);
  };
  auto normal = [&](float mean, float sd) {
    return [&rng, mean, sd](size_t) { return std::normal_distribution<float>(mean, sd)(rng); };
  };
  auto uniform = [&](float lo, float hi) {
    return [&rng, lo, hi](size_t) { return std::uniform_real_distribution<float>(lo, hi)(rng); };
  };
  const float s = 1.f / std::sqrt(float(C));
  add("emb.weight", {V, C}, normal(0, 0.5f));
  for (int l = 0; l < d.n_layer; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".", a = b + "att.";
    for (const char* n : {"ln1", "ln2"}) {
      add(b + n + ".weight", {C}, normal(1, 0.1f));
      add(b + n + ".bias", {C}, normal(0, 0.1f));
    }
    if (l == 0) {
      add(b + "ln0.weight", {C}, normal(1, 0.1f));
      add(b + "ln0.bias", {C}, normal(0, 0.1f));
    }
    for (const char* n : {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g"}) add(a + n, {1, 1, C}, uniform(0, 1));
    add(a + "w0", {1, 1, C}, [&](size_t c) { return -6.f + 6.f * float(c) / float(C) + 0.5f +
                                                     std::normal_distribution<float>(0, 0.3f)(rng); });
    add(a + "w1", {C, d.lora}, normal(0, 0.1f));
    add(a + "w2", {d.lora, C}, normal(0, 0.1f));
    add(a + "a0", {1, 1, C}, normal(-0.19f, 0.3f));
    add(a + "a1", {C, d.lora}, normal(0, 0.1f));
    add(a + "a2", {d.lora, C}, normal(0, 0.1f));
    if (l > 0) {
      add(a + "v0", {1, 1, C}, normal(0.73f, 0.2f));
      add(a + "v1", {C, d.lora}, normal(0, 0.1f));
      add(a + "v2", {d.lora, C}, normal(0, 0.1f));
    }
    add(a + "g1", {C, d.lora}, normal(0, 0.1f));
    add(a + "g2", {d.lora, C}, normal(0, 0.1f));
    add(a + "k_k", {1, 1, C}, normal(0.71f, 0.05f));
    add(a + "k_a", {1, 1, C}, normal(1.02f, 0.05f));
    add(a + "r_k", {H, d.head_size}, normal(-0.04f, 0.1f));
    for (const char* n : {"receptance", "key", "value", "output"}) add(a + n + ".weight", {C, C}, normal(0, s));
    add(a + "ln_x.weight", {C}, normal(1, 0.1f));
    add(a + "ln_x.bias", {C}, normal(0, 0.1f));
    add(b + "ffn.x_k", {1, 1, C}, uniform(0, 1));
    add(b + "ffn.key.weight", {F, C}, normal(0, s));
    add(b + "ffn.value.weight", {C, F}, normal(0, 1.f / std::sqrt(float(F))));
  }
  add("ln_out.weight", {C}, normal(1, 0.1f));
  add("ln_out.bias", {C}, normal(0, 0.1f));
  add("head.weight", {V, C}, normal(0, 1.5f * s));
  return std::make_shared<const Checkpoint>("random-v7", "memory", std::move(tensors),
                                            std::vector<std::shared_ptr<const void>>{storage});
}

}  // namespace rwkv::test

#include <sys/wait.h>

namespace rwkv::test {

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

CommandResult run_cli(const std::string& args, const std::string& input) {
  static int counter = 0;
  const std::string base = temp_dir() + "/cli" + std::to_string(counter++);
  const std::string in = base + ".in", out = base + ".out", err = base + ".err";
  write_file_atomic(in, input.data(), input.size());
  // $RWKV_CLI: the command elsewhere than where it was built (a packed copy on another machine).
  const char* cli = std::getenv("RWKV_CLI") ? std::getenv("RWKV_CLI") : RWKV_CLI;
  const std::string cmd = quote(cli) + " " + args + " <" + in + " >" + out + " 2>" + err;
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

}  // namespace rwkv::test

#include "rwkv/model.h"

namespace rwkv::test {

std::vector<int> random_tokens(size_t n, int V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int> t(n);
  for (int& x : t) x = int(rng() % uint32_t(V));
  return t;
}

std::vector<float> slice(const std::vector<float>& v, size_t row0, size_t rows, size_t width) {
  return {v.begin() + long(row0 * width), v.begin() + long((row0 + rows) * width)};
}

std::vector<float> run_steps(Model& model, const std::vector<int>& tokens, std::vector<float>& state) {
  const size_t V = size_t(model.info().vocab_size);
  std::vector<float> logits(tokens.size() * V);
  float* states[] = {state.data()};
  for (size_t t = 0; t < tokens.size(); ++t) model.step(&tokens[t], 1, states, logits.data() + t * V);
  return logits;
}

StepsComparison compare_steps(Model& a, Model& b, const std::vector<int>& tokens) {
  std::vector<float> sa(a.state_spec().floats), sb(b.state_spec().floats);
  a.init_state(sa.data());
  b.init_state(sb.data());
  StepsComparison c;
  c.want_logits = run_steps(a, tokens, sa);
  c.logits = compare(run_steps(b, tokens, sb), c.want_logits);
  c.state = compare(sb, sa);
  return c;
}

SoloRuns run_alone(Model& model, int B, int T) {
  SoloRuns r;
  for (int b = 0; b < B; ++b) {
    r.seqs.push_back(random_tokens(size_t(T), model.info().vocab_size, uint32_t(100 + b)));
    r.flat.insert(r.flat.end(), r.seqs.back().begin(), r.seqs.back().end());
    std::vector<float> st(model.state_spec().floats);
    model.init_state(st.data());
    r.logits.push_back(run_steps(model, r.seqs.back(), st));
    r.states.push_back(std::move(st));
  }
  return r;
}

void expect_parallel_equals_recurrent(Model& model, std::initializer_list<int> lengths,
                                      double tol) {
  const int V = model.info().vocab_size;
  const size_t S = model.state_spec().floats;
  for (int T : lengths) {
    const auto tokens = random_tokens(size_t(T), V, uint32_t(T));
    std::vector<float> s_step(S), s_seq(S);
    model.init_state(s_step.data());
    model.init_state(s_seq.data());
    const auto want = run_steps(model, tokens, s_step);
    std::vector<float> got(size_t(T) * size_t(V), std::nanf(""));
    float* states[] = {s_seq.data()};
    model.forward(tokens.data(), 1, T, states, got.data(), LogitsMode::All);
    EXPECT_LE(compare(got, want).max_abs, tol) << "T=" << T;
    EXPECT_LE(compare(s_seq, s_step).max_abs, tol) << "T=" << T;
    // Only the last logits.
    std::vector<float> last(static_cast<size_t>(V));
    model.init_state(s_seq.data());
    model.forward(tokens.data(), 1, T, states, last.data(), LogitsMode::Last);
    EXPECT_LE(compare(last, slice(want, size_t(T - 1), 1, size_t(V))).max_abs, tol) << "T=" << T;
  }
}

void expect_split_and_carry(Model& model, int T, std::initializer_list<int> cuts, double tol) {
  const size_t V = size_t(model.info().vocab_size), S = model.state_spec().floats;
  const auto tokens = random_tokens(size_t(T), int(V), 99);
  std::vector<float> whole_state(S);
  model.init_state(whole_state.data());
  const auto want = run_steps(model, tokens, whole_state);
  for (int cut : cuts) {
    std::vector<float> state(S), got(size_t(T) * V);
    model.init_state(state.data());
    float* states[] = {state.data()};
    model.forward(tokens.data(), 1, cut, states, got.data(), LogitsMode::All);
    model.forward(tokens.data() + cut, 1, T - cut, states, got.data() + size_t(cut) * V,
                  LogitsMode::All);
    EXPECT_LE(compare(got, want).max_abs, tol) << "cut=" << cut;
    EXPECT_LE(compare(state, whole_state).max_abs, tol) << "cut=" << cut;
  }
}

void TensorSet::add(const std::string& name, DType dtype, std::vector<int64_t> shape, int seed) {
  TensorView t{name, dtype, std::move(shape), nullptr};
  std::vector<float> values(size_t(t.numel()));
  for (size_t i = 0; i < values.size(); ++i) values[i] = std::sin(float(i) * 0.37f + float(seed));
  storage.emplace_back((t.nbytes() + 7) / 8);
  t.data = storage.back().data();  // null for an empty tensor, which save_* must accept
  if (t.data) convert_from_f32(dtype, values.data(), storage.back().data(), values.size());
  views.push_back(std::move(t));
}

}  // namespace rwkv::test
