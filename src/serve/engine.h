// The serving engine: continuous batching of many requests over one model (DESIGN: serve/).
//
// One worker thread owns the model and a pool of state slots. Each iteration it admits queued
// jobs into free slots (restoring the longest cached prompt prefix), runs prefill chunks up to a
// token budget, then one batched recurrent step over every sequence that is decoding, samples each
// sequence's next token with its own sampler and streams its text. A finished, cancelled or
// timed-out job frees its slot at once. Requests wait on their Stream from their own threads.
//
// Results do not depend on what else runs (on the CPU, with prefill_batch 1 and decode_group ≤ 4):
// prompts are prefilled alone in chunks that end at fixed multiples of prefill_chunk, and decode
// steps go in groups of at most decode_group sequences, within which the CPU kernels give every
// sequence bit for bit its alone result. On a GPU, larger batches (prefill_batch, decode_group
// 0) trade that for throughput: batched products round differently.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "rwkv/model.h"
#include "rwkv/sampler.h"
#include "rwkv/tokenizer.h"
#include "serve/prefix_cache.h"

namespace rwkv::serve {

struct Job {
  std::vector<int> prompt;           // ≥ 1 token, each in [0, vocab)
  std::vector<float> initial_state;  // empty: the model's start state
  uint64_t origin = 0;               // names initial_state for the prefix cache (0: start state)
  SamplerConfig sampler;
  int max_tokens = 16;
  std::vector<std::string> stop;  // stop strings (the text ends before the first)
  std::vector<int> stop_tokens;   // e.g. World's end-of-text, 0
  std::vector<std::pair<int, float>> logit_bias;  // added to those tokens' logits before sampling
  bool want_final_state = false;  // the state after the prompt and every generated token
  double timeout_s = 0;           // 0: none; counted from submission
};

enum class Finish { Stop, Length, Cancelled, Timeout, Error };
const char* finish_name(Finish f);  // "stop", "length", ...

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;  // prompt tokens restored from the prefix cache, not computed
};

struct Event {
  enum class Kind { Text, Done } kind = Kind::Text;
  std::string text;  // Text: the next piece of the completion
  // Done:
  Finish finish = Finish::Stop;
  Usage usage;
  std::string error;               // Finish::Error / Timeout: why
  std::vector<float> final_state;  // if the job asked for it and it finished normally
  double first_token_s = 0;        // submission to first sampled token
};

// One job's events, from the worker to the request's thread.
class Stream {
 public:
  // Waits up to `wait` for the next event; false if none came.
  bool next(Event& event, std::chrono::milliseconds wait);
  // The client went away or gave up: the worker drops the job at its next iteration.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  void push(Event event);

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Event> events_;
  std::atomic<bool> cancelled_ = false;
};

struct EngineOptions {
  int slots = 8;           // sequences in flight at once
  int max_queued = 64;     // jobs waiting for a slot; beyond, submit() refuses
  int prefill_chunk = 128; // tokens per prefill call (and the prefix cache's granularity)
  int prefill_budget = 512; // prompt tokens prefilled between two decode steps (≥ one chunk)
  int prefill_batch = 1;    // prompts advanced together in one prefill call
  int decode_group = 0;    // sequences per step call; 0: all at once
  size_t cache_bytes = size_t(256) << 20;
};

struct EngineStats {
  int active = 0, queued = 0;
  size_t cache_entries = 0, cache_bytes = 0;
  uint64_t jobs_done = 0, tokens_generated = 0, prompt_tokens = 0, cached_tokens = 0;
};

class Engine {
 public:
  Engine(std::shared_ptr<Model> model, std::shared_ptr<const Tokenizer> tokenizer,
         const EngineOptions& options);
  ~Engine();  // shutdown()
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a job; nullptr when max_queued jobs already wait or the engine is shutting down.
  // Throws rwkv::Error for an invalid job (empty prompt, token out of range, wrong state size,
  // bad sampler settings) before queueing it.
  std::shared_ptr<Stream> submit(Job job);
  // Stops the worker after its current iteration; jobs still queued or running end with
  // Finish::Cancelled. Idempotent.
  void shutdown();
  EngineStats stats() const;
  const Model& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const EngineOptions& options() const { return options_; }

 private:
  struct Active;
  struct Queued {
    Job job;
    std::shared_ptr<Stream> stream;
    std::chrono::steady_clock::time_point submitted;
  };
  void run();
  void admit(Queued queued, int slot);
  size_t prefill(size_t budget);  // prompt tokens computed (0: none waiting)
  void decode();
  int pick(Active& a, float* logits) const;  // samples; logits: a row of logits_, masked in place
  void take(Active& a, int token);
  void finish(Active& a, Finish why, std::string error = {});
  void reap();
  int active_count() const;  // slots holding a job

  std::shared_ptr<Model> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  EngineOptions options_;
  std::unique_ptr<StatePool> pool_;
  PrefixCache cache_;

  mutable std::mutex mutex_;  // guards queue_, stopping_ and stats_
  std::condition_variable wake_;
  std::deque<Queued> queue_;
  bool stopping_ = false;
  EngineStats stats_;

  // Worker-only.
  std::vector<std::unique_ptr<Active>> active_;  // by slot; nullptr when free
  int decode_group_ = 0;                         // sequences per step call, resolved
  HostFloats logits_;  // (max(decode group, prefill batch), V), page-locked beside a GPU
  std::vector<float> scratch_state_;
  std::thread worker_;
};

}  // namespace rwkv::serve
