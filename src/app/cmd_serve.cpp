// rwkv serve: the OpenAI-style HTTP server (serve/), with continuous batching, a prefix-state
// cache and named state files.
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "app/common.h"
#include "rwkv/error.h"
#include "serve/http_server.h"

namespace rwkv::app {
namespace {

struct ServeArgs {
  ModelOptions model;
  TokenizerOptions tokenizer;
  SamplerConfig sampler;
  serve::ServerOptions server;
  serve::EngineOptions engine;
  int decode_group = -1;  // -1: by device
  int prefill_batch = -1;
  int prefill_budget = -1;
  double cache_mb = 256;
  std::string state_dir;
  size_t state_max_files = 1000;
  double state_max_mb = 1024;
  double max_body_kb = 1024;
};

void run(ServeArgs& a) {
  // SIGINT/SIGTERM are taken by one thread (sigwait), which stops the server cleanly; every
  // thread started below inherits the blocked mask. A client that hangs up mid-write must not
  // kill the process with SIGPIPE.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  auto model = a.model.load();
  auto tokenizer = a.tokenizer.load(a.model.path, model->info().vocab_size);
  const bool gpu = a.model.device != "cpu";
  // On the CPU, steps of up to 4 sequences give each exactly its result alone (the
  // matrix-vector kernels); larger batches switch to sgemm, whose rounding differs.
  a.engine.decode_group = a.decode_group >= 0 ? a.decode_group : (gpu ? 0 : 4);
  // A GPU prefills many prompts per call; the CPU one at a time (bit-exact batching, and its
  // prefill is bound by arithmetic anyway).
  a.engine.prefill_batch = a.prefill_batch > 0 ? a.prefill_batch : (gpu ? a.engine.slots : 1);
  a.engine.prefill_budget = a.prefill_budget > 0 ? a.prefill_budget : (gpu ? 16384 : 512);
  a.engine.cache_bytes = size_t(a.cache_mb * 1024 * 1024);
  a.engine.max_queued = std::max(a.engine.max_queued, 0);
  a.server.defaults = a.sampler;
  a.server.max_body_bytes = size_t(a.max_body_kb * 1024);
  if (a.server.model_name.empty()) {
    a.server.model_name = std::filesystem::path(a.model.path).stem().string();
  }
  if (a.server.api_key.empty()) {
    if (const char* key = std::getenv("RWKV_API_KEY")) a.server.api_key = key;
  }
  serve::Engine engine(model, tokenizer, a.engine);
  serve::StateStore states(a.state_dir, *model, a.state_max_files,
                           size_t(a.state_max_mb * 1024 * 1024));
  serve::HttpServer server(engine, states, a.server);
  const int port = server.bind();
  std::thread stopper([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::fprintf(stderr, "rwkv serve: signal %d, stopping\n", sig);
    server.stop();
  });
  std::fprintf(stderr,
               "rwkv serve: %s (%s) on http://%s:%d/  slots %d, decode group %d, prefill chunk %d "
               "batch %d budget %d, prefix cache %.0f MiB%s%s\n",
               a.server.model_name.c_str(), model->info().family.c_str(), a.server.host.c_str(),
               port, a.engine.slots, a.engine.decode_group, a.engine.prefill_chunk,
               a.engine.prefill_batch, a.engine.prefill_budget, a.cache_mb,
               a.server.api_key.empty() ? "" : ", API key required",
               a.state_dir.empty() ? "" : (", states in " + a.state_dir).c_str());
  std::fflush(stderr);
  server.serve();
  engine.shutdown();
  pthread_kill(stopper.native_handle(), SIGTERM);  // wakes sigwait if stop came from elsewhere
  stopper.join();
  std::fprintf(stderr, "rwkv serve: stopped\n");
}

}  // namespace

void register_serve(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  a->server.model_name.clear();  // the model file's stem unless --model-name
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-style HTTP server (continuous batching)");
  a->model.add(*cmd);
  a->tokenizer.add(*cmd);
  add_sampler_options(*cmd, a->sampler);
  cmd->add_option("--host", a->server.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", a->server.port, "port (0: any free one)")->capture_default_str();
  cmd->add_option("--api-key", a->server.api_key,
                  "require 'Authorization: Bearer KEY' (default: $RWKV_API_KEY, else none)");
  cmd->add_option("--model-name", a->server.model_name, "model id in answers (default: file stem)");
  cmd->add_option("--slots", a->engine.slots, "sequences in flight at once")->capture_default_str();
  cmd->add_option("--max-queued", a->engine.max_queued, "requests waiting for a slot (429 beyond)")
      ->capture_default_str();
  cmd->add_option("--max-requests", a->server.max_requests,
                  "generation requests open at once (429 beyond)")->capture_default_str();
  cmd->add_option("--prefill-chunk", a->engine.prefill_chunk,
                  "prompt tokens per prefill call, between decode steps")->capture_default_str();
  cmd->add_option("--prefill-budget", a->prefill_budget,
                  "prompt tokens computed between two decode steps (default 512 CPU, 16384 GPU)");
  cmd->add_option("--prefill-batch", a->prefill_batch,
                  "prompts prefilled together in one call (default 1 CPU, --slots GPU)");
  cmd->add_option("--decode-group", a->decode_group,
                  "sequences per decode step (0: all; default 4 on the CPU, 0 on a GPU)");
  cmd->add_option("--cache-mb", a->cache_mb, "prefix-state cache budget (0: off)")->capture_default_str();
  cmd->add_option("--state-dir", a->state_dir, "folder of named states (off when not given)");
  cmd->add_option("--state-max-files", a->state_max_files, "most files in --state-dir")
      ->capture_default_str();
  cmd->add_option("--state-max-mb", a->state_max_mb, "most MiB in --state-dir")->capture_default_str();
  cmd->add_option("--max-body-kb", a->max_body_kb, "largest request body")->capture_default_str();
  cmd->add_option("--max-prompt-tokens", a->server.limits.max_prompt_tokens, "longest prompt")
      ->capture_default_str();
  cmd->add_option("--max-tokens-limit", a->server.limits.max_tokens,
                  "largest max_tokens a request may ask for")->capture_default_str();
  cmd->add_option("--default-max-tokens", a->server.limits.default_max_tokens,
                  "max_tokens when a request names none")->capture_default_str();
  cmd->add_option("--timeout", a->server.limits.timeout_s, "seconds a request may take")
      ->capture_default_str();
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
