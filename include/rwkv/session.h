// A session: model + tokenizer + sampler + one sequence's state (DESIGN: runtime/). It feeds
// prompts through the parallel form in chunks, generates through the recurrent form, streams
// text, and saves, restores and forks its state.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "rwkv/model.h"
#include "rwkv/sampler.h"
#include "rwkv/tokenizer.h"

namespace rwkv {

struct GenerateOptions {
  int max_tokens = 200;
  std::vector<std::string> stop;  // stop strings; the text returned ends before the first one
  std::vector<int> stop_tokens;   // e.g. {0}: World's end-of-text
};

enum class StopReason { MaxTokens, StopString, StopToken, Callback };

struct GenerateResult {
  std::string text;          // everything streamed (without the stop string)
  std::vector<int> tokens;   // tokens generated (all of them fed to the model)
  StopReason reason = StopReason::MaxTokens;
  double seconds = 0;        // time generating
};

class Session {
 public:
  Session(std::shared_ptr<Model> model, std::shared_ptr<const Tokenizer> tokenizer,
          const SamplerConfig& sampler);

  // Feeds text (or tokens) through the parallel form, `prefill_chunk` tokens per call, carrying
  // the state. Leaves the logits after the last token for the next generate().
  void prefill(std::string_view text);
  void prefill_tokens(const std::vector<int>& tokens);

  // Samples tokens until a stop condition. `on_text` receives printable text as it is decided
  // (never half a UTF-8 character, never a prefix of a stop string that may still complete);
  // returning false from it stops the generation.
  GenerateResult generate(const GenerateOptions& options,
                          const std::function<bool(std::string_view)>& on_text = {});

  void reset();  // start-of-sequence state, fresh penalties
  Session fork() const;  // an independent copy: same state, logits, penalties and RNG position
  void save_state(const std::string& path) const;  // versioned state file
  void load_state(const std::string& path);        // refuses another model's state
  // Raw float32 in the official package's layout (interop).
  void import_raw_state(const std::string& path);
  void export_raw_state(const std::string& path) const;

  Model& model() { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  std::vector<float>& state() { return state_; }
  const std::vector<float>& logits() const { return logits_; }
  bool has_logits() const { return has_logits_; }
  int prefill_chunk = 512;

 private:
  void step(int token);

  std::shared_ptr<Model> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  Sampler sampler_;
  std::vector<float> state_;
  std::vector<float> logits_;
  bool has_logits_ = false;
};

}  // namespace rwkv
