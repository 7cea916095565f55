// The OpenAI-style API's requests and answers as JSON (DESIGN: serve/): request bodies checked
// and turned into engine jobs, the World chat template, and the response, stream-chunk and
// error objects. No I/O here: http_server.cpp moves these over HTTP.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "rwkv/sampler.h"
#include "rwkv/tokenizer.h"
#include "serve/engine.h"

namespace rwkv::serve {

// An answer other than 200, in OpenAI's error shape:
//   {"error": {"message": ..., "type": ..., "param": ... | null, "code": ... | null}}
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = {}, std::string type = {},
           std::string code = {});
  int status;
  std::string param, type, code;
  nlohmann::json body() const;
};

struct ApiLimits {
  int max_prompt_tokens = 16384;
  int max_tokens = 4096;          // the largest max_tokens a request may ask for
  int default_max_tokens = 256;   // when a request names none
  double timeout_s = 600;         // per request, from arrival to its last token
};

// A request body, checked.
struct ApiRequest {
  bool chat = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::string model;
  std::string state;       // extension: start from this saved or state-tuned state
  std::string save_state;  // extension: save the final state under this name
  Job job;                 // prompt tokens, sampling, stops, limits
};

// Parses a /v1/completions (chat false) or /v1/chat/completions body. Sampling settings the
// request leaves out come from `defaults`; without a seed each request draws a random one.
// Throws ApiError (400) naming the parameter for anything malformed, out of range or
// unsupported (n > 1, echo, logprobs, best_of > 1, suffix, tools).
ApiRequest parse_request(const nlohmann::json& body, bool chat, const Tokenizer& tokenizer,
                         int model_vocab, const SamplerConfig& defaults, const ApiLimits& limits);

// The World chat template (spec §8.1): "System: …\n\n", "User: …\n\n", "Assistant: …\n\n" per
// message, then "Assistant:". Each message is tokenized on its own, so the tokens of a
// conversation's history are the same in every later request and the prefix cache finds them.
// Message text is cleaned first: CRLF → LF, runs of blank lines → one newline, stripped.
std::vector<int> chat_prompt(const nlohmann::json& messages, const Tokenizer& tokenizer);
std::string clean_message(std::string_view text);

// A chat reply as the client sees it: the template ends the prompt with "Assistant:" and the
// model starts its reply with a space (spec §8.1); whitespace before the first visible character
// is dropped. Feed it the pieces in order.
class ReplyStart {
 public:
  std::string operator()(std::string piece);

 private:
  bool started_ = false;
};

// JSON text for the wire. Generated text may hold invalid UTF-8 (a model can emit any bytes):
// such bytes become U+FFFD instead of failing the answer.
std::string wire(const nlohmann::json& value);

// Answers. `id` like "cmpl-…", `created` in Unix seconds.
struct ResponseMeta {
  std::string id;
  std::string model;
  int64_t created = 0;
  bool chat = false;
};
std::string new_response_id(bool chat);
nlohmann::json usage_json(const Usage& usage);
nlohmann::json response_json(const ResponseMeta& meta, const std::string& text, Finish finish,
                             const Usage& usage);
// A streamed piece of text (finish empty) or the last chunk (finish set, text empty). Chat
// streams start with a chunk whose delta carries the role: role_chunk.
nlohmann::json chunk_json(const ResponseMeta& meta, const std::string& text,
                          std::optional<Finish> finish);
nlohmann::json role_chunk_json(const ResponseMeta& meta);
nlohmann::json usage_chunk_json(const ResponseMeta& meta, const Usage& usage);

}  // namespace rwkv::serve
