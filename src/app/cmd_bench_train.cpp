// rwkv bench-train: training throughput of the RWKV-7 training form (forward, backward, AdamW
// step) on random tokens, beside the ceiling measured in the same run: sgemm on the CPU, the bf16
// GEMM (fp32 accumulation) on a GPU, whose ratio is the MFU. The
// FLOPs counted are the matrix products': 6 per weight per token (2 forward, 4 backward), the
// head included, the embedding (a gather) not; the WKV and element-wise work come on top.
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "app/common.h"
#include "ops/ops.h"
#include "rwkv/checkpoint.h"
#include "rwkv/init.h"
#include "rwkv/model.h"
#include "train/train_net.h"

namespace rwkv::app {
namespace {

struct BenchTrainArgs {
  std::string model;  // empty: a new model of --layers/--embd
  int layers = 6, embd = 384, head_size = 64, vocab = 256;
  int ctx = 512, batch = 4, steps = 3, threads = 0;
  bool recompute = false, json = false;
  std::string device = "cpu";
};

std::unique_ptr<train::TrainNet> make(const BenchTrainArgs& a) {
  const model::Rwkv7Train<float>::Options options{.wkv_chunk = 16, .recompute = a.recompute};
  if (!a.model.empty()) {
    const Checkpoint ckpt = Checkpoint::open(a.model);
    return train::make_train_net(ckpt.tensors(), ckpt.path(), a.device, options);
  }
  InitConfig init;
  init.n_layer = a.layers;
  init.n_embd = a.embd;
  init.head_size = a.head_size;
  init.vocab_size = a.vocab;
  init.dtype = DType::F32;
  return train::make_train_net(init_rwkv7(init).tensors, "new RWKV-7", a.device, options);
}

void run(const BenchTrainArgs& a) {
  if (a.threads > 0) ops::cpu::set_num_threads(a.threads);
  const int gpu = parse_device(a.device);
  auto net = make(a);
  const auto& d = net->dims();
  size_t params = 0, matrix_params = 0;
  for (const model::ParamTensor& t : net->table().tensors) {
    params += t.numel;
    if (t.shape.size() == 2 && t.name != "emb.weight") matrix_params += t.numel;
  }
  const int B = a.batch, T = a.ctx;
  std::vector<int> tokens(size_t(B) * T), targets(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = int((i * 7919 + 11) % size_t(d.V));
    targets[i] = int((i * 104729 + 3) % size_t(d.V));
  }
  const auto groups = train::official_param_groups(net->table(), 0.001f);
  double best = 1e30;
  for (int s = 0; s <= a.steps; ++s) {  // step 0 warms up (allocations, page faults)
    const auto t0 = std::chrono::steady_clock::now();
    net->zero_grads();
    net->forward(0, tokens.data(), B, T, nullptr, nullptr);
    net->loss(0, targets.data(), 1e-4, 1.0);
    net->backward(0, nullptr, nullptr);
    net->clip_grad_norm(1.0);
    net->adamw_step(train::AdamW{}, groups, 1e-4f, s + 1);
    if (s > 0) best = std::min(best, seconds_since(t0));
  }
  const double tokens_per_s = double(B) * T / best;
  const double gflops = 6.0 * double(matrix_params) * tokens_per_s / 1e9;
  if (gpu >= 0) {
    const GpuCeilings ceil = measure_gpu_ceilings(gpu);
    const double peak = ceil.gemm_tflops * 1e3;
    if (a.json) {
      nlohmann::json j = {{"params", params}, {"layers", d.L}, {"embd", d.C}, {"ctx", T}, {"batch", B},
                          {"device", ceil.name}, {"tokens_per_s", tokens_per_s}, {"matmul_gflops", gflops},
                          {"bf16_gemm_peak_gflops", peak}, {"mfu", gflops / peak}};
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    std::printf("RWKV-7 training step on %s, %.2fM parameters (L%d D%d V%d), batch %d × ctx %d\n",
                ceil.name.c_str(), double(params) / 1e6, d.L, d.C, d.V, B, T);
    std::printf("  %.0f tokens/s, %.1f TFLOP/s in matrix products = %.1f%% MFU (bf16 GEMM %.0f TFLOP/s at 8192³)\n",
                tokens_per_s, gflops / 1e3, 100 * gflops / peak, ceil.gemm_tflops);
    return;
  }
  const double peak = ops::cpu::measure_sgemm_gflops(B * T, d.C, d.C);
  if (a.json) {
    nlohmann::json j = {{"params", params}, {"layers", d.L}, {"embd", d.C}, {"ctx", T},
                        {"batch", B}, {"threads", ops::cpu::num_threads()},
                        {"tokens_per_s", tokens_per_s}, {"matmul_gflops", gflops},
                        {"sgemm_peak_gflops", peak}, {"fraction_of_peak", gflops / peak}};
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("RWKV-7 training step, %.2fM parameters (L%d D%d V%d), batch %d × ctx %d, %d threads\n",
              double(params) / 1e6, d.L, d.C, d.V, B, T, ops::cpu::num_threads());
  std::printf("  %.0f tokens/s, %.1f GFLOP/s in matrix products = %.0f%% of sgemm (%.1f GFLOP/s at %d×%d×%d)\n",
              tokens_per_s, gflops, 100 * gflops / peak, peak, B * T, d.C, d.C);
}

}  // namespace

void register_bench_train(CLI::App& app) {
  auto a = std::make_shared<BenchTrainArgs>();
  CLI::App* cmd = app.add_subcommand("bench-train", "RWKV-7 training throughput beside the GEMM ceiling (CPU or GPU)");
  cmd->add_option("-m,--model", a->model, "official RWKV-7 checkpoint (default: a new model)");
  cmd->add_option("--layers", a->layers)->capture_default_str();
  cmd->add_option("--embd", a->embd)->capture_default_str();
  cmd->add_option("--head-size", a->head_size)->capture_default_str();
  cmd->add_option("--vocab-size", a->vocab)->capture_default_str();
  cmd->add_option("--ctx", a->ctx)->capture_default_str();
  cmd->add_option("--batch", a->batch)->capture_default_str();
  cmd->add_option("--steps", a->steps, "timed steps (the best is reported)")->capture_default_str();
  cmd->add_option("-t,--threads", a->threads, "0 = all cores")->capture_default_str();
  cmd->add_flag("--recompute", a->recompute, "recompute blocks in the backward");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
