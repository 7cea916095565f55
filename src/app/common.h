// Options and helpers shared by the `rwkv` subcommands.
#pragma once
#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "rwkv/model.h"
#include "rwkv/sampler.h"
#include "rwkv/session.h"
#include "rwkv/tokenizer.h"

namespace rwkv::app {

// --model, --dtype, --backend, --threads
struct ModelOptions {
  std::string path;
  std::string dtype;  // empty: as stored
  std::string backend = "cpu";
  int threads = 0;
  void add(CLI::App& cmd, bool model_required = true);
  std::shared_ptr<Model> load() const;  // also applies --threads
};

// --tokenizer, --vocab
struct TokenizerOptions {
  std::string kind = "auto";  // auto | world | bytes
  std::string vocab;
  void add(CLI::App& cmd);
  // auto: bytes for models with ≤ 256 tokens, World otherwise.
  std::shared_ptr<const Tokenizer> load(const std::string& model_path, int model_vocab) const;
};

// --temperature, --top-p, --top-k, --min-p, --presence-penalty, --frequency-penalty,
// --penalty-decay, --seed
void add_sampler_options(CLI::App& cmd, SamplerConfig& config);

// Streams generated text to stdout as it comes (a Session::generate callback).
bool print_streamed(std::string_view text);

void register_generate(CLI::App& app);
void register_chat(CLI::App& app);
void register_logits(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_bench(CLI::App& app);
void register_info(CLI::App& app);
void register_init(CLI::App& app);

}  // namespace rwkv::app
