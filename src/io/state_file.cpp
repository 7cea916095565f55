#include "rwkv/state.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/hash.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"

namespace rwkv {

// The header is encoded field by field; the data is written as it lies in memory.
static_assert(std::endian::native == std::endian::little, "state data is little-endian fp32");

namespace {

constexpr char kMagic[8] = {'R', 'W', 'K', 'V', 'S', 'T', 'A', 'T'};
constexpr uint32_t kVersion = 1;
constexpr size_t kGenerationBytes = 16;
constexpr size_t kHeaderBytes = 80;  // the version 1 header, also where its data starts
constexpr uint32_t kDtypeF32 = 0;

// Byte offsets of the header fields.
enum : size_t {
  kOffVersion = 8,
  kOffHeaderBytes = 12,
  kOffGeneration = 16,
  kOffNLayer = 32,
  kOffNEmbd = 36,
  kOffNHead = 40,
  kOffHeadSize = 44,
  kOffFloats = 48,
  kOffFingerprint = 56,
  kOffDtype = 64,
  kOffReserved = 68,
  kOffChecksum = 72,
};

template <typename T>
void put(uint8_t* header, size_t offset, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) header[offset + i] = uint8_t(uint64_t(value) >> (8 * i));
}

template <typename T>
T get(const uint8_t* header, size_t offset) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(header[offset + i]) << (8 * i);
  return T(v);
}

std::string hex64(uint64_t v) { return cat("0x", std::hex, v); }

struct Header {
  StateSpec spec;
  uint32_t dtype = 0;
  uint64_t checksum = 0;
  size_t header_bytes = 0;
};

Header parse_header(const std::string& path, const uint8_t* bytes, size_t size) {
  if (std::memcmp(bytes, kMagic, std::min(size, sizeof kMagic)) != 0)
    fail(path, ": not an rwkv state file (bad magic)");
  if (size < kHeaderBytes)
    fail(path, ": truncated state file header: got ", size, " bytes, expected ", kHeaderBytes);
  const uint32_t version = get<uint32_t>(bytes, kOffVersion);
  if (version != kVersion)
    fail(path, ": unsupported state file version ", version, " (this build reads version ",
         kVersion, ")");
  Header h;
  h.header_bytes = get<uint32_t>(bytes, kOffHeaderBytes);
  if (h.header_bytes < kHeaderBytes)
    fail(path, ": corrupt state file header: header_bytes ", h.header_bytes, " < ", kHeaderBytes);
  if (h.header_bytes > size)
    fail(path, ": truncated state file header: got ", size, " bytes, header_bytes says ",
         h.header_bytes);
  const char* generation = reinterpret_cast<const char*>(bytes + kOffGeneration);
  h.spec.generation.assign(generation, strnlen(generation, kGenerationBytes));
  h.spec.n_layer = get<int32_t>(bytes, kOffNLayer);
  h.spec.n_embd = get<int32_t>(bytes, kOffNEmbd);
  h.spec.n_head = get<int32_t>(bytes, kOffNHead);
  h.spec.head_size = get<int32_t>(bytes, kOffHeadSize);
  h.spec.floats = get<uint64_t>(bytes, kOffFloats);
  h.spec.fingerprint = get<uint64_t>(bytes, kOffFingerprint);
  h.dtype = get<uint32_t>(bytes, kOffDtype);
  h.checksum = get<uint64_t>(bytes, kOffChecksum);
  return h;
}

}  // namespace

std::string StateSpec::describe() const {
  return cat(generation, " L", n_layer, " C", n_embd, " H", n_head, "x", head_size, " (", floats,
             " floats, fingerprint ", hex64(fingerprint), ")");
}

void save_state_file(const std::string& path, const StateSpec& spec, std::span<const float> data) {
  if (data.size() != spec.floats)
    fail(path, ": state has ", data.size(), " floats, but its spec says ", spec.describe());
  if (spec.generation.size() > kGenerationBytes)
    fail(path, ": generation name '", spec.generation, "' is longer than ", kGenerationBytes,
         " bytes");
  const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
  uint8_t header[kHeaderBytes] = {};
  std::memcpy(header, kMagic, sizeof kMagic);
  put<uint32_t>(header, kOffVersion, kVersion);
  put<uint32_t>(header, kOffHeaderBytes, kHeaderBytes);
  std::memcpy(header + kOffGeneration, spec.generation.data(), spec.generation.size());
  put<int32_t>(header, kOffNLayer, spec.n_layer);
  put<int32_t>(header, kOffNEmbd, spec.n_embd);
  put<int32_t>(header, kOffNHead, spec.n_head);
  put<int32_t>(header, kOffHeadSize, spec.head_size);
  put<uint64_t>(header, kOffFloats, spec.floats);
  put<uint64_t>(header, kOffFingerprint, spec.fingerprint);
  put<uint32_t>(header, kOffDtype, kDtypeF32);
  put<uint32_t>(header, kOffReserved, 0);
  put<uint64_t>(header, kOffChecksum, fnv1a64(bytes, data.size_bytes()));
  write_file_atomic(path, {{header, sizeof header}, {bytes, data.size_bytes()}});
}

std::vector<float> load_state_file(const std::string& path, const StateSpec& expected) {
  const auto file = MappedFile::open(path);
  const Header h = parse_header(path, file->data(), file->size());
  if (h.dtype != kDtypeF32)
    fail(path, ": unsupported state dtype ", h.dtype, " (only 0 = fp32 is supported)");
  if (h.spec != expected)
    fail(path, ": state belongs to another model: the file has ", h.spec.describe(),
         ", the model expects ", expected.describe());
  const size_t got = file->size() - h.header_bytes;
  const size_t want = expected.floats * sizeof(float);
  if (got < want) fail(path, ": truncated state data: got ", got, " bytes, expected ", want);
  if (got > want) fail(path, ": ", got - want, " unexpected bytes after the state data");
  const uint8_t* bytes = file->data() + h.header_bytes;
  const uint64_t checksum = fnv1a64(bytes, want);
  if (checksum != h.checksum)
    fail(path, ": state data checksum mismatch (stored ", hex64(h.checksum), ", computed ",
         hex64(checksum), "): the file is corrupt");
  std::vector<float> out(expected.floats);
  if (want > 0) std::memcpy(out.data(), bytes, want);
  return out;
}

std::vector<float> read_raw_state(const std::string& path, size_t expected_floats) {
  const auto file = MappedFile::open(path);
  const size_t want = expected_floats * sizeof(float);
  if (file->size() != want)
    fail(path, ": raw state size mismatch: got ", file->size(), " bytes, expected ", want, " (",
         expected_floats, " fp32 values)");
  std::vector<float> out(expected_floats);
  if (want > 0) std::memcpy(out.data(), file->data(), want);
  return out;
}

void write_raw_state(const std::string& path, std::span<const float> data) {
  write_file_atomic(path, data.data(), data.size_bytes());
}

}  // namespace rwkv
