// Megatron "binidx" token datasets, as RWKV-LM users have them (PREFIX.bin + PREFIX.idx):
//   .idx  "MMIDIDX\0\0" | u64 version = 1 | u8 dtype code | u64 n_sequences | u64 n_doc_idx |
//         i32 sizes[n_sequences] | i64 pointers[n_sequences] (byte offsets into .bin) |
//         i64 doc_idx[n_doc_idx]
//   .bin  the tokens, little-endian, in the dtype of the code (1 u8, 4 i32, 5 i64, 8 u16;
//         2 i8, 3 i16, 6 f32, 7 f64 exist but are not token ids)
// Both files are memory-mapped; nothing is copied.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rwkv/file_io.h"

namespace rwkv::io {

class BinIdx {
 public:
  // Opens PREFIX.idx and PREFIX.bin. Throws rwkv::Error naming the file for a missing file, a
  // wrong magic or version, a dtype that is not token ids, a truncated index, or sequences
  // (sizes/pointers) that do not lie inside the data file.
  static BinIdx open(const std::string& prefix);

  size_t num_sequences() const { return sizes_.size(); }
  size_t num_tokens() const { return n_tokens_; }  // all tokens of the .bin
  size_t token_bytes() const { return token_bytes_; }
  const std::vector<int64_t>& doc_idx() const { return doc_idx_; }
  // Where sequence i starts (in tokens) and how long it is.
  size_t sequence_start(size_t i) const { return size_t(pointers_.at(i)) / token_bytes_; }
  size_t sequence_size(size_t i) const { return size_t(sizes_.at(i)); }
  // Tokens [start, start + n) of the whole data file; throws rwkv::Error past its end.
  void read(size_t start, size_t n, int* out) const;

 private:
  std::shared_ptr<MappedFile> data_;
  std::string data_path_;
  size_t token_bytes_ = 2;
  bool is_signed_ = false;
  size_t n_tokens_ = 0;
  std::vector<int32_t> sizes_;
  std::vector<int64_t> pointers_, doc_idx_;
};

// Writes documents as PREFIX.bin / PREFIX.idx (one sequence per document, doc_idx 0 … n), in
// uint16 when every id fits, else int32; both files atomically. Throws rwkv::Error for a
// negative id or an I/O failure.
void write_binidx(const std::string& prefix, const std::vector<std::vector<int>>& documents);

}  // namespace rwkv::io
