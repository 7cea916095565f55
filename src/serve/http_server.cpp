#include "serve/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <ctime>

#include "rwkv/error.h"

namespace rwkv::serve {

using nlohmann::json;

namespace {

// Counts generation requests in flight; the slot is given back when the last owner (the
// handler, or the stream provider that outlives it) lets go.
class InFlight {
 public:
  InFlight(std::atomic<int>& counter, int limit) : counter_(counter) {
    ok_ = counter_.fetch_add(1) < limit;
  }
  ~InFlight() { counter_.fetch_sub(1); }
  bool ok() const { return ok_; }

 private:
  std::atomic<int>& counter_;
  bool ok_;
};

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(wire(e.body()), "application/json");
}

// The HTTP status and error a job that ended abnormally gets.
ApiError job_error(const Event& done) {
  switch (done.finish) {
    case Finish::Timeout: return ApiError(504, done.error, "", "timeout");
    case Finish::Cancelled:
      return ApiError(503, done.error.empty() ? "the request was cancelled" : done.error);
    default: return ApiError(500, "generation failed: " + done.error);
  }
}

std::string sse(const json& data) { return "data: " + wire(data) + "\n\n"; }

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  StateStore& states;
  ServerOptions options;
  httplib::Server server;
  std::atomic<int> in_flight = 0;
  int port = -1;
  int listen_fd = -1;

  Impl(Engine& e, StateStore& s, const ServerOptions& o) : engine(e), states(s), options(o) {}

  bool authorized(const httplib::Request& req, httplib::Response& res) const {
    if (options.api_key.empty()) return true;
    const std::string given = req.get_header_value("Authorization");
    const std::string want = "Bearer " + options.api_key;
    // Compared in time independent of where they differ.
    unsigned diff = unsigned(given.size() ^ want.size());
    for (size_t i = 0; i < want.size(); ++i) diff |= unsigned(i < given.size() ? given[i] ^ want[i] : 1);
    if (diff == 0) return true;
    send_error(res, ApiError(401, "missing or incorrect API key (Authorization: Bearer ...)", "",
                             "invalid_request_error", "invalid_api_key"));
    return false;
  }

  // Saves the final state if asked; the answer says how it went rather than failing the text.
  json save_state(const std::string& name, const Event& done) {
    if (name.empty()) return nullptr;
    try {
      states.save(name, done.final_state);
      return {{"state_saved", name}};
    } catch (const ApiError& e) {
      return {{"state_error", e.what()}};
    }
  }

  void generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    auto slot = std::make_shared<InFlight>(in_flight, options.max_requests);
    try {
      if (!authorized(req, res)) return;
      if (!slot->ok()) {
        throw ApiError(429, "too many requests in flight; try again later", "", "rate_limit_error",
                       "rate_limit_exceeded");
      }
      json body;
      try {
        body = json::parse(req.body);
      } catch (const json::exception& e) {
        throw ApiError(400, std::string("the body is not valid JSON: ") + e.what());
      }
      ApiRequest r = parse_request(body, chat, engine.tokenizer(), engine.model().info().vocab_size,
                                   options.defaults, options.limits);
      if (!r.state.empty()) {
        r.job.initial_state = states.load(r.state);
        r.job.origin = StateStore::origin_of(r.job.initial_state);
      }
      if (!r.save_state.empty()) {
        states.check_save(r.save_state);
        r.job.want_final_state = true;
      }
      std::shared_ptr<Stream> stream;
      try {
        stream = engine.submit(std::move(r.job));
      } catch (const Error& e) {
        throw ApiError(400, e.what());
      }
      if (!stream) {
        throw ApiError(429, "the server is busy (queue full); try again later", "",
                       "rate_limit_error", "rate_limit_exceeded");
      }
      const ResponseMeta meta{new_response_id(chat), options.model_name,
                              int64_t(std::time(nullptr)), chat};
      if (r.stream) {
        stream_answer(res, stream, meta, r.include_usage, r.save_state, slot);
      } else {
        whole_answer(res, *stream, meta, r.save_state);
      }
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_error(res, ApiError(500, e.what()));
    }
  }

  void whole_answer(httplib::Response& res, Stream& stream, const ResponseMeta& meta,
                    const std::string& save_name) {
    std::string text;
    ReplyStart reply;
    for (Event e;;) {
      if (!stream.next(e, std::chrono::milliseconds(500))) continue;
      if (e.kind == Event::Kind::Text) {
        text += meta.chat ? reply(std::move(e.text)) : e.text;
        continue;
      }
      if (e.finish != Finish::Stop && e.finish != Finish::Length) throw job_error(e);
      json answer = response_json(meta, text, e.finish, e.usage);
      if (json saved = save_state(save_name, e); !saved.is_null()) answer["rwkv"] = saved;
      res.set_content(wire(answer), "application/json");
      return;
    }
  }

  void stream_answer(httplib::Response& res, std::shared_ptr<Stream> stream, ResponseMeta meta,
                     bool include_usage, std::string save_name, std::shared_ptr<InFlight> slot) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, stream, meta, include_usage, save_name, slot](size_t, httplib::DataSink& sink) {
          try {
            return stream_events(*stream, meta, include_usage, save_name, sink);
          } catch (const std::exception&) {  // never out of the provider: that ends the process
            stream->cancel();
            return false;
          }
        },
        [stream](bool success) {
          if (!success) stream->cancel();
        });
  }

  // Writes a job's events as server-sent events until its end; false if the client went away.
  bool stream_events(Stream& stream, const ResponseMeta& meta, bool include_usage,
                     const std::string& save_name, httplib::DataSink& sink) {
    const auto send = [&](const std::string& s) {
      if (sink.write(s.data(), s.size())) return true;
      stream.cancel();  // the client went away: free its slot
      return false;
    };
    if (meta.chat && !send(sse(role_chunk_json(meta)))) return false;
    ReplyStart reply;
    for (Event e;;) {
      if (!stream.next(e, std::chrono::seconds(1))) {
        // Nothing for a second (queued, or a long prefill): an SSE comment, which clients
        // ignore, finds out whether the client is still there (a write to a closed connection
        // fails) and keeps idle-connection timeouts of proxies away.
        if (!send(": waiting\n\n")) return false;
        continue;
      }
      if (e.kind == Event::Kind::Text) {
        const std::string piece = meta.chat ? reply(std::move(e.text)) : e.text;
        if (!piece.empty() && !send(sse(chunk_json(meta, piece, std::nullopt)))) return false;
        continue;
      }
      if (e.finish != Finish::Stop && e.finish != Finish::Length) {
        send(sse(job_error(e).body()));
        sink.done();
        return true;
      }
      json last = chunk_json(meta, "", e.finish);
      if (json saved = save_state(save_name, e); !saved.is_null()) last["rwkv"] = saved;
      if (!send(sse(last))) return false;
      if (include_usage && !send(sse(usage_chunk_json(meta, e.usage)))) return false;
      if (!send("data: [DONE]\n\n")) return false;
      sink.done();
      return true;
    }
  }

  void routes() {
    server.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(kChatPageHtml, "text/html; charset=utf-8");
    });
    server.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const EngineStats s = engine.stats();
      const json body = {{"status", "ok"},
                         {"model", options.model_name},
                         {"active", s.active},
                         {"queued", s.queued},
                         {"requests_in_flight", in_flight.load()},
                         {"jobs_done", s.jobs_done},
                         {"tokens_generated", s.tokens_generated},
                         {"prompt_tokens", s.prompt_tokens},
                         {"cached_prompt_tokens", s.cached_tokens},
                         {"prefix_cache", {{"entries", s.cache_entries}, {"bytes", s.cache_bytes}}}};
      res.set_content(wire(body), "application/json");
    });
    server.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      if (!authorized(req, res)) return;
      const json model = {{"id", options.model_name}, {"object", "model"}, {"created", 0},
                          {"owned_by", "rwkv"}};
      res.set_content(wire(json{{"object", "list"}, {"data", json::array({model})}}), "application/json");
    });
    server.Get("/v1/states", [this](const httplib::Request& req, httplib::Response& res) {
      if (!authorized(req, res)) return;
      res.set_content(wire(json{{"object", "list"}, {"data", states.names()}}), "application/json");
    });
    server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      generate(req, res, false);
    });
    server.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      generate(req, res, true);
    });
    // Answers httplib makes itself (unknown route, body too large, ...) get an OpenAI-shaped body.
    server.set_error_handler(httplib::Server::HandlerWithResponse(
        [](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      const std::string message = res.status == 404   ? "no route " + req.method + " " + req.path
                                  : res.status == 413 ? "the request body is too large"
                                                      : "HTTP error " + std::to_string(res.status);
      send_error(res, ApiError(res.status, message));
      return httplib::Server::HandlerResponse::Handled;
    }));
    server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(res, ApiError(500, what));
    });
  }
};

HttpServer::HttpServer(Engine& engine, StateStore& states, const ServerOptions& options)
    : impl_(std::make_unique<Impl>(engine, states, options)) {
  // A thread per open connection: streams hold theirs until they end, and requests beyond
  // max_requests must still get their 429 at once.
  const size_t threads = size_t(options.max_requests) + 8;
  impl_->server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  impl_->server.set_payload_max_length(options.max_body_bytes);
  impl_->server.set_tcp_nodelay(true);  // stream pieces leave at once
  // The listening socket, to widen its backlog after bind (the library listens with 5, which
  // drops connections when hundreds of clients arrive at once).
  impl_->server.set_socket_options([impl = impl_.get()](int fd) {
    const int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    impl->listen_fd = fd;
  });
  const auto read_s = std::chrono::duration<double>(options.read_timeout_s);
  impl_->server.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(read_s));
  impl_->routes();
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind() {
  Impl& s = *impl_;
  if (s.options.port == 0) {
    s.port = s.server.bind_to_any_port(s.options.host);
  } else {
    s.port = s.server.bind_to_port(s.options.host, s.options.port) ? s.options.port : -1;
  }
  if (s.port < 0) fail("cannot listen on ", s.options.host, ":", s.options.port);
  if (s.listen_fd >= 0) ::listen(s.listen_fd, SOMAXCONN);  // Linux: a second listen() resizes
  return s.port;
}

void HttpServer::serve() { impl_->server.listen_after_bind(); }

void HttpServer::stop() { impl_->server.stop(); }

}  // namespace rwkv::serve
