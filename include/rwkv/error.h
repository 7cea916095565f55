// rwkv::Error: the one exception type of the library. Messages name the file, tensor or op
// and what was expected; the CLI prints them, the server turns them into 4xx/5xx answers.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace rwkv {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Concatenates its arguments with operator<<: cat("tensor ", name, " has ", n, " dims").
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(cat(args...));
}

}  // namespace rwkv
