// Added-token matching as in Hugging Face `tokenizers` (AddedVocabulary::find_matches).
#include "tokenizer/added_tokens.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdint>

#include "tokenizer/bpe.h"

namespace rwkv::bpe {
namespace {

// The White_Space property (Rust regex's \s), which `tokenizers` uses for lstrip/rstrip.
bool is_whitespace(int32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// A \w character of Rust's regex crate, which `tokenizers` uses for single_word: Alphabetic,
// marks, decimal digits, connector punctuation (such as '_') and the joiners. Alphabetic is
// approximated by the L and Nl categories.
bool is_word_char(int32_t cp) {
  if (cp == 0x200C || cp == 0x200D) return true;
  switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

// The code point starting at text[i], -1 if none is valid there.
int32_t code_point_at(std::string_view text, size_t i) {
  utf8proc_int32_t cp = -1;
  if (utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(text.data() + i),
                       utf8proc_ssize_t(text.size() - i), &cp) <= 0) {
    return -1;
  }
  return cp;
}

// No word character touches text[start, stop) on either side.
bool is_single_word(std::string_view text, size_t start, size_t stop) {
  if (start > 0 && is_word_char(code_point_at(text, utf8_start_before(text, start)))) return false;
  return stop >= text.size() || !is_word_char(code_point_at(text, stop));
}

}  // namespace

void AddedTokenSplitter::add(const AddedToken& token) {
  if (token.content.empty()) return;
  int node = 0;
  for (const char c : token.content) {
    auto& children = nodes_[size_t(node)].children;
    auto it = std::find_if(children.begin(), children.end(),
                           [&](const auto& child) { return child.first == uint8_t(c); });
    if (it == children.end()) {
      children.emplace_back(uint8_t(c), int(nodes_.size()));
      node = int(nodes_.size());
      nodes_.emplace_back();
    } else {
      node = it->second;
    }
  }
  first_byte_[uint8_t(token.content[0])] = true;
  nodes_[size_t(node)].token = int(tokens_.size());
  tokens_.push_back(token);
}

void AddedTokenSplitter::split(std::string_view text, std::vector<Piece>& pieces) const {
  size_t piece_start = 0, pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[uint8_t(text[pos])]) {
      ++pos;
      continue;
    }
    const auto [index, length] = longest_at(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[size_t(index)];
    size_t start = pos, stop = pos + length;
    pos = stop;  // like the Aho-Corasick iterator, go on after the match even if it is refused
    if (token.single_word && !is_single_word(text, start, stop)) continue;
    if (token.lstrip) {
      while (start > piece_start) {
        const size_t before = utf8_start_before(text, start);
        if (!is_whitespace(code_point_at(text, before))) break;
        start = before;
      }
    }
    if (token.rstrip) {
      while (stop < text.size() && is_whitespace(code_point_at(text, stop))) {
        stop += utf8_length_of_lead(uint8_t(text[stop]));
      }
      // `tokenizers` resumes the search at the match end and may overlap the stripped
      // spaces with a next match; resuming after them keeps the pieces disjoint.
      pos = stop = std::min(stop, text.size());
    }
    if (start > piece_start) pieces.push_back({text.substr(piece_start, start - piece_start)});
    pieces.push_back({text.substr(start, stop - start), token.id});
    piece_start = stop;
  }
  if (piece_start < text.size()) pieces.push_back({text.substr(piece_start)});
}

std::pair<int, size_t> AddedTokenSplitter::longest_at(std::string_view text, size_t pos) const {
  std::pair<int, size_t> best = {-1, 0};
  int node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& children = nodes_[size_t(node)].children;
    auto it = std::find_if(children.begin(), children.end(),
                           [&](const auto& child) { return child.first == uint8_t(text[i]); });
    if (it == children.end()) break;
    node = it->second;
    if (nodes_[size_t(node)].token >= 0) best = {nodes_[size_t(node)].token, i + 1 - pos};
  }
  return best;
}

}  // namespace rwkv::bpe
