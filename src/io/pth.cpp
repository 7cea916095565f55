// PyTorch .pth files: the zip archive torch.save writes (since torch 1.6). Layout:
//   <archive>/data.pkl      pickle of {name: _rebuild_tensor_v2(storage, offset, shape, stride,..)}
//   <archive>/data/<key>    raw little-endian bytes of each storage, stored uncompressed
//   <archive>/version, <archive>/byteorder (optional, "little")
#include <cstring>
#include <string_view>
#include <unordered_map>

#include "io/formats.h"
#include "io/pickle.h"
#include "io/zip.h"
#include "rwkv/error.h"

namespace rwkv::io {

namespace {

std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + ")";
}

DType loaded_dtype(StorageType type) {
  switch (type) {
    case StorageType::F16: return DType::F16;
    case StorageType::BF16: return DType::BF16;
    case StorageType::F32:
    case StorageType::F64: return DType::F32;  // fp64 is converted on load
  }
  return DType::F32;
}

const char* storage_global(DType dtype) {
  switch (dtype) {
    case DType::F32: return "FloatStorage";
    case DType::F16: return "HalfStorage";
    case DType::BF16: return "BFloat16Storage";
    default: break;  // quantized: refused by check_tensors_to_save
  }
  return "?";
}

// The entries of a torch.save archive by name. torch puts every entry under one folder, named
// after the file when it was saved, and takes that name from the first entry; so do we.
class TorchArchive {
 public:
  explicit TorchArchive(const MappedFile& file)
      : entries_(read_zip_directory(file.data(), file.size(), file.path())) {
    if (entries_.empty()) fail(file.path(), ": not a PyTorch checkpoint: the zip is empty");
    const size_t slash = entries_[0].name.find('/');
    if (slash == std::string::npos)
      fail(file.path(), ": not a PyTorch checkpoint: zip entry '", entries_[0].name,
           "' is not inside an archive folder");
    prefix_ = entries_[0].name.substr(0, slash + 1);
    for (const ZipEntry& entry : entries_) by_name_.emplace(entry.name, &entry);
  }
  TorchArchive(const TorchArchive&) = delete;  // by_name_ points into entries_
  TorchArchive& operator=(const TorchArchive&) = delete;
  // The entry "<archive>/<relative>", or null.
  const ZipEntry* find(const std::string& relative) const {
    const auto it = by_name_.find(prefix_ + relative);
    return it == by_name_.end() ? nullptr : it->second;
  }
  const std::string& prefix() const { return prefix_; }

 private:
  std::vector<ZipEntry> entries_;
  std::string prefix_;
  std::unordered_map<std::string_view, const ZipEntry*> by_name_;
};

// Checks that every element the tensor views lies inside its storage.
void check_extent(const PickledTensor& t, int64_t numel, const std::string& what) {
  if (t.offset < 0) fail(what, ": negative storage offset ", t.offset);
  for (int64_t stride : t.stride)
    if (stride < 0) fail(what, ": negative stride in ", dims_str(t.stride));
  if (numel == 0) return;
  int64_t last = t.offset;
  for (size_t d = 0; d < t.shape.size(); ++d) {
    int64_t step = 0;
    if (__builtin_mul_overflow(t.shape[d] - 1, t.stride[d], &step) ||
        __builtin_add_overflow(last, step, &last))
      fail(what, ": shape ", dims_str(t.shape), " with stride ", dims_str(t.stride),
           " overflows");
  }
  if (last >= t.storage_numel)
    fail(what, ": shape ", dims_str(t.shape), " with stride ", dims_str(t.stride), " at offset ",
         t.offset, " exceeds its storage of ", t.storage_numel, " elements");
}

bool is_row_major(const PickledTensor& t) {
  int64_t expected = 1;  // cannot overflow: the element count was checked
  for (size_t d = t.shape.size(); d-- > 0;) {
    if (t.shape[d] != 1 && t.stride[d] != expected) return false;
    expected *= t.shape[d];
  }
  return true;
}

// Copies the elements the tensor views, in row-major order, to out.
void gather(const uint8_t* storage, size_t element_size, const PickledTensor& t, int64_t numel,
            uint8_t* out) {
  const size_t rank = t.shape.size();
  std::vector<int64_t> index(rank, 0);
  int64_t source = t.offset;
  for (int64_t n = 0; n < numel; ++n) {
    std::memcpy(out + size_t(n) * element_size, storage + size_t(source) * element_size,
                element_size);
    for (size_t d = rank; d-- > 0;) {  // odometer step, last dimension fastest
      if (++index[d] < t.shape[d]) {
        source += t.stride[d];
        break;
      }
      source -= (t.shape[d] - 1) * t.stride[d];
      index[d] = 0;
    }
  }
}

// The tensor's elements, row-major: in place in the map when possible, else a copy in owners.
const void* tensor_data(const PickledTensor& t, const uint8_t* storage, int64_t numel,
                        Owners& owners, const std::string& what) {
  if (numel == 0) return storage;
  const size_t element_size = storage_element_size(t.storage_type);
  const size_t bytes = size_t(numel) * element_size;
  const uint8_t* first = storage + size_t(t.offset) * element_size;
  const bool row_major = is_row_major(t);
  if (t.storage_type == StorageType::F64) {
    if (row_major) return f64_to_f32(first, size_t(numel), owners, what);
    Owners scratch;
    uint8_t* gathered = new_buffer(bytes, scratch, what);
    gather(storage, element_size, t, numel, gathered);
    return f64_to_f32(gathered, size_t(numel), owners, what);
  }
  if (row_major && reinterpret_cast<uintptr_t>(first) % element_size == 0) return first;
  uint8_t* copy = new_buffer(bytes, owners, what);
  if (row_major) {
    std::memcpy(copy, first, bytes);
  } else {
    gather(storage, element_size, t, numel, copy);
  }
  return copy;
}

TensorView load_tensor(const PickledTensor& t, const MappedFile& file,
                       const TorchArchive& archive, Owners& owners) {
  const std::string what = cat(file.path(), ": tensor '", t.name, "'");
  const ZipEntry* entry = archive.find("data/" + t.storage_key);
  if (!entry)
    fail(what, ": its storage is missing (no zip entry '", archive.prefix(), "data/",
         t.storage_key, "')");
  const size_t element_size = storage_element_size(t.storage_type);
  if (uint64_t(t.storage_numel) > entry->size / element_size)
    fail(what, ": storage '", t.storage_key, "' has ", entry->size, " bytes, too few for ",
         t.storage_numel, " elements of ", element_size, " bytes");
  const uint8_t* storage = stored_entry_data(file.data(), *entry, file.path());
  const int64_t numel = checked_numel(t.shape, what);
  check_extent(t, numel, what);
  // Only overlapping views (stride 0, as from expand()) can do this. Refusing them bounds every
  // copy by the file size, so a small hostile file cannot demand a huge allocation.
  if (numel > t.storage_numel)
    fail(what, ": views ", numel, " elements of a storage of ", t.storage_numel,
         " (a broadcast view?); save it with .contiguous()");
  TensorView view;
  view.name = t.name;
  view.dtype = loaded_dtype(t.storage_type);
  view.shape = t.shape;
  view.data = tensor_data(t, storage, numel, owners, what);
  return view;
}

void check_byte_order(const MappedFile& file, const TorchArchive& archive) {
  const ZipEntry* entry = archive.find("byteorder");
  if (!entry) return;  // older torch: always little-endian
  const uint8_t* bytes = stored_entry_data(file.data(), *entry, file.path());
  const std::string_view order(reinterpret_cast<const char*>(bytes), entry->size);
  if (order != "little")
    fail(file.path(), ": byte order '", order.substr(0, 16), "' is not supported (only little)");
}

std::vector<int64_t> row_major_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    strides[d] = stride;
    stride *= shape[d];
  }
  return strides;
}

// {name: tensor}, tensor i in storage "i" of its own.
std::string state_dict_pickle(const std::vector<TensorView>& tensors) {
  PickleWriter w;
  w.op(op::kEmptyDict);
  w.op(op::kMark);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& t = tensors[i];
    w.string(t.name);
    w.torch_tensor(storage_global(t.dtype), std::to_string(i), t.numel(), 0, t.shape,
                   row_major_strides(t.shape));
  }
  w.op(op::kSetItems);
  w.op(op::kStop);
  return w.bytes();
}

}  // namespace

Checkpoint read_pth(std::shared_ptr<MappedFile> file) {
  const TorchArchive archive(*file);
  const ZipEntry* pickle = archive.find("data.pkl");
  if (!pickle)
    fail(file->path(), ": not a PyTorch checkpoint: no '", archive.prefix(),
         "data.pkl' in the zip");
  check_byte_order(*file, archive);
  const std::vector<PickledTensor> records = read_state_dict_pickle(
      stored_entry_data(file->data(), *pickle, file->path()), pickle->size, file->path());
  Owners owners{file};
  std::vector<TensorView> tensors;
  tensors.reserve(records.size());
  for (const PickledTensor& record : records)
    tensors.push_back(load_tensor(record, *file, archive, owners));
  return Checkpoint(file->path(), "pth", std::move(tensors), std::move(owners));
}

void write_pth(const std::string& path, const std::vector<TensorView>& tensors,
               bool force_zip64) {
  check_tensors_to_save(path, tensors);
  const std::string pickle = state_dict_pickle(tensors);
  static constexpr std::string_view kByteOrder = "little";
  static constexpr std::string_view kVersion = "3\n";
  ZipWriter zip(force_zip64);
  zip.add("archive/data.pkl", pickle.data(), pickle.size());
  zip.add("archive/byteorder", kByteOrder.data(), kByteOrder.size());
  for (size_t i = 0; i < tensors.size(); ++i)
    zip.add("archive/data/" + std::to_string(i), tensors[i].data, tensors[i].nbytes());
  zip.add("archive/version", kVersion.data(), kVersion.size());
  write_file_atomic(path, zip.finish());
}

}  // namespace rwkv::io

namespace rwkv {

void save_pth(const std::string& path, const std::vector<TensorView>& tensors) {
  io::write_pth(path, tensors, false);
}

}  // namespace rwkv
