// rwkv.cpp model files (spec §7.1): the tiny reference models of every generation, round trips
// through save_rwkvcpp, and corrupt files, which must end in an rwkv::Error naming the file and
// the problem, never in a crash or an out-of-bounds read.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "io/formats.h"
#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/model.h"
#include "testing.h"

namespace rwkv {
namespace {

using ::testing::HasSubstr;

constexpr const char* kTinyDir = "reference/rwkv.cpp-tiny";

std::string temp_path(const std::string& name) { return test::temp_dir() + "/" + name; }

void write_bytes(const std::string& path, const std::string& bytes) {
  std::filesystem::remove(path);
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

uint32_t peek32(const std::string& bytes, size_t at) {
  uint32_t v;
  std::memcpy(&v, bytes.data() + at, 4);
  return v;
}

void poke32(std::string& bytes, size_t at, uint32_t v) { std::memcpy(bytes.data() + at, &v, 4); }

// Expects opening `path` to fail with an rwkv::Error mentioning the file and `fragment`.
void expect_open_error(const std::string& path, const std::string& fragment) {
  try {
    Checkpoint::open(path);
    ADD_FAILURE() << path << " opened, expected an error mentioning '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    EXPECT_THAT(e.what(), HasSubstr(fragment));
  }
}

// Writes `bytes` to a fresh file and expects opening it to fail mentioning `fragment`.
void expect_bytes_error(const std::string& name, const std::string& bytes,
                        const std::string& fragment) {
  SCOPED_TRACE(name);
  const std::string path = temp_path(name);
  write_bytes(path, bytes);
  expect_open_error(path, fragment);
}

template <typename F>
void expect_save_error(const std::string& path, F&& save, const std::string& fragment) {
  try {
    save();
    ADD_FAILURE() << "saving " << path << " succeeded, expected '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    EXPECT_THAT(e.what(), HasSubstr(fragment));
  }
  EXPECT_FALSE(std::filesystem::exists(path)) << path;
}

// One tensor record of a file, found by an independent parse (byte offsets into the file).
struct Record {
  size_t begin = 0;  // dim_count
  size_t dims = 0;   // dims[]
  size_t key = 0;
  size_t data = 0;
  size_t end = 0;
  uint32_t dim_count = 0, type = 0;
  std::string name;
};

size_t type_bytes(uint32_t type, size_t numel) {
  switch (type) {
    case 0: return numel * 4;
    case 1: return numel * 2;
    case 2: return numel / 32 * 18;
    case 3: return numel / 32 * 20;
    case 7: return numel / 32 * 22;
    case 8: return numel / 32 * 24;
    case 9: return numel / 32 * 34;
  }
  ADD_FAILURE() << "type " << type;
  return 0;
}

std::vector<Record> parse_records(const std::string& bytes) {
  std::vector<Record> records;
  size_t pos = 24;
  while (pos < bytes.size()) {
    Record r;
    r.begin = pos;
    r.dim_count = peek32(bytes, pos);
    const uint32_t key_length = peek32(bytes, pos + 4);
    r.type = peek32(bytes, pos + 8);
    r.dims = pos + 12;
    size_t numel = 1;
    for (uint32_t i = 0; i < r.dim_count; ++i) numel *= peek32(bytes, r.dims + 4 * i);
    r.key = r.dims + 4 * r.dim_count;
    r.name = bytes.substr(r.key, key_length);
    r.data = r.key + key_length;
    r.end = r.data + type_bytes(r.type, numel);
    pos = r.end;
    records.push_back(r);
  }
  EXPECT_EQ(pos, bytes.size());
  return records;
}

// ---------------------------------------------------------------------------------------------
// The tiny reference models.

struct TinyModel {
  const char* stem;
  const char* generation;
  int n_embd, n_layer, n_head, head_size, dim_ffn;
  size_t n_tensors;
  std::vector<std::pair<std::string, int>> lora;
};

const std::vector<TinyModel>& tiny_models() {
  static const std::vector<TinyModel> models = {
      {"4v0-660K", "4", 128, 4, 0, 0, 256, 78, {}},
      {"5v1-730K", "5.0", 64, 12, 8, 8, 256, 246, {}},  // rwkv.cpp's "5.1" (spec §12.2)
      {"5v2-730K", "5.2", 64, 12, 8, 8, 256, 270, {}},
      {"6v0-3m", "x060", 128, 12, 16, 8, 448, 342, {{"mix", 32}, {"decay", 64}}},
      {"7v0-834K", "x070", 64, 12, 1, 64, 256, 339,
       {{"decay", 32}, {"iclr", 32}, {"value", 32}, {"gate", 32}}},
  };
  return models;
}

const TinyModel& tiny_model_of(const std::string& file_name) {
  for (const TinyModel& m : tiny_models())
    if (file_name.find(std::string("-") + m.stem + "-") != std::string::npos) return m;
  throw Error("no tiny model for " + file_name);
}

// Every tiny-rwkv-*.bin (the expected-logits files are raw floats).
std::vector<std::string> tiny_files() {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(test::shared_path(kTinyDir))) {
    const std::string name = entry.path().filename().string();
    if (name.ends_with(".bin") && !name.starts_with("expected-logits-"))
      files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Names the FP16 converter keeps in fp32 although they have >= 2 dims (spec §7.1).
bool kept_fp32_by_converter(const std::string& name) {
  for (const char* part : {".time_", ".k_k", ".k_a", ".r_k", ".x_rwkvag", ".x_k", ".w0", ".a0", ".v0"})
    if (name.find(part) != std::string::npos) return true;
  return false;
}

bool is_v7_lora(const std::string& name) {
  for (const char* part : {".att.w1", ".att.w2", ".att.a1", ".att.a2", ".att.v1", ".att.v2",
                           ".att.g1", ".att.g2"})
    if (name.ends_with(part)) return true;
  return false;
}

TEST(RwkvCppTiny, EveryFileReadsWithTheConvertersDtypesAndInPlaceData) {
  RWKV_REQUIRE_SHARED(kTinyDir);
  const std::vector<std::string> files = tiny_files();
  EXPECT_EQ(files.size(), 18u);
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    const std::string name = std::filesystem::path(path).filename().string();
    const TinyModel& model = tiny_model_of(name);
    const std::string bytes = read_file(path);
    const std::vector<Record> records = parse_records(bytes);
    const Checkpoint ckpt = Checkpoint::open(path);
    EXPECT_EQ(ckpt.format(), "rwkv.cpp");
    ASSERT_EQ(ckpt.tensors().size(), model.n_tensors);
    ASSERT_EQ(records.size(), model.n_tensors);

    // The file is exactly the header, the record headers and the tensor data.
    size_t total = 24;
    for (const TensorView& t : ckpt.tensors())
      total += 12 + 4 * t.shape.size() + t.name.size() + t.nbytes();
    EXPECT_EQ(total, bytes.size());

    const bool fp32 = name.ends_with("-FP32.bin"), fp16 = name.ends_with("-FP16.bin");
    const DType quant = name.ends_with("-Q5_0.bin") ? DType::Q5_0 : DType::Q5_1;
    // In-place tensors all sit at (start of the mapping) + (their file offset).
    const uint8_t* map_base = nullptr;
    for (size_t i = 0; i < records.size() && !map_base; ++i)
      if (is_quantized(ckpt.tensors()[i].dtype) ||
          records[i].data % dtype_block_bytes(ckpt.tensors()[i].dtype) == 0)
        map_base = static_cast<const uint8_t*>(ckpt.tensors()[i].data) - records[i].data;
    ASSERT_NE(map_base, nullptr);
    size_t n_quantized = 0, n_copied = 0;
    for (size_t i = 0; i < records.size(); ++i) {
      const TensorView& t = ckpt.tensors()[i];
      const Record& r = records[i];
      SCOPED_TRACE(t.name);
      EXPECT_EQ(t.name, r.name);  // file order
      ASSERT_EQ(t.shape.size(), r.dim_count);
      for (uint32_t d = 0; d < r.dim_count; ++d)  // PyTorch order: the file's dims reversed
        EXPECT_EQ(t.shape[r.dim_count - 1 - d], int64_t(peek32(bytes, r.dims + 4 * d)));
      EXPECT_EQ(std::memcmp(t.data, bytes.data() + r.data, t.nbytes()), 0);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % dtype_block_bytes(t.dtype) == 0 ||
                    is_quantized(t.dtype),
                true);

      if (fp32) {
        EXPECT_EQ(t.dtype, DType::F32);
      } else if (fp16) {
        const bool f16 = t.shape.size() >= 2 && !kept_fp32_by_converter(t.name);
        EXPECT_EQ(t.dtype, f16 ? DType::F16 : DType::F32);
      } else {
        EXPECT_TRUE(t.dtype == DType::F32 || t.dtype == quant) << dtype_name(t.dtype);
        if (t.name == "emb.weight" || t.name == "head.weight" || is_v7_lora(t.name) ||
            t.shape.size() != 2) {
          EXPECT_EQ(t.dtype, DType::F32);
        }
      }

      const auto* p = static_cast<const uint8_t*>(t.data);
      const bool aligned_in_file = r.data % dtype_block_bytes(t.dtype) == 0;
      if (is_quantized(t.dtype) || aligned_in_file) {  // in place, in the map
        EXPECT_EQ(p - r.data, map_base);
        n_quantized += is_quantized(t.dtype);
      } else {
        EXPECT_NE(p - r.data, map_base);  // copied to an aligned buffer
        ++n_copied;
      }
    }
    EXPECT_EQ(reinterpret_cast<uintptr_t>(map_base) % 4096, 0u);  // a page-aligned mapping
    if (!fp32 && !fp16) {
      EXPECT_GT(n_quantized, 0u);
    }
    EXPECT_GT(n_copied, 0u);  // the format has no padding: some fp32 tensors land misaligned
  }
}

TEST(RwkvCppTiny, DetectModelReadsTheGenerationAndHyperParameters) {
  RWKV_REQUIRE_SHARED(kTinyDir);
  for (const std::string& path : tiny_files()) {
    SCOPED_TRACE(path);
    const std::string name = std::filesystem::path(path).filename().string();
    const TinyModel& model = tiny_model_of(name);
    const ModelInfo info = detect_model(Checkpoint::open(path));
    EXPECT_EQ(info.generation, model.generation);
    EXPECT_EQ(info.n_embd, model.n_embd);
    EXPECT_EQ(info.n_layer, model.n_layer);
    EXPECT_EQ(info.n_head, model.n_head);
    EXPECT_EQ(info.head_size, model.head_size);
    EXPECT_EQ(info.dim_att, model.n_embd);
    EXPECT_EQ(info.dim_ffn, model.dim_ffn);
    EXPECT_EQ(info.vocab_size, 256);
    EXPECT_EQ(info.lora, model.lora);
    const DType want = name.ends_with("-FP32.bin")   ? DType::F32
                       : name.ends_with("-FP16.bin") ? DType::F16
                       : name.ends_with("-Q5_0.bin") ? DType::Q5_0
                                                     : DType::Q5_1;
    EXPECT_EQ(info.file_dtype, want) << dtype_name(info.file_dtype);
  }
}

// ---------------------------------------------------------------------------------------------
// Round trips through save_rwkvcpp.

using test::TensorSet;

// A small model: 2 layers, C = 32, V = 16; odd-length names leave tensors misaligned.
TensorSet small_model(DType matrix = DType::Q5_1) {
  TensorSet set;
  set.add("emb.weight", DType::F32, {16, 32}, 1);
  set.add("blocks.0.ln1.weight", DType::F32, {32}, 2);
  set.add("blocks.0.att.key.weight", matrix, {32, 32}, 3);
  set.add("blocks.0.att.time_decay", DType::F32, {2, 16, 1}, 4);
  set.add("blocks.1.ln1.weight", DType::F32, {32}, 5);
  set.add("blocks.1.att.key.weight", matrix, {32, 32}, 6);
  set.add("head.weight", DType::F16, {16, 32}, 7);
  return set;
}

void expect_same_tensors(const std::vector<TensorView>& got, const std::vector<TensorView>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(want[i].name);
    EXPECT_EQ(got[i].name, want[i].name);
    EXPECT_EQ(got[i].dtype, want[i].dtype);
    EXPECT_EQ(got[i].shape, want[i].shape);
    ASSERT_EQ(got[i].nbytes(), want[i].nbytes());
    EXPECT_EQ(std::memcmp(got[i].data, want[i].data, want[i].nbytes()), 0);
  }
}

TEST(RwkvCppRoundTrip, EveryStorableDtypeReadsBackByteIdentical) {
  TensorSet set;
  set.add("emb.weight", DType::F32, {10, 64}, 1);
  set.add("blocks.0.a", DType::F16, {3}, 2);  // 6 bytes: what follows is misaligned
  set.add("blocks.0.b", DType::F32, {5, 7}, 3);
  set.add("blocks.0.q8", DType::Q8_0, {3, 64}, 4);
  set.add("blocks.0.q4", DType::Q4_0, {2, 96}, 5);
  set.add("blocks.1.q41", DType::Q4_1, {32}, 6);
  set.add("blocks.1.q50", DType::Q5_0, {2, 2, 32}, 7);
  set.add("blocks.1.q51", DType::Q5_1, {4, 32}, 8);
  set.add("blocks.2.f16", DType::F16, {1, 3, 5}, 9);
  set.add("blocks.2.\xc3\xa9t\xc3\xa9", DType::F32, {3}, 10);  // UTF-8 name
  set.add("head.weight", DType::F16, {10, 64}, 11);
  const std::string path = temp_path("round.bin");
  save_rwkvcpp(path, set.views);
  const Checkpoint ckpt = Checkpoint::open(path);
  EXPECT_EQ(ckpt.format(), "rwkv.cpp");
  expect_same_tensors(ckpt.tensors(), set.views);
  for (const TensorView& t : ckpt.tensors())
    if (!is_quantized(t.dtype)) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % dtype_block_bytes(t.dtype), 0u) << t.name;
    }

  const std::string bytes = read_file(path);
  EXPECT_EQ(bytes.substr(0, 4), "fmgg");
  EXPECT_EQ(peek32(bytes, 4), 101u);
  EXPECT_EQ(peek32(bytes, 8), 10u);   // n_vocab
  EXPECT_EQ(peek32(bytes, 12), 64u);  // n_embed
  EXPECT_EQ(peek32(bytes, 16), 3u);   // n_layer
  EXPECT_EQ(peek32(bytes, 20), 0u);   // data_type: FP32 holds the most matrix elements (675)
  const std::vector<Record> records = parse_records(bytes);
  ASSERT_EQ(records.size(), set.views.size());
  EXPECT_EQ(records[3].type, 9u);  // Q8_0
  EXPECT_EQ(peek32(bytes, records[3].dims), 64u);  // ne0 first
  EXPECT_EQ(peek32(bytes, records[3].dims + 4), 3u);
}

TEST(RwkvCppRoundTrip, Version100AndHeaderDataType) {
  const TensorSet set = small_model(DType::F16);
  const std::string path = temp_path("v100.bin");
  save_rwkvcpp(path, set.views, 100);
  expect_same_tensors(Checkpoint::open(path).tensors(), set.views);
  const std::string bytes = read_file(path);
  EXPECT_EQ(peek32(bytes, 4), 100u);
  EXPECT_EQ(peek32(bytes, 20), 1u);  // FP16: 2·32·32 + 16·32 vs emb's 16·32 in FP32

  const std::string q_path = temp_path("q5.bin");
  save_rwkvcpp(q_path, small_model(DType::Q5_1).views);
  EXPECT_EQ(peek32(read_file(q_path), 20), 8u);  // Q5_1
}

TEST(RwkvCppRoundTrip, TinyFilesRewriteToTheSameBytes) {
  RWKV_REQUIRE_SHARED(kTinyDir);
  for (const char* stem : {"tiny-rwkv-4v0-660K-FP16.bin", "tiny-rwkv-7v0-834K-Q5_1.bin"}) {
    const std::string path = test::shared_path(kTinyDir) + "/" + stem;
    const Checkpoint ckpt = Checkpoint::open(path);
    const std::string out = temp_path(stem);
    save_rwkvcpp(out, ckpt.tensors(), int(peek32(read_file(path), 4)));
    EXPECT_EQ(read_file(out), read_file(path)) << stem;
  }
}

TEST(RwkvCppRoundTrip, SavingErrorsLeaveNoFile) {
  const std::string path = temp_path("bad-save.bin");
  const TensorSet good = small_model();
  expect_save_error(path, [&] { save_rwkvcpp(path, good.views, 99); }, "version must be 100 or 101");
  expect_save_error(path, [&] { save_rwkvcpp(path, good.views, 100); },
                    "tensors need file version 101");

  auto with = [&](auto change) {
    TensorSet set = small_model();
    change(set);
    return set;
  };
  const TensorSet bf16 = with([](TensorSet& s) { s.add("blocks.0.x", DType::BF16, {4}, 0); });
  expect_save_error(path, [&] { save_rwkvcpp(path, bf16.views); }, "bf16 tensors cannot be stored");
  const TensorSet four_d = with([](TensorSet& s) { s.add("blocks.0.x", DType::F32, {1, 2, 1, 2}, 0); });
  expect_save_error(path, [&] { save_rwkvcpp(path, four_d.views); }, "1 to 3");
  const TensorSet scalar = with([](TensorSet& s) { s.add("blocks.0.x", DType::F32, {}, 0); });
  expect_save_error(path, [&] { save_rwkvcpp(path, scalar.views); }, "1 to 3");
  const TensorSet zero = with([](TensorSet& s) { s.add("blocks.0.x", DType::F32, {2, 0}, 0); });
  expect_save_error(path, [&] { save_rwkvcpp(path, zero.views); }, "out of range");
  const TensorSet q_odd = with([](TensorSet& s) { s.add("blocks.0.x", DType::Q8_0, {32, 16}, 0); });
  expect_save_error(path, [&] { save_rwkvcpp(path, q_odd.views); }, "not a multiple of 32");
  const TensorSet dup = with([](TensorSet& s) { s.add("blocks.0.ln1.weight", DType::F32, {32}, 0); });
  expect_save_error(path, [&] { save_rwkvcpp(path, dup.views); }, "duplicate tensor name");
  const TensorSet gap = with([](TensorSet& s) { s.add("blocks.3.x", DType::F32, {32}, 0); });
  expect_save_error(path, [&] { save_rwkvcpp(path, gap.views); }, "no tensors for block 2");
  const TensorSet bad_name = with([](TensorSet& s) { s.add("blocks.0.\xff", DType::F32, {3}, 0); });
  expect_save_error(path, [&] { save_rwkvcpp(path, bad_name.views); }, "not valid UTF-8");
  TensorSet no_emb = small_model();
  no_emb.views.erase(no_emb.views.begin());
  expect_save_error(path, [&] { save_rwkvcpp(path, no_emb.views); }, "no 'emb.weight'");
}

// ---------------------------------------------------------------------------------------------
// Corrupt files, each made from a small valid file.

class RwkvCppCorrupt : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = temp_path("small.bin");
    save_rwkvcpp(path, set_.views);
    bytes_ = read_file(path);
    records_ = parse_records(bytes_);
    ASSERT_EQ(records_.size(), set_.views.size());
  }
  const Record& record(const std::string& name) const {
    for (const Record& r : records_)
      if (r.name == name) return r;
    throw Error("no record " + name);
  }
  // A copy of the file with one u32 replaced.
  std::string with_u32(size_t at, uint32_t value) const {
    std::string b = bytes_;
    poke32(b, at, value);
    return b;
  }

  TensorSet set_ = small_model();
  std::string bytes_;
  std::vector<Record> records_;
};

TEST_F(RwkvCppCorrupt, TheValidFileOpens) {
  expect_same_tensors(Checkpoint::open(temp_path("small.bin")).tensors(), set_.views);
}

TEST_F(RwkvCppCorrupt, HeaderErrors) {
  expect_bytes_error("magic.bin", with_u32(0, 0x67676d67), "not a checkpoint");
  expect_bytes_error("version99.bin", with_u32(4, 99), "unsupported rwkv.cpp file version 99");
  expect_bytes_error("version102.bin", with_u32(4, 102), "file version 102 (expected 100 or 101)");
  expect_bytes_error("version100.bin", with_u32(4, 100),
                     "tensor 'blocks.0.att.key.weight': Q5_1 tensor in a version-100 file");
  expect_bytes_error("header-type.bin", with_u32(20, 77),
                     "header data_type: unknown data type code 77");
  expect_bytes_error("header-ktype.bin", with_u32(20, 14), "unsupported data type 14 (Q5_K)");
  expect_bytes_error("n_vocab.bin", with_u32(8, 17), "header says n_vocab = 17");
  expect_bytes_error("n_embed.bin", with_u32(12, 64), "n_embed = 64 but 'emb.weight' has shape (16, 32)");
  expect_bytes_error("n_layer3.bin", with_u32(16, 3), "header says n_layer = 3 but the tensors have block indices up to 1");
  expect_bytes_error("n_layer1.bin", with_u32(16, 1), "header says n_layer = 1");
}

TEST_F(RwkvCppCorrupt, RecordErrors) {
  const Record& key = record("blocks.0.att.key.weight");
  const std::string key_what = "tensor 'blocks.0.att.key.weight'";
  expect_bytes_error("type42.bin", with_u32(key.begin + 8, 42), key_what + ": unknown data type code 42");
  expect_bytes_error("type5.bin", with_u32(key.begin + 8, 5), "unsupported data type 5 (Q4_2): removed");
  expect_bytes_error("type4.bin", with_u32(key.begin + 8, 4), "unsupported data type 4 (Q4_1_O)");
  expect_bytes_error("type10.bin", with_u32(key.begin + 8, 10), "unsupported data type 10 (Q8_1)");
  expect_bytes_error("type13.bin", with_u32(key.begin + 8, 13), "unsupported data type 13 (Q4_K): K-quants");
  expect_bytes_error("dims0.bin", with_u32(key.begin, 0), "dim_count 0 is not 1, 2 or 3");
  expect_bytes_error("dims4.bin", with_u32(key.begin, 4), "dim_count 4 is not 1, 2 or 3");
  expect_bytes_error("zero-dim.bin", with_u32(key.dims + 4, 0), key_what + ": dimension ne1 is zero");
  // ne0 16, ne1 64: the same size, but not whole blocks per row.
  std::string ne0 = with_u32(key.dims, 16);
  poke32(ne0, key.dims + 4, 64);
  expect_bytes_error("ne0.bin", ne0, "innermost dimension 16 is not a multiple of 32");
  expect_bytes_error("huge-dim.bin", with_u32(key.dims + 4, 0xfffffff0u),
                     key_what + ": truncated tensor data");
  const Record& decay = record("blocks.0.att.time_decay");  // 3-D
  std::string overflow = bytes_;
  for (int i = 0; i < 3; ++i) poke32(overflow, decay.dims + 4 * size_t(i), 0xffffffffu);
  expect_bytes_error("overflow.bin", overflow, "too many elements");

  expect_bytes_error("key0.bin", with_u32(key.begin + 4, 0), "key_length 0");
  expect_bytes_error("key-huge.bin", with_u32(key.begin + 4, 0x7fffffff),
                     "key_length 2147483647 runs past the end of the file");
  std::string bad_utf8 = bytes_;
  bad_utf8[key.key + 3] = '\xc0';
  expect_bytes_error("utf8.bin", bad_utf8, "tensor name is not valid UTF-8");

  // blocks.1.ln1.weight renamed to blocks.0.ln1.weight (same length).
  std::string dup = bytes_;
  dup[record("blocks.1.ln1.weight").key + 7] = '0';
  expect_bytes_error("dup.bin", dup, "tensor 'blocks.0.ln1.weight': duplicate tensor name");
  // blocks.0.* renamed to blocks.2.*: block 0 is missing, the indices reach 2.
  std::string gap = with_u32(16, 3);
  for (const Record& r : records_)
    if (r.name.starts_with("blocks.0.")) gap[r.key + 7] = '2';
  expect_bytes_error("gap.bin", gap, "no tensors for block 0 (blocks 0 to 2 expected)");
  // Without emb.weight (renamed) the header cannot be checked.
  std::string no_emb = bytes_;
  no_emb[record("emb.weight").key] = 'f';
  expect_bytes_error("no-emb.bin", no_emb, "no 'emb.weight' tensor");
}

TEST_F(RwkvCppCorrupt, TruncationAtEveryKindOfPlace) {
  const Record& key = record("blocks.0.att.key.weight");
  const Record& head = record("head.weight");
  struct Cut {
    size_t size;
    const char* fragment;
  };
  const Cut cuts[] = {
      {0, "file is empty"},
      {3, "not a checkpoint"},  // too short for the magic
      {10, "truncated rwkv.cpp file: 10 bytes, shorter than the 24-byte header"},
      {23, "shorter than the 24-byte header"},
      {key.begin + 5, "truncated record header (5 bytes left, need 12)"},
      {key.begin + 12, "truncated record header (the dims are cut off)"},
      {key.dims + 6, "truncated record header (the dims are cut off)"},
      {key.key + 4, "runs past the end of the file (4 bytes left; truncated file?)"},
      {key.data, "tensor 'blocks.0.att.key.weight': truncated tensor data (needs 768 bytes, 0 left)"},
      {key.data + 100, "truncated tensor data (needs 768 bytes, 100 left)"},
      {bytes_.size() - 1, "tensor 'head.weight': truncated tensor data"},
  };
  EXPECT_EQ(head.end, bytes_.size());
  for (const Cut& cut : cuts)
    expect_bytes_error("cut-" + std::to_string(cut.size) + ".bin", bytes_.substr(0, cut.size),
                       cut.fragment);
  // Cut exactly between records: a smaller, still consistent file, or a header mismatch.
  const std::string before_head = bytes_.substr(0, head.begin);
  write_bytes(temp_path("cut-head.bin"), before_head);
  EXPECT_EQ(Checkpoint::open(temp_path("cut-head.bin")).tensors().size(), records_.size() - 1);
  expect_bytes_error("cut-block1.bin", bytes_.substr(0, record("blocks.1.ln1.weight").begin),
                     "header says n_layer = 2 but the tensors have block indices up to 0");
}

TEST_F(RwkvCppCorrupt, RandomByteFlipsAndTruncationsNeverCrash) {
  std::mt19937 rng(1234);
  unsigned sum = 0, opened = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::string b = bytes_;
    if (trial % 4 == 0) {
      b.resize(rng() % b.size());
    } else {
      const int flips = 1 + int(rng() % 4);
      for (int f = 0; f < flips; ++f) {
        // Mostly in the header and record headers, where the structure lives.
        const uint32_t where = rng() % 3;
        const size_t at = where == 0   ? rng() % 24
                          : where == 1 ? records_[rng() % records_.size()].begin + rng() % 16
                                       : rng() % b.size();
        b[std::min(at, b.size() - 1)] = char(rng());
      }
    }
    const std::string path = temp_path("fuzz.bin");
    write_bytes(path, b);
    try {
      const Checkpoint ckpt = Checkpoint::open(path);
      ++opened;
      for (const TensorView& t : ckpt.tensors())
        for (size_t i = 0; i < t.nbytes(); ++i) sum += static_cast<const uint8_t*>(t.data)[i];
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(path));
    }
  }
  EXPECT_GT(opened, 0u);
  RecordProperty("byte_sum", int(sum));  // keeps the reads
}

}  // namespace
}  // namespace rwkv
