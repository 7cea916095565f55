// File helpers: read-only memory maps and atomic writes (DESIGN §8: a crash or a full disk never
// leaves a half-written file).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace rwkv {

// A read-only, private memory map of a whole file. Throws rwkv::Error naming the file if it
// cannot be opened or mapped. An empty file maps to size() == 0.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Writes the concatenation of `parts` to path atomically: a temp file beside it, fsync, rename.
// Throws rwkv::Error on any failure; the temp file is removed and an existing file is untouched.
struct ByteSpan {
  const void* data;
  size_t size;
};
void write_file_atomic(const std::string& path, const std::vector<ByteSpan>& parts);
inline void write_file_atomic(const std::string& path, const void* data, size_t size) {
  write_file_atomic(path, std::vector<ByteSpan>{{data, size}});
}

// Reads a whole file into memory. Throws rwkv::Error naming the file on failure.
std::string read_file(const std::string& path);

}  // namespace rwkv
