// The Python literals of `rwkv_vocab_v20230424.txt` (spec §6.1): 'str' / "str" / b'bytes'.
#pragma once
#include <string>
#include <string_view>

namespace rwkv {

// The token bytes a literal stands for: a str literal's UTF-8 encoding, or a bytes literal's
// bytes. Inside a str, \xHH is the code point U+00HH (two bytes when HH >= 80); inside b'', it
// is one byte. Throws rwkv::Error describing the problem (the caller adds file and line).
std::string parse_python_literal(std::string_view literal);

}  // namespace rwkv
