#include "serve/engine.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "rwkv/error.h"
#include "rwkv/streamed_text.h"

namespace rwkv::serve {

using Clock = std::chrono::steady_clock;

const char* finish_name(Finish f) {
  switch (f) {
    case Finish::Stop: return "stop";
    case Finish::Length: return "length";
    case Finish::Cancelled: return "cancelled";
    case Finish::Timeout: return "timeout";
    case Finish::Error: return "error";
  }
  return "error";
}

bool Stream::next(Event& event, std::chrono::milliseconds wait) {
  std::unique_lock lock(mutex_);
  if (!ready_.wait_for(lock, wait, [&] { return !events_.empty(); })) return false;
  event = std::move(events_.front());
  events_.pop_front();
  return true;
}

void Stream::push(Event event) {
  {
    std::lock_guard lock(mutex_);
    events_.push_back(std::move(event));
  }
  ready_.notify_one();
}

namespace {

Event done_event(Finish finish, std::string error = {}) {
  Event e;
  e.kind = Event::Kind::Done;
  e.finish = finish;
  e.error = std::move(error);
  return e;
}

Event text_event(std::string text) {
  Event e;
  e.text = std::move(text);
  return e;
}

// Whether a job given `timeout_s` (0: none) at `submitted` is past it.
bool overdue(double timeout_s, Clock::time_point submitted, Clock::time_point now) {
  return timeout_s > 0 && now - submitted > std::chrono::duration<double>(timeout_s);
}

}  // namespace

struct Engine::Active {
  Active(Queued q, int vocab)
      : job(std::move(q.job)),
        stream(std::move(q.stream)),
        submitted(q.submitted),
        sampler(job.sampler, vocab),
        text(job.stop) {}
  Job job;
  std::shared_ptr<Stream> stream;
  Clock::time_point submitted;
  int slot = -1;
  uint64_t order = 0;  // admission order: prefill goes first come, first served
  size_t fed = 0;      // prompt tokens in the state
  Sampler sampler;
  StreamedText text;
  int pending = -1;       // sampled, not yet fed
  bool last_feed = false; // pending is fed only for the final state, then the job ends
  Finish ending = Finish::Stop;
  Usage usage;
  double first_token_s = 0;
};

Engine::Engine(std::shared_ptr<Model> model, std::shared_ptr<const Tokenizer> tokenizer,
               const EngineOptions& options)
    : model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      options_(options),
      cache_(options.cache_bytes, std::max(1, options.prefill_chunk)) {
  if (options_.slots < 1) fail("serve: slots must be ≥ 1, got ", options_.slots);
  if (options_.prefill_chunk < 1) fail("serve: prefill chunk must be ≥ 1");
  if (options_.prefill_budget < 1) fail("serve: prefill budget must be ≥ 1");
  if (options_.prefill_batch < 1) fail("serve: prefill batch must be ≥ 1");
  if (options_.max_queued < 0) fail("serve: max queued must be ≥ 0");
  pool_ = model_->new_state_pool(options_.slots);
  active_.resize(size_t(options_.slots));
  decode_group_ = options_.decode_group > 0 ? std::min(options_.decode_group, options_.slots)
                                            : options_.slots;
  const int rows = std::max(decode_group_, std::min(options_.prefill_batch, options_.slots));
  logits_ = HostFloats(size_t(rows) * size_t(model_->info().vocab_size), model_->cuda_device() >= 0);
  scratch_state_.resize(model_->state_spec().floats);
  worker_ = std::thread([this] { run(); });
}

Engine::~Engine() { shutdown(); }

void Engine::shutdown() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (worker_.joinable()) worker_.join();
}

std::shared_ptr<Stream> Engine::submit(Job job) {
  const int vocab = model_->info().vocab_size;
  if (job.prompt.empty()) fail("the prompt is empty");
  for (int t : job.prompt) {
    if (t < 0 || t >= vocab) fail("token id ", t, " is outside the vocabulary [0, ", vocab, ")");
  }
  if (!job.initial_state.empty() && job.initial_state.size() != model_->state_spec().floats) {
    fail("the initial state has ", job.initial_state.size(), " floats; this model's has ",
         model_->state_spec().floats);
  }
  if (job.max_tokens < 1) fail("max_tokens must be ≥ 1, got ", job.max_tokens);
  for (const auto& [t, bias] : job.logit_bias) {
    if (t < 0 || t >= vocab || !std::isfinite(bias)) fail("logit bias for token ", t, " is invalid");
  }
  Sampler::validate(job.sampler, vocab);
  auto stream = std::make_shared<Stream>();
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || int(queue_.size()) >= options_.max_queued) return nullptr;
    queue_.push_back({std::move(job), stream, Clock::now()});
    stats_.queued = int(queue_.size());
  }
  wake_.notify_one();
  return stream;
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void Engine::run() {
  uint64_t admitted = 0;
  for (;;) {
    std::vector<Queued> incoming;
    {
      std::unique_lock lock(mutex_);
      wake_.wait_for(lock, std::chrono::milliseconds(100), [&] {
        return stopping_ || active_count() > 0 || (!queue_.empty() && active_count() < options_.slots);
      });
      if (stopping_) break;
      const int free_slots = options_.slots - active_count();
      while (!queue_.empty() && int(incoming.size()) < free_slots) {
        incoming.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      // Jobs still waiting may have been given up or timed out.
      for (auto it = queue_.begin(); it != queue_.end();) {
        const bool late = overdue(it->job.timeout_s, it->submitted, Clock::now());
        if (!it->stream->cancelled() && !late) {
          ++it;
          continue;
        }
        it->stream->push(late ? done_event(Finish::Timeout, "the request timed out waiting for a free slot")
                              : done_event(Finish::Cancelled));
        it = queue_.erase(it);
      }
      stats_.queued = int(queue_.size());
    }
    for (Queued& q : incoming) {
      const int slot = int(std::ranges::find(active_, nullptr, &std::unique_ptr<Active>::get) - active_.begin());
      admit(std::move(q), slot);
      if (active_[size_t(slot)]) active_[size_t(slot)]->order = admitted++;
    }
    if (!incoming.empty()) {
      std::lock_guard lock(mutex_);
      stats_.active = active_count();
    }
    reap();
    for (size_t done = 0; done < size_t(options_.prefill_budget);) {
      const size_t n = prefill(size_t(options_.prefill_budget) - done);
      if (n == 0) break;
      done += n;
    }
    decode();
  }
  // Shutting down: every job still here ends.
  for (auto& a : active_) {
    if (a) finish(*a, Finish::Cancelled, "the server is shutting down");
  }
  std::lock_guard lock(mutex_);
  for (Queued& q : queue_) {
    q.stream->push(done_event(Finish::Cancelled, "the server is shutting down"));
  }
  queue_.clear();
}

void Engine::admit(Queued queued, int slot) {
  if (queued.stream->cancelled()) {
    queued.stream->push(done_event(Finish::Cancelled));
    return;
  }
  auto a = std::make_unique<Active>(std::move(queued), model_->info().vocab_size);
  try {
    const Job& job = a->job;
    // The last prompt token is always computed, for the logits that pick the first token.
    const size_t cached = cache_.lookup(job.origin, job.prompt, job.prompt.size() - 1, scratch_state_);
    if (cached > 0) {
      pool_->write(slot, scratch_state_.data());
    } else if (!job.initial_state.empty()) {
      pool_->write(slot, job.initial_state.data());
    } else {
      model_->init_state(scratch_state_.data());
      pool_->write(slot, scratch_state_.data());
    }
    a->slot = slot;
    a->fed = cached;
    a->usage.prompt_tokens = int(job.prompt.size());
    a->usage.cached_tokens = int(cached);
  } catch (const std::exception& e) {
    a->stream->push(done_event(Finish::Error, e.what()));
    return;
  }
  active_[size_t(slot)] = std::move(a);
}

int Engine::active_count() const {
  return int(std::ranges::count_if(active_, [](const auto& p) { return p != nullptr; }));
}

void Engine::reap() {
  const auto now = Clock::now();
  for (auto& a : active_) {
    if (!a) continue;
    if (a->stream->cancelled()) {
      finish(*a, Finish::Cancelled);
    } else if (overdue(a->job.timeout_s, a->submitted, now)) {
      finish(*a, Finish::Timeout, cat("the request timed out after ", a->job.timeout_s, " s"));
    }
  }
}

// One prefill call over the earliest admitted jobs still prefilling. The first job advances to
// the end of its chunk (or prompt); up to prefill_batch jobs join it when they can advance as
// far without crossing the end of their own chunk, as long as the call stays within `budget`
// tokens. Chunks thus end at multiples of prefill_chunk, where states go to the prefix cache.
// Returns the tokens computed (0: none waiting).
size_t Engine::prefill(size_t budget) {
  std::vector<Active*> waiting;
  for (auto& p : active_) {
    if (p && p->fed < p->job.prompt.size()) waiting.push_back(p.get());
  }
  if (waiting.empty()) return 0;
  std::ranges::sort(waiting, {}, &Active::order);
  const size_t chunk = size_t(options_.prefill_chunk);
  const auto reach = [&](const Active* a) {
    return std::min(chunk - a->fed % chunk, a->job.prompt.size() - a->fed);
  };
  const size_t n = reach(waiting[0]);
  const size_t most = std::min({size_t(std::max(options_.prefill_batch, 1)),
                                logits_.size() / size_t(model_->info().vocab_size),
                                std::max<size_t>(budget / n, 1)});
  std::vector<Active*> batch;
  for (Active* a : waiting) {
    if (batch.size() < most && reach(a) >= n) batch.push_back(a);
  }
  const int B = int(batch.size());
  std::vector<int> tokens, slots;
  bool any_last = false;
  for (Active* a : batch) {
    tokens.insert(tokens.end(), a->job.prompt.begin() + ptrdiff_t(a->fed),
                  a->job.prompt.begin() + ptrdiff_t(a->fed + n));
    slots.push_back(a->slot);
    any_last |= a->fed + n == a->job.prompt.size();
  }
  try {
    model_->forward_pooled(tokens.data(), B, int(n), *pool_, slots.data(), logits_.data(),
                           any_last ? LogitsMode::Last : LogitsMode::None);
  } catch (const std::exception& e) {
    for (Active* a : batch) finish(*a, Finish::Error, e.what());
    return n * size_t(B);
  }
  const size_t vocab = size_t(model_->info().vocab_size);
  for (int b = 0; b < B; ++b) {
    Active& a = *batch[size_t(b)];
    try {
      a.fed += n;
      if (a.fed % chunk == 0) {
        pool_->read(a.slot, scratch_state_.data());
        cache_.insert(a.job.origin, std::span(a.job.prompt).first(a.fed), scratch_state_);
      }
      if (a.fed == a.job.prompt.size()) take(a, pick(a, logits_.data() + size_t(b) * vocab));
    } catch (const std::exception& e) {
      finish(a, Finish::Error, e.what());
    }
  }
  return n * size_t(B);
}

// One batched recurrent step for every sequence with a sampled token to feed, in groups of at
// most decode_group sequences.
void Engine::decode() {
  std::vector<int> slots;
  for (int s = 0; s < int(active_.size()); ++s) {
    if (active_[size_t(s)] && active_[size_t(s)]->pending >= 0) slots.push_back(s);
  }
  const size_t vocab = size_t(model_->info().vocab_size);
  const size_t group = size_t(decode_group_);
  for (size_t g0 = 0; g0 < slots.size(); g0 += group) {
    const int B = int(std::min(group, slots.size() - g0));
    std::vector<Active*> batch(static_cast<size_t>(B));
    std::vector<int> tokens(static_cast<size_t>(B));
    for (int b = 0; b < B; ++b) {
      batch[size_t(b)] = active_[size_t(slots[g0 + size_t(b)])].get();
      tokens[size_t(b)] = batch[size_t(b)]->pending;
      batch[size_t(b)]->pending = -1;
    }
    try {
      model_->step_pooled(tokens.data(), B, *pool_, slots.data() + g0, logits_.data());
    } catch (const std::exception& e) {
      for (Active* a : batch) finish(*a, Finish::Error, e.what());
      continue;
    }
    // Sampling is per sequence and independent: spread over the threads (a 65536-token
    // vocabulary costs ~0.1-1 ms a sequence, which at large batches rivals the step itself).
    std::vector<int> picked(static_cast<size_t>(B), -1);
    std::vector<std::string> errors(static_cast<size_t>(B));
#pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < B; ++b) {
      if (batch[size_t(b)]->last_feed) continue;
      try {
        picked[size_t(b)] = pick(*batch[size_t(b)], logits_.data() + size_t(b) * vocab);
      } catch (const std::exception& e) {
        errors[size_t(b)] = e.what();
      }
    }
    for (int b = 0; b < B; ++b) {
      Active& a = *batch[size_t(b)];
      if (a.last_feed) {
        finish(a, a.ending);
      } else if (!errors[size_t(b)].empty()) {
        finish(a, Finish::Error, errors[size_t(b)]);
      } else {
        take(a, picked[size_t(b)]);
      }
    }
  }
}

// The next token from a sequence's logits (a row of logits_, masked in place). Touches only
// that sequence's sampler: safe to run for several sequences at once.
int Engine::pick(Active& a, float* logits) const {
  const int vocab = model_->info().vocab_size;
  // Rows past the tokenizer's vocabulary (World pads 65530 ids to 65536) are not text.
  std::fill(logits + std::min(vocab, tokenizer_->vocab_size()), logits + vocab, -INFINITY);
  for (const auto& [t, bias] : a.job.logit_bias) logits[t] += bias;
  return a.sampler.sample(std::span<const float>(logits, size_t(vocab)));
}

// Takes a sampled token: streams its text, and ends the job on a stop token, a stop string or
// max_tokens; otherwise the token is fed at the next step.
void Engine::take(Active& a, int token) {
  try {
    a.sampler.accept(token);
    if (a.usage.completion_tokens++ == 0) {
      a.first_token_s = std::chrono::duration<double>(Clock::now() - a.submitted).count();
    }
    std::optional<Finish> end;
    std::string piece;
    if (std::ranges::find(a.job.stop_tokens, token) != a.job.stop_tokens.end()) {
      end = Finish::Stop;
    } else {
      if (a.text.push(tokenizer_->decode(token))) end = Finish::Stop;
      piece = a.text.take();
      if (!end && a.usage.completion_tokens >= a.job.max_tokens) end = Finish::Length;
    }
    if (end) piece += a.text.finish();
    if (!piece.empty()) a.stream->push(text_event(std::move(piece)));
    a.pending = token;
    if (!end) return;
    if (a.job.want_final_state) {  // the state includes the last token: feed it, then end
      a.last_feed = true;
      a.ending = *end;
      return;
    }
    a.pending = -1;
    finish(a, *end);
  } catch (const std::exception& e) {
    finish(a, Finish::Error, e.what());
  }
}

void Engine::finish(Active& a, Finish why, std::string error) {
  const int slot = a.slot;
  Event done = done_event(why, std::move(error));
  done.usage = a.usage;
  done.first_token_s = a.first_token_s;
  if ((why == Finish::Stop || why == Finish::Length) && a.job.want_final_state) {
    done.final_state.resize(pool_->floats());
    try {
      pool_->read(slot, done.final_state.data());
    } catch (const std::exception& e) {
      done.finish = Finish::Error;
      done.error = e.what();
    }
  }
  const std::shared_ptr<Stream> stream = std::move(a.stream);
  const Usage usage = a.usage;
  active_[size_t(slot)].reset();  // a is gone
  {
    // Counted before the job's last event goes out: whoever waits for it sees the slot free.
    std::lock_guard lock(mutex_);
    stats_.jobs_done++;
    stats_.tokens_generated += uint64_t(usage.completion_tokens);
    stats_.prompt_tokens += uint64_t(usage.prompt_tokens);
    stats_.cached_tokens += uint64_t(usage.cached_tokens);
    stats_.cache_entries = cache_.entries();
    stats_.cache_bytes = cache_.bytes();
    stats_.active = active_count();
  }
  stream->push(std::move(done));
}

}  // namespace rwkv::serve
