// rwkv logits: float32 logits [T, V] after each token, in either form, with raw state in/out in
// the official package's layout — for comparing against other implementations.
#include <sstream>

#include "app/common.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/state.h"

namespace rwkv::app {
namespace {

struct LogitsArgs {
  ModelOptions model;
  std::string tokens, mode = "step", state_in, state_out, out;
};

std::vector<int> parse_tokens(const std::string& text) {
  std::vector<int> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 0 || v > 1 << 30) {
      fail("--tokens: '", item, "' is not a token id");
    }
    ids.push_back(int(v));
  }
  if (ids.empty()) fail("--tokens: no token ids given");
  return ids;
}

void run(const LogitsArgs& a) {
  const std::vector<int> ids = parse_tokens(a.tokens);
  auto model = a.model.load();
  const size_t V = size_t(model->info().vocab_size), T = ids.size();
  for (size_t i = 0; i < T; ++i) {
    if (size_t(ids[i]) >= V) fail("--tokens: id ", ids[i], " (item ", i + 1, ") is not below the vocabulary size ", V);
  }
  std::vector<float> state(model->state_spec().floats);
  if (a.state_in.empty()) {
    model->init_state(state.data());
  } else {
    state = read_raw_state(a.state_in, state.size());
  }
  std::vector<float> logits(T * V);
  float* states[] = {state.data()};
  if (a.mode == "seq") {
    model->forward(ids.data(), 1, int(T), states, logits.data(), LogitsMode::All);
  } else {
    for (size_t t = 0; t < T; ++t) model->step(&ids[t], 1, states, logits.data() + t * V);
  }
  write_file_atomic(a.out, logits.data(), logits.size() * sizeof(float));
  if (!a.state_out.empty()) write_raw_state(a.state_out, state);
}

}  // namespace

void register_logits(CLI::App& app) {
  auto a = std::make_shared<LogitsArgs>();
  CLI::App* cmd = app.add_subcommand(
      "logits", "write float32 logits [T, V] after each token (conformance and debugging)");
  a->model.add(*cmd);
  cmd->add_option("--tokens", a->tokens, "comma-separated token ids, e.g. 1,2,3")->required();
  cmd->add_option("--mode", a->mode, "step: one token at a time; seq: one parallel call")
      ->check(CLI::IsMember({"step", "seq"}))->capture_default_str();
  cmd->add_option("--state-in", a->state_in, "raw float32 state to start from (official layout)");
  cmd->add_option("--state-out", a->state_out, "write the final raw float32 state here");
  cmd->add_option("-o,--out", a->out, "output file for the logits")->required();
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
