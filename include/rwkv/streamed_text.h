// Generated tokens → text a client may be shown as it comes: never half a UTF-8 character, never
// a prefix of a stop string that may still complete, and ending before the first stop string.
// Session::generate and the server's scheduler both stream through it.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "rwkv/tokenizer.h"

namespace rwkv {

class StreamedText {
 public:
  explicit StreamedText(std::vector<std::string> stop = {});
  // Adds a token's bytes. Returns true when a stop string completed: text() then ends before it
  // and nothing more may be pushed.
  bool push(std::string_view bytes);
  // The part of the text decided since the last take() (possibly empty).
  std::string take();
  // At the end of a generation: everything not yet taken, held-back bytes included (after a
  // stop string, only what precedes it).
  std::string finish();
  const std::string& text() const { return text_; }
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stop_;
  Utf8Stream utf8_;
  std::string text_;
  size_t taken_ = 0;  // bytes of text_ already given out
  bool stopped_ = false;
};

}  // namespace rwkv
