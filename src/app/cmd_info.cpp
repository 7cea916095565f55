// rwkv info: what a checkpoint is, read from its tensor names and shapes.
#include <cstdio>

#include "app/common.h"
#include "rwkv/checkpoint.h"

namespace rwkv::app {
namespace {

void run(const std::string& path) {
  const Checkpoint ckpt = Checkpoint::open(path);
  const ModelInfo m = detect_model(ckpt);
  std::printf("file:        %s (%s, %zu tensors)\n", path.c_str(), ckpt.format().c_str(),
              ckpt.tensors().size());
  std::printf("model:       %s (generation %s)\n", m.family.c_str(), m.generation.c_str());
  std::printf("parameters:  %zu (%.1fM), matrices in %s\n", m.n_params, double(m.n_params) / 1e6,
              dtype_name(m.file_dtype));
  std::printf("n_layer:     %d\nn_embd:      %d\ndim_att:     %d\ndim_ffn:     %d\n", m.n_layer,
              m.n_embd, m.dim_att, m.dim_ffn);
  if (m.n_head > 0) std::printf("heads:       %d x %d\n", m.n_head, m.head_size);
  std::printf("vocab_size:  %d\n", m.vocab_size);
  for (const auto& [name, width] : m.lora) std::printf("lora %-7s %d\n", (name + ":").c_str(), width);
  const size_t C = size_t(m.n_embd), A = size_t(m.dim_att);
  const size_t state = m.generation == "4" ? 2 * C + 3 * A : 2 * C + A * size_t(m.head_size);
  std::printf("state:       %zu floats per layer, %zu in all (%.1f KiB)\n", state,
              state * size_t(m.n_layer), double(state * size_t(m.n_layer)) * 4 / 1024);
}

}  // namespace

void register_info(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("info", "print a checkpoint's generation and hyper-parameters");
  cmd->add_option("model", *path, "model file (.pth or .safetensors)")->required();
  cmd->callback([path] { run(*path); });
}

}  // namespace rwkv::app
