// safetensors: an 8-byte little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
// then the tensor bytes; offsets are relative to the end of the header.
#include <cstring>
#include <nlohmann/json.hpp>

#include "io/formats.h"
#include "rwkv/error.h"

namespace rwkv::io {

namespace {

// ordered_json keeps the header's order, which is the file order of the tensors.
using Json = nlohmann::ordered_json;

constexpr uint64_t kMaxHeader = 100u << 20;  // the limit the reference implementation enforces
// Real headers nest three deep. The limit matters: nlohmann copies ordered_json values
// recursively while parsing, so a hostile "[[[[..." header would overflow the stack.
constexpr int kMaxDepth = 8;
constexpr const char* kMetadataKey = "__metadata__";

struct FileDType {
  const char* name;
  DType loaded;  // F64 is converted to F32 on load
  size_t size;
};
constexpr FileDType kDTypes[] = {
    {"F32", DType::F32, 4},
    {"F16", DType::F16, 2},
    {"BF16", DType::BF16, 2},
    {"F64", DType::F32, 8},
};

const FileDType& parse_file_dtype(const std::string& name, const std::string& what) {
  for (const FileDType& d : kDTypes)
    if (name == d.name) return d;
  fail(what, ": unsupported dtype '", name, "' (supported: F32, F16, BF16, F64)");
}

const char* file_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    default: break;  // quantized: refused by check_tensors_to_save
  }
  return "?";
}

uint64_t header_length(const MappedFile& file) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(file.data()[i]) << (8 * i);
  return n;
}

// A JSON value that must be a non-negative integer.
uint64_t json_count(const Json& value, const std::string& what, const char* field) {
  if (!value.is_number_unsigned())  // dump() only scalars: it recurses into nested arrays
    fail(what, ": \"", field, "\" must hold non-negative integers, got ",
         value.is_primitive() ? value.dump() : std::string(value.type_name()));
  return value.get<uint64_t>();
}

const Json& json_field(const Json& info, const char* field, const std::string& what) {
  const auto it = info.find(field);
  if (it == info.end()) fail(what, ": header entry has no \"", field, "\"");
  return *it;
}

TensorView load_tensor(const std::string& name, const Json& info, const uint8_t* data,
                       uint64_t data_size, Owners& owners, const std::string& path) {
  const std::string what = cat(path, ": tensor '", name, "'");
  if (!info.is_object()) fail(what, ": header entry is not an object");
  const Json& dtype = json_field(info, "dtype", what);
  if (!dtype.is_string()) fail(what, ": \"dtype\" is not a string");
  const FileDType& type = parse_file_dtype(dtype.get<std::string>(), what);

  TensorView view;
  view.name = name;
  view.dtype = type.loaded;
  const Json& shape = json_field(info, "shape", what);
  if (!shape.is_array()) fail(what, ": \"shape\" is not an array");
  for (const Json& dim : shape) {
    const uint64_t n = json_count(dim, what, "shape");
    if (n > uint64_t(INT64_MAX)) fail(what, ": dimension ", n, " is too large");
    view.shape.push_back(int64_t(n));
  }
  const int64_t numel = checked_numel(view.shape, what);

  const Json& offsets = json_field(info, "data_offsets", what);
  if (!offsets.is_array() || offsets.size() != 2)
    fail(what, ": \"data_offsets\" is not a [begin, end] pair");
  const uint64_t begin = json_count(offsets[0], what, "data_offsets");
  const uint64_t end = json_count(offsets[1], what, "data_offsets");
  if (begin > end || end > data_size)
    fail(what, ": data_offsets [", begin, ", ", end, "] lie outside the ", data_size,
         " data bytes (truncated file?)");
  const uint64_t bytes = uint64_t(numel) * type.size;
  if (end - begin != bytes)
    fail(what, ": data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes but ",
         dtype.get<std::string>(), " ", view.shape_str(), " needs ", bytes);

  const uint8_t* p = data + begin;
  if (type.size == 8) {
    view.data = f64_to_f32(p, size_t(numel), owners, what);
  } else if (bytes == 0 || reinterpret_cast<uintptr_t>(p) % type.size == 0) {
    view.data = p;  // in place, in the map
  } else {  // packed after a tensor of odd size: copy to align
    uint8_t* copy = new_buffer(size_t(bytes), owners, what);
    std::memcpy(copy, p, size_t(bytes));
    view.data = copy;
  }
  return view;
}

}  // namespace

bool looks_like_safetensors(const MappedFile& file) {
  return file.size() > 8 && file.data()[8] == '{' && header_length(file) <= kMaxHeader;
}

Checkpoint read_safetensors(std::shared_ptr<MappedFile> file) {
  const std::string& path = file->path();
  const uint64_t length = header_length(*file);
  if (length > file->size() - 8)
    fail(path, ": truncated safetensors file: the header claims ", length,
         " bytes but the file has ", file->size(), " bytes");
  const auto* text = reinterpret_cast<const char*>(file->data() + 8);
  auto limit_depth = [&](int depth, Json::parse_event_t, Json&) {
    if (depth > kMaxDepth)
      fail(path, ": bad safetensors header: JSON nested deeper than ", kMaxDepth, " levels");
    return true;
  };
  Json header;  // an object: looks_like_safetensors saw the '{'
  try {
    header = Json::parse(text, text + length, limit_depth);
  } catch (const Json::exception& e) {
    fail(path, ": bad safetensors header JSON: ", e.what());
  }

  const uint8_t* data = file->data() + 8 + length;
  const uint64_t data_size = file->size() - 8 - length;
  Owners owners{file};
  std::vector<TensorView> tensors;
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) continue;
    tensors.push_back(load_tensor(name, info, data, data_size, owners, path));
  }
  return Checkpoint(path, "safetensors", std::move(tensors), std::move(owners));
}

}  // namespace rwkv::io

namespace rwkv {

void save_safetensors(const std::string& path, const std::vector<TensorView>& tensors) {
  io::check_tensors_to_save(path, tensors);
  io::Json header = io::Json::object();
  header[io::kMetadataKey] = {{"format", "pt"}};  // what Hugging Face loaders look for
  uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    if (t.name == io::kMetadataKey)
      fail(path, ": tensor name '", t.name, "' is reserved in safetensors");
    io::Json entry = io::Json::object();
    entry["dtype"] = io::file_dtype_name(t.dtype);
    entry["shape"] = t.shape;
    entry["data_offsets"] = io::Json::array({offset, offset + t.nbytes()});
    header[t.name] = std::move(entry);
    offset += t.nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // so the data starts 8-byte aligned
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[size_t(i)] = char((uint64_t(text.size()) >> (8 * i)) & 0xff);

  std::vector<ByteSpan> parts{{prefix.data(), prefix.size()}, {text.data(), text.size()}};
  for (const TensorView& t : tensors)
    if (t.nbytes() > 0) parts.push_back({t.data, t.nbytes()});
  write_file_atomic(path, parts);
}

}  // namespace rwkv
