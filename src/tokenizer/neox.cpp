// The GPT-NeoX-20B tokenizer (spec §6.2): a Hugging Face `tokenizer.json` with a byte-level BPE
// model, read from the JSON rather than hard-coded. Encoding follows `tokenizers`:
//   1. added tokens with normalized = false are split off the raw text (leftmost-longest);
//   2. each remaining piece is normalised (NFC), then added tokens with normalized = true are
//      split off it;
//   3. each remaining piece is pre-tokenised by the GPT-2 regex (ByteLevel pre-tokenizer);
//   4. each pre-token's UTF-8 bytes go through the BPE merges, lowest rank first.
// Hugging Face only takes valid Unicode. Here, bytes that are not valid UTF-8 are cut out of
// the text after step 1: each maximal invalid run skips normalisation and the regex and goes
// through the BPE merges on its own, as one pre-token, while the valid runs around it are
// encoded as above; decoding gives back the same bytes. The exception: a byte that has no
// token (20B_tokenizer.json has none for C0, C1 and F5..FF, which never occur in UTF-8) is
// encoded as U+FFFD, the replacement character. So encode never fails.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/tokenizer.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"

namespace rwkv {

const char* const kNeoxVocabFileName = "20B_tokenizer.json";

namespace {

using bpe::AddedToken;
using bpe::Piece;
using nlohmann::json;

// Ids beyond this are surely typos; refusing them keeps a bad file from allocating gigabytes.
constexpr int64_t kMaxId = 1 << 24;

// ---- JSON access with messages that name the field ----

const json& member(const json& object, const char* key, const std::string& where) {
  if (!object.is_object()) fail(where, " is not a JSON object");
  const auto it = object.find(key);
  if (it == object.end()) fail("missing field ", where, ".", key);
  return *it;
}

bool optional_bool(const json& object, const char* key, bool fallback, const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail(where, ".", key, " is not true or false");
  return it->get<bool>();
}

int token_id(const json& value, const std::string& where) {
  if (!value.is_number_integer()) fail(where, " is not an integer token id");
  const auto id = value.get<int64_t>();
  if (id < 0 || id >= kMaxId) fail(where, " = ", id, " is not an id in 0..", kMaxId - 1);
  return int(id);
}

const std::string& string_of(const json& value, const std::string& where) {
  if (!value.is_string()) fail(where, " is not a string");
  return value.get_ref<const std::string&>();
}

// The "type" of an optional component (normalizer, pre_tokenizer, ...); "" when null or absent.
std::string type_of(const json& root, const char* key) {
  const auto it = root.find(key);
  if (it == root.end() || it->is_null()) return "";
  return string_of(member(*it, "type", key), cat(key, ".type"));
}

// ---- the tokenizer ----

struct NeoxConfig {
  std::vector<std::string> token_bytes;  // by id; what decode returns
  std::vector<bool> defined;             // by id
  std::vector<bool> special;             // by id: added tokens with special = true
  std::array<int, 256> byte_ids{};       // the token of each single byte; -1 if none
  bpe::MergeTable merges;
  std::unordered_map<std::string, int> vocab;  // BPE model tokens by bytes (for ignore_merges)
  bool ignore_merges = false;
  bool nfc = false;
  bool add_prefix_space = false;
  bool use_regex = true;
  std::vector<AddedToken> added;
};

class NeoxTokenizer : public Tokenizer {
 public:
  explicit NeoxTokenizer(NeoxConfig config)
      : config_(std::move(config)), splitter_(bpe::kGpt2Pattern) {
    for (const AddedToken& token : config_.added) {
      (token.normalized ? normalized_added_ : raw_added_).add(token);
    }
    bpe::WordCache no_cache(0);
    encode_word(kReplacementCharacter, replacement_ids_, no_cache);
  }

  std::string name() const override { return "neox"; }
  int vocab_size() const override { return int(config_.token_bytes.size()); }

  std::string decode(int id) const override {
    if (id < 0 || id >= vocab_size()) {
      fail("token id ", id, " is outside the GPT-NeoX vocabulary (0..", vocab_size() - 1, ")");
    }
    if (!config_.defined[size_t(id)]) fail("token id ", id, " is not in the vocabulary");
    // Special tokens (end-of-text, padding) print nothing, as `tokenizers`' decode with its
    // default skip_special_tokens = true, which ChatRWKV uses, and as World's id 0.
    if (config_.special[size_t(id)]) return {};
    return config_.token_bytes[size_t(id)];
  }

  std::vector<int> encode(std::string_view bytes) const override {
    std::vector<int> ids;
    ids.reserve(bytes.size() / 3);  // English averages about 4 bytes a token
    bpe::WordCache cache(bytes.size());
    std::vector<Piece> pieces;
    raw_added_.split(bytes, pieces);
    for (const Piece& piece : pieces) {
      if (piece.id >= 0) {
        ids.push_back(piece.id);
        continue;
      }
      std::string_view rest = piece.text;
      while (!rest.empty()) {
        const size_t valid = bpe::valid_utf8_prefix(rest);
        if (valid > 0) encode_valid(rest.substr(0, valid), ids, cache);
        rest.remove_prefix(valid);
        if (rest.empty()) break;
        const size_t invalid = bpe::invalid_utf8_run(rest);
        encode_invalid(rest.substr(0, invalid), ids, cache);
        rest.remove_prefix(invalid);
      }
    }
    return ids;
  }

 private:
  // Steps 2-4 for valid UTF-8 text.
  void encode_valid(std::string_view text, std::vector<int>& ids, bpe::WordCache& cache) const {
    std::string normalized;
    if (config_.nfc && bpe::needs_nfc(text)) {
      bpe::append_nfc(text, normalized);
      text = normalized;
    }
    std::vector<Piece> pieces;
    if (normalized_added_.empty()) {
      pieces.push_back({text});
    } else {
      normalized_added_.split(text, pieces);
    }
    std::vector<std::string_view> words;
    std::string prefixed;
    for (const Piece& piece : pieces) {
      if (piece.id >= 0) {
        ids.push_back(piece.id);
        continue;
      }
      std::string_view piece_text = piece.text;
      if (config_.add_prefix_space && !piece_text.starts_with(' ')) {
        prefixed.resize(piece_text.size() + 1);
        prefixed[0] = ' ';
        piece_text.copy(prefixed.data() + 1, piece_text.size());
        piece_text = prefixed;
      }
      words.clear();
      if (config_.use_regex) {
        splitter_.split(piece_text, words);
      } else {
        words.push_back(piece_text);
      }
      for (std::string_view word : words) encode_word(word, ids, cache);
    }
  }

  // Bytes that are not UTF-8: BPE over the bytes that have a token, U+FFFD for the others.
  void encode_invalid(std::string_view bytes, std::vector<int>& ids,
                      bpe::WordCache& cache) const {
    size_t start = 0;
    for (size_t i = 0; i < bytes.size(); ++i) {
      if (config_.byte_ids[uint8_t(bytes[i])] >= 0) continue;
      if (i > start) encode_word(bytes.substr(start, i - start), ids, cache);
      ids.insert(ids.end(), replacement_ids_.begin(), replacement_ids_.end());
      start = i + 1;
    }
    if (start < bytes.size()) encode_word(bytes.substr(start), ids, cache);
  }

  // Step 4.
  void encode_word(std::string_view word, std::vector<int>& ids, bpe::WordCache& cache) const {
    if (word.size() == 1) {
      ids.push_back(config_.byte_ids[uint8_t(word[0])]);
      return;
    }
    if (config_.ignore_merges) {
      const auto it = config_.vocab.find(std::string(word));
      if (it != config_.vocab.end()) {
        ids.push_back(it->second);
        return;
      }
    }
    if (cache.find(word, ids)) return;
    thread_local std::vector<int> symbols;  // reused: no allocation per word
    symbols.resize(word.size());
    for (size_t i = 0; i < word.size(); ++i) symbols[i] = config_.byte_ids[uint8_t(word[i])];
    config_.merges.merge(symbols);
    ids.insert(ids.end(), symbols.begin(), symbols.end());
    cache.put(word, symbols.data(), symbols.size());
  }

  static constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

  NeoxConfig config_;
  std::vector<int> replacement_ids_;  // U+FFFD
  bpe::Splitter splitter_;
  bpe::AddedTokenSplitter raw_added_, normalized_added_;
};

// ---- reading tokenizer.json ----

void define(NeoxConfig& config, int id, std::string bytes) {
  if (size_t(id) >= config.token_bytes.size()) {
    config.token_bytes.resize(size_t(id) + 1);
    config.defined.resize(size_t(id) + 1);
    config.special.resize(size_t(id) + 1);
  }
  config.token_bytes[size_t(id)] = std::move(bytes);
  config.defined[size_t(id)] = true;
}

// Bytes of a token string: byte-level decoded, or its UTF-8 if some character is not in the
// byte-level alphabet (what the ByteLevel decoder of `tokenizers` does).
std::string bytes_of_token(const std::string& token) {
  std::string bytes;
  return bpe::unicode_to_bytes(token, bytes) ? bytes : token;
}

void read_components(const json& root, NeoxConfig& config) {
  const std::string normalizer = type_of(root, "normalizer");
  if (normalizer == "NFC") {
    config.nfc = true;
  } else if (!normalizer.empty()) {
    fail("normalizer ", normalizer, " is not supported (only NFC or none)");
  }
  const std::string pre_tokenizer = type_of(root, "pre_tokenizer");
  if (pre_tokenizer != "ByteLevel") {
    fail("pre_tokenizer `", pre_tokenizer, "` is not supported (only ByteLevel)");
  }
  // Defaults as ByteLevel::default() in `tokenizers`.
  const json& pre = root["pre_tokenizer"];
  config.add_prefix_space = optional_bool(pre, "add_prefix_space", true, "pre_tokenizer");
  config.use_regex = optional_bool(pre, "use_regex", true, "pre_tokenizer");
  const std::string decoder = type_of(root, "decoder");
  if (!decoder.empty() && decoder != "ByteLevel") {
    fail("decoder ", decoder, " is not supported (only ByteLevel)");
  }
  // post_processor only adjusts offsets (ByteLevel) or adds template tokens on request; the
  // engine encodes raw text, so it is ignored.
}

void read_model(const json& model, NeoxConfig& config) {
  if (!model.is_object()) fail("model is not a JSON object");
  if (model.contains("type") && string_of(model["type"], "model.type") != "BPE") {
    fail("model.type is ", model["type"].get<std::string>(), ", expected BPE");
  }
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      !(model["dropout"].is_number() && model["dropout"].get<double>() == 0)) {
    fail("model.dropout is set: BPE dropout is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && model[key] != "") {
      fail("model.", key, " is not supported");
    }
  }
  if (optional_bool(model, "byte_fallback", false, "model")) {
    fail("model.byte_fallback is not supported");
  }
  config.ignore_merges = optional_bool(model, "ignore_merges", false, "model");

  const json& vocab = member(model, "vocab", "model");
  if (!vocab.is_object()) fail("model.vocab is not a JSON object");
  std::unordered_map<std::string, int> ids;  // by token string
  for (const auto& [token, value] : vocab.items()) {
    const int id = token_id(value, cat("model.vocab[\"", token, "\"]"));
    if (size_t(id) < config.defined.size() && config.defined[size_t(id)]) {
      fail("model.vocab: id ", id, " is given to two tokens (one is \"", token, "\")");
    }
    define(config, id, bytes_of_token(token));
    ids.emplace(token, id);
    if (config.ignore_merges) config.vocab.emplace(config.token_bytes[size_t(id)], id);
  }
  // Every byte that occurs in UTF-8 needs a token, so that every text can be encoded; the
  // others (C0, C1, F5..FF) only occur in invalid input, which falls back to U+FFFD.
  const auto& alphabet = bpe::byte_to_unicode();
  for (int b = 0; b < 256; ++b) {
    const auto it = ids.find(alphabet[size_t(b)]);
    const bool in_utf8 = b < 0xC0 || (b >= 0xC2 && b <= 0xF4);
    if (it == ids.end() && in_utf8) {
      fail("model.vocab has no token for the byte ", b, " (\"", alphabet[size_t(b)],
           "\"), so some text could not be encoded");
    }
    config.byte_ids[size_t(b)] = it == ids.end() ? -1 : it->second;
  }

  const json& merges = member(model, "merges", "model");
  if (!merges.is_array()) fail("model.merges is not a JSON array");
  auto id_of = [&](const std::string& token, size_t rank) {
    const auto it = ids.find(token);
    if (it == ids.end()) fail("model.merges[", rank, "]: \"", token, "\" is not in model.vocab");
    return it->second;
  };
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& merge = merges[rank];
    std::string left, right;
    if (merge.is_string()) {  // "left right", the classic format
      const std::string& text = merge.get_ref<const std::string&>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        fail("model.merges[", rank, "] = \"", text, "\" is not two tokens separated by a space");
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();  // ["left", "right"], the newer format
      right = merge[1].get<std::string>();
    } else {
      fail("model.merges[", rank, "] is neither \"left right\" nor [\"left\", \"right\"]");
    }
    const int left_id = id_of(left, rank), right_id = id_of(right, rank);
    config.merges.add(left_id, right_id, int(rank), id_of(left + right, rank));
  }
}

void read_added_tokens(const json& root, NeoxConfig& config) {
  const auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return;
  if (!it->is_array()) fail("added_tokens is not a JSON array");
  for (size_t i = 0; i < it->size(); ++i) {
    const json& entry = (*it)[i];
    const std::string where = cat("added_tokens[", i, "]");
    AddedToken token;
    token.id = token_id(member(entry, "id", where), where + ".id");
    token.content = string_of(member(entry, "content", where), where + ".content");
    token.special = optional_bool(entry, "special", false, where);
    token.single_word = optional_bool(entry, "single_word", false, where);
    token.lstrip = optional_bool(entry, "lstrip", false, where);
    token.rstrip = optional_bool(entry, "rstrip", false, where);
    token.normalized = optional_bool(entry, "normalized", !token.special, where);
    define(config, token.id, bytes_of_token(token.content));
    config.special[size_t(token.id)] = token.special;
    const bool valid = bpe::valid_utf8_prefix(token.content) == token.content.size();
    if (token.normalized && config.nfc && valid) {
      std::string normalized;
      bpe::append_nfc(token.content, normalized);
      token.content = std::move(normalized);
    }
    config.added.push_back(std::move(token));
  }
}

NeoxConfig read_config(const std::string& text) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    fail("not valid JSON: ", e.what());
  }
  if (!root.is_object()) fail("not a tokenizer.json: the top level is not a JSON object");
  NeoxConfig config;
  read_components(root, config);  // first: the added tokens' normalisation depends on it
  read_model(member(root, "model", "(top level)"), config);
  read_added_tokens(root, config);
  return config;
}

bool is_file(const std::string& path) {
  std::error_code ec;  // an unreadable directory counts as "not there", not as a crash
  return std::filesystem::is_regular_file(path, ec);
}

}  // namespace

std::unique_ptr<Tokenizer> load_neox_tokenizer(const std::string& tokenizer_json_path) {
  const std::string text = read_file(tokenizer_json_path);
  try {
    return std::make_unique<NeoxTokenizer>(read_config(text));
  } catch (const Error& e) {
    fail(tokenizer_json_path, ": ", e.what());
  } catch (const json::exception& e) {  // a JSON type the checks above did not foresee
    fail(tokenizer_json_path, ": ", e.what());
  }
}

std::string find_neox_vocab(const std::string& explicit_path, const std::string& model_path) {
  if (!explicit_path.empty()) {
    if (!is_file(explicit_path)) fail("tokenizer file ", explicit_path, " does not exist");
    return explicit_path;
  }
  std::string looked;
  if (!model_path.empty()) {
    const std::string beside =
        (std::filesystem::path(model_path).parent_path() / kNeoxVocabFileName).string();
    if (is_file(beside)) return beside;
    looked = cat(beside, " (beside the model), ");
  }
  const char* env = std::getenv("RWKV_NEOX_VOCAB");
  if (env != nullptr && *env != '\0') {
    if (is_file(env)) return env;
    looked += cat("$RWKV_NEOX_VOCAB = ", env, " (no such file)");
  } else {
    looked += "$RWKV_NEOX_VOCAB (not set)";
  }
  fail("no GPT-NeoX tokenizer found; looked at ", looked, ". The official ", kNeoxVocabFileName,
       " (md5 55634e54c40440d3639fc80ef8e7bdd9) is distributed with the official RWKV"
       " repositories (BlinkDL/ChatRWKV, top level; BlinkDL/RWKV-LM RWKV-v4neo/);"
       " pass it with --vocab or set RWKV_NEOX_VOCAB");
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& kind, const std::string& vocab_path) {
  if (kind == "world") return load_world_tokenizer(vocab_path);
  if (kind == "neox") return load_neox_tokenizer(vocab_path);
  if (kind == "bytes") return make_bytes_tokenizer();
  fail("unknown tokenizer `", kind, "`: expected world, neox or bytes");
}

}  // namespace rwkv
