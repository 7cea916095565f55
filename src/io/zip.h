// Minimal zip support for PyTorch checkpoints: a reader for archives held in memory (a memory
// map) and a writer of "stored" (uncompressed) archives. torch.save writes every entry stored
// and 64-byte aligned, so storages can be used in place; compression is not supported.
#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "rwkv/file_io.h"

namespace rwkv::io {

// CRC-32 (IEEE 802.3, as zip uses), continuing from `crc` (0 for a fresh checksum).
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

struct ZipEntry {
  std::string name;
  uint16_t method = 0;       // 0 = stored, 8 = deflate, ...
  uint64_t data_offset = 0;  // of the entry's bytes in the archive (after its local header)
  uint64_t size = 0;         // compressed size; equals the uncompressed size when stored
};

// Reads the central directory of the zip archive data[0, size) (ZIP64 included), resolving
// every entry's local header. Every offset and length is checked against `size`; errors are
// rwkv::Error messages that start with `path`.
std::vector<ZipEntry> read_zip_directory(const uint8_t* data, size_t size,
                                         const std::string& path);

// The bytes of a stored entry; throws (naming the entry) if it is compressed.
const uint8_t* stored_entry_data(const uint8_t* archive, const ZipEntry& entry,
                                 const std::string& path);

// Builds a stored zip archive as a list of byte spans for write_file_atomic. Entry data is not
// copied: it must stay alive until the spans are written. Each entry's data starts at a multiple
// of 64 bytes, as torch.save does, so that readers can map tensors in place.
class ZipWriter {
 public:
  // force_zip64 writes ZIP64 records even where the classic fields suffice (to test readers).
  explicit ZipWriter(bool force_zip64 = false) : force_zip64_(force_zip64) {}
  void add(const std::string& name, const void* data, size_t size);
  // Appends the central directory and end records; the writer is spent afterwards.
  std::vector<ByteSpan> finish();

 private:
  struct Written {
    std::string name;
    uint32_t crc;
    uint64_t size;
    uint64_t header_offset;
  };
  void append(const void* data, size_t size);
  void append_owned(std::string bytes);
  bool force_zip64_;
  uint64_t offset_ = 0;
  std::deque<std::string> owned_;  // headers; a deque keeps their addresses stable
  std::vector<ByteSpan> parts_;
  std::vector<Written> written_;
};

}  // namespace rwkv::io
