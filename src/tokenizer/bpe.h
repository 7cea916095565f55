// Building blocks of byte-level BPE tokenizers (spec §6.2): the GPT-2 byte <-> unicode mapping,
// the merge table with its rank-ordered merge loops, a per-call word cache, a PCRE2 regex
// splitter for pre-tokenisation, and UTF-8 validation and NFC. Kept apart from the Hugging Face
// JSON handling in neox.cpp so that each piece can be tested on its own.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

struct pcre2_real_code_8;

namespace rwkv::bpe {

// GPT-2's `bytes_to_unicode`: byte b is written as one printable code point, itself for the
// printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') and U+0100 + n for the n-th other byte
// (so the space 0x20 is 'Ġ' U+0120 and '\n' is 'Ċ' U+010A). Each entry is that code point in
// UTF-8.
const std::array<std::string, 256>& byte_to_unicode();

// The bytes a byte-level token string stands for. Returns false, leaving `out` unspecified, if
// some code point of `token` is not in the mapping (such a token is not byte-level encoded).
bool unicode_to_bytes(std::string_view token, std::string& out);

// The BPE merge rules of a vocabulary: (left id, right id) -> (rank, merged id). A lower rank
// merges first; among equal ranks the leftmost pair merges first (as Hugging Face `tokenizers`).
class MergeTable {
 public:
  // Adds or replaces the rule for a pair (for a pair listed twice the last rule wins, as in
  // Hugging Face `tokenizers`, which collects the merges into a hash map).
  void add(int left, int right, int rank, int merged);
  size_t size() const { return count_; }

  struct Rule {
    int rank;
    int merged;
  };
  // The rule for the pair; rank -1 if there is none.
  Rule find(int left, int right) const;

  // Applies the merges to `symbols` (token ids, initially one per byte) until no adjacent pair
  // has a rule. Picks the simple quadratic loop for short words and a heap for long ones.
  void merge(std::vector<int>& symbols) const;
  // The two algorithms, exposed so tests can check that they agree.
  void merge_quadratic(std::vector<int>& symbols) const;
  void merge_with_heap(std::vector<int>& symbols) const;

 private:
  struct Slot {
    uint64_t key = kEmpty;  // left << 32 | right
    Rule rule{};
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  size_t slot_of(uint64_t key) const;
  void grow();

  std::vector<Slot> slots_;  // open addressing, linear probing, power-of-two size
  size_t count_ = 0;
};

// The ids of recently seen words, for one encode call: most text repeats a small set of words,
// and a lookup costs much less than the merges. Direct-mapped, one cache line an entry; words
// of up to 30 bytes and 6 ids. Local to a call, so encoding needs no lock and no shared state.
class WordCache {
 public:
  // Sized for a text of `text_size` bytes: no entries for short texts (a few hundred words
  // are cheap to merge), at most 16384 (1 MiB).
  explicit WordCache(size_t text_size);
  // Appends the cached ids of `word` to `ids`; false if it is not cached.
  bool find(std::string_view word, std::vector<int>& ids) const;
  // Caches `word` -> `ids` if both fit, replacing whatever was in its entry.
  void put(std::string_view word, const int* ids, size_t count);

 private:
  static constexpr size_t kMaxWord = 30, kMaxIds = 6;
  struct alignas(64) Entry {
    uint64_t hash = 0;
    uint8_t size = 0;  // 0: empty
    uint8_t count = 0;
    char word[kMaxWord];
    int32_t ids[kMaxIds];
  };
  static uint64_t hash_of(std::string_view word);
  std::vector<Entry> entries_;
};

// A compiled PCRE2 pattern (UTF + Unicode properties, JIT when available) that splits UTF-8
// text into the pieces that pre-tokenisation hands to BPE.
class Splitter {
 public:
  // Throws rwkv::Error with PCRE2's message and offset if the pattern does not compile.
  explicit Splitter(const std::string& pattern);
  ~Splitter();
  Splitter(const Splitter&) = delete;
  Splitter& operator=(const Splitter&) = delete;

  // Appends to `pieces` the matches of the pattern in `text` and the gaps between them, in
  // order, so that the pieces concatenate to `text` (HF's Split with behaviour "isolated").
  // `text` must be valid UTF-8. If PCRE2 fails on some input (a resource limit), the rest of
  // the text becomes one piece: encoding still succeeds.
  void split(std::string_view text, std::vector<std::string_view>& pieces) const;

 private:
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
};

// The GPT-2 pre-tokenisation pattern as Hugging Face `tokenizers` uses it (its ByteLevel
// pre-tokenizer, run by Oniguruma), written for PCRE2:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with \s spelled out as Oniguruma's Unicode \s (the White_Space property), since PCRE2's \s
// differs (it takes U+180E).
extern const char* const kGpt2Pattern;

// UTF-8 helpers.
// Length of the longest prefix of `text` that is valid UTF-8 (shortest forms, no surrogates,
// nothing above U+10FFFF): the same rules PCRE2 and utf8proc check.
size_t valid_utf8_prefix(std::string_view text);
// Length of the invalid sequence at the start of `text` (a valid UTF-8 character cannot start
// at any of its bytes): 1 byte, or the bytes of a truncated multi-byte sequence.
size_t invalid_utf8_run(std::string_view text);
// Length of the character whose (valid) lead byte is `lead`.
inline size_t utf8_length_of_lead(uint8_t lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
// Start of the character that ends at `end` (> 0): `end` minus 1 to 4 bytes.
inline size_t utf8_start_before(std::string_view text, size_t end) {
  size_t i = end - 1;
  while (i > 0 && end - i < 4 && (uint8_t(text[i]) & 0xC0) == 0x80) --i;
  return i;
}
// Appends the NFC normal form of the valid UTF-8 `text` to `out` (utf8proc).
void append_nfc(std::string_view text, std::string& out);
// False when `text` is surely NFC already (no code point at or above U+0300).
bool needs_nfc(std::string_view text);

}  // namespace rwkv::bpe
