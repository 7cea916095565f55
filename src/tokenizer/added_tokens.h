// Added tokens of a Hugging Face `tokenizer.json` (spec §6.2): strings such as <|endoftext|>
// or runs of spaces that are cut out of the text before pre-tokenisation, matched as
// `tokenizers` matches them (leftmost-longest, then the single_word, lstrip and rstrip flags).
#pragma once
#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rwkv::bpe {

struct AddedToken {
  std::string content;  // as matched (NFC-normalised when `normalized` and the tokenizer is NFC)
  int id = 0;
  bool special = false;      // decodes to nothing
  bool single_word = false;  // matches only where no word character touches it
  bool lstrip = false;       // takes the white space before it
  bool rstrip = false;       // takes the white space after it
  bool normalized = true;    // matched in the normalised text (else in the raw text)
};

// A piece of text after splitting off added tokens: an added token's id, or text (id -1).
struct Piece {
  std::string_view text;
  int id = -1;
};

class AddedTokenSplitter {
 public:
  void add(const AddedToken& token);  // an empty content is ignored, as `tokenizers` does
  bool empty() const { return tokens_.empty(); }

  // Appends to `pieces` the added tokens found in `text` and the text between them, in order.
  // The non-overlapping leftmost-longest matches are taken in turn; a single_word match
  // touching a word character is dropped (and the search goes on after it, as `tokenizers`
  // does). Deviation: after an rstrip match the search goes on after the stripped white space,
  // where `tokenizers` may find a match overlapping it.
  void split(std::string_view text, std::vector<Piece>& pieces) const;

 private:
  // The index (into tokens_) and length of the longest token starting at text[pos]; -1 if none.
  std::pair<int, size_t> longest_at(std::string_view text, size_t pos) const;

  // A byte trie of the contents; children are few, so a vector scan finds them.
  struct Node {
    std::vector<std::pair<uint8_t, int>> children;
    int token = -1;
  };
  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::array<bool, 256> first_byte_{};
  std::vector<AddedToken> tokens_;
};

}  // namespace rwkv::bpe
