// rwkv eval: cross-entropy, perplexity and bits per byte (text) or per token (binidx) of a model
// on a dataset. The parallel form runs over windows of --ctx tokens and the state is carried from
// one window to the next, so the numbers are those of one pass over the whole text: the window
// size trades memory (logits are [batch, ctx, vocab] floats) for nothing else.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>

#include <nlohmann/json.hpp>

#include "app/common.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "train/dataset.h"

namespace rwkv::app {
namespace {

struct EvalArgs {
  ModelOptions model;
  TokenizerOptions tokenizer;
  std::string data;
  int ctx = 1024;
  int64_t limit_tokens = 0;  // 0 = all
  int batch = 1;
  bool progress = false, json = false;
};

bool is_binidx_path(const std::string& path) {
  if (path.ends_with(".bin") || path.ends_with(".idx")) return true;
  return !std::filesystem::exists(path) && std::filesystem::exists(path + ".idx");
}

// The evaluated tokens, and for text the UTF-8 bytes they stand for.
struct EvalData {
  std::optional<train::TokenData> tokens;
  bool is_text = false;
  size_t text_bytes = 0;
  std::string tokenizer;  // text only
};

EvalData load_data(const EvalArgs& a, const Model& model) {
  EvalData d;
  if (is_binidx_path(a.data)) {
    d.tokens = train::TokenData::open(a.data);
    return d;
  }
  const std::string text = read_file(a.data);  // names the file if missing or unreadable
  if (text.empty()) fail(a.data, ": empty file, nothing to evaluate");
  const auto tok = a.tokenizer.load(a.model.path, model.info().vocab_size);
  std::vector<int> ids = tok->encode(text);
  d.is_text = true;
  d.tokenizer = tok->name();
  d.text_bytes = text.size();
  if (a.limit_tokens > 0 && size_t(a.limit_tokens) < ids.size()) {
    // Bits per byte over the bytes the kept tokens stand for.
    ids.resize(size_t(a.limit_tokens));
    d.text_bytes = 0;
    for (int id : ids) d.text_bytes += tok->decode(id).size();
  }
  d.tokens.emplace(std::move(ids));
  return d;
}

// -log softmax(row)[target] in fp64: a max-shifted log-sum-exp, so large logits cannot overflow
// and a long text's sum of small losses keeps its digits.
double cross_entropy(const float* row, size_t V, int target) {
  double m = row[0];
  for (size_t i = 1; i < V; ++i) m = std::max(m, double(row[i]));
  double sum = 0;
  for (size_t i = 0; i < V; ++i) sum += std::exp(double(row[i]) - m);
  return m + std::log(sum) - double(row[target]);
}

// Progress on stderr: a bar redrawn in place on a terminal; with --progress into a file or pipe,
// a plain line every few seconds, so logs stay readable.
class Progress {
 public:
  Progress(bool enabled, size_t total)
      : enabled_(enabled), tty_(isatty(fileno(stderr)) != 0), total_(total) {}
  void update(size_t done, double seconds, bool last) {
    if (!enabled_ || (!last && seconds - shown_at_ < (tty_ ? 0.2 : 5.0))) return;
    shown_at_ = seconds;
    const int width = 30, filled = int(double(width) * double(done) / double(total_));
    std::fprintf(stderr, "%seval [%s%s] %zu/%zu tokens %5.1f%% %.1f tok/s%s", tty_ ? "\r" : "",
                 std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), '.').c_str(),
                 done, total_, 100.0 * double(done) / double(total_),
                 double(done) / std::max(seconds, 1e-9), tty_ && !last ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_, tty_;
  size_t total_;
  double shown_at_ = -1e9;
};

struct EvalResult {
  size_t scored = 0;
  double total_loss = 0;  // nats
  double seconds = 0;
};

// Splits the first n tokens into `batch` contiguous streams (balanced: lengths differ by at most
// one), runs them side by side in windows of ctx tokens carrying each stream's state, and sums
// the loss of every token but each stream's first.
EvalResult evaluate(Model& model, const train::TokenData& data, size_t n, int ctx, int batch,
                    bool show_progress) {
  const size_t B = size_t(batch), V = size_t(model.info().vocab_size);
  std::vector<size_t> start(B + 1);
  for (size_t b = 0; b <= B; ++b) start[b] = n * b / B;
  size_t longest = 0;
  for (size_t b = 0; b < B; ++b) longest = std::max(longest, start[b + 1] - start[b]);

  std::vector<std::vector<float>> states(B, std::vector<float>(model.state_spec().floats));
  std::vector<float*> state_ptrs(B);
  for (size_t b = 0; b < B; ++b) {
    model.init_state(states[b].data());
    state_ptrs[b] = states[b].data();
  }
  const size_t T_max = size_t(ctx);
  std::vector<int> inputs(B * T_max), targets(B * T_max), window(T_max + 1);
  std::vector<size_t> valid(B);
  std::vector<float> logits(B * T_max * V);
  std::vector<double> losses(B * T_max);

  EvalResult r;
  Progress progress(show_progress, n - B);
  const auto t0 = std::chrono::steady_clock::now();
  // Position pos of every stream: inputs [pos, pos + T), targets [pos + 1, pos + T + 1). A
  // stream's last token is only a target, so streams are fed up to length - 1.
  for (size_t pos = 0; pos + 1 < longest; pos += T_max) {
    const size_t T = std::min(T_max, longest - 1 - pos);
    for (size_t b = 0; b < B; ++b) {
      const size_t length = start[b + 1] - start[b];
      valid[b] = length - 1 > pos ? std::min(T, length - 1 - pos) : 0;
      std::fill_n(inputs.begin() + ptrdiff_t(b * T), T, 0);  // padding after a stream's end
      if (valid[b] == 0) continue;
      data.read(start[b] + pos, valid[b] + 1, window.data());
      for (size_t t = 0; t <= valid[b]; ++t) {
        if (window[t] < 0 || size_t(window[t]) >= V) {
          fail(data.source(), ": token ", window[t], " at position ", start[b] + pos + t,
               " is not below the model's vocabulary size ", V, " (tokenized for another model?)");
        }
      }
      std::copy_n(window.begin(), valid[b], inputs.begin() + ptrdiff_t(b * T));
      std::copy_n(window.begin() + 1, valid[b], targets.begin() + ptrdiff_t(b * T));
    }
    // Padding only follows a stream's real tokens, so it never changes a scored logit.
    model.forward(inputs.data(), batch, int(T), state_ptrs.data(), logits.data(), LogitsMode::All);
#pragma omp parallel for schedule(static)
    for (size_t row = 0; row < B * T; ++row) {
      const size_t b = row / T, t = row % T;
      losses[row] = t < valid[b] ? cross_entropy(&logits[row * V], V, targets[row]) : 0.0;
    }
    // Summed in a fixed order: the result does not depend on the thread count.
    for (size_t b = 0; b < B; ++b) {
      for (size_t t = 0; t < valid[b]; ++t) r.total_loss += losses[b * T + t];
      r.scored += valid[b];
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress.update(r.scored, r.seconds, false);
  }
  progress.update(r.scored, r.seconds, true);
  return r;
}

void run(const EvalArgs& a) {
  if (!is_binidx_path(a.data) && !std::filesystem::exists(a.data)) {
    fail(a.data, ": no such file (expected a text file, or a binidx dataset as PREFIX, "
                 "PREFIX.bin or PREFIX.idx)");
  }
  auto model = a.model.load();
  const EvalData d = load_data(a, *model);
  size_t n = d.tokens->size();
  if (a.limit_tokens > 0) n = std::min(n, size_t(a.limit_tokens));
  if (n < 2 * size_t(a.batch)) {
    fail(a.data, ": ", n, " tokens are too few to score ", a.batch == 1 ? "a prediction" : "each stream",
         " (need at least ", 2 * a.batch, a.batch == 1 ? "" : cat(" for --batch ", a.batch), ")");
  }
  const bool show_progress = a.progress || isatty(fileno(stderr));
  const EvalResult r = evaluate(*model, *d.tokens, n, a.ctx, a.batch, show_progress);

  const double mean = r.total_loss / double(r.scored);
  const double bits = d.is_text ? r.total_loss / std::log(2.0) / double(d.text_bytes) : mean / std::log(2.0);
  nlohmann::json j = {{"model", a.model.path},
                      {"data", a.data},
                      {"format", d.is_text ? "text" : "binidx"},
                      {"tokens", n},
                      {"tokens_scored", r.scored},
                      {"mean_loss", mean},
                      {"perplexity", std::exp(mean)},
                      {d.is_text ? "bits_per_byte" : "bits_per_token", bits},
                      {"ctx", a.ctx},
                      {"batch", a.batch},
                      {"seconds", r.seconds},
                      {"tokens_per_s", double(r.scored) / std::max(r.seconds, 1e-9)}};
  if (d.is_text) {
    j["tokenizer"] = d.tokenizer;
    j["utf8_bytes"] = d.text_bytes;
  }
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("data        %s (%s)\n", a.data.c_str(),
              d.is_text ? cat("text, ", d.text_bytes, " UTF-8 bytes, ", d.tokenizer, " tokenizer").c_str()
                        : "binidx");
  std::printf("tokens      %zu scored of %zu (%d stream%s, windows of %d, state carried)\n", r.scored,
              n, a.batch, a.batch == 1 ? "" : "s", a.ctx);
  std::printf("mean loss   %.6f nats/token\n", mean);
  std::printf("perplexity  %.4f\n", std::exp(mean));
  std::printf("%-11s %.6f\n", d.is_text ? "bits/byte" : "bits/token", bits);
  std::printf("speed       %.1f tok/s (%.2f s)\n", double(r.scored) / std::max(r.seconds, 1e-9), r.seconds);
}

}  // namespace

void register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "loss, perplexity and bits per byte of a model on a text file or binidx dataset");
  a->model.add(*cmd);
  a->tokenizer.add(*cmd);
  cmd->add_option("-d,--data", a->data, "text file (UTF-8), or binidx: PREFIX, PREFIX.bin or PREFIX.idx")
      ->required();
  cmd->add_option("--ctx", a->ctx, "tokens per parallel window (the state carries across windows)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--limit-tokens", a->limit_tokens, "evaluate only the first N tokens (0 = all)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--batch", a->batch,
                  "split the data into this many contiguous streams run side by side (each starts "
                  "from a fresh state, so its first token is not scored)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_flag("--progress", a->progress, "show progress even when stderr is not a terminal");
  cmd->add_flag("--json", a->json, "print the result as one JSON object");
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
