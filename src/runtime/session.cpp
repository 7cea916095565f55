#include "rwkv/session.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "rwkv/error.h"
#include "rwkv/state.h"
#include "rwkv/streamed_text.h"

namespace rwkv {

Session::Session(std::shared_ptr<Model> model, std::shared_ptr<const Tokenizer> tokenizer,
                 const SamplerConfig& sampler)
    : model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      sampler_(sampler, model_->info().vocab_size),
      pool_(model_->new_state_pool(1)),  // holds the start-of-sequence state
      state_(model_->state_spec().floats),
      logits_(size_t(model_->info().vocab_size)) {
  if (tokenizer_->vocab_size() > model_->info().vocab_size) {
    fail("the ", tokenizer_->name(), " tokenizer has ", tokenizer_->vocab_size(),
         " tokens but the model only ", model_->info().vocab_size);
  }
}

Session::Session(const Session& other)
    : prefill_chunk(other.prefill_chunk),
      model_(other.model_),
      tokenizer_(other.tokenizer_),
      sampler_(other.sampler_),
      pool_(model_->new_state_pool(1)),
      state_(other.state()),
      newer_(Newer::Host),  // the new pool learns the state at the first step
      logits_(other.logits_),
      has_logits_(other.has_logits_) {}

Session& Session::operator=(const Session& other) {
  if (this != &other) *this = Session(other);
  return *this;
}

const std::vector<float>& Session::state() const {
  if (newer_ == Newer::Pool) {
    pool_->read(0, state_.data());
    newer_ = Newer::Neither;
  }
  return state_;
}

std::vector<float>& Session::state() {
  std::as_const(*this).state();
  newer_ = Newer::Host;  // the caller may write through the reference
  return state_;
}

StatePool& Session::pool_for_update() {
  if (newer_ == Newer::Host) pool_->write(0, state_.data());
  newer_ = Newer::Pool;
  return *pool_;
}

void Session::prefill(std::string_view text) { prefill_tokens(tokenizer_->encode(text)); }

void Session::prefill_tokens(const std::vector<int>& tokens) {
  if (tokens.empty()) return;
  StatePool& pool = pool_for_update();
  const int slot = 0;
  // Chunks bound the activation memory; the state carries across them.
  for (size_t i = 0; i < tokens.size(); i += size_t(prefill_chunk)) {
    const int n = int(std::min(tokens.size() - i, size_t(prefill_chunk)));
    model_->forward_pooled(tokens.data() + i, 1, n, pool, &slot, logits_.data(), LogitsMode::Last);
    has_logits_ = true;
  }
}

void Session::step(int token) {
  const int slot = 0;
  model_->step_pooled(&token, 1, pool_for_update(), &slot, logits_.data());
  has_logits_ = true;
}

GenerateResult Session::generate(const GenerateOptions& options,
                                 const std::function<bool(std::string_view)>& on_text) {
  if (!has_logits_) fail("generate: nothing to continue from; prefill a prompt first");
  GenerateResult result;
  const auto start = std::chrono::steady_clock::now();
  StreamedText out(options.stop);
  for (int i = 0; i < options.max_tokens; ++i) {
    // Rows past the tokenizer's vocabulary (World pads 65530 ids to 65536) are not text.
    const ptrdiff_t text_ids = std::min<ptrdiff_t>(tokenizer_->vocab_size(), ptrdiff_t(logits_.size()));
    std::fill(logits_.begin() + text_ids, logits_.end(), -INFINITY);
    const int token = sampler_.sample(logits_);
    sampler_.accept(token);
    result.tokens.push_back(token);
    step(token);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) !=
        options.stop_tokens.end()) {
      result.reason = StopReason::StopToken;
      break;
    }
    if (out.push(tokenizer_->decode(token))) {
      result.reason = StopReason::StopString;
      break;
    }
    const std::string piece = out.take();
    if (!piece.empty() && on_text && !on_text(piece)) {
      result.reason = StopReason::Callback;
      break;
    }
  }
  if (result.reason != StopReason::Callback) {
    const std::string piece = out.finish();
    if (!piece.empty() && on_text) on_text(piece);
  }
  result.text = out.text();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

void Session::reset() {
  model_->init_state(state_.data());
  newer_ = Newer::Host;
  sampler_.reset();
  has_logits_ = false;
}

Session Session::fork() const { return *this; }

void Session::save_state(const std::string& path) const {
  save_state_file(path, model_->state_spec(), state());
}

void Session::load_state(const std::string& path) {
  state_ = load_state_file(path, model_->state_spec());
  newer_ = Newer::Host;
  has_logits_ = false;
}

void Session::import_raw_state(const std::string& path) {
  state_ = read_raw_state(path, model_->state_spec().floats);
  newer_ = Newer::Host;
  has_logits_ = false;
}

void Session::export_raw_state(const std::string& path) const { write_raw_state(path, state()); }

}  // namespace rwkv
