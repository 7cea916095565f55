// The World tokenizer (spec §6.1): a vocabulary of byte strings, greedy longest-match encoding.
#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <utility>

#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/tokenizer.h"
#include "tokenizer/vocab_literal.h"

namespace rwkv {
namespace {

// Ids beyond this are surely typos; refusing them keeps a bad line from allocating gigabytes.
constexpr uint32_t kMaxId = 1u << 24;

// A token's bytes inside the vocabulary's blob; size 0 marks an id the file does not define.
struct Span {
  uint32_t offset = 0;
  uint32_t size = 0;
};

struct Vocab {
  std::string blob;
  std::vector<Span> tokens;  // indexed by id

  std::string_view bytes(size_t id) const {
    return {blob.data() + tokens[id].offset, tokens[id].size};
  }
};

// A byte trie flattened breadth-first, so each node's children are adjacent nodes whose edge
// bytes (labels_) are sorted: compact, and a lookup scans a few bytes of one cache line.
class Trie {
 public:
  // Throws rwkv::Error if two ids have the same bytes.
  explicit Trie(const Vocab& vocab);
  // The id and length of the longest token that is a prefix of the non-empty `bytes`;
  // id -1 if there is none.
  std::pair<int, size_t> longest_prefix(std::string_view bytes) const;

 private:
  struct Node {
    uint32_t first_child = 0;
    uint32_t num_children = 0;
    int32_t token = -1;
  };
  static constexpr uint32_t kNoChild = 0;  // the root is nobody's child

  uint32_t child(uint32_t node, uint8_t byte) const;

  std::vector<Node> nodes_;
  std::vector<uint8_t> labels_;  // labels_[n]: the byte on the edge into node n
  std::array<uint32_t, 256> root_children_{};  // every walk starts here, so index it directly
};

// The defined ids in byte order of their tokens (unsigned, so that siblings come out in
// ascending label order). Ordering on the first 8 bytes as a big-endian integer first saves
// most byte-string comparisons, which otherwise dominate loading.
std::vector<uint32_t> sorted_ids(const Vocab& vocab) {
  std::vector<std::pair<uint64_t, uint32_t>> keyed;
  for (uint32_t id = 0; id < vocab.tokens.size(); ++id) {
    const std::string_view bytes = vocab.bytes(id);
    if (bytes.empty()) continue;
    uint64_t key = 0;  // zero padding sorts a prefix first, as byte order does
    for (size_t i = 0; i < 8; ++i) key = key << 8 | (i < bytes.size() ? uint8_t(bytes[i]) : 0);
    keyed.emplace_back(key, id);
  }
  std::sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : vocab.bytes(a.second) < vocab.bytes(b.second);
  });
  std::vector<uint32_t> ids(keyed.size());
  for (size_t i = 0; i < keyed.size(); ++i) ids[i] = keyed[i].second;
  return ids;
}

Trie::Trie(const Vocab& vocab) {
  const std::vector<uint32_t> order = sorted_ids(vocab);

  // Each pending node owns the range of `order` whose tokens start with its path.
  struct Pending {
    uint32_t node, lo, hi, depth;
  };
  std::vector<Pending> queue = {{0, 0, uint32_t(order.size()), 0}};
  nodes_.emplace_back();
  labels_.push_back(0);
  for (size_t q = 0; q < queue.size(); ++q) {
    auto [node, lo, hi, depth] = queue[q];
    for (; lo < hi && vocab.bytes(order[lo]).size() == depth; ++lo) {
      if (nodes_[node].token >= 0) {
        fail("ids ", nodes_[node].token, " and ", order[lo], " are the same token");
      }
      nodes_[node].token = int32_t(order[lo]);
    }
    const auto first_child = uint32_t(nodes_.size());
    while (lo < hi) {
      const char byte = vocab.bytes(order[lo])[depth];
      uint32_t end = lo;
      while (end < hi && vocab.bytes(order[end])[depth] == byte) ++end;
      queue.push_back({uint32_t(nodes_.size()), lo, end, depth + 1});
      nodes_.emplace_back();
      labels_.push_back(uint8_t(byte));
      lo = end;
    }
    nodes_[node].first_child = first_child;
    nodes_[node].num_children = uint32_t(nodes_.size()) - first_child;
  }
  for (uint32_t c = 0; c < nodes_[0].num_children; ++c) {
    root_children_[labels_[nodes_[0].first_child + c]] = nodes_[0].first_child + c;
  }
}

uint32_t Trie::child(uint32_t node, uint8_t byte) const {
  const Node& n = nodes_[node];
  const uint8_t* begin = labels_.data() + n.first_child;
  const uint8_t* end = begin + n.num_children;
  // Deep nodes have a handful of children, where a linear scan beats a binary search.
  const uint8_t* it =
      n.num_children <= 16 ? std::find(begin, end, byte) : std::lower_bound(begin, end, byte);
  return it != end && *it == byte ? n.first_child + uint32_t(it - begin) : kNoChild;
}

std::pair<int, size_t> Trie::longest_prefix(std::string_view bytes) const {
  std::pair<int, size_t> best = {-1, 0};
  uint32_t node = root_children_[uint8_t(bytes[0])];
  size_t depth = 1;
  while (node != kNoChild) {
    if (nodes_[node].token >= 0) best = {nodes_[node].token, depth};
    if (depth == bytes.size()) break;
    node = child(node, uint8_t(bytes[depth++]));
  }
  return best;
}

class WorldTokenizer : public Tokenizer {
 public:
  // Throws rwkv::Error if a token is duplicated or a single byte is missing.
  explicit WorldTokenizer(Vocab vocab) : vocab_(std::move(vocab)), trie_(vocab_) {
    // Greedy matching always makes progress only if every single byte is a token.
    for (int b = 0; b < 256; ++b) {
      const char byte = char(b);
      if (trie_.longest_prefix(std::string_view(&byte, 1)).first < 0) {
        fail("no token for the byte ", b, ", so some text could not be encoded");
      }
    }
  }

  std::string name() const override { return "world"; }

  std::vector<int> encode(std::string_view bytes) const override {
    std::vector<int> ids;
    while (!bytes.empty()) {
      // Never id -1: the loader checked that every single byte is a token.
      const auto [id, size] = trie_.longest_prefix(bytes);
      ids.push_back(id);
      bytes.remove_prefix(size);
    }
    return ids;
  }

  std::string decode(int id) const override {
    if (id == 0) return {};  // end-of-text: a real model output, with no bytes
    if (id < 0 || id >= vocab_size()) {
      fail("token id ", id, " is outside the World vocabulary (0..", vocab_size() - 1, ")");
    }
    if (vocab_.tokens[size_t(id)].size == 0) fail("token id ", id, " is not in the vocabulary");
    return std::string(vocab_.bytes(size_t(id)));
  }

  int vocab_size() const override { return int(vocab_.tokens.size()); }

 private:
  Vocab vocab_;
  Trie trie_;
};

uint32_t parse_number(std::string_view text, const char* what) {
  uint32_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    fail(what, " `", text, "` is not a non-negative integer");
  }
  return value;
}

// Adds one `<id> <literal> <nbytes>` line to `vocab`; `line_of_id` remembers which line
// defined each id, to name both lines of a duplicate.
void parse_line(std::string_view line, size_t line_no, Vocab& vocab,
                std::vector<size_t>& line_of_id) {
  // The literal may contain spaces, the numbers cannot.
  const size_t first = line.find(' ');
  const size_t last = line.rfind(' ');
  if (first == std::string_view::npos || first == last) fail("expected `<id> <literal> <nbytes>`");
  const uint32_t id = parse_number(line.substr(0, first), "id");
  const std::string bytes = parse_python_literal(line.substr(first + 1, last - first - 1));
  const uint32_t nbytes = parse_number(line.substr(last + 1), "byte count");

  if (id == 0) fail("id 0 is reserved for end-of-text");
  if (id >= kMaxId) fail("id ", id, " is too large (limit ", kMaxId - 1, ")");
  if (bytes.size() != nbytes) {
    fail("the literal has ", bytes.size(), " bytes but the line says ", nbytes);
  }
  if (bytes.empty()) fail("empty token");
  if (id >= vocab.tokens.size()) {
    vocab.tokens.resize(id + 1);
    line_of_id.resize(id + 1);
  }
  if (line_of_id[id] != 0) fail("id ", id, " is already defined on line ", line_of_id[id]);
  line_of_id[id] = line_no;
  vocab.tokens[id] = {uint32_t(vocab.blob.size()), uint32_t(bytes.size())};
  vocab.blob += bytes;
}

Vocab parse_vocab(const std::string& path, std::string_view text) {
  Vocab vocab;
  std::vector<size_t> line_of_id;
  size_t line_no = 0;
  while (!text.empty()) {
    const size_t eol = std::min(text.find('\n'), text.size());
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(std::min(eol + 1, text.size()));
    ++line_no;
    if (line.ends_with('\r')) line.remove_suffix(1);  // RWKV-LM's RWKV-v5 copy has CRLF endings
    try {
      parse_line(line, line_no, vocab, line_of_id);
    } catch (const Error& e) {
      fail(path, ":", line_no, ": ", e.what(), " in line `", line, "`");
    }
  }
  if (vocab.tokens.empty()) fail(path, ": the vocabulary file has no tokens");
  return vocab;
}

}  // namespace

std::unique_ptr<Tokenizer> load_world_tokenizer(const std::string& vocab_path) {
  Vocab vocab = parse_vocab(vocab_path, read_file(vocab_path));
  try {
    return std::make_unique<WorldTokenizer>(std::move(vocab));
  } catch (const Error& e) {
    fail(vocab_path, ": ", e.what());
  }
}

}  // namespace rwkv
