// Tokenizers: text bytes <-> token ids. World (greedy longest match, spec §6.1), GPT-NeoX-20B
// (byte-level BPE from a Hugging Face tokenizer.json, spec §6.2) and bytes (id = byte value, for
// byte-level models). Decoding is per token, to bytes; Utf8Stream turns a
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
  virtual std::string name() const = 0;  // "world", "neox", "bytes"
  // Encodes raw bytes (UTF-8 text or any byte string). Never fails.
  virtual std::vector<int> encode(std::string_view bytes) const = 0;
  // Bytes of one token. Throws rwkv::Error for an id outside the vocabulary.
  virtual std::string decode(int id) const = 0;
  std::string decode(const std::vector<int>& ids) const;
  // One past the largest valid id (World: 65530; NeoX: 50277; bytes: 256).
  virtual int vocab_size() const = 0;
};

// Loads `rwkv_vocab_v20230424.txt`-format vocabularies. Throws rwkv::Error naming the file and
// line for malformed lines, and naming the file for duplicate tokens or a missing single-byte
// token (every byte must be a token, so that encode never fails). Id 0, end-of-text, is not in
// the file and decodes to "".
std::unique_ptr<Tokenizer> load_world_tokenizer(const std::string& vocab_path);
std::unique_ptr<Tokenizer> make_bytes_tokenizer();

// Loads a Hugging Face `tokenizer.json` with a byte-level BPE model, NFC or no normalizer and
// the ByteLevel pre-tokenizer, such as GPT-NeoX-20B's `20B_tokenizer.json` (spec §6.2), and
// encodes as `tokenizers` does (added tokens split off first, honouring their flags; no
// template tokens added). Text that is not valid UTF-8 does not fail: each maximal run of
// invalid bytes skips normalisation and pre-tokenisation and is BPE-encoded on its own, so its
// bytes round-trip, except bytes without a token (in 20B_tokenizer.json: C0, C1, F5..FF, which
// never occur in UTF-8), which are encoded as U+FFFD. Decoding gives a token's bytes; special
// added tokens (<|endoftext|>, <|padding|>) decode to "" like World's id 0. vocab_size() is one
// past the largest id in the file. Thread-safe: encode keeps no shared state. Throws
// rwkv::Error naming the file and the field for a missing file, malformed JSON, missing or
// mistyped fields, unsupported components, merges of unknown tokens, or a byte of UTF-8
// without a token.
std::unique_ptr<Tokenizer> load_neox_tokenizer(const std::string& tokenizer_json_path);

// kind "world", "neox" or "bytes" (which ignores the path); throws rwkv::Error for another kind.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& kind, const std::string& vocab_path);

// The World vocabulary's file name, and where to find it: `explicit_path` if not empty, else
// this file name beside the model, else $RWKV_VOCAB. Throws rwkv::Error saying where it looked
// and where the official vocabulary comes from when none exists.
extern const char* const kWorldVocabFileName;
std::string find_world_vocab(const std::string& explicit_path, const std::string& model_path);
// The same for the GPT-NeoX tokenizer, `20B_tokenizer.json`, with $RWKV_NEOX_VOCAB.
extern const char* const kNeoxVocabFileName;
std::string find_neox_vocab(const std::string& explicit_path, const std::string& model_path);

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
