// Tokenizers: text bytes <-> token ids. World (greedy longest match, spec §6.1) and bytes
// (id = byte value, for byte-level models). Decoding is per token, to bytes; Utf8Stream turns a
// stream of token bytes into printable text without splitting a UTF-8 character.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace rwkv {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;  // "world", "bytes"
  // Encodes raw bytes (UTF-8 text or any byte string). Never fails.
  virtual std::vector<int> encode(std::string_view bytes) const = 0;
  // Bytes of one token. Throws rwkv::Error for an id outside the vocabulary.
  virtual std::string decode(int id) const = 0;
  std::string decode(const std::vector<int>& ids) const;
  // One past the largest valid id (World: 65530; bytes: 256).
  virtual int vocab_size() const = 0;
};

// Loads `rwkv_vocab_v20230424.txt`-format vocabularies. Throws rwkv::Error naming the file and
// line for malformed lines, and naming the file for duplicate tokens or a missing single-byte
// token (every byte must be a token, so that encode never fails). Id 0, end-of-text, is not in
// the file and decodes to "".
std::unique_ptr<Tokenizer> load_world_tokenizer(const std::string& vocab_path);
std::unique_ptr<Tokenizer> make_bytes_tokenizer();

// The World vocabulary's file name, and where to find it: `explicit_path` if not empty, else
// this file name beside the model, else $RWKV_VOCAB. Throws rwkv::Error saying where it looked
// and where the official vocabulary comes from when none exists.
extern const char* const kWorldVocabFileName;
std::string find_world_vocab(const std::string& explicit_path, const std::string& model_path);

// Streams decoded bytes as text: push() returns the longest prefix of everything pushed so far
// that does not end inside an incomplete UTF-8 sequence; flush() returns the rest (invalid
// sequences are passed through as they are).
class Utf8Stream {
 public:
  std::string push(std::string_view bytes);
  std::string flush();

 private:
  std::string pending_;
};

}  // namespace rwkv
