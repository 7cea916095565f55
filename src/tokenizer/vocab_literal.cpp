#include "tokenizer/vocab_literal.h"

#include <cstdint>
#include <iomanip>
#include <sstream>

#include "rwkv/error.h"

namespace rwkv {
namespace {

std::string code_point_name(uint32_t cp) {
  std::ostringstream out;
  out << "U+" << std::uppercase << std::hex << std::setw(4) << std::setfill('0') << cp;
  return out.str();
}

// What Python's str.encode("utf-8") does, including its refusal of lone surrogates.
void append_utf8(std::string& out, uint32_t cp) {
  if (cp >= 0xD800 && cp <= 0xDFFF) {
    fail("surrogate code point ", code_point_name(cp), " cannot be encoded as UTF-8");
  }
  if (cp > 0x10FFFF) fail("code point ", code_point_name(cp), " is beyond U+10FFFF");
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Exactly `digits` hex digits at text[pos], as Python requires for \x, \u and \U.
uint32_t read_hex(std::string_view text, size_t pos, size_t digits, char escape) {
  uint32_t value = 0;
  for (size_t i = 0; i < digits; ++i) {
    const int d = pos + i < text.size() ? hex_digit(text[pos + i]) : -1;
    if (d < 0) fail("escape \\", escape, " needs ", digits, " hex digits");
    value = value * 16 + uint32_t(d);
  }
  return value;
}

// A \x or octal escape: a code point in a str, a byte in a bytes literal.
void append_unit(std::string& out, uint32_t value, bool is_bytes) {
  if (!is_bytes) return append_utf8(out, value);
  if (value > 0xFF) fail("octal escape value ", value, " does not fit in a byte");
  out += char(value);
}

// Decodes the escape whose letter is at text[pos] (just after the backslash); returns the
// position after it.
size_t parse_escape(std::string_view text, size_t pos, bool is_bytes, std::string& out) {
  if (pos >= text.size()) fail("unterminated literal (it ends with a backslash)");
  const char e = text[pos];
  switch (e) {
    case '\\': case '\'': case '"': out += e; return pos + 1;
    case 'n': out += '\n'; return pos + 1;
    case 't': out += '\t'; return pos + 1;
    case 'r': out += '\r'; return pos + 1;
    case 'a': out += '\a'; return pos + 1;
    case 'b': out += '\b'; return pos + 1;
    case 'f': out += '\f'; return pos + 1;
    case 'v': out += '\v'; return pos + 1;
    case 'x': append_unit(out, read_hex(text, pos + 1, 2, e), is_bytes); return pos + 3;
    case 'u':
    case 'U': {
      if (is_bytes) fail("escape \\", e, " is not allowed in a bytes literal");
      const size_t digits = e == 'u' ? 4 : 8;
      append_utf8(out, read_hex(text, pos + 1, digits, e));
      return pos + 1 + digits;
    }
    default: break;
  }
  if (e < '0' || e > '7') fail("unknown escape \\", e);
  uint32_t value = 0;  // \o, \oo or \ooo
  size_t end = pos;
  while (end < pos + 3 && end < text.size() && text[end] >= '0' && text[end] <= '7') {
    value = value * 8 + uint32_t(text[end++] - '0');
  }
  append_unit(out, value, is_bytes);
  return end;
}

}  // namespace

std::string parse_python_literal(std::string_view literal) {
  const bool is_bytes = !literal.empty() && (literal[0] == 'b' || literal[0] == 'B');
  const std::string_view text = literal.substr(is_bytes ? 1 : 0);
  if (text.empty() || (text[0] != '\'' && text[0] != '"')) {
    fail("expected a quoted Python str or bytes literal");
  }
  const char quote = text[0];
  std::string out;
  size_t i = 1;
  for (;;) {
    if (i >= text.size()) fail("unterminated literal (no closing ", quote, ")");
    const char c = text[i];
    if (c == quote) break;
    if (c == '\\') {
      i = parse_escape(text, i + 1, is_bytes, out);
      continue;
    }
    // Python only allows ASCII source characters in b''; others must be escaped.
    if (is_bytes && uint8_t(c) >= 0x80) fail("non-ASCII character in a bytes literal");
    out += c;
    ++i;
  }
  if (i + 1 != text.size()) fail("text after the closing ", quote, " (an unescaped quote?)");
  return out;
}

}  // namespace rwkv
