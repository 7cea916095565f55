// The pickle side of PyTorch checkpoints: a restricted interpreter for the data.pkl of
// torch.save(state_dict) and a writer of the few opcodes save_pth needs. The interpreter knows a
// short allowlist of globals (OrderedDict, torch's tensor rebuild functions, float storage types)
// and only records what they would build: nothing from the file is ever executed or imported.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rwkv::io {

// Pickle opcodes (CPython Lib/pickletools.py) used by the writer and by tests crafting pickles.
namespace op {
constexpr char kMark = '(';
constexpr char kStop = '.';
constexpr char kBinInt = 'J';
constexpr char kBinInt1 = 'K';
constexpr char kBinInt2 = 'M';
constexpr char kNone = 'N';
constexpr char kBinPersId = 'Q';
constexpr char kReduce = 'R';
constexpr char kBinUnicode = 'X';
constexpr char kAppend = 'a';
constexpr char kBuild = 'b';
constexpr char kGlobal = 'c';
constexpr char kAppends = 'e';
constexpr char kBinGet = 'h';
constexpr char kLongBinGet = 'j';
constexpr char kEmptyList = ']';
constexpr char kBinPut = 'q';
constexpr char kLongBinPut = 'r';
constexpr char kSetItem = 's';
constexpr char kTuple = 't';
constexpr char kSetItems = 'u';
constexpr char kEmptyDict = '}';
constexpr char kEmptyTuple = ')';
constexpr char kBinFloat = 'G';
constexpr char kProto = '\x80';
constexpr char kTuple1 = '\x85';
constexpr char kTuple2 = '\x86';
constexpr char kTuple3 = '\x87';
constexpr char kNewTrue = '\x88';
constexpr char kNewFalse = '\x89';
constexpr char kLong1 = '\x8a';
constexpr char kShortBinUnicode = '\x8c';
constexpr char kBinUnicode8 = '\x8d';
constexpr char kStackGlobal = '\x93';
constexpr char kMemoize = '\x94';
constexpr char kFrame = '\x95';
}  // namespace op

// Element types of the storages a checkpoint may hold (fp64 is converted to fp32 on load).
enum class StorageType : uint8_t { F32, F16, BF16, F64 };
size_t storage_element_size(StorageType type);

// One entry of a pickled state dict: tensor `name` views elements of the storage saved as zip
// entry "<archive>/data/<storage_key>". Offsets and strides count elements, as in torch.
struct PickledTensor {
  std::string name;
  StorageType storage_type = StorageType::F32;
  std::string storage_key;
  int64_t storage_numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;
};

// Interprets data.pkl of torch.save({name: tensor}) (a dict or OrderedDict, protocols 2 to 5),
// in dict order. Throws rwkv::Error, prefixed with `where` (the file), for a disallowed global,
// an opcode outside the supported subset, malformed or truncated input, or a top-level object
// that is not a flat dict of tensors. Layouts are not checked against the storages here.
std::vector<PickledTensor> read_state_dict_pickle(const uint8_t* data, size_t size,
                                                  const std::string& where);

// Appends protocol-2 opcodes to a byte string; the caller arranges them into a valid program.
class PickleWriter {
 public:
  PickleWriter();  // starts with PROTO 2
  void op(char opcode) { out_ += opcode; }
  void global(const std::string& module, const std::string& name);
  void string(const std::string& text);
  void integer(int64_t value);
  void int_tuple(const std::vector<int64_t>& values);
  // A tensor as torch.save pickles it: torch._utils._rebuild_tensor_v2(storage, offset, shape,
  // stride, False, OrderedDict()), the storage being the persistent id
  // ('storage', torch.<storage_type>, key, 'cpu', numel) of zip entry "<archive>/data/<key>".
  void torch_tensor(const std::string& storage_type, const std::string& key, int64_t numel,
                    int64_t offset, const std::vector<int64_t>& shape,
                    const std::vector<int64_t>& stride);
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

}  // namespace rwkv::io
