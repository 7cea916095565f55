// rwkv tokenize: token ids of a text or byte string, as a JSON array.
#include <cstdio>

#include "app/common.h"
#include "rwkv/error.h"

namespace rwkv::app {
namespace {

struct TokenizeArgs {
  TokenizerOptions tokenizer;
  std::string text, bytes_hex;
};

std::string from_hex(const std::string& hex) {
  if (hex.size() % 2) fail("--bytes-hex: odd number of hex digits");
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    fail("--bytes-hex: '", c, "' is not a hex digit");
  };
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) out += char(digit(hex[i]) * 16 + digit(hex[i + 1]));
  return out;
}

void run(const TokenizeArgs& a) {
  const auto tok = a.tokenizer.load("", 0);  // no model: --tokenizer, or guessed from --vocab
  const std::vector<int> ids = tok->encode(a.bytes_hex.empty() ? a.text : from_hex(a.bytes_hex));
  std::string json = "[";
  for (size_t i = 0; i < ids.size(); ++i) json += (i ? ", " : "") + std::to_string(ids[i]);
  std::printf("%s]\n", json.c_str());
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto a = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand("tokenize", "print the token ids of a text as a JSON array");
  a->tokenizer.add(*cmd);
  auto* text = cmd->add_option("--text", a->text, "text to encode (UTF-8)");
  auto* hex = cmd->add_option("--bytes-hex", a->bytes_hex, "raw bytes to encode, in hex");
  text->excludes(hex);
  cmd->callback([a, text, hex] {
    if (text->count() == 0 && hex->count() == 0) fail("tokenize: give --text or --bytes-hex");
    run(*a);
  });
}

}  // namespace rwkv::app
