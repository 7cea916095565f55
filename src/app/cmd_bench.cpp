// rwkv bench: decode (recurrent, one token per step for each of --batch sequences) and prefill
// (one parallel call) speed, each beside its ceiling measured in the same run: weight bytes per
// step ÷ memory bandwidth for decode (CPU: streaming read; GPU: device copy), matrix-product
// throughput for prefill (CPU: sgemm; GPU: a bf16 GEMM through cuBLASLt).
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "app/common.h"
#include "ops/ops.h"
#include "rwkv/error.h"

namespace rwkv::app {
namespace {

struct BenchArgs {
  ModelOptions model;
  int decode_tokens = 64;
  int batch = 1;
  int prefill_tokens = 512;
  int bandwidth_mib = 1024;
  bool json = false;
};

void run(const BenchArgs& a) {
  if (a.batch < 1) fail("--batch must be at least 1");
  const LoadOptions options = a.model.load_options();
  const bool gpu = options.backend == Backend::Cuda;
  auto model = a.model.load();
  const ModelInfo& info = model->info();
  const int V = info.vocab_size, B = a.batch;
  std::vector<float> start(model->state_spec().floats);
  // Page-locked beside a GPU: the step's copy of B·V logits runs at the bus's speed.
  HostFloats logits(size_t(V) * size_t(B), model->cuda_device() >= 0);
  model->init_state(start.data());
  // The states stay in a pool where the model computes (GPU memory for a CUDA model): what is
  // timed is the model, not copies of its state through the host.
  const std::unique_ptr<StatePool> pool = model->new_state_pool(B);
  std::vector<int> slots(static_cast<size_t>(B)), tokens(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b) slots[size_t(b)] = b;
  auto token = [&](int i) { return (i * 7919 + 11) % V; };
  auto step = [&](int i) {
    for (int b = 0; b < B; ++b) tokens[size_t(b)] = token(i + 31 * b);
    model->step_pooled(tokens.data(), B, *pool, slots.data(), logits.data());
  };

  // Decode: warm up, then time steps of B tokens.
  for (int i = 0; i < 4; ++i) step(i);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < a.decode_tokens; ++i) step(i);
  const double decode_steps_per_s = a.decode_tokens / seconds_since(t0);
  const double decode_tps = decode_steps_per_s * B;

  // Prefill: one parallel call over the prompt, logits of the last token only; best of two.
  std::vector<int> prompt(size_t(a.prefill_tokens));
  for (int i = 0; i < a.prefill_tokens; ++i) prompt[size_t(i)] = token(i);
  double prefill_s = 1e30;
  const int slot = 0;
  for (int rep = 0; rep < 2; ++rep) {
    pool->write(slot, start.data());
    t0 = std::chrono::steady_clock::now();
    model->forward_pooled(prompt.data(), 1, a.prefill_tokens, *pool, &slot, logits.data(),
                          LogitsMode::Last);
    prefill_s = std::min(prefill_s, seconds_since(t0));
  }
  const double prefill_tps = a.prefill_tokens / prefill_s;

  const double bytes_per_token = double(model->decode_bytes_per_token());
  // Matrix FLOPs per prefill token: every matrix but embedding and head (only the last token).
  const double head_params = double(info.vocab_size) * info.n_embd;
  const double matrix_params =
      bytes_per_token * double(dtype_block_elems(model->weight_dtype())) /
          double(dtype_block_bytes(model->weight_dtype())) -
      head_params;
  const double prefill_gflops = 2 * matrix_params * prefill_tps / 1e9;
  std::string machine;
  double bandwidth = 0, gemm_peak = 0;
  if (gpu) {
    const GpuCeilings c = measure_gpu_ceilings(options.cuda_device);
    machine = c.name;
    bandwidth = c.copy_gb_per_s;
    gemm_peak = c.gemm_tflops * 1e3;
  } else {
    machine = cat(ops::cpu::num_threads(), " threads, SIMD ", ops::cpu::simd_target());
    bandwidth = ops::cpu::measure_read_bandwidth(size_t(a.bandwidth_mib) << 20);
    gemm_peak = ops::cpu::measure_sgemm_gflops(512, info.n_embd * 4, info.n_embd);
  }
  // Each step reads the weights once for all B sequences.
  const double decode_bound = bandwidth * 1e9 / bytes_per_token * B;
  const char* bw_name = gpu ? "device copy bandwidth" : "read bandwidth";
  const char* gemm_name = gpu ? "bf16 GEMM" : "sgemm";
  nlohmann::json j = {{"model", a.model.path},
                      {"generation", info.generation},
                      {"weights", dtype_name(model->weight_dtype())},
                      {"device", gpu ? a.model.device : "cpu"},
                      {"machine", machine},
                      {"batch", B},
                      {"decode_tokens_per_s", decode_tps},
                      {"decode_ms_per_step", 1e3 / decode_steps_per_s},
                      {"decode_weight_bytes_per_token", bytes_per_token},
                      {"decode_gb_per_s", decode_steps_per_s * bytes_per_token / 1e9},
                      {"bandwidth_gb_per_s", bandwidth},
                      {"decode_bound_tokens_per_s", decode_bound},
                      {"decode_fraction_of_bound", decode_tps / decode_bound},
                      {"prefill_tokens", a.prefill_tokens},
                      {"prefill_tokens_per_s", prefill_tps},
                      {"prefill_gflops", prefill_gflops},
                      {"gemm_peak_gflops", gemm_peak}};
  if (a.json) {
    std::printf("%s\n", j.dump(1).c_str());
    return;
  }
  std::printf("model    %s: %s, L%d C%d V%d, weights %s, on %s\n", a.model.path.c_str(),
              info.family.c_str(), info.n_layer, info.n_embd, V, dtype_name(model->weight_dtype()),
              machine.c_str());
  std::printf("decode   %8.2f tok/s  (batch %d, %.3f ms/step)  %6.2f GB/s of weights  (bound %.2f "
              "tok/s = %.1f MB/step at %.2f GB/s %s: %.0f%%)\n",
              decode_tps, B, 1e3 / decode_steps_per_s, decode_steps_per_s * bytes_per_token / 1e9,
              decode_bound, bytes_per_token / 1e6, bandwidth, bw_name, 100 * decode_tps / decode_bound);
  std::printf("prefill  %8.2f tok/s  %6.1f GFLOP/s in matrices  (%d tokens in one call; %s "
              "peak %.1f GFLOP/s: %.0f%%)\n",
              prefill_tps, prefill_gflops, a.prefill_tokens, gemm_name, gemm_peak,
              100 * prefill_gflops / gemm_peak);
}

}  // namespace

void register_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "decode and prefill speed beside the machine's ceilings");
  a->model.add(*cmd);
  cmd->add_option("--decode-tokens", a->decode_tokens, "decode steps timed")->capture_default_str();
  cmd->add_option("--batch", a->batch, "sequences decoded together in each step")->capture_default_str();
  cmd->add_option("--prefill-tokens", a->prefill_tokens)->capture_default_str();
  cmd->add_option("--bandwidth-mib", a->bandwidth_mib, "buffer size for the bandwidth probe")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
