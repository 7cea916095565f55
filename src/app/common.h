// Options and helpers shared by the `rwkv` subcommands.
#pragma once
#include <CLI/CLI.hpp>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "rwkv/model.h"
#include "rwkv/sampler.h"
#include "rwkv/session.h"
#include "rwkv/tokenizer.h"

namespace rwkv::app {

// --model, --dtype, --backend, --device, --threads
struct ModelOptions {
  std::string path;
  std::string dtype;  // empty: as stored
  std::string backend = "cpu";
  std::string device = "cpu";  // cpu, cuda (= cuda:0) or cuda:N
  int threads = 0;
  void add(CLI::App& cmd, bool model_required = true);
  // --dtype, --backend and --device as LoadOptions; rwkv::Error for a malformed --device or one
  // that --backend cannot run on.
  LoadOptions load_options() const;
  std::shared_ptr<Model> load() const;  // also applies --threads
};

// --tokenizer, --vocab
struct TokenizerOptions {
  std::string kind = "auto";  // auto | world | neox | bytes
  std::string vocab;
  void add(CLI::App& cmd);
  // The kind that `auto` stands for: bytes for models with ≤ 256 tokens, neox for the
  // GPT-NeoX vocabulary sizes (50277, or 50304 padded) or a --vocab ending in .json, World
  // otherwise. `model_vocab` 0 means unknown (rwkv tokenize).
  std::string resolved_kind(int model_vocab) const;
  // Loads that tokenizer; World and NeoX find their file from --vocab, beside the model, or
  // $RWKV_VOCAB / $RWKV_NEOX_VOCAB, and say where the official file comes from if none exists.
  std::shared_ptr<const Tokenizer> load(const std::string& model_path, int model_vocab) const;
};

// --temperature, --top-p, --top-k, --min-p, --presence-penalty, --frequency-penalty,
// --penalty-decay, --seed
void add_sampler_options(CLI::App& cmd, SamplerConfig& config);

// Streams generated text to stdout as it comes (a Session::generate callback).
bool print_streamed(std::string_view text);

// A whole JSON file; rwkv::Error naming the file when it cannot be read or parsed.
nlohmann::json read_json_file(const std::string& path);

// Wall-clock seconds since t0 (benchmarks).
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void register_generate(CLI::App& app);
void register_chat(CLI::App& app);
void register_logits(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_bench(CLI::App& app);
void register_info(CLI::App& app);
void register_init(CLI::App& app);
void register_grad(CLI::App& app);
void register_train(CLI::App& app);
void register_bench_train(CLI::App& app);
void register_tokenize_data(CLI::App& app);
void register_eval(CLI::App& app);
void register_serve(CLI::App& app);
void register_quantize(CLI::App& app);

}  // namespace rwkv::app
