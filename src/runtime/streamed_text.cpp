#include "rwkv/streamed_text.h"

#include <algorithm>
#include <utility>

namespace rwkv {
namespace {

// Length of the longest suffix of `text` that is a proper prefix of some stop string: that
// much must be held back, it may still become a stop string.
size_t held_back(const std::string& text, const std::vector<std::string>& stops) {
  size_t keep = 0;
  for (const std::string& s : stops) {
    for (size_t n = std::min(s.size() - 1, text.size()); n > keep; --n) {
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  return keep;
}

}  // namespace

StreamedText::StreamedText(std::vector<std::string> stop) : stop_(std::move(stop)) {
  std::erase_if(stop_, [](const std::string& s) { return s.empty(); });
}

bool StreamedText::push(std::string_view bytes) {
  if (stopped_) return true;
  text_ += utf8_.push(bytes);
  // Only text after what was given out can hold a new stop string's end.
  size_t cut = std::string::npos;
  for (const std::string& s : stop_) {
    const size_t at = text_.find(s, taken_ > s.size() ? taken_ - s.size() : 0);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut == std::string::npos) return false;
  text_.resize(cut);
  stopped_ = true;
  return true;
}

std::string StreamedText::take() {
  const size_t upto = stopped_ ? text_.size() : text_.size() - held_back(text_, stop_);
  if (upto <= taken_) return {};
  std::string piece = text_.substr(taken_, upto - taken_);
  taken_ = upto;
  return piece;
}

std::string StreamedText::finish() {
  if (!stopped_) text_ += utf8_.flush();
  stopped_ = true;  // nothing is held back any more
  return take();
}

}  // namespace rwkv
