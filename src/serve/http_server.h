// `rwkv serve`'s HTTP side (DESIGN: serve/): the OpenAI-style routes over an Engine, with an
// optional API key, limits on bodies, prompts and requests in flight, SSE streaming, and the
// chat page at "/". Client input never ends the server: every failure is a 4xx/5xx answer.
#pragma once
#include <atomic>
#include <memory>
#include <string>

#include "serve/api.h"
#include "serve/engine.h"
#include "serve/state_store.h"

namespace rwkv::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                     // 0: any free port (bind() says which)
  std::string api_key;                 // empty: no key asked for
  std::string model_name = "rwkv";     // what /v1/models lists and answers carry
  size_t max_body_bytes = size_t(1) << 20;
  int max_requests = 64;               // generation requests in flight; 429 beyond
  double read_timeout_s = 30;
  ApiLimits limits;
  SamplerConfig defaults;              // sampling settings a request leaves out
};

class HttpServer {
 public:
  HttpServer(Engine& engine, StateStore& states, const ServerOptions& options);
  ~HttpServer();
  // Binds host:port; returns the port. Throws rwkv::Error if it cannot.
  int bind();
  // Answers requests until stop() (from any thread).
  void serve();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The chat page served at "/": one self-contained HTML file that streams from the API.
extern const char* const kChatPageHtml;

}  // namespace rwkv::serve
