// Trainer building blocks: parameter groups, AdamW, gradient clipping, lr schedule (spec §5.1),
// the CSV/SVG training log and the resumable train-state file.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <numbers>
#include <random>

#include "core/hash.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "testing.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/train_log.h"
#include "train/train_state.h"

namespace rwkv::train {
namespace {

namespace fs = std::filesystem;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

std::string temp_path(const std::string& name) { return test::temp_dir() + "/" + name; }

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Runs fn and expects an rwkv::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, std::vector<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no rwkv::Error thrown (expected '" << parts[0] << "')";
  } catch (const Error& e) {
    for (const std::string& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// ---- parameter groups ----------------------------------------------------------------------

const ParamGroup* group_of(const std::vector<ParamGroup>& groups, const model::ParamTensor& t) {
  for (const ParamGroup& g : groups)
    if (t.offset >= g.offset && t.offset + t.numel <= g.offset + g.count) return &g;
  return nullptr;
}

model::ParamTable v7_like_table() {
  const int64_t V = 50, C = 16, D = 4, H = 2, N = 8;
  model::ParamTable table;
  table.add("emb.weight", {V, C});
  table.add("blocks.0.ln1.weight", {C});
  table.add("blocks.0.att.x_r", {1, 1, C});
  table.add("blocks.0.att.w0", {1, 1, C});
  table.add("blocks.0.att.w1", {C, D});
  table.add("blocks.0.att.key.weight", {C, C});
  table.add("blocks.0.att.r_k", {H, N});
  table.add("blocks.0.att.row.weight", {1, C});  // squeezed rank 1: no decay despite ".weight"
  table.add("head.weight", {V, C});
  return table;
}

TEST(ParamGroups, OfficialV7Groups) {
  const model::ParamTable table = v7_like_table();
  const std::vector<ParamGroup> groups = official_param_groups(table, 0.001f);
  const std::pair<const char*, ParamGroup> want[] = {
      {"emb.weight", {"decay", 0, 0, 1, 0.001f}}, {"blocks.0.ln1.weight", {"lr_1x", 0, 0, 1, 0}},
      {"blocks.0.att.x_r", {"lr_1x", 0, 0, 1, 0}}, {"blocks.0.att.w0", {"lr_2x", 0, 0, 2, 0}},
      {"blocks.0.att.w1", {"lr_1x", 0, 0, 1, 0}}, {"blocks.0.att.r_k", {"lr_1x", 0, 0, 1, 0}},
      {"blocks.0.att.key.weight", {"decay", 0, 0, 1, 0.001f}},
      {"blocks.0.att.row.weight", {"lr_1x", 0, 0, 1, 0}},
      {"head.weight", {"decay", 0, 0, 1, 0.001f}}};
  for (const auto& [name, w] : want) {
    const ParamGroup* g = group_of(groups, *table.find(name));
    ASSERT_NE(g, nullptr) << name;
    EXPECT_EQ(g->name, w.name) << name;
    EXPECT_EQ(g->lr_scale, w.lr_scale) << name;
    EXPECT_EQ(g->weight_decay, w.weight_decay) << name;
  }
  // Sorted, disjoint, inside the buffer; adjacent groups differ (merged otherwise).
  for (size_t i = 0; i < groups.size(); ++i) {
    EXPECT_LE(groups[i].offset + groups[i].count, table.total);
    if (i > 0) {
      EXPECT_LE(groups[i - 1].offset + groups[i - 1].count, groups[i].offset);
      EXPECT_NE(groups[i - 1].name, groups[i].name);
    }
  }
}

TEST(ParamGroups, NoWeightDecayMeansNoDecayGroup) {
  const model::ParamTable table = v7_like_table();
  const std::vector<ParamGroup> groups = official_param_groups(table, 0.0f);
  for (const ParamGroup& g : groups) EXPECT_EQ(g.weight_decay, 0.0f) << g.name;
  EXPECT_EQ(group_of(groups, *table.find("head.weight"))->name, "lr_1x");
  EXPECT_EQ(group_of(groups, *table.find("blocks.0.att.w0"))->lr_scale, 2.0f);
  EXPECT_THROW(official_param_groups(table, -1.0f), Error);
}

// ---- AdamW ---------------------------------------------------------------------------------

// torch.optim.AdamW's documented algorithm, in double, one element.
struct ReferenceAdamW {
  double beta1, beta2, eps;
  void step(double& p, double& m, double& v, double g, double lr, double wd, int t) const {
    p -= lr * wd * p;
    m = beta1 * m + (1 - beta1) * g;
    v = beta2 * v + (1 - beta2) * g * g;
    const double m_hat = m / (1 - std::pow(beta1, t));
    const double v_hat = v / (1 - std::pow(beta2, t));
    p -= lr * m_hat / (std::sqrt(v_hat) + eps);
  }
};

void check_adamw_against_reference(const AdamW& adam) {
  // Three groups with a hole [10, 16) that no group covers: it must not be touched.
  const std::vector<ParamGroup> groups = {
      {"a", 0, 10, 1.0f, 0.1f}, {"b", 16, 10, 2.0f, 0.0f}, {"c", 26, 14, 0.5f, 0.01f}};
  const size_t n = 40;
  std::vector<float> p = random_floats(n, 7), m(n, 0.0f), v(n, 0.0f);
  for (size_t i = 10; i < 16; ++i) m[i] = v[i] = 42.0f;
  std::vector<double> rp(p.begin(), p.end()), rm(n, 0.0), rv(n, 0.0);
  const std::vector<float> initial = p;
  const ReferenceAdamW ref{adam.beta1, adam.beta2, adam.eps};
  for (int t = 1; t <= 6; ++t) {
    const float lr = 1e-2f / float(t);
    std::vector<float> g = random_floats(n, 100 + t);
    if (t == 3)
      for (float& x : g) x *= 1e-4f;  // a small-gradient step
    adam.step(p.data(), g.data(), m.data(), v.data(), groups, lr, t);
    for (const ParamGroup& gr : groups)
      for (size_t i = gr.offset; i < gr.offset + gr.count; ++i)
        ref.step(rp[i], rm[i], rv[i], g[i], double(lr) * gr.lr_scale, gr.weight_decay, t);
  }
  for (const ParamGroup& gr : groups)
    for (size_t i = gr.offset; i < gr.offset + gr.count; ++i) {
      EXPECT_NEAR(p[i], rp[i], 1e-6 + 1e-5 * std::abs(rp[i])) << "element " << i;
      EXPECT_NEAR(m[i], rm[i], 1e-6 + 1e-5 * std::abs(rm[i])) << "element " << i;
      EXPECT_NEAR(v[i], rv[i], 1e-7 + 1e-5 * std::abs(rv[i])) << "element " << i;
    }
  for (size_t i = 10; i < 16; ++i) {
    EXPECT_EQ(p[i], initial[i]);
    EXPECT_EQ(m[i], 42.0f);
    EXPECT_EQ(v[i], 42.0f);
  }
}

TEST(AdamW, MatchesTorchReference) {
  check_adamw_against_reference(AdamW{});  // the official β = (0.9, 0.99), eps 1e-18
  check_adamw_against_reference(AdamW{0.8f, 0.999f, 1e-8f});  // betas not interchangeable
}

TEST(AdamW, LrScaleAndWeightDecayPerGroup) {
  // With eps ~ 0 the first Adam step moves each element by exactly lr·lr_scale·sign(g).
  const std::vector<ParamGroup> groups = {{"x1", 0, 1, 1.0f, 0.0f}, {"x2", 1, 1, 2.0f, 0.0f},
                                          {"wd", 2, 1, 1.0f, 0.5f}};
  std::vector<float> p = {1, 1, 1}, g = {0.3f, -0.3f, 0.3f}, m(3, 0), v(3, 0);
  AdamW{}.step(p.data(), g.data(), m.data(), v.data(), groups, 0.1f, 1);
  EXPECT_NEAR(p[0], 1 - 0.1, 1e-6);
  EXPECT_NEAR(p[1], 1 + 0.2, 1e-6);
  EXPECT_NEAR(p[2], 1 - 0.1 * (1 + 0.5), 1e-6);  // decoupled: lr·(1 + wd·p)
}

TEST(AdamW, ZeroAndTinyGradientsStayFinite) {
  const std::vector<ParamGroup> groups = {{"a", 0, 4, 1.0f, 0.0f}, {"b", 4, 4, 2.0f, 0.01f}};
  std::vector<float> p = {1, -2, 0, 3, 1, -2, 0, 3}, m(8, 0), v(8, 0);
  const std::vector<float> initial = p;
  std::vector<float> g(8, 0.0f);
  for (int t = 1; t <= 20; ++t) {
    if (t > 10) g = {1e-30f, -1e-38f, 1e-45f, 0, 1e-30f, -1e-38f, 1e-45f, 0};  // g² underflows
    AdamW{}.step(p.data(), g.data(), m.data(), v.data(), groups, 1e-3f, t);
    for (float x : p) ASSERT_TRUE(std::isfinite(x)) << "step " << t;
    if (t == 10) {
      for (int i = 0; i < 4; ++i) EXPECT_EQ(p[i], initial[i]);  // no wd, no gradient: no move
    }
  }
  for (float x : m) EXPECT_TRUE(std::isfinite(x));
  for (float x : v) EXPECT_TRUE(std::isfinite(x));
  EXPECT_THROW(AdamW{}.step(p.data(), g.data(), m.data(), v.data(), groups, 1e-3f, 0), Error);
}

// ---- gradient clipping -----------------------------------------------------------------------

TEST(ClipGradNorm, NormScaleAndDisabled) {
  std::vector<float> g = {3, 4};
  EXPECT_DOUBLE_EQ(global_grad_norm(g.data(), 2), 5.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(g.data(), 2, 1.0), 5.0);  // the norm before clipping
  EXPECT_NEAR(g[0], 3 * (1.0 / (5 + 1e-6)), 1e-7);
  EXPECT_NEAR(g[1], 4 * (1.0 / (5 + 1e-6)), 1e-7);
  for (double max_norm : {10.0, 0.0, -1.0}) {  // below the limit, or disabled
    g = {3, 4};
    EXPECT_DOUBLE_EQ(clip_grad_norm(g.data(), 2, max_norm), 5.0);
    EXPECT_EQ(g, (std::vector<float>{3, 4}));
  }
  // A large buffer (parallel path) against a serial double sum.
  std::vector<float> big = random_floats(200000, 1);
  double sum = 0;
  for (float x : big) sum += double(x) * x;
  EXPECT_NEAR(global_grad_norm(big.data(), big.size()), std::sqrt(sum), 1e-9 * std::sqrt(sum));
  clip_grad_norm(big.data(), big.size(), 2.0);
  EXPECT_NEAR(global_grad_norm(big.data(), big.size()), 2.0, 1e-5);
}

// ---- lr schedule -----------------------------------------------------------------------------

TEST(LrSchedule, WarmupAndCosine) {
  // Warmup 10 steps of 1000 tokens, then a cosine over 100 steps.
  const LrSchedule s{6e-4, 6e-5, 10, 110000, 1000};
  EXPECT_DOUBLE_EQ(s.lr(0), 6e-4 * 0.01);
  EXPECT_DOUBLE_EQ(s.lr(5), 6e-4 * (0.01 + 0.99 * 0.5));
  EXPECT_DOUBLE_EQ(s.lr(10), 6e-4);                  // progress 0
  EXPECT_NEAR(s.lr(60), (6e-4 + 6e-5) / 2, 1e-15);   // progress 0.5: midpoint
  EXPECT_NEAR(s.lr(110), 6e-5, 1e-15);               // progress 1
  EXPECT_NEAR(s.lr(1000), 6e-5, 1e-15);              // clamped
  const double p = 0.25, f = 0.1;                    // step 35
  const double cosine = std::cos(std::numbers::pi * p);
  EXPECT_NEAR(s.lr(35), 6e-4 * ((0.5 + f / 2) + (0.5 - f / 2) * cosine), 1e-15);
  for (int64_t step = 10; step < 110; ++step) EXPECT_LT(s.lr(step + 1), s.lr(step));
}

TEST(LrSchedule, ConstantModeAndNoWarmup) {
  const LrSchedule constant{1e-3, 0, 4, 0, 512};
  EXPECT_DOUBLE_EQ(constant.lr(0), 1e-3 * 0.01);
  EXPECT_DOUBLE_EQ(constant.lr(2), 1e-3 * (0.01 + 0.99 * 0.5));
  EXPECT_DOUBLE_EQ(constant.lr(4), 1e-3);
  EXPECT_DOUBLE_EQ(constant.lr(int64_t(1) << 40), 1e-3);
  const LrSchedule no_warmup{1e-3, 1e-4, 0, 1000, 10};
  EXPECT_DOUBLE_EQ(no_warmup.lr(0), 1e-3);
  EXPECT_NEAR(no_warmup.lr(100), 1e-4, 1e-16);
}

TEST(LrSchedule, BadConfigsThrow) {
  const LrSchedule good{6e-4, 6e-5, 10, 110000, 1000};
  auto with = [&](auto edit) { LrSchedule s = good; edit(s); return s; };
  for (const LrSchedule& bad :
       {with([](auto& s) { s.lr_init = 0; }), with([](auto& s) { s.lr_init = -1; }),
        with([](auto& s) { s.lr_init = kNaN; }), with([](auto& s) { s.lr_final = -1e-5; }),
        with([](auto& s) { s.warmup_steps = -1; }), with([](auto& s) { s.tokens_per_step = 0; }),
        with([](auto& s) { s.exit_tokens = 10000; }), with([](auto& s) { s.exit_tokens = 5000; })})
    EXPECT_THROW(bad.lr(20), Error);
  EXPECT_THROW(good.lr(-1), Error);
  expect_error([&] { with([](auto& s) { s.exit_tokens = 5000; }).validate(); }, {"exit_tokens"});
}

// ---- training log ----------------------------------------------------------------------------

// LogRow equality where NaN equals NaN (what a round trip must preserve).
bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }
bool same(const LogRow& a, const LogRow& b) {
  return a.step == b.step && a.tokens == b.tokens && same(a.loss, b.loss) && same(a.lr, b.lr) &&
         same(a.grad_norm, b.grad_norm) && same(a.tokens_per_s, b.tokens_per_s) &&
         same(a.elapsed_s, b.elapsed_s);
}

std::vector<LogRow> sample_rows(int n) {
  std::vector<LogRow> rows;
  for (int i = 0; i < n; ++i)
    rows.push_back({i, int64_t(i + 1) * 8192, 5.0 * std::exp(-0.01 * i) + 0.1 * std::sin(i),
                    6e-4 / (1 + i), 1.0 / 3 + i, 12345.678 * (i + 1), 0.1 * i});
  return rows;
}

TEST(TrainLog, WriteAndRereadExactly) {
  const std::string path = temp_path("log.csv");
  std::vector<LogRow> rows = sample_rows(20);
  rows[3].loss = kNaN;
  rows[4].grad_norm = kInf;
  rows[5].tokens = int64_t(1) << 50;
  {
    TrainLog log(path);
    for (const LogRow& r : rows) log.append(r);
  }
  const std::vector<LogRow> back = read_log_csv(path);
  ASSERT_EQ(back.size(), rows.size());
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_TRUE(same(back[i], rows[i])) << "row " << i;
  const std::string header = std::string(kLogCsvHeader) + "\n";
  EXPECT_EQ(read_file(path).substr(0, header.size()), header);
  { TrainLog fresh(path); }  // resume step 0: a fresh run starts an empty log
  EXPECT_TRUE(read_log_csv(path).empty());
}

TEST(TrainLog, ResumeTruncatesToMatchUninterruptedRun) {
  const std::string full = temp_path("full.csv"), resumed = temp_path("resumed.csv");
  const std::vector<LogRow> rows = sample_rows(10);
  {
    TrainLog a(full), b(resumed);
    for (const LogRow& r : rows) a.append(r), b.append(r);
  }
  // A crash mid-row leaves an unterminated line; the resume drops it and rows >= step 6.
  { std::FILE* f = std::fopen(resumed.c_str(), "ab"); std::fputs("10,88,4.", f); std::fclose(f); }
  {
    TrainLog log(resumed, 6);
    EXPECT_EQ(read_log_csv(resumed).size(), 6u);
    for (size_t i = 6; i < rows.size(); ++i) log.append(rows[i]);
  }
  EXPECT_EQ(read_file(resumed), read_file(full));
  { TrainLog log(temp_path("missing.csv"), 5); }  // resuming without a log starts one
  EXPECT_TRUE(read_log_csv(temp_path("missing.csv")).empty());
}

TEST(TrainLog, BadFilesThrowNamingFileAndLine) {
  const std::string path = temp_path("bad.csv");
  const std::string bad_header = "step,loss\n0,1\n";
  write_file_atomic(path, bad_header.data(), bad_header.size());
  expect_error([&] { read_log_csv(path); }, {path, "first line"});
  expect_error([&] { TrainLog log(path, 3); }, {path});
  const std::string bad_row = std::string(kLogCsvHeader) + "\n0,1,2,3,4,5,6\n1,2,x,4,5,6,7\n";
  write_file_atomic(path, bad_row.data(), bad_row.size());
  expect_error([&] { read_log_csv(path); }, {path + ":3"});
  const std::string short_row = std::string(kLogCsvHeader) + "\n0,1,2\n";
  write_file_atomic(path, short_row.data(), short_row.size());
  expect_error([&] { read_log_csv(path); }, {path + ":2", "columns"});
}

TEST(TrainLog, LossSvg) {
  std::vector<LogRow> odd = sample_rows(50), all_nan = sample_rows(5), flat = sample_rows(5);
  odd[0].loss = kNaN, odd[7].loss = kInf, odd[8].loss = -kInf;
  for (LogRow& r : all_nan) r.loss = kNaN;  // nothing to plot: still a valid file
  for (LogRow& r : flat) r.loss = 2.5;      // a zero-height loss range
  const std::string path = temp_path("loss.svg");
  for (const auto& rows : {sample_rows(300), sample_rows(1), odd, all_nan, {}, flat}) {
    write_loss_svg(path, rows);
    const std::string svg = read_file(path);
    EXPECT_TRUE(svg.starts_with("<svg")) << rows.size();
    EXPECT_TRUE(svg.ends_with("</svg>\n")) << rows.size();
    EXPECT_NE(svg.find("<path"), std::string::npos);
    EXPECT_NE(svg.find("Training loss"), std::string::npos);
    EXPECT_EQ(svg.find("nan"), std::string::npos) << svg;  // no NaN/inf coordinates or labels
    EXPECT_EQ(svg.find("inf"), std::string::npos) << svg;
  }
  EXPECT_THROW(write_loss_svg(temp_path("no/such/dir/loss.svg"), flat), Error);
}

// ---- train state -----------------------------------------------------------------------------

TrainState sample_state() {
  TrainState s;
  s.meta = {{"step", 1234}, {"tokens", int64_t(1) << 40}, {"lr", 6e-4}, {"name", "run ü"},
            {"rng", {1, 2, 3}}, {"nested", {{"a", nullptr}, {"b", true}}}};
  // The bit patterns a lossy path would break: -0, denormal, inf, a NaN payload.
  const std::vector<float> m = {0.0f, -0.0f, 1e-45f, -float(kInf), std::bit_cast<float>(0x7fc12345u)};
  s.arrays = {{"adam.m", m}, {"adam.v", random_floats(1000, 3)}, {"empty", {}}, {"", {7.0f}}};
  return s;
}

std::vector<uint32_t> bits(const std::vector<float>& values) {
  std::vector<uint32_t> out;
  for (float x : values) out.push_back(std::bit_cast<uint32_t>(x));
  return out;
}

void expect_same_state(const TrainState& a, const TrainState& b) {
  EXPECT_EQ(a.meta, b.meta);
  ASSERT_EQ(a.arrays.size(), b.arrays.size());
  for (size_t i = 0; i < a.arrays.size(); ++i) {
    EXPECT_EQ(a.arrays[i].first, b.arrays[i].first);
    EXPECT_EQ(bits(a.arrays[i].second), bits(b.arrays[i].second)) << a.arrays[i].first;
  }
}

TEST(TrainState, RoundTripIsBitExact) {
  const std::string path = temp_path("state.trn");
  const TrainState state = sample_state();
  save_train_state(path, state);
  const TrainState back = load_train_state(path);
  expect_same_state(back, state);
  ASSERT_NE(back.find("adam.v"), nullptr);
  EXPECT_EQ(back.find("adam.v")->size(), 1000u);
  EXPECT_EQ(back.find("missing"), nullptr);
  TrainState other;  // saving again replaces the file
  other.meta = {{"step", 1}};
  save_train_state(path, other);
  expect_same_state(load_train_state(path), other);
}

// Writes `bytes` to a file and expects loading it to fail with `what` and the path in the message.
void expect_load_error(const std::string& bytes, const std::string& what) {
  const std::string path = temp_path("corrupt.trn");
  write_file_atomic(path, bytes.data(), bytes.size());
  expect_error([&] { load_train_state(path); }, {path, what});
}

template <typename T>
std::string bytes_of(T value) {
  return std::string(reinterpret_cast<const char*>(&value), sizeof value);
}
// A file body (everything but the checksum) with a correct checksum appended.
std::string with_checksum(const std::string& body) {
  return body + bytes_of(fnv1a64(body.data(), body.size()));
}

TEST(TrainState, CorruptFilesThrow) {
  const std::string path = temp_path("good.trn");
  save_train_state(path, sample_state());
  const std::string good = read_file(path);
  std::string bad = good;
  bad[0] = 'X';
  expect_load_error(bad, "magic");
  bad = good;
  bad[8] = 2;  // version 2
  expect_load_error(bad, "version");
  // Truncated: inside the magic, version, json length, json, an array header, data, checksum.
  for (size_t size : {size_t(0), size_t(5), size_t(10), size_t(16), size_t(30), size_t(60),
                      good.size() / 2, good.size() - 9, good.size() - 1})
    expect_load_error(good.substr(0, size), size == 0 ? "magic" : "");
  bad = good;
  bad[good.size() - 100] ^= 0x10;  // a float of adam.v
  expect_load_error(bad, "checksum");
  bad = good;
  bad[25] ^= 0x01;  // inside the JSON
  expect_load_error(bad, "checksum");
  expect_load_error(good + "garbage!", "unexpected bytes");
  expect_load_error(good + std::string(3, '\0'), "unexpected bytes");

  // Structurally valid files with a correct checksum but bad content.
  auto header = [](const std::string& json, uint32_t arrays) {
    return std::string("RWKVTRN1", 8) + bytes_of(uint32_t(1)) + bytes_of(uint64_t(json.size())) +
           json + bytes_of(arrays);
  };
  expect_load_error(with_checksum(header("{\"step\": ", 0)), "JSON");
  auto array = [](const std::string& name, uint64_t count) {
    return bytes_of(uint32_t(name.size())) + name + bytes_of(count) + std::string(count * 4, '\0');
  };
  expect_load_error(with_checksum(header("{}", 2) + array("m", 1) + array("m", 1)), "duplicate");
  std::string huge = header("{}", 1) + array("m", 0);
  const uint64_t claim = uint64_t(1) << 62;
  std::memcpy(huge.data() + huge.size() - 8, &claim, 8);
  expect_load_error(with_checksum(huge), "claims");
  expect_error([&] { load_train_state(temp_path("nonexistent.trn")); }, {"nonexistent.trn"});
}

TEST(TrainState, SaveFailuresLeaveOldFileIntact) {
  const std::string missing = temp_path("no_such_dir/state.trn");
  expect_error([&] { save_train_state(missing, sample_state()); }, {missing});
  EXPECT_FALSE(fs::exists(missing));
  TrainState dup;
  dup.arrays = {{"a", {1}}, {"a", {2}}};
  expect_error([&] { save_train_state(temp_path("dup.trn"), dup); }, {"duplicate"});
  EXPECT_FALSE(fs::exists(temp_path("dup.trn")));

  // A full disk, simulated with a file-size limit (works as root too): the write fails, the
  // previous file stays, and no temp file is left behind.
  const std::string dir = temp_path("full_disk");
  fs::create_directory(dir);
  const std::string path = dir + "/state.trn";
  save_train_state(path, sample_state());
  const std::string old_bytes = read_file(path);
  TrainState big;
  big.arrays = {{"m", std::vector<float>(100000, 1.0f)}};
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  rlimit limited = saved;
  limited.rlim_cur = 16384;
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);  // get EFBIG, not a signal
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limited), 0);
  expect_error([&] { save_train_state(path, big); }, {path});
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(read_file(path), old_bytes);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(TrainState, UnwritableDirectoryKeepsOldFile) {
  if (geteuid() == 0) GTEST_SKIP() << "running as root, which ignores directory permissions";
  const std::string dir = temp_path("read_only");
  fs::create_directory(dir);
  const std::string path = dir + "/state.trn";
  save_train_state(path, sample_state());
  const std::string old_bytes = read_file(path);
  fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
  expect_error([&] { save_train_state(path, TrainState{}); }, {path});
  fs::permissions(dir, fs::perms::owner_all);
  EXPECT_EQ(read_file(path), old_bytes);
}

}  // namespace
}  // namespace rwkv::train
