// rwkv bench: decode (recurrent, one token per step) and prefill (one parallel call) speed, each
// beside its ceiling measured in the same run: weight bytes per token ÷ read bandwidth for
// decode, sgemm throughput for prefill.
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "app/common.h"
#include "ops/ops.h"

namespace rwkv::app {
namespace {

struct BenchArgs {
  ModelOptions model;
  int decode_tokens = 64;
  int prefill_tokens = 512;
  int bandwidth_mib = 1024;
  bool json = false;
};

void run(const BenchArgs& a) {
  auto model = a.model.load();
  const ModelInfo& info = model->info();
  const int V = info.vocab_size;
  std::vector<float> start(model->state_spec().floats), logits(static_cast<size_t>(V));
  model->init_state(start.data());
  // The state stays in a pool where the model computes (GPU memory for a CUDA model): what is
  // timed is the model, not copies of its state through the host.
  const std::unique_ptr<StatePool> pool = model->new_state_pool(1);
  const int slot = 0;
  auto token = [&](int i) { return (i * 7919 + 11) % V; };

  // Decode: warm up, then time single-token steps.
  for (int i = 0; i < 4; ++i) {
    const int t = token(i);
    model->step_pooled(&t, 1, *pool, &slot, logits.data());
  }
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < a.decode_tokens; ++i) {
    const int t = token(i);
    model->step_pooled(&t, 1, *pool, &slot, logits.data());
  }
  const double decode_tps = a.decode_tokens / seconds_since(t0);

  // Prefill: one parallel call over the prompt, logits of the last token only; best of two.
  std::vector<int> prompt(size_t(a.prefill_tokens));
  for (int i = 0; i < a.prefill_tokens; ++i) prompt[size_t(i)] = token(i);
  double prefill_s = 1e30;
  for (int rep = 0; rep < 2; ++rep) {
    pool->write(slot, start.data());
    t0 = std::chrono::steady_clock::now();
    model->forward_pooled(prompt.data(), 1, a.prefill_tokens, *pool, &slot, logits.data(),
                          LogitsMode::Last);
    prefill_s = std::min(prefill_s, seconds_since(t0));
  }
  const double prefill_tps = a.prefill_tokens / prefill_s;

  const double bytes_per_token = double(model->decode_bytes_per_token());
  const double bandwidth = ops::cpu::measure_read_bandwidth(size_t(a.bandwidth_mib) << 20);
  const double decode_bound = bandwidth * 1e9 / bytes_per_token;
  // Matrix FLOPs per prefill token: every matrix but embedding and head (only the last token).
  const double head_params = double(info.vocab_size) * info.n_embd;
  const double matrix_params =
      bytes_per_token * double(dtype_block_elems(model->weight_dtype())) /
          double(dtype_block_bytes(model->weight_dtype())) -
      head_params;
  const double prefill_gflops = 2 * matrix_params * prefill_tps / 1e9;
  const double gemm_peak = ops::cpu::measure_sgemm_gflops(512, info.n_embd * 4, info.n_embd);
  nlohmann::json j = {{"model", a.model.path},
                      {"generation", info.generation},
                      {"weights", dtype_name(model->weight_dtype())},
                      {"threads", ops::cpu::num_threads()},
                      {"simd", ops::cpu::simd_target()},
                      {"decode_tokens_per_s", decode_tps},
                      {"decode_weight_bytes_per_token", bytes_per_token},
                      {"decode_gb_per_s", decode_tps * bytes_per_token / 1e9},
                      {"read_bandwidth_gb_per_s", bandwidth},
                      {"decode_bound_tokens_per_s", decode_bound},
                      {"decode_fraction_of_bound", decode_tps / decode_bound},
                      {"prefill_tokens", a.prefill_tokens},
                      {"prefill_tokens_per_s", prefill_tps},
                      {"prefill_gflops", prefill_gflops},
                      {"sgemm_peak_gflops", gemm_peak}};
  if (a.json) {
    std::printf("%s\n", j.dump(1).c_str());
    return;
  }
  std::printf("model    %s: %s, L%d C%d V%d, weights %s, %d threads, SIMD %s\n", a.model.path.c_str(),
              info.family.c_str(), info.n_layer, info.n_embd, V, dtype_name(model->weight_dtype()),
              ops::cpu::num_threads(), ops::cpu::simd_target());
  std::printf("decode   %8.2f tok/s  %6.2f GB/s of weights  (bound %.2f tok/s = %.1f MB/token at "
              "%.2f GB/s read bandwidth: %.0f%%)\n",
              decode_tps, decode_tps * bytes_per_token / 1e9, decode_bound, bytes_per_token / 1e6,
              bandwidth, 100 * decode_tps / decode_bound);
  std::printf("prefill  %8.2f tok/s  %6.1f GFLOP/s in matrices  (%d tokens in one call; sgemm "
              "peak %.1f GFLOP/s: %.0f%%)\n",
              prefill_tps, prefill_gflops, a.prefill_tokens, gemm_peak,
              100 * prefill_gflops / gemm_peak);
}

}  // namespace

void register_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "decode and prefill speed beside the machine's ceilings");
  a->model.add(*cmd);
  cmd->add_option("--decode-tokens", a->decode_tokens)->capture_default_str();
  cmd->add_option("--prefill-tokens", a->prefill_tokens)->capture_default_str();
  cmd->add_option("--bandwidth-mib", a->bandwidth_mib, "buffer size for the bandwidth probe")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
