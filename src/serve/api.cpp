#include "serve/api.h"

#include <chrono>
#include <cmath>
#include <random>

#include "rwkv/error.h"

namespace rwkv::serve {

using nlohmann::json;

ApiError::ApiError(int status_, std::string message, std::string param_, std::string type_,
                   std::string code_)
    : std::runtime_error(std::move(message)),
      status(status_),
      param(std::move(param_)),
      type(std::move(type_)),
      code(std::move(code_)) {
  if (type.empty()) {
    type = status == 401   ? "authentication_error"
           : status == 429 ? "rate_limit_error"
           : status >= 500 ? "server_error"
                           : "invalid_request_error";
  }
}

json ApiError::body() const {
  json error = {{"message", what()}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) error["param"] = param;
  if (!code.empty()) error["code"] = code;
  return {{"error", error}};
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, param);
}

const char* type_name(const json& v) { return v.type_name(); }

// A number in [lo, hi] (finite), or the default when absent or null.
double number(const json& body, const char* key, double fallback, double lo, double hi) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_number()) bad(key, cat("'", key, "' must be a number, not ", type_name(*it)));
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi) {
    bad(key, cat("'", key, "' must be between ", lo, " and ", hi, ", got ", wire(*it)));
  }
  return v;
}

std::optional<int64_t> integer(const json& body, const char* key, int64_t lo, int64_t hi) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) bad(key, cat("'", key, "' must be an integer, not ", wire(*it)));
  const auto v = it->get<int64_t>();
  if (v < lo || v > hi) bad(key, cat("'", key, "' must be between ", lo, " and ", hi, ", got ", v));
  return v;
}

bool boolean(const json& body, const char* key) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return false;
  if (!it->is_boolean()) bad(key, cat("'", key, "' must be true or false, not ", wire(*it)));
  return it->get<bool>();
}

std::string string(const json& body, const char* key) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return {};
  if (!it->is_string()) bad(key, cat("'", key, "' must be a string, not ", type_name(*it)));
  return it->get<std::string>();
}

std::vector<std::string> stop_strings(const json& body) {
  const auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return {};
  std::vector<std::string> stop;
  if (it->is_string()) {
    stop.push_back(it->get<std::string>());
  } else if (it->is_array()) {
    for (const json& s : *it) {
      if (!s.is_string()) bad("stop", "'stop' must be a string or an array of strings");
      stop.push_back(s.get<std::string>());
    }
  } else {
    bad("stop", "'stop' must be a string or an array of strings");
  }
  if (stop.size() > 4) bad("stop", cat("'stop' may hold at most 4 strings, got ", stop.size()));
  std::erase_if(stop, [](const std::string& s) { return s.empty(); });
  return stop;
}

// {"token id": bias in [-100, 100], ...}, as OpenAI's logit_bias (at most 300 entries).
std::vector<std::pair<int, float>> logit_bias(const json& body, int model_vocab) {
  const auto it = body.find("logit_bias");
  if (it == body.end() || it->is_null()) return {};
  if (!it->is_object()) bad("logit_bias", "'logit_bias' must be an object {\"token id\": bias}");
  if (it->size() > 300) bad("logit_bias", "'logit_bias' may hold at most 300 tokens");
  std::vector<std::pair<int, float>> out;
  for (const auto& [key, value] : it->items()) {
    size_t used = 0;
    long id = -1;
    try {
      id = std::stol(key, &used);
    } catch (const std::exception&) {
    }
    if (used != key.size() || id < 0 || id >= model_vocab) {
      bad("logit_bias", cat("'logit_bias' key '", key, "' is not a token id in [0, ", model_vocab, ")"));
    }
    if (!value.is_number() || value.get<double>() < -100 || value.get<double>() > 100) {
      bad("logit_bias", cat("'logit_bias' values must be numbers in [-100, 100], got ", wire(value)));
    }
    out.emplace_back(int(id), value.get<float>());
  }
  return out;
}

// Options this server does not implement are refused rather than ignored: a client relying on
// them would otherwise get something it did not ask for.
void refuse_unsupported(const json& body, bool chat) {
  if (auto n = integer(body, "n", 1, 128); n && *n != 1) bad("n", "only n = 1 is supported");
  if (auto b = integer(body, "best_of", 1, 128); b && *b != 1) bad("best_of", "only best_of = 1 is supported");
  if (boolean(body, "echo")) bad("echo", "'echo' is not supported");
  for (const char* key : {"logprobs", "top_logprobs"}) {
    const auto it = body.find(key);
    if (it != body.end() && !it->is_null() && *it != false) bad(key, cat("'", key, "' is not supported"));
  }
  if (!string(body, "suffix").empty()) bad("suffix", "'suffix' is not supported");
  if (chat) {
    for (const char* key : {"tools", "functions", "response_format"}) {
      const auto it = body.find(key);
      if (it != body.end() && !it->is_null()) bad(key, cat("'", key, "' is not supported"));
    }
  }
}

std::vector<int> completion_prompt(const json& body, const Tokenizer& tokenizer, int model_vocab) {
  const auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) bad("prompt", "'prompt' is required");
  const json* p = &*it;
  // One prompt: a string, an array of token ids, or an array holding one of those.
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) p = &(*p)[0];
  if (p->is_string()) return tokenizer.encode(p->get<std::string>());
  if (p->is_array()) {
    if (!p->empty() && (*p)[0].is_string()) bad("prompt", "only one prompt per request is supported");
    std::vector<int> tokens;
    for (const json& t : *p) {
      if (!t.is_number_integer()) bad("prompt", "'prompt' must be a string or an array of token ids");
      const auto id = t.get<int64_t>();
      if (id < 0 || id >= model_vocab) {
        bad("prompt", cat("token id ", id, " is outside the vocabulary [0, ", model_vocab, ")"));
      }
      tokens.push_back(int(id));
    }
    return tokens;
  }
  bad("prompt", cat("'prompt' must be a string or an array of token ids, not ", type_name(*p)));
}

std::string message_text(const json& content, size_t i) {
  const std::string param = cat("messages[", i, "].content");
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {  // content parts: only text
    std::string text;
    for (const json& part : content) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string()) {
        bad(param, "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
      }
      text += part["text"].get<std::string>();
    }
    return text;
  }
  bad(param, cat("'", param, "' must be a string or an array of text parts"));
}

}  // namespace

std::string clean_message(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;  // CRLF → LF
    out += text[i];
  }
  // Runs of newlines (blank lines) become one: "\n\n" only separates turns.
  std::string collapsed;
  for (char c : out) {
    if (c == '\n' && !collapsed.empty() && collapsed.back() == '\n') continue;
    collapsed += c;
  }
  const size_t a = collapsed.find_first_not_of(" \t\n");
  if (a == std::string::npos) return {};
  const size_t b = collapsed.find_last_not_of(" \t\n");
  return collapsed.substr(a, b - a + 1);
}

std::vector<int> chat_prompt(const json& messages, const Tokenizer& tokenizer) {
  if (!messages.is_array() || messages.empty()) {
    bad("messages", "'messages' must be a non-empty array of {role, content}");
  }
  std::vector<int> tokens;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      bad(cat("messages[", i, "]"), cat("messages[", i, "] must be an object with a 'role'"));
    }
    const std::string role = m["role"].get<std::string>();
    const char* name = role == "system" || role == "developer" ? "System"
                       : role == "user"                         ? "User"
                       : role == "assistant"                    ? "Assistant"
                                                                : nullptr;
    if (!name) {
      bad(cat("messages[", i, "].role"),
          cat("unsupported role '", role, "' (system, developer, user or assistant)"));
    }
    const auto content = m.find("content");
    const std::string text = content == m.end() || content->is_null() ? "" : message_text(*content, i);
    const std::vector<int> part = tokenizer.encode(cat(name, ": ", clean_message(text), "\n\n"));
    tokens.insert(tokens.end(), part.begin(), part.end());
  }
  const std::vector<int> cue = tokenizer.encode("Assistant:");
  tokens.insert(tokens.end(), cue.begin(), cue.end());
  return tokens;
}

ApiRequest parse_request(const json& body, bool chat, const Tokenizer& tokenizer, int model_vocab,
                         const SamplerConfig& defaults, const ApiLimits& limits) {
  if (!body.is_object()) bad("", "the request body must be a JSON object");
  refuse_unsupported(body, chat);
  ApiRequest r;
  r.chat = chat;
  r.model = string(body, "model");
  r.stream = boolean(body, "stream");
  if (auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) bad("stream_options", "'stream_options' must be an object");
    r.include_usage = boolean(*it, "include_usage");
  }
  r.state = string(body, "state");
  r.save_state = string(body, "save_state");

  Job& job = r.job;
  if (chat) {
    const auto it = body.find("messages");
    if (it == body.end()) bad("messages", "'messages' is required");
    job.prompt = chat_prompt(*it, tokenizer);
  } else {
    job.prompt = completion_prompt(body, tokenizer, model_vocab);
  }
  if (job.prompt.empty()) bad(chat ? "messages" : "prompt", "the prompt is empty");
  if (int(job.prompt.size()) > limits.max_prompt_tokens) {
    throw ApiError(400, cat("the prompt has ", job.prompt.size(), " tokens; this server takes at most ",
                            limits.max_prompt_tokens),
                   chat ? "messages" : "prompt", "", "context_length_exceeded");
  }
  std::optional<int64_t> max_tokens = integer(body, "max_tokens", 1, limits.max_tokens);
  if (chat) {
    if (auto m = integer(body, "max_completion_tokens", 1, limits.max_tokens)) max_tokens = m;
  }
  job.max_tokens = int(max_tokens.value_or(std::min(limits.default_max_tokens, limits.max_tokens)));

  SamplerConfig& s = job.sampler;
  s = defaults;
  s.temperature = float(number(body, "temperature", defaults.temperature, 0, 2));
  s.top_p = float(number(body, "top_p", defaults.top_p, 0, 1));
  s.top_k = int(integer(body, "top_k", 0, 1 << 30).value_or(defaults.top_k));
  s.min_p = float(number(body, "min_p", defaults.min_p, 0, 1));
  s.presence_penalty = float(number(body, "presence_penalty", defaults.presence_penalty, -2, 2));
  s.frequency_penalty = float(number(body, "frequency_penalty", defaults.frequency_penalty, -2, 2));
  s.penalty_decay = float(number(body, "penalty_decay", defaults.penalty_decay, 0, 1));
  if (auto seed = integer(body, "seed", INT64_MIN, INT64_MAX)) {
    s.seed = uint64_t(*seed);
  } else {
    static thread_local std::mt19937_64 fresh{std::random_device{}()};
    s.seed = fresh();
  }

  job.stop = stop_strings(body);
  job.logit_bias = logit_bias(body, model_vocab);
  // The chat template separates turns with a blank line: a reply ends at the first one.
  if (chat) job.stop.push_back("\n\n");
  // Token 0 ends a text: World's and GPT-NeoX's end-of-text, byte-level models' end of document.
  job.stop_tokens = {0};
  job.timeout_s = limits.timeout_s;
  return r;
}

std::string ReplyStart::operator()(std::string piece) {
  if (started_) return piece;
  const size_t first = piece.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  started_ = true;
  return piece.substr(first);
}

std::string wire(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string new_response_id(bool chat) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char hex[25];
  std::snprintf(hex, sizeof hex, "%016llx%08llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng() & 0xffffffffu));
  return std::string(chat ? "chatcmpl-" : "cmpl-") + hex;
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

namespace {

json envelope(const ResponseMeta& meta, const char* object, json choices) {
  return {{"id", meta.id},           {"object", object},        {"created", meta.created},
          {"model", meta.model},     {"choices", std::move(choices)}};
}

}  // namespace

json response_json(const ResponseMeta& meta, const std::string& text, Finish finish,
                   const Usage& usage) {
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_name(finish)}};
  if (meta.chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  json r = envelope(meta, meta.chat ? "chat.completion" : "text_completion", json::array({choice}));
  r["usage"] = usage_json(usage);
  return r;
}

json chunk_json(const ResponseMeta& meta, const std::string& text, std::optional<Finish> finish) {
  json choice = {{"index", 0}, {"logprobs", nullptr}};
  choice["finish_reason"] = finish ? json(finish_name(*finish)) : json(nullptr);
  if (meta.chat) {
    choice["delta"] = finish ? json::object() : json{{"content", text}};
  } else {
    choice["text"] = text;
  }
  return envelope(meta, meta.chat ? "chat.completion.chunk" : "text_completion",
                  json::array({choice}));
}

json role_chunk_json(const ResponseMeta& meta) {
  json choice = {{"index", 0},
                 {"delta", {{"role", "assistant"}, {"content", ""}}},
                 {"logprobs", nullptr},
                 {"finish_reason", nullptr}};
  return envelope(meta, "chat.completion.chunk", json::array({choice}));
}

json usage_chunk_json(const ResponseMeta& meta, const Usage& usage) {
  json r = envelope(meta, meta.chat ? "chat.completion.chunk" : "text_completion", json::array());
  r["usage"] = usage_json(usage);
  return r;
}

}  // namespace rwkv::serve
