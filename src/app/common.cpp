#include "app/common.h"

#include <charconv>
#include <cstdio>
#include <optional>

#include "ops/ops.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"

namespace rwkv::app {

void ModelOptions::add(CLI::App& cmd, bool model_required) {
  auto* opt = cmd.add_option("-m,--model", path,
                             "model file (.pth, .safetensors or an rwkv.cpp .bin)");
  if (model_required) opt->required();
  cmd.add_option("--dtype", dtype,
                 "convert weight matrices at load: fp32, bf16, fp16, int8 (q8_0, q8_g64, "
                 "q8_g128), int4 (q4_0, q4_g64, q4_g128) or ggml's q5_1, q5_0, q4_1; LoRA "
                 "matrices stay in floating point")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16", "q8_0", "q8_g64", "q8_g128", "q4_0", "q4_g64",
                             "q4_g128", "q5_1", "q5_0", "q4_1"}));
  cmd.add_option("--backend", backend, "cpu (fast) or ref (plain-loop reference)")
      ->check(CLI::IsMember({"cpu", "ref"}));
  cmd.add_option("--device", device, "where the model runs: cpu, cuda (the first GPU) or cuda:N")
      ->capture_default_str();
  cmd.add_option("-t,--threads", threads, "CPU threads (0 = all cores)");
}


LoadOptions ModelOptions::load_options() const {
  LoadOptions opt;
  if (!dtype.empty()) opt.weight_dtype = parse_dtype(dtype);
  opt.backend = backend == "ref" ? Backend::Ref : Backend::Cpu;
  if (const int gpu = parse_device(device); gpu >= 0) {
    // The reference kernels are plain CPU loops; there is no GPU version of them to run.
    if (opt.backend == Backend::Ref) {
      fail("--backend ref runs on the CPU only; it cannot run on --device ", device);
    }
    opt.backend = Backend::Cuda;
    opt.cuda_device = gpu;
  }
  return opt;
}

std::shared_ptr<Model> ModelOptions::load() const {
  const LoadOptions opt = load_options();  // bad flags fail before the model is read
  ops::cpu::set_num_threads(threads);
  return load_model(path, opt);
}

void TokenizerOptions::add(CLI::App& cmd) {
  cmd.add_option("--tokenizer", kind,
                 "auto (by the model's vocabulary size or the --vocab file), world, neox or bytes")
      ->check(CLI::IsMember({"auto", "world", "neox", "bytes"}));
  cmd.add_option("--vocab", vocab,
                 "tokenizer file: rwkv_vocab_v20230424.txt (world) or 20B_tokenizer.json (neox)");
}

std::string TokenizerOptions::resolved_kind(int model_vocab) const {
  if (kind != "auto") return kind;
  if (model_vocab > 0 && model_vocab <= 256) return "bytes";
  // RWKV-4 Pile / Raven: 50277 ids; RWKV-7 Pile models pad the embedding to 50304 (spec §6.2).
  if (model_vocab == 50277 || model_vocab == 50304) return "neox";
  if (vocab.ends_with(".json")) return "neox";
  return "world";
}

std::shared_ptr<const Tokenizer> TokenizerOptions::load(const std::string& model_path,
                                                        int model_vocab) const {
  const std::string resolved = resolved_kind(model_vocab);
  if (resolved == "bytes") return make_bytes_tokenizer();
  if (resolved == "neox") return load_neox_tokenizer(find_neox_vocab(vocab, model_path));
  return load_world_tokenizer(find_world_vocab(vocab, model_path));
}

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
}

bool print_streamed(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
  return true;
}

void add_sampler_options(CLI::App& cmd, SamplerConfig& c) {
  cmd.add_option("--temperature", c.temperature, "0 = greedy")->capture_default_str();
  cmd.add_option("--top-p", c.top_p)->capture_default_str();
  cmd.add_option("--top-k", c.top_k, "0 = off")->capture_default_str();
  cmd.add_option("--min-p", c.min_p, "0 = off")->capture_default_str();
  cmd.add_option("--presence-penalty", c.presence_penalty)->capture_default_str();
  cmd.add_option("--frequency-penalty", c.frequency_penalty)->capture_default_str();
  cmd.add_option("--penalty-decay", c.penalty_decay)->capture_default_str();
  cmd.add_option("--seed", c.seed)->capture_default_str();
}

}  // namespace rwkv::app
