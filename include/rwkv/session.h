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
  // A copy has its own state (in a new pool of the same model): see fork().
  Session(const Session& other);
  Session& operator=(const Session& other);
  Session(Session&&) = default;
  Session& operator=(Session&&) = default;

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
  // The current state, copied to host memory if the model keeps it elsewhere (a GPU). The
  // non-const form lets the caller change it: the next prefill or step starts from what the
  // reference holds then. The vector is a snapshot: after a prefill or generate(), call again.
  std::vector<float>& state();
  const std::vector<float>& state() const;
  const std::vector<float>& logits() const { return logits_; }
  bool has_logits() const { return has_logits_; }
  int prefill_chunk = 512;

 private:
  void step(int token);
  // The pool, first brought up to date with state_ if that is newer; marks the pool newer, as
  // the caller is about to run the model on it.
  StatePool& pool_for_update();

  std::shared_ptr<Model> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  Sampler sampler_;
  // The state lives in slot 0 of pool_, where the model computes (GPU memory for a CUDA model),
  // so decoding never moves it through the host; state_ is a host mirror for state(), files and
  // forks. Whichever side was written last is current; copies happen only when the other side
  // is asked for.
  enum class Newer { Neither, Pool, Host };
  std::unique_ptr<StatePool> pool_;
  mutable std::vector<float> state_;
  mutable Newer newer_ = Newer::Pool;
  std::vector<float> logits_;
  bool has_logits_ = false;
};

}  // namespace rwkv
