// rwkv init: a fresh, untrained RWKV (generation 4, 5.0, 5.1, 5.2, 6 or 7) with RWKV-LM's
// initialisation, saved as .pth in the official key names, order and shapes.
#include <chrono>
#include <cstdio>

#include "app/common.h"
#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "rwkv/init.h"

namespace rwkv::app {
namespace {

struct InitArgs {
  InitConfig config;
  std::string dtype = "bf16";
  std::string out;
};

const char* family(const std::string& generation) {
  if (generation == "4") return "RWKV-4";
  if (generation == "5.0") return "RWKV-5.0 (Eagle preview)";
  if (generation == "5.1") return "RWKV-5.1 (Eagle preview)";
  if (generation == "5.2") return "RWKV-5.2 Eagle";
  if (generation == "x060") return "RWKV-6 Finch";
  return "RWKV-7 Goose";
}

void run(InitArgs a) {
  a.config.dtype = parse_dtype(a.dtype);
  const auto start = std::chrono::steady_clock::now();
  const OwnedTensors weights = init_rwkv(a.config);
  save_pth(a.out, weights.tensors);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  size_t params = 0;
  for (const TensorView& t : weights.tensors) params += size_t(t.numel());
  std::printf(
      "wrote %s: untrained %s, %d layers, n_embd %d, vocab %d, %.2fM parameters (%s), %.1f s\n",
      a.out.c_str(), family(a.config.generation), a.config.n_layer, a.config.n_embd,
      a.config.vocab_size, double(params) / 1e6, a.dtype.c_str(), seconds);
}

// Turns any accepted spelling into the canonical name, or fails the parse with the list.
std::string to_canonical_generation(std::string& value) {
  try {
    value = canonical_generation(value);
    return {};
  } catch (const Error& e) {
    return e.what();
  }
}

}  // namespace

void register_init(CLI::App& app) {
  auto a = std::make_shared<InitArgs>();
  CLI::App* cmd = app.add_subcommand(
      "init", "write an untrained RWKV-4/5/6/7 with the official initialisation as .pth");
  cmd->add_option("-o,--out", a->out, "output .pth file")->required();
  cmd->add_option("-g,--generation", a->config.generation,
                  "4, 5.0, 5.1, 5.2, 6 (or x060), 7 (or x070)")
      ->transform(CLI::Validator(to_canonical_generation, "GENERATION"))
      ->capture_default_str();
  cmd->add_option("--layers", a->config.n_layer)->capture_default_str();
  cmd->add_option("--embd", a->config.n_embd)->capture_default_str();
  cmd->add_option("--vocab", a->config.vocab_size, "256 for a byte-level model, 65536 for World")
      ->capture_default_str();
  cmd->add_option("--head-size", a->config.head_size,
                  "v5/v6/v7: n_head = embd / head-size (RWKV-4 has no heads)")
      ->capture_default_str();
  cmd->add_option("--ffn", a->config.dim_ffn,
                  "0 = 4 x embd (4, 5.0, 7) or 3.5 x embd rounded down to a multiple of 32 "
                  "(5.1, 5.2, 6)")
      ->capture_default_str();
  cmd->add_option("--d-mix", a->config.d_mix, "v6 token-shift LoRA width (0 = 32)")
      ->capture_default_str();
  cmd->add_option("--d-decay", a->config.d_decay,
                  "v6/v7 decay LoRA width (0 = 64 for v6, the released formula for v7)")
      ->capture_default_str();
  cmd->add_option("--d-iclr", a->config.d_iclr, "v7 in-context learning rate LoRA width (0 = released)")
      ->capture_default_str();
  cmd->add_option("--d-value", a->config.d_value, "v7 value-residual LoRA width (0 = released)")
      ->capture_default_str();
  cmd->add_option("--d-gate", a->config.d_gate, "v7 output-gate LoRA width (0 = released)")
      ->capture_default_str();
  cmd->add_option("--seed", a->config.seed)->capture_default_str();
  cmd->add_option("--dtype", a->dtype)->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->capture_default_str();
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
