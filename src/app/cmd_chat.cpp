// rwkv chat: multi-turn chat with the World template (spec §8.1); the state carries the
// conversation, so each turn feeds only the new text.
#include <cstdio>
#include <iostream>

#include "app/common.h"
#include "rwkv/error.h"

namespace rwkv::app {
namespace {

struct ChatArgs {
  ModelOptions model;
  TokenizerOptions tokenizer;
  SamplerConfig sampler{1.0f, 0.3f, 0, 0.0f, 0.5f, 0.5f, 0.996f, 0};  // ChatRWKV API_DEMO_CHAT
  std::string system;
  std::string state_in;
  int max_tokens = 500;
};

// CRLF → LF, runs of newlines → one, trimmed: "\n\n" only ever separates turns.
std::string clean(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\r') continue;
    if (c == '\n' && !out.empty() && out.back() == '\n') continue;
    out += c;
  }
  const size_t b = out.find_first_not_of(" \t\n"), e = out.find_last_not_of(" \t\n");
  return b == std::string::npos ? "" : out.substr(b, e - b + 1);
}

const char* kHelp =
    "commands: /save FILE  /load FILE  /reset  /help  /quit   (anything else is your message)\n";

void run(const ChatArgs& a) {
  auto model = a.model.load();
  Session session(model, a.tokenizer.load(a.model.path, model->info().vocab_size), a.sampler);
  auto start = [&] {
    session.reset();
    if (!a.system.empty()) session.prefill("System: " + clean(a.system) + "\n\n");
  };
  start();
  if (!a.state_in.empty()) session.load_state(a.state_in);
  GenerateOptions opt;
  opt.max_tokens = a.max_tokens;
  opt.stop = {"\n\n", "\nUser:"};
  // World and NeoX both end a text with token 0 (<|endoftext|>).
  opt.stop_tokens = {0};  // end of text (World, NeoX) / end of document (byte-level models)
  std::fprintf(stderr, "%s", kHelp);
  std::string line;
  while (true) {
    std::fprintf(stderr, "User: ");
    if (!std::getline(std::cin, line)) break;
    if (line == "/quit" || line == "/exit") break;
    try {
      if (line == "/help") {
        std::fprintf(stderr, "%s", kHelp);
      } else if (line == "/reset") {
        start();
        std::fprintf(stderr, "[state reset]\n");
      } else if (line.rfind("/save ", 0) == 0) {
        session.save_state(line.substr(6));
        std::fprintf(stderr, "[state saved to %s]\n", line.substr(6).c_str());
      } else if (line.rfind("/load ", 0) == 0) {
        session.load_state(line.substr(6));
        std::fprintf(stderr, "[state loaded from %s]\n", line.substr(6).c_str());
      } else if (!clean(line).empty()) {
        session.prefill("User: " + clean(line) + "\n\nAssistant:");
        std::printf("Assistant:");
        const GenerateResult r = session.generate(opt, print_streamed);
        // Close the turn in the state if the model did not.
        if (r.reason != StopReason::StopString) session.prefill("\n\n");
        std::printf("\n");
        std::fprintf(stderr, "[%zu tokens, %.2f tok/s]\n", r.tokens.size(),
                     r.seconds > 0 ? double(r.tokens.size()) / r.seconds : 0.0);
      }
    } catch (const Error& e) {
      // A bad command (e.g. a state file of another model) must not end the conversation.
      std::fprintf(stderr, "error: %s\n", e.what());
    }
  }
}

}  // namespace

void register_chat(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  CLI::App* cmd = app.add_subcommand("chat", "multi-turn chat (World template), state kept across turns");
  a->model.add(*cmd);
  a->tokenizer.add(*cmd);
  add_sampler_options(*cmd, a->sampler);
  cmd->add_option("--system", a->system, "system prompt");
  cmd->add_option("--state-in", a->state_in, "start from this state file");
  cmd->add_option("-n,--max-tokens", a->max_tokens, "most tokens per answer")->capture_default_str();
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
