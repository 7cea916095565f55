#include "io/binidx.h"

#include <algorithm>
#include <cstring>

#include "rwkv/error.h"

namespace rwkv::io {
namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;

struct Code {
  uint8_t code;
  size_t bytes;
  bool is_signed;
};
// Token dtypes; the float codes (6, 7) and the narrow signed ones (2, 3) are not token ids.
constexpr Code kCodes[] = {{1, 1, false}, {4, 4, true}, {5, 8, true}, {8, 2, false}};

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

BinIdx BinIdx::open(const std::string& prefix) {
  BinIdx d;
  const std::string idx_path = prefix + ".idx";
  d.data_path_ = prefix + ".bin";
  const auto idx = MappedFile::open(idx_path);
  const uint8_t* p = idx->data();
  const size_t size = idx->size();
  if (size < kHeaderBytes || std::memcmp(p, kMagic, 9) != 0) {
    fail(idx_path, ": not a binidx index (expected the magic \"MMIDIDX\" and a 34-byte header)");
  }
  if (const auto version = load<uint64_t>(p + 9); version != 1) {
    fail(idx_path, ": binidx version ", version, " is not supported (expected 1)");
  }
  const uint8_t code = p[17];
  bool known = false;
  for (const Code& c : kCodes) {
    if (c.code == code) {
      d.token_bytes_ = c.bytes;
      d.is_signed_ = c.is_signed;
      known = true;
    }
  }
  if (!known) {
    fail(idx_path, ": dtype code ", int(code),
         " does not hold token ids (expected 1 uint8, 4 int32, 5 int64 or 8 uint16)");
  }
  const uint64_t n = load<uint64_t>(p + 18), n_doc = load<uint64_t>(p + 26);
  // Sizes in bytes, checked before multiplying so a corrupt count cannot overflow.
  if (n > size / 12 || n_doc > size / 8 || kHeaderBytes + 12 * n + 8 * n_doc > size) {
    fail(idx_path, ": truncated index (", n, " sequences and ", n_doc,
         " document entries need more than its ", size, " bytes)");
  }
  d.sizes_.resize(n);
  d.pointers_.resize(n);
  d.doc_idx_.resize(n_doc);
  std::memcpy(d.sizes_.data(), p + kHeaderBytes, 4 * n);
  std::memcpy(d.pointers_.data(), p + kHeaderBytes + 4 * n, 8 * n);
  std::memcpy(d.doc_idx_.data(), p + kHeaderBytes + 12 * n, 8 * n_doc);

  d.data_ = MappedFile::open(d.data_path_);
  if (d.data_->size() % d.token_bytes_ != 0) {
    fail(d.data_path_, ": ", d.data_->size(), " bytes is not a whole number of ",
         d.token_bytes_, "-byte tokens");
  }
  d.n_tokens_ = d.data_->size() / d.token_bytes_;
  for (size_t i = 0; i < n; ++i) {
    const int64_t start = d.pointers_[i], len = d.sizes_[i];
    if (start < 0 || len < 0 || size_t(start) % d.token_bytes_ != 0 ||
        size_t(start) / d.token_bytes_ > d.n_tokens_ ||
        size_t(len) > d.n_tokens_ - size_t(start) / d.token_bytes_) {
      fail(idx_path, ": sequence ", i, " (", len, " tokens at byte ", start,
           ") does not lie inside ", d.data_path_, " (", d.n_tokens_, " tokens)");
    }
  }
  for (size_t i = 0; i < n_doc; ++i) {
    if (d.doc_idx_[i] < 0 || uint64_t(d.doc_idx_[i]) > n) {
      fail(idx_path, ": document index ", i, " = ", d.doc_idx_[i], " is outside [0, ", n, "]");
    }
  }
  return d;
}

void BinIdx::read(size_t start, size_t n, int* out) const {
  if (start > n_tokens_ || n > n_tokens_ - start) {
    fail(data_path_, ": tokens [", start, ", ", start + n, ") are past its end (", n_tokens_,
         " tokens)");
  }
  const uint8_t* p = data_->data() + start * token_bytes_;
  for (size_t i = 0; i < n; ++i, p += token_bytes_) {
    switch (token_bytes_) {
      case 1: out[i] = p[0]; break;
      case 2: out[i] = load<uint16_t>(p); break;
      case 4: out[i] = load<int32_t>(p); break;
      default: {
        const int64_t v = load<int64_t>(p);
        if (v < 0 || v > INT32_MAX) fail(data_path_, ": token ", start + i, " = ", v, " is not an id");
        out[i] = int(v);
      }
    }
    if (is_signed_ && out[i] < 0) fail(data_path_, ": token ", start + i, " = ", out[i], " is negative");
  }
}

void write_binidx(const std::string& prefix, const std::vector<std::vector<int>>& documents) {
  int max_id = 0;
  for (const auto& doc : documents) {
    for (int id : doc) {
      if (id < 0) fail(prefix, ".bin: token id ", id, " is negative");
      max_id = std::max(max_id, id);
    }
  }
  const bool narrow = max_id <= 0xffff;
  const size_t width = narrow ? 2 : 4;
  std::vector<uint8_t> data;
  std::vector<int32_t> sizes;
  std::vector<int64_t> pointers, doc_idx{0};
  for (const auto& doc : documents) {
    pointers.push_back(int64_t(data.size()));
    sizes.push_back(int32_t(doc.size()));
    for (int id : doc) {
      const uint16_t u = uint16_t(id);
      const int32_t s = id;
      const uint8_t* b = narrow ? reinterpret_cast<const uint8_t*>(&u) : reinterpret_cast<const uint8_t*>(&s);
      data.insert(data.end(), b, b + width);
    }
    doc_idx.push_back(int64_t(sizes.size()));
  }
  const uint64_t version = 1, n = sizes.size(), n_doc = doc_idx.size();
  const uint8_t code = narrow ? 8 : 4;
  write_file_atomic(prefix + ".bin", data.data(), data.size());
  write_file_atomic(prefix + ".idx", {{kMagic, 9},
                                      {&version, 8},
                                      {&code, 1},
                                      {&n, 8},
                                      {&n_doc, 8},
                                      {sizes.data(), 4 * sizes.size()},
                                      {pointers.data(), 8 * pointers.size()},
                                      {doc_idx.data(), 8 * doc_idx.size()}});
}

}  // namespace rwkv::io
