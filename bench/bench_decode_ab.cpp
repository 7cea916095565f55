// Decode step A/B on a shared machine: RWKV-7's one-team decode step (model/rwkv7_step.h) against
// the layer-by-layer path, on the same model file, in one process; or, with --env NAME=VALUE,
// the model loaded as usual against one loaded with that variable set (e.g. RWKV_CPU_PANELS=0:
// 4-bit weights row-major). The two run in alternating blocks of steps, so a neighbour's load
// falls on both alike; the medians over blocks and their ratio are the result (a single
// `rwkv bench` run moves by 10–25% between runs here).
//
//   bench_decode_ab MODEL [--dtype D] [-t THREADS] [--batch B] [--blocks N] [--steps S]
//                   [--env NAME=VALUE]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ops/ops.h"
#include "rwkv/error.h"
#include "rwkv/model.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Runner {
  std::unique_ptr<rwkv::Model> model;
  std::vector<std::vector<float>> states;
  std::vector<float*> ptrs;
  std::vector<float> logits;
  int token = 0;

  // Loads the model with `name` set to `value` (name empty: nothing set).
  Runner(const std::string& path, const rwkv::LoadOptions& opt, const std::string& name,
         const std::string& value, int B) {
    if (!name.empty()) setenv(name.c_str(), value.c_str(), 1);
    model = rwkv::load_model(path, opt);
    if (!name.empty()) unsetenv(name.c_str());
    states.assign(size_t(B), std::vector<float>(model->state_spec().floats));
    for (auto& s : states) {
      model->init_state(s.data());
      ptrs.push_back(s.data());
    }
    logits.resize(size_t(B) * size_t(model->info().vocab_size));
  }

  // Seconds per step over `steps` steps.
  double block(int steps) {
    const int B = int(ptrs.size());
    std::vector<int> tokens(static_cast<size_t>(B));
    const auto t0 = Clock::now();
    for (int i = 0; i < steps; ++i) {
      for (int b = 0; b < B; ++b) tokens[size_t(b)] = (token++ * 7919 + b) % model->info().vocab_size;
      model->step(tokens.data(), B, ptrs.data(), logits.data());
    }
    return std::chrono::duration<double>(Clock::now() - t0).count() / steps;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL [--dtype D] [-t THREADS] [--batch B] [--blocks N] [--steps S]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  rwkv::LoadOptions opt;
  int threads = 0, B = 1, blocks = 20, steps = 50;
  std::string env = "RWKV_CPU_FUSED_STEP=0";
  bool layered_b = true;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--dtype") {
      opt.weight_dtype = rwkv::parse_dtype(value);
    } else if (flag == "-t") {
      threads = std::atoi(value.c_str());
    } else if (flag == "--batch") {
      B = std::atoi(value.c_str());
    } else if (flag == "--blocks") {
      blocks = std::atoi(value.c_str());
    } else if (flag == "--steps") {
      steps = std::atoi(value.c_str());
    } else if (flag == "--env" && value.find('=') != std::string::npos) {
      env = value;
      layered_b = false;
    } else {
      std::fprintf(stderr, "unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  try {
    rwkv::ops::cpu::set_num_threads(threads);
    const std::string name = env.substr(0, env.find('=')), value = env.substr(env.find('=') + 1);
    Runner fused(path, opt, "", "", B), layered(path, opt, name, value, B);
    fused.block(steps);  // warm up both
    layered.block(steps);
    std::vector<double> a, b;
    for (int i = 0; i < blocks; ++i) {
      a.push_back(fused.block(steps));
      b.push_back(layered.block(steps));
    }
    const double ma = median(a), mb = median(b);
    const double bytes = double(fused.model->decode_bytes_per_token());
    std::printf("model %s, batch %d, %d threads, %d blocks of %d steps, alternating\n", path.c_str(), B,
                rwkv::ops::cpu::num_threads(), blocks, steps);
    const std::string name_a = layered_b ? "one team" : "as loaded", name_b = layered_b ? "layer by layer" : env;
    std::printf("%-24s %8.3f ms/step  %7.2f tok/s  %6.2f GB/s of weights\n", name_a.c_str(), ma * 1e3, B / ma, bytes / ma / 1e9);
    std::printf("%-24s %8.3f ms/step  %7.2f tok/s  %6.2f GB/s of weights\n", name_b.c_str(), mb * 1e3, B / mb, bytes / mb / 1e9);
    std::printf("ratio (%s / %s): %.3f\n", name_b.c_str(), name_a.c_str(), mb / ma);
  } catch (const rwkv::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
