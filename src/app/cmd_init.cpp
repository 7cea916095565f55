// rwkv init: a fresh, untrained RWKV-7 with the official initialisation, saved as .pth.
#include <cstdio>

#include "app/common.h"
#include "rwkv/checkpoint.h"
#include "rwkv/init.h"

namespace rwkv::app {
namespace {

struct InitArgs {
  InitConfig config;
  std::string dtype = "bf16";
  std::string out;
};

void run(InitArgs a) {
  a.config.dtype = parse_dtype(a.dtype);
  const OwnedTensors weights = init_rwkv7(a.config);
  save_pth(a.out, weights.tensors);
  size_t params = 0;
  for (const TensorView& t : weights.tensors) params += size_t(t.numel());
  std::printf("wrote %s: untrained RWKV-7, %d layers, n_embd %d, vocab %d, %.2fM parameters (%s)\n",
              a.out.c_str(), a.config.n_layer, a.config.n_embd, a.config.vocab_size,
              double(params) / 1e6, a.dtype.c_str());
}

}  // namespace

void register_init(CLI::App& app) {
  auto a = std::make_shared<InitArgs>();
  CLI::App* cmd = app.add_subcommand(
      "init", "write an untrained RWKV-7 with the official initialisation as .pth");
  cmd->add_option("-o,--out", a->out, "output .pth file")->required();
  cmd->add_option("--layers", a->config.n_layer)->capture_default_str();
  cmd->add_option("--embd", a->config.n_embd)->capture_default_str();
  cmd->add_option("--vocab", a->config.vocab_size, "256 for a byte-level model, 65536 for World")
      ->capture_default_str();
  cmd->add_option("--head-size", a->config.head_size)->capture_default_str();
  cmd->add_option("--ffn", a->config.dim_ffn, "0 = 4 x embd")->capture_default_str();
  cmd->add_option("--seed", a->config.seed)->capture_default_str();
  cmd->add_option("--dtype", a->dtype)->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->capture_default_str();
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
