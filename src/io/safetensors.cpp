// safetensors: an 8-byte little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
// then the tensor bytes; offsets are relative to the end of the header.
//
// Quantized tensors (rwkv/dtype.h block types, as `rwkv quantize` writes them) are stored as
// dtype "U8" with shape [rows, bytes per row] (any leading dimensions), and named in the
// metadata, whose values are strings:
//   "rwkv.quantized": "1"                         the layout's version
//   "rwkv.dtype.<tensor name>": "q4_g128"         the block type (rwkv/dtype.h, spec §7.1)
// The tensor's shape is then [rows, elements per row]. Other readers see plain byte arrays.
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <unordered_map>

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
constexpr const char* kQuantizedKey = "rwkv.quantized";
constexpr const char* kQuantizedVersion = "1";
constexpr const char* kDTypePrefix = "rwkv.dtype.";

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

// The [begin, end) bytes of a tensor, checked against the data section.
std::pair<uint64_t, uint64_t> data_range(const Json& info, uint64_t data_size,
                                         const std::string& what) {
  const Json& offsets = json_field(info, "data_offsets", what);
  if (!offsets.is_array() || offsets.size() != 2)
    fail(what, ": \"data_offsets\" is not a [begin, end] pair");
  const uint64_t begin = json_count(offsets[0], what, "data_offsets");
  const uint64_t end = json_count(offsets[1], what, "data_offsets");
  if (begin > end || end > data_size)
    fail(what, ": data_offsets [", begin, ", ", end, "] lie outside the ", data_size,
         " data bytes (truncated file?)");
  return {begin, end};
}

std::vector<int64_t> parse_shape(const Json& info, const std::string& what) {
  const Json& shape = json_field(info, "shape", what);
  if (!shape.is_array()) fail(what, ": \"shape\" is not an array");
  std::vector<int64_t> dims;
  for (const Json& dim : shape) {
    const uint64_t n = json_count(dim, what, "shape");
    if (n > uint64_t(INT64_MAX)) fail(what, ": dimension ", n, " is too large");
    dims.push_back(int64_t(n));
  }
  return dims;
}

// A quantized tensor: U8 [..., bytes per row] becomes `type` [..., elements per row], in place
// (blocks are read at any alignment).
TensorView load_quantized(const std::string& name, DType type, const Json& info,
                          const uint8_t* data, uint64_t data_size, const std::string& what) {
  if (json_field(info, "dtype", what) != "U8") {
    fail(what, ": quantized (", dtype_name(type), ") tensors are stored as U8, not ",
         json_field(info, "dtype", what).dump());
  }
  TensorView view;
  view.name = name;
  view.dtype = type;
  view.shape = parse_shape(info, what);
  const size_t block = dtype_block_bytes(type);
  if (view.shape.empty() || view.shape.back() == 0 || size_t(view.shape.back()) % block != 0) {
    fail(what, ": ", dtype_name(type), " rows must be whole ", block, "-byte blocks, got shape ",
         view.shape_str());
  }
  view.shape.back() = int64_t(size_t(view.shape.back()) / block * dtype_block_elems(type));
  const int64_t numel = checked_numel(view.shape, what);
  const auto [begin, end] = data_range(info, data_size, what);
  if (end - begin != dtype_nbytes(type, size_t(numel)))
    fail(what, ": data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes but ",
         dtype_name(type), " ", view.shape_str(), " needs ", dtype_nbytes(type, size_t(numel)));
  view.data = data + begin;
  return view;
}

// The quantized tensors the metadata names, by name.
using QuantizedTypes = std::unordered_map<std::string, DType>;

QuantizedTypes quantized_types(const Json& header, const std::string& path) {
  QuantizedTypes types;
  const auto meta = header.find(kMetadataKey);
  if (meta == header.end() || !meta->is_object()) return types;
  const auto version = meta->find(kQuantizedKey);
  for (const auto& [key, value] : meta->items()) {
    if (!key.starts_with(kDTypePrefix)) continue;
    if (version == meta->end() || *version != kQuantizedVersion) {
      fail(path, ": quantized tensors of layout version ",
           version == meta->end() ? std::string("(none)") : version->dump(),
           " (this build reads version ", kQuantizedVersion, ")");
    }
    const std::string name = key.substr(std::string(kDTypePrefix).size());
    if (!value.is_string()) fail(path, ": metadata \"", key, "\" is not a string");
    DType t;
    try {
      t = parse_dtype(value.get<std::string>());
    } catch (const Error&) {
      fail(path, ": tensor '", name, "': unknown quantized type ", value.dump());
    }
    if (!is_quantized(t)) fail(path, ": tensor '", name, "': ", value.dump(), " is not a quantized type");
    types[name] = t;
  }
  return types;
}

TensorView load_tensor(const std::string& name, const Json& info, const uint8_t* data,
                       uint64_t data_size, Owners& owners, const std::string& path,
                       const QuantizedTypes& quantized) {
  const std::string what = cat(path, ": tensor '", name, "'");
  if (!info.is_object()) fail(what, ": header entry is not an object");
  const Json& dtype = json_field(info, "dtype", what);
  if (!dtype.is_string()) fail(what, ": \"dtype\" is not a string");
  const auto q = quantized.find(name);
  if (q != quantized.end()) return load_quantized(name, q->second, info, data, data_size, what);
  const FileDType& type = parse_file_dtype(dtype.get<std::string>(), what);

  TensorView view;
  view.name = name;
  view.dtype = type.loaded;
  view.shape = parse_shape(info, what);
  const int64_t numel = checked_numel(view.shape, what);
  const auto [begin, end] = data_range(info, data_size, what);
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
  const QuantizedTypes quantized = quantized_types(header, path);
  std::vector<TensorView> tensors;
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) continue;
    tensors.push_back(load_tensor(name, info, data, data_size, owners, path, quantized));
  }
  for (const auto& [name, type] : quantized) {
    if (!header.contains(name)) fail(path, ": metadata names a quantized tensor '", name, "' the file does not hold");
  }
  return Checkpoint(path, "safetensors", std::move(tensors), std::move(owners));
}

}  // namespace rwkv::io

namespace rwkv {

void save_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  io::check_tensors_to_save(path, tensors, /*allow_quantized=*/true);
  io::Json header = io::Json::object();
  io::Json meta = {{"format", "pt"}};  // what Hugging Face loaders look for
  for (const auto& [key, value] : metadata) {
    if (key == io::kQuantizedKey || key.starts_with(io::kDTypePrefix))
      fail(path, ": metadata key '", key, "' is reserved");
    meta[key] = value;
  }
  for (const TensorView& t : tensors) {
    if (!is_quantized(t.dtype)) continue;
    meta[io::kQuantizedKey] = io::kQuantizedVersion;
    meta[io::kDTypePrefix + t.name] = dtype_name(t.dtype);
  }
  header[io::kMetadataKey] = std::move(meta);
  uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    if (t.name == io::kMetadataKey)
      fail(path, ": tensor name '", t.name, "' is reserved in safetensors");
    io::Json entry = io::Json::object();
    std::vector<int64_t> shape = t.shape;
    if (is_quantized(t.dtype)) {  // bytes per row (check_tensors_to_save: whole blocks)
      shape.back() = int64_t(dtype_nbytes(t.dtype, size_t(shape.back())));
      entry["dtype"] = "U8";
    } else {
      entry["dtype"] = io::file_dtype_name(t.dtype);
    }
    entry["shape"] = shape;
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
