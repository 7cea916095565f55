#include "io/pickle.h"

#include <deque>
#include <string_view>
#include <unordered_map>

#include "rwkv/error.h"

namespace rwkv::io {

namespace {

constexpr size_t kMaxDims = 16;
constexpr size_t kMaxNameInMessage = 200;

enum class Kind : uint8_t {
  None, Bool, Int, Float, String, Global, Tuple, List, Dict, Storage, Tensor
};

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Global: return "global";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

// A pickled value. Scalars are held inline; everything else is an index into the Unpickler's
// arenas, so copying a value (memo gets, tuples) is cheap and a hostile pickle cannot multiply
// its size in memory by referencing one big object many times. Arenas also make reference cycles
// and deep nesting harmless: nothing is freed recursively.
struct Value {
  Kind kind = Kind::None;
  int64_t number = 0;  // the Bool/Int value; an arena index for strings, objects and globals
};

// What an allowlisted global means; "calling" one only records what torch would build.
enum class Callable : uint8_t {
  OrderedDict, RebuildTensor, RebuildTensorV2, RebuildParameter, StorageType, DType
};

struct AllowedGlobal {
  std::string_view name;
  Callable callable;
  StorageType storage;  // for Callable::StorageType
};

constexpr AllowedGlobal kAllowedGlobals[] = {
    {"collections.OrderedDict", Callable::OrderedDict, StorageType::F32},
    {"torch._utils._rebuild_tensor", Callable::RebuildTensor, StorageType::F32},
    {"torch._utils._rebuild_tensor_v2", Callable::RebuildTensorV2, StorageType::F32},
    {"torch._utils._rebuild_parameter", Callable::RebuildParameter, StorageType::F32},
    {"torch.FloatStorage", Callable::StorageType, StorageType::F32},
    {"torch.HalfStorage", Callable::StorageType, StorageType::F16},
    {"torch.BFloat16Storage", Callable::StorageType, StorageType::BF16},
    {"torch.DoubleStorage", Callable::StorageType, StorageType::F64},
    // Inert values: some torch versions pickle dtypes next to tensors.
    {"torch.float32", Callable::DType, StorageType::F32},
    {"torch.float16", Callable::DType, StorageType::F16},
    {"torch.bfloat16", Callable::DType, StorageType::BF16},
};

struct Dict {
  std::vector<std::pair<Value, Value>> items;
  std::unordered_map<std::string_view, size_t> string_keys;  // key text -> index in items
};

struct Storage {
  StorageType type;
  int64_t key;  // index into the string arena
  int64_t numel;
};

struct Tensor {
  int64_t storage;  // index into the storage arena
  int64_t offset;
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;
};

class Unpickler {
 public:
  Unpickler(const uint8_t* data, size_t size, const std::string& where)
      : data_(data), size_(size), where_(where) {}

  std::vector<PickledTensor> run() {
    while (true) {
      const size_t at = pos_;
      const char code = char(u8());
      if (code == op::kStop) return state_dict(pop());
      execute(code, at);
    }
  }

 private:
  template <typename... Args>
  [[noreturn]] void error(const Args&... args) const {
    fail(where_, ": ", args...);
  }

  // --- input ---
  const uint8_t* take(uint64_t n) {
    if (n > size_ - pos_)
      error("truncated or corrupt pickle: needs ", n, " more bytes at byte ", pos_, " of ", size_);
    const uint8_t* p = data_ + pos_;
    pos_ += size_t(n);
    return p;
  }
  uint64_t unsigned_le(size_t n) {
    const uint8_t* p = take(n);
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t(p[i]) << (8 * i);
    return v;
  }
  uint8_t u8() { return uint8_t(unsigned_le(1)); }
  std::string_view line() {
    const auto* begin = reinterpret_cast<const char*>(data_ + pos_);
    const std::string_view rest(begin, size_ - pos_);
    const size_t end = rest.find('\n');
    if (end == std::string_view::npos) error("truncated pickle: GLOBAL name without newline");
    pos_ += end + 1;
    return rest.substr(0, end);
  }
  // LONG1: n-byte little-endian two's complement.
  int64_t long1() {
    const size_t n = u8();
    if (n > 8) error("pickle integer of ", n, " bytes is out of range");
    uint64_t v = unsigned_le(n);
    if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t(0) << (8 * n);
    return int64_t(v);
  }

  // --- stack and memo ---
  size_t stack_floor() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(Value v) { stack_.push_back(v); }
  Value top() const {
    if (stack_.size() <= stack_floor()) error("corrupt pickle: stack underflow");
    return stack_.back();
  }
  Value pop() {
    const Value v = top();
    stack_.pop_back();
    return v;
  }
  std::vector<Value> pop_mark() {
    if (marks_.empty()) error("corrupt pickle: no MARK on the stack");
    std::vector<Value> items(stack_.begin() + std::ptrdiff_t(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  Value memo_get(uint64_t key) const {
    const auto it = memo_.find(key);
    if (it == memo_.end()) error("corrupt pickle: memo key ", key, " is not set");
    return it->second;
  }

  // --- objects ---
  Value new_string(std::string_view text) {
    strings_.emplace_back(text);
    return {Kind::String, int64_t(strings_.size() - 1)};
  }
  Value new_sequence(Kind kind, std::vector<Value> items) {
    sequences_.push_back(std::move(items));
    return {kind, int64_t(sequences_.size() - 1)};
  }
  Value new_dict() {
    dicts_.emplace_back();
    return {Kind::Dict, int64_t(dicts_.size() - 1)};
  }
  void expect(Value v, Kind kind, const char* what) const {
    if (v.kind != kind)
      error("corrupt pickle: ", what, " has type ", kind_name(v.kind), ", expected ",
            kind_name(kind));
  }
  const std::string& text(Value v, const char* what) const {
    expect(v, Kind::String, what);
    return strings_[size_t(v.number)];
  }
  const std::vector<Value>& tuple(Value v, const char* what) const {
    expect(v, Kind::Tuple, what);
    return sequences_[size_t(v.number)];
  }
  int64_t integer(Value v, const char* what) const {
    expect(v, Kind::Int, what);
    return v.number;
  }
  std::vector<int64_t> int_tuple(Value v, const char* what) const {
    const std::vector<Value>& items = tuple(v, what);
    if (items.size() > kMaxDims)
      error("tensor ", what, " has ", items.size(), " dimensions (at most ", kMaxDims, ")");
    std::vector<int64_t> out;
    for (Value item : items) out.push_back(integer(item, what));
    return out;
  }

  void execute(char code, size_t at);
  void set_item(Value target, Value key, Value value);
  void append(Value target, Value item);
  Value global(std::string_view module, std::string_view name) const;
  Value call(Value callable, Value args);
  Value rebuild_tensor(const std::vector<Value>& args);
  Value persistent_load(Value pid);
  void build(Value target, Value state) const;
  std::vector<PickledTensor> state_dict(Value root) const;

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& where_;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;  // stack sizes at each MARK
  std::unordered_map<uint64_t, Value> memo_;
  // Arenas: deques, so references stay valid while objects are added.
  std::deque<std::string> strings_;
  std::deque<std::vector<Value>> sequences_;  // tuples and lists
  std::deque<Dict> dicts_;
  std::deque<Storage> storages_;
  std::deque<Tensor> tensors_;
};

void Unpickler::execute(char code, size_t at) {
  switch (code) {
    case op::kProto: {
      const int version = u8();
      if (version < 2 || version > 5) error("unsupported pickle protocol ", version);
      return;
    }
    case op::kFrame: take(8); return;  // framing only groups opcodes
    case op::kEmptyDict: push(new_dict()); return;
    case op::kEmptyList: push(new_sequence(Kind::List, {})); return;
    case op::kEmptyTuple: push(new_sequence(Kind::Tuple, {})); return;
    case op::kMark: marks_.push_back(stack_.size()); return;
    case op::kTuple: push(new_sequence(Kind::Tuple, pop_mark())); return;
    case op::kTuple1:
    case op::kTuple2:
    case op::kTuple3: {
      std::vector<Value> items(size_t(code - op::kTuple1 + 1));
      for (size_t i = items.size(); i-- > 0;) items[i] = pop();
      push(new_sequence(Kind::Tuple, std::move(items)));
      return;
    }
    case op::kShortBinUnicode:
    case op::kBinUnicode:
    case op::kBinUnicode8: {
      const size_t width = code == op::kShortBinUnicode ? 1 : code == op::kBinUnicode ? 4 : 8;
      const uint64_t length = unsigned_le(width);
      push(new_string({reinterpret_cast<const char*>(take(length)), size_t(length)}));
      return;
    }
    case op::kBinInt: push({Kind::Int, int32_t(uint32_t(unsigned_le(4)))}); return;
    case op::kBinInt1: push({Kind::Int, int64_t(unsigned_le(1))}); return;
    case op::kBinInt2: push({Kind::Int, int64_t(unsigned_le(2))}); return;
    case op::kLong1: push({Kind::Int, long1()}); return;
    case op::kBinFloat: take(8); push({Kind::Float, 0}); return;  // no float matters here
    case op::kNewTrue: push({Kind::Bool, 1}); return;
    case op::kNewFalse: push({Kind::Bool, 0}); return;
    case op::kNone: push({Kind::None, 0}); return;
    case op::kBinPut: memo_[unsigned_le(1)] = top(); return;
    case op::kLongBinPut: memo_[unsigned_le(4)] = top(); return;
    case op::kMemoize: memo_[memo_.size()] = top(); return;
    case op::kBinGet: push(memo_get(unsigned_le(1))); return;
    case op::kLongBinGet: push(memo_get(unsigned_le(4))); return;
    case op::kSetItem: {
      const Value value = pop();
      const Value key = pop();
      set_item(top(), key, value);
      return;
    }
    case op::kSetItems: {
      const std::vector<Value> items = pop_mark();
      if (items.size() % 2) error("corrupt pickle: SETITEMS with an odd number of items");
      for (size_t i = 0; i < items.size(); i += 2) set_item(top(), items[i], items[i + 1]);
      return;
    }
    case op::kAppend: {
      const Value item = pop();
      append(top(), item);
      return;
    }
    case op::kAppends:
      for (Value item : pop_mark()) append(top(), item);
      return;
    case op::kGlobal: {
      const std::string_view module = line();
      push(global(module, line()));
      return;
    }
    case op::kStackGlobal: {
      const std::string name = text(pop(), "STACK_GLOBAL name");
      push(global(text(pop(), "STACK_GLOBAL module"), name));
      return;
    }
    case op::kReduce: {
      const Value args = pop();
      push(call(pop(), args));
      return;
    }
    case op::kBinPersId: push(persistent_load(pop())); return;
    case op::kBuild: {
      const Value state = pop();
      build(top(), state);
      return;
    }
    default:
      error("unsupported pickle opcode 0x", std::hex, int(uint8_t(code)), std::dec, " at byte ",
            at, " (not a torch state dict, or corrupt)");
  }
}

void Unpickler::set_item(Value target, Value key, Value value) {
  expect(target, Kind::Dict, "SETITEM target");
  Dict& dict = dicts_[size_t(target.number)];
  if (key.kind == Kind::String) {
    // As in Python, a repeated key replaces the value and keeps the first position.
    const auto [it, inserted] =
        dict.string_keys.emplace(strings_[size_t(key.number)], dict.items.size());
    if (!inserted) {
      dict.items[it->second].second = value;
      return;
    }
  }
  dict.items.emplace_back(key, value);
}

void Unpickler::append(Value target, Value item) {
  expect(target, Kind::List, "APPEND target");
  sequences_[size_t(target.number)].push_back(item);
}

Value Unpickler::global(std::string_view module, std::string_view name) const {
  const std::string full = cat(module, ".", name);
  for (size_t i = 0; i < std::size(kAllowedGlobals); ++i)
    if (kAllowedGlobals[i].name == full) return {Kind::Global, int64_t(i)};
  const std::string shown = full.substr(0, kMaxNameInMessage);
  if (module == "torch" && name.ends_with("Storage"))
    error("unsupported storage type '", shown,
          "' (supported: FloatStorage, HalfStorage, BFloat16Storage, DoubleStorage)");
  error("pickle references disallowed global '", shown, "'");
}

Value Unpickler::call(Value callable, Value args_value) {
  expect(callable, Kind::Global, "REDUCE callable");
  const AllowedGlobal& global = kAllowedGlobals[size_t(callable.number)];
  const std::vector<Value>& args = tuple(args_value, "REDUCE arguments");
  auto expect_args = [&](size_t low, size_t high) {
    if (args.size() < low || args.size() > high)
      error("corrupt pickle: ", global.name, " called with ", args.size(), " arguments");
  };
  switch (global.callable) {
    case Callable::OrderedDict:
      expect_args(0, 0);
      return new_dict();
    case Callable::RebuildTensor:
      expect_args(4, 4);
      return rebuild_tensor(args);
    case Callable::RebuildTensorV2:
      // (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
      expect_args(6, 7);
      return rebuild_tensor(args);
    case Callable::RebuildParameter:  // (data, requires_grad, backward_hooks): the data is all
      expect_args(3, 3);
      expect(args[0], Kind::Tensor, "parameter data");
      return args[0];
    case Callable::StorageType:
    case Callable::DType: break;
  }
  error("corrupt pickle: global '", global.name, "' cannot be called");
}

Value Unpickler::rebuild_tensor(const std::vector<Value>& args) {
  expect(args[0], Kind::Storage, "tensor storage");
  Tensor tensor{args[0].number, integer(args[1], "storage offset"), int_tuple(args[2], "shape"),
                int_tuple(args[3], "stride")};
  if (tensor.shape.size() != tensor.stride.size())
    error("corrupt pickle: tensor shape has ", tensor.shape.size(), " dimensions but stride has ",
          tensor.stride.size());
  tensors_.push_back(std::move(tensor));
  return {Kind::Tensor, int64_t(tensors_.size() - 1)};
}

// torch.save's persistent id: ('storage', storage type, key, location, numel).
Value Unpickler::persistent_load(Value pid) {
  const std::vector<Value>& fields = tuple(pid, "persistent id");
  if (fields.size() != 5 || text(fields[0], "persistent id tag") != "storage")
    error("corrupt pickle: persistent id is not ('storage', type, key, location, numel)");
  expect(fields[1], Kind::Global, "storage type");
  const AllowedGlobal& type = kAllowedGlobals[size_t(fields[1].number)];
  if (type.callable != Callable::StorageType)
    error("corrupt pickle: storage type '", type.name, "' is not a storage type");
  text(fields[3], "storage location");
  const int64_t numel = integer(fields[4], "storage size");
  if (numel < 0) error("corrupt pickle: negative storage size ", numel);
  text(fields[2], "storage key");
  storages_.push_back({type.storage, fields[2].number, numel});
  return {Kind::Storage, int64_t(storages_.size() - 1)};
}

// BUILD sets an object's state. The only legitimate case here is an OrderedDict's attributes
// (a state_dict's _metadata), which does not affect the weights.
void Unpickler::build(Value target, Value state) const {
  if (state.kind == Kind::None || target.kind == Kind::Dict) return;
  error("corrupt pickle: BUILD on type ", kind_name(target.kind), " is not supported");
}

std::vector<PickledTensor> Unpickler::state_dict(Value root) const {
  if (root.kind != Kind::Dict)
    error("top-level pickle object has type ", kind_name(root.kind),
          ", expected a dict of tensors");
  std::vector<PickledTensor> out;
  for (const auto& [key, value] : dicts_[size_t(root.number)].items) {
    const std::string& name = text(key, "state dict key");
    if (value.kind != Kind::Tensor)
      error("entry '", name, "' has type ", kind_name(value.kind),
            ", not a tensor (expected a flat dict name -> tensor)");
    const Tensor& tensor = tensors_[size_t(value.number)];
    const Storage& storage = storages_[size_t(tensor.storage)];
    out.push_back({name, storage.type, strings_[size_t(storage.key)], storage.numel,
                   tensor.offset, tensor.shape, tensor.stride});
  }
  return out;
}

}  // namespace

size_t storage_element_size(StorageType type) {
  switch (type) {
    case StorageType::F32: return 4;
    case StorageType::F16:
    case StorageType::BF16: return 2;
    case StorageType::F64: return 8;
  }
  return 0;
}

std::vector<PickledTensor> read_state_dict_pickle(const uint8_t* data, size_t size,
                                                  const std::string& where) {
  return Unpickler(data, size, where).run();
}

PickleWriter::PickleWriter() {
  op(op::kProto);
  out_ += '\x02';
}

void PickleWriter::global(const std::string& module, const std::string& name) {
  op(op::kGlobal);
  out_ += module + '\n' + name + '\n';
}

void PickleWriter::string(const std::string& text) {
  op(op::kBinUnicode);
  const uint32_t length = uint32_t(text.size());
  for (int i = 0; i < 4; ++i) out_ += char((length >> (8 * i)) & 0xff);
  out_ += text;
}

void PickleWriter::integer(int64_t value) {
  auto put_le = [&](uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_ += char((v >> (8 * i)) & 0xff);
  };
  if (value >= 0 && value < 0x100) {
    op(op::kBinInt1);
    put_le(uint64_t(value), 1);
  } else if (value >= 0 && value < 0x10000) {
    op(op::kBinInt2);
    put_le(uint64_t(value), 2);
  } else if (value >= INT32_MIN && value <= INT32_MAX) {
    op(op::kBinInt);
    put_le(uint64_t(value), 4);
  } else {
    op(op::kLong1);
    out_ += char(8);
    put_le(uint64_t(value), 8);
  }
}

void PickleWriter::int_tuple(const std::vector<int64_t>& values) {
  static constexpr char kSmallTuples[] = {op::kEmptyTuple, op::kTuple1, op::kTuple2, op::kTuple3};
  if (values.size() > 3) op(op::kMark);
  for (int64_t v : values) integer(v);
  op(values.size() > 3 ? op::kTuple : kSmallTuples[values.size()]);
}

void PickleWriter::torch_tensor(const std::string& storage_type, const std::string& key,
                                int64_t numel, int64_t offset, const std::vector<int64_t>& shape,
                                const std::vector<int64_t>& stride) {
  global("torch._utils", "_rebuild_tensor_v2");
  op(op::kMark);
  op(op::kMark);
  string("storage");
  global("torch", storage_type);
  string(key);
  string("cpu");
  integer(numel);
  op(op::kTuple);
  op(op::kBinPersId);
  integer(offset);
  int_tuple(shape);
  int_tuple(stride);
  op(op::kNewFalse);                    // requires_grad
  global("collections", "OrderedDict");  // backward hooks
  op(op::kEmptyTuple);
  op(op::kReduce);
  op(op::kTuple);
  op(op::kReduce);
}

}  // namespace rwkv::io
