#include "train/train_state.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <set>

#include "core/hash.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"

namespace rwkv::train {

static_assert(std::endian::native == std::endian::little,
              "train-state files are little-endian; a big-endian host would need byte swaps");

const std::vector<float>* TrainState::find(const std::string& name) const {
  for (const auto& [array_name, values] : arrays) {
    if (array_name == name) return &values;
  }
  return nullptr;
}

namespace {

template <typename T>
void put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

// Bounds-checked reading of the mapped file; every failure names the file and the field.
class Reader {
 public:
  Reader(const std::string& path, const uint8_t* data, size_t end)
      : path_(path), data_(data), end_(end) {}

  const uint8_t* take(size_t n, const char* what) {
    if (n > end_ - pos_)
      fail(path_, ": truncated train-state file: ", what, " needs ", n, " bytes at offset ", pos_,
           ", only ", end_ - pos_, " left");
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  template <typename T>
  T read(const char* what) {
    T value;
    std::memcpy(&value, take(sizeof value, what), sizeof value);
    return value;
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& path_;
  const uint8_t* data_;
  size_t end_;
  size_t pos_ = 0;
};

}  // namespace

void save_train_state(const std::string& path, const TrainState& state) {
  std::string json_text;
  try {
    json_text = state.meta.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a string that is not valid UTF-8
    fail(path, ": cannot serialise the train-state metadata: ", e.what());
  }
  // The small fields go into `header`/`trailers`; the arrays are written from the caller's
  // vectors without a copy (optimiser moments can be gigabytes).
  std::string header(kTrainStateMagic, sizeof kTrainStateMagic);
  put(header, kTrainStateVersion);
  put(header, uint64_t(json_text.size()));
  header += json_text;
  if (state.arrays.size() > UINT32_MAX) fail(path, ": too many arrays (", state.arrays.size(), ")");
  put(header, uint32_t(state.arrays.size()));

  std::set<std::string> names;
  std::vector<std::string> array_headers;
  array_headers.reserve(state.arrays.size());
  for (const auto& [name, values] : state.arrays) {
    if (!names.insert(name).second) fail(path, ": duplicate train-state array name '", name, "'");
    if (name.size() > UINT32_MAX) fail(path, ": array name too long");
    std::string h;
    put(h, uint32_t(name.size()));
    h += name;
    put(h, uint64_t(values.size()));
    array_headers.push_back(std::move(h));
  }

  std::vector<ByteSpan> parts;
  parts.push_back({header.data(), header.size()});
  for (size_t i = 0; i < state.arrays.size(); ++i) {
    parts.push_back({array_headers[i].data(), array_headers[i].size()});
    const std::vector<float>& values = state.arrays[i].second;
    parts.push_back({values.data(), values.size() * sizeof(float)});
  }
  uint64_t checksum = kFnv1a64Basis;
  for (const ByteSpan& part : parts) checksum = fnv1a64(part.data, part.size, checksum);
  parts.push_back({&checksum, sizeof checksum});
  write_file_atomic(path, parts);  // throws naming the file; the old file stays on failure
}

TrainState load_train_state(const std::string& path) {
  const auto file = MappedFile::open(path);  // throws naming the file
  const uint8_t* data = file->data();
  const size_t size = file->size();
  constexpr size_t kMinSize = sizeof kTrainStateMagic + 4 + 8 + 4 + 8;
  const size_t magic_bytes = std::min(size, sizeof kTrainStateMagic);
  if (size == 0 || std::memcmp(data, kTrainStateMagic, magic_bytes) != 0)
    fail(path, ": not a train-state file (magic is not \"RWKVTRN1\")");
  if (size < kMinSize)
    fail(path, ": truncated train-state file (", size, " bytes, the smallest is ", kMinSize, ")");

  // Everything but the trailing checksum is the body; sizes are checked against it.
  const size_t body = size - sizeof(uint64_t);
  Reader in(path, data, body);
  in.take(sizeof kTrainStateMagic, "magic");
  const uint32_t version = in.read<uint32_t>("version");
  if (version != kTrainStateVersion)
    fail(path, ": unsupported train-state version ", version, " (this build reads ",
         kTrainStateVersion, ")");
  const uint64_t json_length = in.read<uint64_t>("json length");
  const auto* json_bytes = reinterpret_cast<const char*>(in.take(json_length, "json"));
  const uint32_t array_count = in.read<uint32_t>("array count");

  struct ArrayView {
    std::string name;
    const uint8_t* bytes;
    uint64_t count;
  };
  std::vector<ArrayView> views;
  std::set<std::string> names;
  for (uint32_t i = 0; i < array_count; ++i) {
    const uint32_t name_length = in.read<uint32_t>("array name length");
    std::string name(reinterpret_cast<const char*>(in.take(name_length, "array name")),
                     name_length);
    const uint64_t count = in.read<uint64_t>("array element count");
    if (count > (body - in.pos()) / sizeof(float))  // also guards count·4 against overflow
      fail(path, ": truncated train-state file: array '", name, "' claims ", count,
           " floats, more than the file holds");
    const uint8_t* bytes = in.take(count * sizeof(float), "array data");
    if (!names.insert(name).second) fail(path, ": duplicate train-state array name '", name, "'");
    views.push_back({std::move(name), bytes, count});
  }
  if (in.pos() != body)
    fail(path, ": ", body - in.pos(), " unexpected bytes after the last train-state array");

  uint64_t stored;
  std::memcpy(&stored, data + body, sizeof stored);
  if (fnv1a64(data, body) != stored)
    fail(path, ": train-state checksum mismatch (the file is corrupt)");

  TrainState state;
  state.meta = nlohmann::json::parse(json_bytes, json_bytes + json_length, nullptr,
                                     /*allow_exceptions=*/false);
  if (state.meta.is_discarded()) fail(path, ": the train-state metadata is not valid JSON");
  state.arrays.reserve(views.size());
  for (const ArrayView& view : views) {
    std::vector<float> values(view.count);
    if (view.count > 0) std::memcpy(values.data(), view.bytes, view.count * sizeof(float));
    state.arrays.emplace_back(view.name, std::move(values));
  }
  return state;
}

}  // namespace rwkv::train
