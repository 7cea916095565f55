// Byte-level BPE building blocks (spec §6.2): byte <-> unicode mapping, merge table and merge
// loops, PCRE2 splitting, UTF-8 validation.
#include "tokenizer/bpe.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <queue>

#include "rwkv/error.h"

namespace rwkv::bpe {

namespace {

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | cp >> 6);
    out += char(0x80 | (cp & 0x3F));
  } else {  // the mapping only uses code points below U+0144
    out += char(0xE0 | cp >> 12);
    out += char(0x80 | (cp >> 6 & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

bool is_printable_latin1(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

// Inverse of byte_to_unicode() by code point (all below U+0144); -1 where none.
const std::array<int, 0x144>& unicode_to_byte_table() {
  static const std::array<int, 0x144> table = [] {
    std::array<int, 0x144> t;
    t.fill(-1);
    uint32_t next = 0x100;
    for (int b = 0; b < 256; ++b) t[is_printable_latin1(b) ? uint32_t(b) : next++] = b;
    return t;
  }();
  return table;
}

}  // namespace

const std::array<std::string, 256>& byte_to_unicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    uint32_t next = 0x100;
    for (int b = 0; b < 256; ++b) append_utf8(is_printable_latin1(b) ? uint32_t(b) : next++, t[b]);
    return t;
  }();
  return table;
}

bool unicode_to_bytes(std::string_view token, std::string& out) {
  const auto& table = unicode_to_byte_table();
  out.clear();
  for (size_t i = 0; i < token.size();) {
    const auto c0 = uint8_t(token[i]);
    uint32_t cp;
    if (c0 < 0x80) {
      cp = c0;
      i += 1;
    } else if ((c0 & 0xE0) == 0xC0 && i + 1 < token.size()) {
      cp = uint32_t(c0 & 0x1F) << 6 | (uint8_t(token[i + 1]) & 0x3F);
      i += 2;
    } else {
      return false;  // three bytes or more: above U+07FF, outside the mapping
    }
    if (cp >= table.size() || table[cp] < 0) return false;
    out += char(table[cp]);
  }
  return true;
}

// ---- merge table ----

size_t MergeTable::slot_of(uint64_t key) const {
  // Fibonacci hashing spreads the (small, dense) ids over the table.
  const size_t mask = slots_.size() - 1;
  size_t i = size_t((key * 0x9E3779B97F4A7C15ull) >> 20) & mask;
  while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask;
  return i;
}

void MergeTable::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(std::max<size_t>(64, old.size() * 2), Slot{});
  for (const Slot& s : old) {
    if (s.key != kEmpty) slots_[slot_of(s.key)] = s;
  }
}

void MergeTable::add(int left, int right, int rank, int merged) {
  if ((count_ + 1) * 2 > slots_.size()) grow();  // keep the load at most 1/2
  const uint64_t key = uint64_t(uint32_t(left)) << 32 | uint32_t(right);
  Slot& slot = slots_[slot_of(key)];
  if (slot.key != key) ++count_;
  slot = {key, {rank, merged}};
}

MergeTable::Rule MergeTable::find(int left, int right) const {
  if (slots_.empty()) return {-1, -1};
  const uint64_t key = uint64_t(uint32_t(left)) << 32 | uint32_t(right);
  const Slot& slot = slots_[slot_of(key)];
  return slot.key == key ? slot.rule : Rule{-1, -1};
}

void MergeTable::merge(std::vector<int>& symbols) const {
  // The quadratic loop rescans the pairs after each merge but touches only a few cache lines;
  // past a few dozen symbols (long runs of letters or digits) the heap wins.
  if (symbols.size() <= 48) {
    merge_quadratic(symbols);
  } else {
    merge_with_heap(symbols);
  }
}

void MergeTable::merge_quadratic(std::vector<int>& symbols) const {
  if (symbols.size() < 2) return;
  // rules[i]: the rule for the pair (symbols[i], symbols[i+1]); on the stack for short words.
  size_t n = symbols.size();
  Rule stack_rules[64];
  std::vector<Rule> heap_rules(n - 1 > 64 ? n - 1 : 0);
  Rule* rules = n - 1 > 64 ? heap_rules.data() : stack_rules;
  for (size_t i = 0; i + 1 < n; ++i) rules[i] = find(symbols[i], symbols[i + 1]);
  while (n > 1) {
    size_t best = 0;
    int best_rank = -1;
    for (size_t i = 0; i + 1 < n; ++i) {
      if (rules[i].rank >= 0 && (best_rank < 0 || rules[i].rank < best_rank)) {
        best = i;
        best_rank = rules[i].rank;
      }
    }
    if (best_rank < 0) break;
    // symbols[best] takes the merged id, symbols[best + 1] and rules[best] leave.
    symbols[best] = rules[best].merged;
    std::copy(symbols.begin() + std::ptrdiff_t(best) + 2, symbols.begin() + std::ptrdiff_t(n),
              symbols.begin() + std::ptrdiff_t(best) + 1);
    std::copy(rules + best + 1, rules + n - 1, rules + best);
    --n;
    if (best > 0) rules[best - 1] = find(symbols[best - 1], symbols[best]);
    if (best + 1 < n) rules[best] = find(symbols[best], symbols[best + 1]);
  }
  symbols.resize(n);
}

void MergeTable::merge_with_heap(std::vector<int>& symbols) const {
  // A doubly linked list over the symbols; merging (i, next[i]) keeps i and unlinks the other.
  const int n = int(symbols.size());
  std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    prev[size_t(i)] = i - 1;
    next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  }
  // Candidate merges of the pair starting at symbol `pos`, lowest rank first, then leftmost
  // (positions only ever shrink towards the left neighbour, so they keep text order).
  struct Candidate {
    int rank, pos, left, right;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int pos) {
    const int after = next[size_t(pos)];
    if (after < 0) return;
    const Rule rule = find(symbols[size_t(pos)], symbols[size_t(after)]);
    if (rule.rank >= 0) heap.push({rule.rank, pos, symbols[size_t(pos)], symbols[size_t(after)]});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  std::vector<bool> dead(static_cast<size_t>(n), false);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int after = next[size_t(c.pos)];
    // Stale: one side was merged away or changed since the candidate was pushed.
    if (dead[size_t(c.pos)] || after < 0 || symbols[size_t(c.pos)] != c.left ||
        symbols[size_t(after)] != c.right) {
      continue;
    }
    symbols[size_t(c.pos)] = find(c.left, c.right).merged;
    dead[size_t(after)] = true;
    next[size_t(c.pos)] = next[size_t(after)];
    if (next[size_t(after)] >= 0) prev[size_t(next[size_t(after)])] = c.pos;
    if (prev[size_t(c.pos)] >= 0) push(prev[size_t(c.pos)]);
    push(c.pos);
  }
  size_t out = 0;
  for (int i = 0; i >= 0 && n > 0; i = next[size_t(i)]) symbols[out++] = symbols[size_t(i)];
  symbols.resize(out);
}

// ---- word cache ----

WordCache::WordCache(size_t text_size) {
  if (text_size < 2048) return;
  size_t n = 64;
  while (n < text_size / 16 && n < 16384) n *= 2;
  entries_.resize(n);
}

uint64_t WordCache::hash_of(std::string_view word) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a: words are short
  for (const char c : word) h = (h ^ uint8_t(c)) * 0x100000001B3ull;
  return h;
}

bool WordCache::find(std::string_view word, std::vector<int>& ids) const {
  if (entries_.empty() || word.size() > kMaxWord) return false;
  const uint64_t hash = hash_of(word);
  const Entry& e = entries_[(hash >> 7) & (entries_.size() - 1)];
  if (e.hash != hash || e.size != word.size() || std::memcmp(e.word, word.data(), e.size) != 0) {
    return false;
  }
  ids.insert(ids.end(), e.ids, e.ids + e.count);
  return true;
}

void WordCache::put(std::string_view word, const int* ids, size_t count) {
  if (entries_.empty() || word.empty() || word.size() > kMaxWord || count > kMaxIds) return;
  const uint64_t hash = hash_of(word);
  Entry& e = entries_[(hash >> 7) & (entries_.size() - 1)];
  e.hash = hash;
  e.size = uint8_t(word.size());
  e.count = uint8_t(count);
  std::memcpy(e.word, word.data(), word.size());
  std::copy(ids, ids + count, e.ids);
}

// ---- regex splitting ----

// \s spelled out as the White_Space property, Oniguruma's \s: PCRE2's own \s also takes
// U+180E (Mongolian vowel separator, a format character since Unicode 6.3).
#define RWKV_WHITE_SPACE R"(\t-\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})"
const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^)" RWKV_WHITE_SPACE R"(\p{L}\p{N}]+|[)"
    RWKV_WHITE_SPACE R"(]+(?![^)" RWKV_WHITE_SPACE R"(])|[)" RWKV_WHITE_SPACE R"(]+)";
#undef RWKV_WHITE_SPACE

Splitter::Splitter(const std::string& pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                        PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (code_ == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    fail("regex `", pattern, "` does not compile at offset ", offset, ": ",
         reinterpret_cast<const char*>(message));
  }
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;  // falls back to the interpreter
}

Splitter::~Splitter() { pcre2_code_free(code_); }

void Splitter::split(std::string_view text, std::vector<std::string_view>& pieces) const {
  // One ovector pair suffices for any pattern; each thread keeps its own match data.
  struct MatchDataFree {
    void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
  };
  thread_local std::unique_ptr<pcre2_match_data, MatchDataFree> match_data(
      pcre2_match_data_create(1, nullptr));
  if (match_data == nullptr) fail("out of memory for PCRE2 match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    // The text was validated before (valid_utf8_prefix), so PCRE2 need not check it again.
    const int rc =
        jit_ ? pcre2_jit_match(code_, subject, text.size(), pos, 0, match_data.get(), nullptr)
             : pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, match_data.get(),
                           nullptr);
    if (rc < 0) break;  // no more matches, or a resource limit: the rest is one piece
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data.get());
    const size_t start = ovector[0], end = ovector[1];
    if (end <= start) break;  // an empty match cannot make progress; not with kGpt2Pattern
    if (start > pos) pieces.push_back(text.substr(pos, start - pos));
    pieces.push_back(text.substr(start, end - start));
    pos = end;
  }
  if (pos < text.size()) pieces.push_back(text.substr(pos));
}

// ---- UTF-8 ----

namespace {

// Length of the valid UTF-8 character at the start of the non-empty `s`, 0 if there is none
// (Unicode Table 3-7, well-formed byte sequences).
size_t char_length(std::string_view s) {
  const auto b0 = uint8_t(s[0]);
  if (b0 < 0x80) return 1;
  auto in = [&](size_t i, uint8_t lo, uint8_t hi) {
    return i < s.size() && uint8_t(s[i]) >= lo && uint8_t(s[i]) <= hi;
  };
  if (b0 >= 0xC2 && b0 <= 0xDF) return in(1, 0x80, 0xBF) ? 2 : 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    const uint8_t lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    return in(1, lo, hi) && in(2, 0x80, 0xBF) ? 3 : 0;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    const uint8_t lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    return in(1, lo, hi) && in(2, 0x80, 0xBF) && in(3, 0x80, 0xBF) ? 4 : 0;
  }
  return 0;
}

}  // namespace

size_t valid_utf8_prefix(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    if (uint8_t(text[i]) < 0x80) {  // ASCII runs are the common case
      ++i;
      continue;
    }
    const size_t n = char_length(text.substr(i));
    if (n == 0) break;
    i += n;
  }
  return i;
}

size_t invalid_utf8_run(std::string_view text) {
  size_t i = 1;
  while (i < text.size() && char_length(text.substr(i)) == 0) ++i;
  return std::min(i, text.size());
}

// Code points below U+0300 are already NFC and never compose with what precedes them, so only
// the stretches from the character before a code point >= U+0300 (it may compose with it) up to
// the next code point < U+0300 go through utf8proc; plain ASCII and Latin text costs one scan.
void append_nfc(std::string_view text, std::string& out) {
  size_t done = 0;
  while (done < text.size()) {
    size_t j = done;  // lead bytes >= 0xCC start the code points >= U+0300
    while (j < text.size() && uint8_t(text[j]) < 0xCC) ++j;
    if (j == text.size()) break;
    const size_t start = j > done ? std::max(done, utf8_start_before(text, j)) : j;
    size_t end = j;
    while (end < text.size() && uint8_t(text[end]) >= 0xCC) {
      end += utf8_length_of_lead(uint8_t(text[end]));
    }
    end = std::min(end, text.size());
    out.append(text.substr(done, start - done));
    utf8proc_uint8_t* normalized = nullptr;
    const utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data() + start),
                     utf8proc_ssize_t(end - start), &normalized,
                     utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (n >= 0) {
      out.append(reinterpret_cast<const char*>(normalized), size_t(n));
    } else {
      out.append(text.substr(start, end - start));  // cannot happen on valid UTF-8
    }
    std::free(normalized);
    done = end;
  }
  out.append(text.substr(done));
}

// Only code points >= U+0300 (lead bytes >= 0xCC) can change.
bool needs_nfc(std::string_view text) {
  return std::any_of(text.begin(), text.end(), [](char c) { return uint8_t(c) >= 0xCC; });
}

}  // namespace rwkv::bpe
