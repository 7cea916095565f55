#include "rwkv/checkpoint.h"

#include <bit>
#include <cstring>
#include <new>
#include <string_view>
#include <unordered_set>

#include "io/formats.h"
#include "rwkv/error.h"

// All formats store little-endian bytes that the readers hand out in place.
static_assert(std::endian::native == std::endian::little,
              "checkpoint I/O needs a little-endian host");

namespace rwkv {

Checkpoint::Checkpoint(std::string path, std::string format, std::vector<TensorView> tensors,
                       std::vector<std::shared_ptr<const void>> owners)
    : path_(std::move(path)),
      format_(std::move(format)),
      tensors_(std::move(tensors)),
      owners_(std::move(owners)) {
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (!index_.emplace(tensors_[i].name, i).second)
      fail(path_, ": duplicate tensor name '", tensors_[i].name, "'");
}

Checkpoint Checkpoint::open(const std::string& path) {
  std::shared_ptr<MappedFile> file = MappedFile::open(path);
  if (file->size() >= 4 && std::memcmp(file->data(), "PK\x03\x04", 4) == 0)
    return io::read_pth(std::move(file));
  if (io::looks_like_rwkvcpp(*file)) return io::read_rwkvcpp(std::move(file));
  if (io::looks_like_safetensors(*file)) return io::read_safetensors(std::move(file));
  if (file->size() == 0) fail(path, ": file is empty");
  if (file->data()[0] == 0x80)  // a pickle PROTO opcode: torch.save before torch 1.6
    fail(path, ": legacy (pre-zip) torch.save format is not supported; re-save it with "
         "torch.save from torch >= 1.6");
  fail(path, ": not a checkpoint (expected a PyTorch .pth zip archive, a safetensors file or an "
       "rwkv.cpp model file)");
}

const TensorView* Checkpoint::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& Checkpoint::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) fail(path_, ": missing tensor '", name, "'");
  return *t;
}

namespace io {

namespace {

// Keeps element counts well inside int64 and size_t byte counts (8 bytes per element at most).
constexpr int64_t kMaxNumel = INT64_MAX / 8;

}  // namespace

// Strict UTF-8 (no overlong forms, surrogates or code points past U+10FFFF): Python's unpickler
// and JSON both reject anything else, so such names would make unloadable files.
bool valid_utf8(std::string_view s) {
  static constexpr uint32_t kMinCodePoint[] = {0, 0, 0x80, 0x800, 0x10000};
  size_t i = 0;
  while (i < s.size()) {
    const auto lead = uint8_t(s[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    const size_t n = (lead & 0xe0) == 0xc0   ? 2
                     : (lead & 0xf0) == 0xe0 ? 3
                     : (lead & 0xf8) == 0xf0 ? 4
                                             : 0;  // 0: not a lead byte
    if (n == 0 || s.size() - i < n) return false;
    uint32_t code_point = lead & (0x7fu >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto next = uint8_t(s[i + k]);
      if ((next & 0xc0) != 0x80) return false;
      code_point = code_point << 6 | (next & 0x3fu);
    }
    if (code_point < kMinCodePoint[n] || code_point > 0x10ffff ||
        (code_point >= 0xd800 && code_point <= 0xdfff))
      return false;
    i += n;
  }
  return true;
}

uint8_t* new_buffer(size_t bytes, Owners& owners, const std::string& what) {
  try {
    auto buffer = std::make_shared<std::vector<uint64_t>>((bytes + 7) / 8);
    uint8_t* data = reinterpret_cast<uint8_t*>(buffer->data());
    owners.push_back(std::move(buffer));
    return data;
  } catch (const std::bad_alloc&) {
    fail(what, ": out of memory allocating ", bytes, " bytes");
  }
}

int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail(what, ": negative dimension ", d);
    if (__builtin_mul_overflow(n, d, &n) || n > kMaxNumel) fail(what, ": too many elements");
  }
  return n;
}

const float* f64_to_f32(const uint8_t* src, size_t n, Owners& owners, const std::string& what) {
  auto* out = reinterpret_cast<float*>(new_buffer(n * sizeof(float), owners, what));
  for (size_t i = 0; i < n; ++i) {
    double value;
    std::memcpy(&value, src + i * sizeof(double), sizeof(double));
    out[i] = float(value);
  }
  return out;
}

void check_tensors_to_save(const std::string& path, const std::vector<TensorView>& tensors,
                           bool allow_quantized) {
  std::unordered_set<std::string_view> names;
  for (const TensorView& t : tensors) {
    if (!valid_utf8(t.name)) fail(path, ": tensor name '", t.name, "' is not valid UTF-8");
    if (!names.insert(t.name).second) fail(path, ": duplicate tensor name '", t.name, "'");
    const std::string what = cat(path, ": tensor '", t.name, "'");
    if (is_quantized(t.dtype) && !allow_quantized) {
      fail(what, ": ", dtype_name(t.dtype), " tensors cannot be saved in this format");
    }
    if (is_quantized(t.dtype) &&
        (t.shape.empty() || t.shape.back() <= 0 || t.shape.back() % int64_t(dtype_block_elems(t.dtype)) != 0)) {
      fail(what, ": ", dtype_name(t.dtype), " rows must be whole blocks of ",
           dtype_block_elems(t.dtype), " elements, got shape ", t.shape_str());
    }
    if (checked_numel(t.shape, what) > 0 && !t.data) fail(what, ": no data");
  }
}

}  // namespace io

}  // namespace rwkv
