// rwkv generate: stream a continuation of a prompt.
#include <chrono>
#include <cstdio>

#include "app/common.h"

namespace rwkv::app {
namespace {

struct GenerateArgs {
  ModelOptions model;
  TokenizerOptions tokenizer;
  SamplerConfig sampler;
  std::string prompt;
  int max_tokens = 200;
  std::vector<std::string> stop;
  std::string state_in, state_out;
};

void run(const GenerateArgs& a) {
  auto model = a.model.load();
  Session session(model, a.tokenizer.load(a.model.path, model->info().vocab_size), a.sampler);
  if (!a.state_in.empty()) session.load_state(a.state_in);
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int> prompt = session.tokenizer().encode(a.prompt);
  session.prefill_tokens(prompt);
  const double prefill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  GenerateOptions opt;
  opt.max_tokens = a.max_tokens;
  opt.stop = a.stop;
  // World and NeoX both end a text with token 0 (<|endoftext|>).
  opt.stop_tokens = {0};  // end of text (World, NeoX) / end of document (byte-level models)
  std::fwrite(a.prompt.data(), 1, a.prompt.size(), stdout);
  const GenerateResult r = session.generate(opt, print_streamed);
  std::printf("\n");
  std::fflush(stdout);
  if (!a.state_out.empty()) session.save_state(a.state_out);
  std::fprintf(stderr, "[prompt %zu tokens at %.1f tok/s; generated %zu tokens at %.2f tok/s]\n",
               prompt.size(), prompt.empty() ? 0.0 : double(prompt.size()) / prefill_s,
               r.tokens.size(), r.seconds > 0 ? double(r.tokens.size()) / r.seconds : 0.0);
}

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "stream a continuation of a prompt");
  a->model.add(*cmd);
  a->tokenizer.add(*cmd);
  add_sampler_options(*cmd, a->sampler);
  cmd->add_option("-p,--prompt", a->prompt, "prompt text")->required();
  cmd->add_option("-n,--max-tokens", a->max_tokens, "tokens to generate")->capture_default_str();
  cmd->add_option("--stop", a->stop, "stop string (repeatable)");
  cmd->add_option("--state-in", a->state_in, "start from this state file");
  cmd->add_option("--state-out", a->state_out, "save the final state to this file");
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
