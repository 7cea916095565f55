// rwkv tokenize-data: text or JSONL corpora -> a Megatron binidx dataset (PREFIX.bin/.idx) for
// training, as RWKV-LM's make_data.py makes them: one sequence per document, each document's
// tokens followed by token 0 (end of document), so a model learns where documents end.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "app/common.h"
#include "io/binidx.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "train/dataset.h"

namespace rwkv::app {
namespace {

struct TokenizeDataArgs {
  std::vector<std::string> inputs;
  std::string out;
  TokenizerOptions tokenizer;
  std::string format = "auto";
  std::string jsonl_key = "text";
  bool split_lines = false;
  std::string split_on;  // literal separator, with \n \t \r \\ escapes
};

// "\n%\n" as typed on a shell command line -> newline, '%', newline.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    if (i + 1 == s.size()) fail("--split-on: '", s, "' ends with a lone backslash");
    switch (s[++i]) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      default: fail("--split-on: unknown escape '\\", s[i], "' (known: \\n \\t \\r \\\\)");
    }
  }
  return out;
}

// Pieces of text between occurrences of a literal separator; empty pieces are dropped (a
// trailing separator, blank lines) since an empty document teaches nothing.
std::vector<std::string_view> split(std::string_view text, std::string_view separator) {
  std::vector<std::string_view> pieces;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(separator, begin), text.size());
    if (end > begin) pieces.push_back(text.substr(begin, end - begin));
    begin = end + separator.size();
  }
  return pieces;
}

bool is_jsonl(const TokenizeDataArgs& a, const std::string& path) {
  if (a.format != "auto") return a.format == "jsonl";
  const std::string ext = std::filesystem::path(path).extension().string();
  return ext == ".jsonl" || ext == ".ndjson";
}

// The documents of one JSONL file: each non-blank line is an object whose `key` is a string.
std::vector<std::string> jsonl_documents(const std::string& path, const std::string& text,
                                         const std::string& key) {
  std::vector<std::string> docs;
  size_t line_no = 0;
  for (size_t begin = 0; begin < text.size();) {
    const size_t end = std::min(text.find('\n', begin), text.size());
    const std::string_view line(text.data() + begin, end - begin);
    begin = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail(path, ":", line_no, ": invalid JSON: ", e.what());
    }
    if (!j.is_object()) fail(path, ":", line_no, ": expected a JSON object, got ", j.type_name());
    const auto it = j.find(key);
    if (it == j.end()) fail(path, ":", line_no, ": no \"", key, "\" field (set it with --jsonl-key)");
    if (!it->is_string()) fail(path, ":", line_no, ": \"", key, "\" is a ", it->type_name(), ", not a string");
    docs.push_back(it->get<std::string>());
  }
  return docs;
}

std::vector<std::string_view> text_documents(const TokenizeDataArgs& a, std::string_view text,
                                             const std::string& separator) {
  if (a.split_lines) {
    std::vector<std::string_view> lines;
    for (std::string_view line : split(text, "\n")) {
      if (line.ends_with('\r')) line.remove_suffix(1);  // CRLF files
      if (!line.empty()) lines.push_back(line);
    }
    return lines;
  }
  if (!separator.empty()) return split(text, separator);
  if (text.empty()) return {};
  return {text};
}

void run(const TokenizeDataArgs& a) {
  const std::string separator = a.split_on.empty() ? "" : unescape(a.split_on);
  if (!a.split_on.empty() && separator.empty()) fail("--split-on: the separator is empty");
  // PREFIX.bin / PREFIX.idx: accept "data.bin" for "data" too.
  std::string prefix = a.out;
  for (const char* ext : {".bin", ".idx"}) {
    if (prefix.ends_with(ext)) prefix.resize(prefix.size() - 4);
  }
  // Fail before the (possibly long) tokenisation when the output cannot be written.
  const auto dir = std::filesystem::path(prefix).parent_path();
  if (!dir.empty() && !std::filesystem::is_directory(dir)) {
    fail(prefix, ".bin: output directory ", dir.string(),
         std::filesystem::exists(dir) ? " is not a directory" : " does not exist");
  }
  for (const std::string& path : a.inputs) {
    if (!std::filesystem::exists(path)) fail(path, ": no such input file");
  }

  const auto tokenizer = a.tokenizer.load("", 0);
  std::vector<std::vector<int>> documents;
  size_t tokens = 0, bytes = 0;
  auto add = [&](std::string_view doc) {
    std::vector<int> ids = tokenizer->encode(doc);
    ids.push_back(0);  // end of document, as make_data.py appends
    tokens += ids.size();
    bytes += doc.size();
    documents.push_back(std::move(ids));
  };
  for (const std::string& path : a.inputs) {
    const std::string text = read_file(path);
    if (is_jsonl(a, path)) {
      for (const std::string& doc : jsonl_documents(path, text, a.jsonl_key)) add(doc);
    } else {
      for (std::string_view doc : text_documents(a, text, separator)) add(doc);
    }
  }
  if (documents.empty()) fail("tokenize-data: the inputs hold no documents (empty corpus)");

  io::write_binidx(prefix, documents);
  std::printf("%zu documents, %zu tokens (%zu bytes of text, %s tokenizer, token 0 after each "
              "document)\nwrote %s.bin and %s.idx\n",
              documents.size(), tokens, bytes, tokenizer->name().c_str(), prefix.c_str(),
              prefix.c_str());
  // The value RWKV-LM's pile mode (--magic_prime) needs, for common context lengths.
  for (int ctx : {512, 1024, 4096}) {
    try {
      std::printf("magic_prime for ctx_len %d: %llu\n", ctx,
                  static_cast<unsigned long long>(train::WindowSampler::magic_prime(tokens, ctx)));
    } catch (const Error&) {
      break;  // too little data for this and longer contexts
    }
  }
}

}  // namespace

void register_tokenize_data(CLI::App& app) {
  auto a = std::make_shared<TokenizeDataArgs>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize-data", "tokenize text or JSONL files into a binidx training set (PREFIX.bin/.idx)");
  cmd->add_option("inputs", a->inputs, "text or JSONL files")->required();
  cmd->add_option("-o,--out", a->out, "output prefix: writes PREFIX.bin and PREFIX.idx")->required();
  a->tokenizer.add(*cmd);
  cmd->add_option("--format", a->format, "auto: .jsonl/.ndjson files are JSONL, others text")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}))->capture_default_str();
  cmd->add_option("--jsonl-key", a->jsonl_key, "JSONL field holding each document's text")
      ->capture_default_str();
  auto* lines = cmd->add_flag("--split-lines", a->split_lines,
                              "text: one document per line (empty lines skipped)");
  auto* on = cmd->add_option("--split-on", a->split_on,
                             "text: documents are separated by this literal string, with \\n \\t "
                             "escapes (e.g. '\\n%\\n' for fortune files)");
  lines->excludes(on);
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
