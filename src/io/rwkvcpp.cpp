// rwkv.cpp model files (spec §7.1). All integers are little-endian u32; nothing is padded:
//   header   magic 0x67676d66 ("fmgg" on disk), version (100 or 101), n_vocab, n_embed,
//            n_layer, data_type (the type of most matrices; informative)
//   records  until the end of the file: dim_count (1..3), key_length, data_type,
//            dims[dim_count] (innermost first: PyTorch's shape reversed), key (UTF-8, no
//            terminator), data (ggml rows; quantized types in 32-element blocks)
// Quantized tensors are handed out in place at any alignment (kernels decode them bytewise);
// FP32/FP16 ones are copied when the packing left them misaligned.
#include <cstring>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_set>

#include "io/formats.h"
#include "rwkv/error.h"

namespace rwkv::io {

namespace {

constexpr uint32_t kMagic = 0x67676d66;
constexpr size_t kHeaderBytes = 24;
constexpr size_t kRecordHeaderBytes = 12;  // dim_count, key_length, data_type
constexpr uint32_t kMaxDims = 3;
constexpr uint32_t kBlockElems = 32;  // every quantized type rwkv.cpp reads

// rwkv.cpp's type codes, which differ from ggml's enum. Codes that name no DType are refused
// with the reason.
struct TypeCode {
  const char* name;
  std::optional<DType> dtype;
  const char* why_not = nullptr;
};
constexpr const char* kRemoved = "removed from rwkv.cpp in 2023; re-quantize the model";
constexpr const char* kKQuant = "K-quants are not supported; use Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0";
const TypeCode kTypeCodes[] = {
    {"FP32", DType::F32},
    {"FP16", DType::F16},
    {"Q4_0", DType::Q4_0},
    {"Q4_1", DType::Q4_1},
    {"Q4_1_O", std::nullopt, kRemoved},
    {"Q4_2", std::nullopt, kRemoved},
    {"Q4_3", std::nullopt, kRemoved},
    {"Q5_0", DType::Q5_0},
    {"Q5_1", DType::Q5_1},
    {"Q8_0", DType::Q8_0},
    {"Q8_1", std::nullopt, "not supported (only used for activations in ggml)"},
    {"Q2_K", std::nullopt, kKQuant},
    {"Q3_K", std::nullopt, kKQuant},
    {"Q4_K", std::nullopt, kKQuant},
    {"Q5_K", std::nullopt, kKQuant},
    {"Q6_K", std::nullopt, kKQuant},
    {"Q8_K", std::nullopt, kKQuant},
};
constexpr uint32_t kNumTypeCodes = sizeof(kTypeCodes) / sizeof(kTypeCodes[0]);

DType parse_type_code(uint32_t code, const std::string& what) {
  if (code >= kNumTypeCodes)
    fail(what, ": unknown data type code ", code, " (rwkv.cpp codes are 0 to ",
         kNumTypeCodes - 1, ")");
  const TypeCode& type = kTypeCodes[code];
  if (!type.dtype) fail(what, ": unsupported data type ", code, " (", type.name, "): ", type.why_not);
  return *type.dtype;
}

uint32_t type_code(DType dtype, const std::string& what) {
  for (uint32_t code = 0; code < kNumTypeCodes; ++code)
    if (kTypeCodes[code].dtype == dtype) return code;
  fail(what, ": ", dtype_name(dtype), " tensors cannot be stored in rwkv.cpp files "
       "(convert them to F16 or F32)");
}

uint32_t load_u32(const uint8_t* p) {
  uint32_t value;
  std::memcpy(&value, p, 4);
  return value;
}

void append_u32(std::string& out, uint32_t value) {
  out.append(reinterpret_cast<const char*>(&value), 4);
}

struct ModelDims {
  uint64_t n_vocab = 0, n_embed = 0, n_layer = 0;
};

// "blocks.<index>." names a layer's tensor; nullopt for other names. Indices past 9 digits
// are clamped (any such index disagrees with every real n_layer).
std::optional<uint64_t> block_index(std::string_view name) {
  constexpr std::string_view kPrefix = "blocks.";
  if (!name.starts_with(kPrefix)) return std::nullopt;
  size_t i = kPrefix.size();
  uint64_t index = 0;
  const size_t first_digit = i;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') {
    if (i - first_digit < 10) index = index * 10 + uint64_t(name[i] - '0');
    ++i;
  }
  if (i == first_digit || i == name.size() || name[i] != '.') return std::nullopt;
  return index;
}

// n_vocab and n_embed from `emb.weight` (V, C), n_layer from the `blocks.N.` indices, which
// must run from 0 without gaps (rwkv.cpp looks every layer up by index).
ModelDims model_dims(const std::string& path, const std::vector<TensorView>& tensors,
                     std::optional<ModelDims> header) {
  const TensorView* emb = nullptr;
  std::set<uint64_t> blocks;
  for (const TensorView& t : tensors) {
    if (t.name == "emb.weight") emb = &t;
    if (const auto index = block_index(t.name)) blocks.insert(*index);
  }
  if (!emb) fail(path, ": no 'emb.weight' tensor (an rwkv.cpp file holds an RWKV model)");
  if (emb->shape.size() != 2)
    fail(path, ": tensor 'emb.weight' has shape ", emb->shape_str(), ", expected (n_vocab, n_embed)");
  ModelDims dims{uint64_t(emb->shape[0]), uint64_t(emb->shape[1]),
                 blocks.empty() ? 0 : *blocks.rbegin() + 1};
  if (header) {
    if (header->n_vocab != dims.n_vocab || header->n_embed != dims.n_embed)
      fail(path, ": header says n_vocab = ", header->n_vocab, ", n_embed = ", header->n_embed,
           " but 'emb.weight' has shape ", emb->shape_str());
    if (header->n_layer != dims.n_layer)
      fail(path, ": header says n_layer = ", header->n_layer, " but the tensors have ",
           dims.n_layer == 0 ? std::string("no 'blocks.N.' names")
                             : cat("block indices up to ", dims.n_layer - 1));
  }
  if (blocks.size() != dims.n_layer) {
    uint64_t missing = 0;
    while (blocks.count(missing)) ++missing;
    fail(path, ": no tensors for block ", missing, " (blocks 0 to ", dims.n_layer - 1,
         " expected)");
  }
  return dims;
}

// Turns rwkv.cpp's dims (innermost first) into a PyTorch-order shape and checks it.
std::vector<int64_t> parse_shape(const uint8_t* dims, uint32_t dim_count, DType dtype,
                                 const std::string& what) {
  std::vector<int64_t> shape(dim_count);
  for (uint32_t i = 0; i < dim_count; ++i) {
    const uint32_t ne = load_u32(dims + 4 * i);
    if (ne == 0) fail(what, ": dimension ne", i, " is zero");
    shape[dim_count - 1 - i] = int64_t(ne);
  }
  checked_numel(shape, what);
  if (is_quantized(dtype) && shape.back() % kBlockElems != 0)
    fail(what, ": ", dtype_name(dtype), " tensor of shape ", TensorView{"", dtype, shape}.shape_str(),
         ": innermost dimension ", shape.back(), " is not a multiple of ", kBlockElems,
         " (the block size)");
  return shape;
}

}  // namespace

bool looks_like_rwkvcpp(const MappedFile& file) {
  return file.size() >= 4 && load_u32(file.data()) == kMagic;
}

Checkpoint read_rwkvcpp(std::shared_ptr<MappedFile> file) {
  const std::string& path = file->path();
  const uint8_t* base = file->data();
  const size_t size = file->size();
  if (size < kHeaderBytes)
    fail(path, ": truncated rwkv.cpp file: ", size, " bytes, shorter than the ", kHeaderBytes,
         "-byte header");
  const uint32_t version = load_u32(base + 4);
  if (version != 100 && version != 101)
    fail(path, ": unsupported rwkv.cpp file version ", version, " (expected 100 or 101)");
  const ModelDims header{load_u32(base + 8), load_u32(base + 12), load_u32(base + 16)};
  parse_type_code(load_u32(base + 20), cat(path, ": header data_type"));

  Owners owners{file};
  std::vector<TensorView> tensors;
  std::unordered_set<std::string_view> names;  // views into the map
  size_t pos = kHeaderBytes;
  for (size_t index = 0; pos < size; ++index) {
    const std::string record = cat(path, ": tensor record #", index, " at byte ", pos);
    if (size - pos < kRecordHeaderBytes)
      fail(record, ": truncated record header (", size - pos, " bytes left, need ",
           kRecordHeaderBytes, ")");
    const uint32_t dim_count = load_u32(base + pos);
    const uint32_t key_length = load_u32(base + pos + 4);
    const uint32_t code = load_u32(base + pos + 8);
    pos += kRecordHeaderBytes;
    if (dim_count < 1 || dim_count > kMaxDims)
      fail(record, ": dim_count ", dim_count, " is not 1, 2 or 3");
    if (size - pos < 4 * size_t(dim_count))
      fail(record, ": truncated record header (the dims are cut off)");
    const uint8_t* dims = base + pos;
    pos += 4 * size_t(dim_count);
    if (key_length == 0) fail(record, ": empty tensor name (key_length 0)");
    if (key_length > size - pos)
      fail(record, ": key_length ", key_length, " runs past the end of the file (", size - pos,
           " bytes left; truncated file?)");
    const std::string_view key(reinterpret_cast<const char*>(base + pos), key_length);
    pos += key_length;
    if (!valid_utf8(key)) fail(record, ": tensor name is not valid UTF-8");

    const std::string what = cat(path, ": tensor '", key, "'");
    TensorView view;
    view.name = std::string(key);
    view.dtype = parse_type_code(code, what);
    if (is_quantized(view.dtype) && version == 100)
      fail(what, ": ", kTypeCodes[code].name, " tensor in a version-100 file (quantized "
           "layouts changed in version 101; re-quantize with a current rwkv.cpp)");
    view.shape = parse_shape(dims, dim_count, view.dtype, what);
    const size_t bytes = view.nbytes();
    if (bytes > size - pos)
      fail(what, ": truncated tensor data (needs ", bytes, " bytes, ", size - pos, " left)");
    if (!names.insert(key).second) fail(what, ": duplicate tensor name");

    const uint8_t* data = base + pos;
    pos += bytes;
    const size_t align = dtype_block_bytes(view.dtype);
    if (!is_quantized(view.dtype) && reinterpret_cast<uintptr_t>(data) % align != 0) {
      uint8_t* copy = new_buffer(bytes, owners, what);  // no padding in the format
      std::memcpy(copy, data, bytes);
      data = copy;
    }
    view.data = data;
    tensors.push_back(std::move(view));
  }
  model_dims(path, tensors, header);
  return Checkpoint(path, "rwkv.cpp", std::move(tensors), std::move(owners));
}

}  // namespace rwkv::io

namespace rwkv {

void save_rwkvcpp(const std::string& path, const std::vector<TensorView>& tensors, int version) {
  if (version != 100 && version != 101)
    fail(path, ": rwkv.cpp file version must be 100 or 101, got ", version);
  std::unordered_set<std::string_view> names;
  std::vector<uint32_t> codes;
  for (const TensorView& t : tensors) {
    const std::string what = cat(path, ": tensor '", t.name, "'");
    if (t.name.empty()) fail(path, ": empty tensor name");
    if (!io::valid_utf8(t.name)) fail(what, ": name is not valid UTF-8");
    if (t.name.size() > UINT32_MAX) fail(what, ": name too long");
    if (!names.insert(t.name).second) fail(path, ": duplicate tensor name '", t.name, "'");
    codes.push_back(io::type_code(t.dtype, what));
    if (is_quantized(t.dtype) && version == 100)
      fail(what, ": ", dtype_name(t.dtype), " tensors need file version 101");
    if (t.shape.empty() || t.shape.size() > io::kMaxDims)
      fail(what, ": shape ", t.shape_str(), " has ", t.shape.size(),
           " dimensions; rwkv.cpp files hold 1 to 3");
    for (int64_t d : t.shape)
      if (d <= 0 || d > int64_t(UINT32_MAX))
        fail(what, ": dimension ", d, " of shape ", t.shape_str(), " is out of range");
    io::checked_numel(t.shape, what);
    if (is_quantized(t.dtype) && t.shape.back() % io::kBlockElems != 0)
      fail(what, ": ", dtype_name(t.dtype), " tensor of shape ", t.shape_str(),
           ": innermost dimension is not a multiple of ", io::kBlockElems);
    if (!t.data) fail(what, ": no data");
  }
  const io::ModelDims dims = io::model_dims(path, tensors, std::nullopt);
  if (dims.n_vocab > UINT32_MAX || dims.n_embed > UINT32_MAX || dims.n_layer > UINT32_MAX)
    fail(path, ": model dimensions do not fit the rwkv.cpp header");

  // The header's data_type: the dtype holding the most matrix elements (first one on ties).
  std::vector<uint64_t> matrix_elems(io::kNumTypeCodes, 0);
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].shape.size() >= 2) matrix_elems[codes[i]] += uint64_t(tensors[i].numel());
  uint32_t data_type = 0;
  for (uint32_t code = 0; code < io::kNumTypeCodes; ++code)
    if (matrix_elems[code] > matrix_elems[data_type]) data_type = code;

  std::string header;
  for (uint32_t v : {io::kMagic, uint32_t(version), uint32_t(dims.n_vocab),
                     uint32_t(dims.n_embed), uint32_t(dims.n_layer), data_type})
    io::append_u32(header, v);
  // All record headers go into one string first, so the spans into it stay valid.
  std::string records;
  std::vector<size_t> record_ends;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& t = tensors[i];
    io::append_u32(records, uint32_t(t.shape.size()));
    io::append_u32(records, uint32_t(t.name.size()));
    io::append_u32(records, codes[i]);
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) io::append_u32(records, uint32_t(*d));
    records += t.name;
    record_ends.push_back(records.size());
  }
  std::vector<ByteSpan> parts{{header.data(), header.size()}};
  size_t record_begin = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    parts.push_back({records.data() + record_begin, record_ends[i] - record_begin});
    parts.push_back({tensors[i].data, tensors[i].nbytes()});
    record_begin = record_ends[i];
  }
  write_file_atomic(path, parts);
}

}  // namespace rwkv
