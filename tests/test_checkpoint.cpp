// Checkpoint reading and writing: official fixtures, round trips (also through torch when it is
// installed), and hostile input (truncated, corrupt, disallowed pickles), which must always end
// in an rwkv::Error and never in a crash or an out-of-bounds read.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "io/formats.h"
#include "io/pickle.h"
#include "io/zip.h"
#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "testing.h"

namespace rwkv {
namespace {

using nlohmann::json;
using namespace std::string_literals;

std::string temp_path(const std::string& name) { return test::temp_dir() + "/" + name; }

// Plain write (no fsync): the fuzz loops write hundreds of files. Removing the old file first
// avoids ext4's flush on truncating overwrites, which made each write cost milliseconds.
void write_bytes(const std::string& path, const std::string& bytes) {
  std::filesystem::remove(path);
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

// Expects opening `path` to fail with an rwkv::Error mentioning the file and `fragment`.
void expect_open_error(const std::string& path, const std::string& fragment) {
  try {
    Checkpoint::open(path);
    ADD_FAILURE() << path << " opened, expected an error mentioning '" << fragment << "'";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(fragment), std::string::npos) << message;
  }
}

// Opens a possibly corrupt file: either an rwkv::Error or tensors whose bytes can all be read
// (AddressSanitizer checks the reads). Returns whether it opened; adds the bytes to `sum`.
bool open_and_touch(const std::string& path, unsigned& sum) {
  try {
    const Checkpoint ckpt = Checkpoint::open(path);
    for (const TensorView& t : ckpt.tensors())
      for (size_t i = 0; i < t.nbytes(); ++i) sum += static_cast<const uint8_t*>(t.data)[i];
    return true;
  } catch (const Error&) {
    return false;
  }
}

using test::TensorSet;

TensorSet varied_tensors() {
  TensorSet set;
  set.add("emb.weight", DType::F32, {5, 3}, 1);
  set.add("", DType::F32, {}, 2);  // empty name, 0-d
  set.add("blocks.0.att.x_r", DType::BF16, {1, 1, 7}, 3);
  set.add("odd", DType::F16, {3, 1, 5}, 4);
  set.add(" ", DType::BF16, {1}, 5);
  set.add("zero.rows", DType::F32, {0, 4}, 6);
  set.add("unicod\xc3\xa9", DType::F32, {2}, 7);
  set.add("head.weight", DType::F32, {33, 65}, 8);
  set.add("a.b.c.d.e", DType::BF16, {2, 3, 4, 5}, 9);
  return set;
}

std::string bytes_of(const TensorView& t) {
  return std::string(static_cast<const char*>(t.data), t.nbytes());
}

void expect_same_tensors(const std::vector<TensorView>& got, const std::vector<TensorView>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE("tensor '" + want[i].name + "'");
    EXPECT_EQ(got[i].name, want[i].name);
    EXPECT_EQ(got[i].dtype, want[i].dtype);
    EXPECT_EQ(got[i].shape, want[i].shape);
    ASSERT_EQ(got[i].nbytes(), want[i].nbytes());
    EXPECT_TRUE(bytes_of(got[i]) == bytes_of(want[i]));
  }
}

std::string zip_bytes(const std::vector<std::pair<std::string, std::string>>& entries,
                      bool force_zip64 = false) {
  io::ZipWriter zip(force_zip64);
  for (const auto& [name, data] : entries) zip.add(name, data.data(), data.size());
  std::string out;
  for (const ByteSpan& part : zip.finish())
    out.append(static_cast<const char*>(part.data), part.size);
  return out;
}

// A state-dict pickle with one tensor "w", shaped by the arguments.
std::string one_tensor_pickle(const std::string& storage_type, int64_t numel, int64_t offset,
                              const std::vector<int64_t>& shape,
                              const std::vector<int64_t>& stride) {
  io::PickleWriter w;
  w.op(io::op::kEmptyDict);
  w.string("w");
  w.torch_tensor(storage_type, "0", numel, offset, shape, stride);
  w.op(io::op::kSetItem);
  w.op(io::op::kStop);
  return w.bytes();
}

// A .pth whose data.pkl is `pickle` and whose storage "0" holds `storage_bytes` bytes.
std::string pth_with_pickle(const std::string& pickle, size_t storage_bytes = 16) {
  return zip_bytes({{"archive/data.pkl", pickle},
                    {"archive/data/0", std::string(storage_bytes, '\x01')},
                    {"archive/version", "3\n"}});
}

// Offset of the central directory entry of `name` in a zip held in `zip`.
size_t central_entry(const std::string& zip, const std::string& name) {
  const std::string signature("PK\x01\x02", 4);
  for (size_t pos = zip.find(signature); pos != std::string::npos;
       pos = zip.find(signature, pos + 1))
    if (zip.compare(pos + 46, name.size(), name) == 0) return pos;
  ADD_FAILURE() << "no central directory entry " << name;
  return 0;
}

void poke32(std::string& bytes, size_t pos, uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[pos + size_t(i)] = char((value >> (8 * i)) & 0xff);
}

uint32_t peek32(const std::string& bytes, size_t pos) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= uint32_t(uint8_t(bytes[pos + size_t(i)])) << (8 * i);
  return value;
}

// --- zip and pickle building blocks ---

TEST(Zip, Crc32MatchesTheStandardCheckValue) {
  EXPECT_EQ(io::crc32("123456789", 9), 0xCBF43926u);
  EXPECT_EQ(io::crc32("", 0), 0u);
  const std::string text = "The quick brown fox jumps over the lazy dog";
  EXPECT_EQ(io::crc32(text.data(), text.size()), 0x414FA339u);
  EXPECT_EQ(io::crc32(text.data() + 10, text.size() - 10, io::crc32(text.data(), 10)),
            0x414FA339u);
}

TEST(Zip, WriterOutputReadsBackAlignedWithAndWithoutZip64) {
  for (bool zip64 : {false, true}) {
    const std::string zip = zip_bytes({{"a/x", "hello"}, {"a/empty", ""}, {"a/y", "0123456789"}},
                                      zip64);
    EXPECT_EQ(zip.find(std::string("PK\x06\x06", 4)) != std::string::npos, zip64);
    const auto* data = reinterpret_cast<const uint8_t*>(zip.data());
    const auto entries = io::read_zip_directory(data, zip.size(), "mem.zip");
    ASSERT_EQ(entries.size(), 3u);
    EXPECT_EQ(entries[0].name, "a/x");
    EXPECT_EQ(zip.substr(entries[0].data_offset, entries[0].size), "hello");
    EXPECT_EQ(entries[1].size, 0u);
    EXPECT_EQ(zip.substr(entries[2].data_offset, entries[2].size), "0123456789");
    for (const io::ZipEntry& e : entries) EXPECT_EQ(e.data_offset % 64, 0u) << e.name;
  }
}

TEST(Pickle, IntegersOfEveryWidthRoundTrip) {
  for (int64_t numel : {int64_t(0), int64_t(255), int64_t(256), int64_t(65536),
                        int64_t(1) << 33}) {
    const std::string pickle = one_tensor_pickle("FloatStorage", numel, 0, {1}, {1});
    const auto tensors = io::read_state_dict_pickle(
        reinterpret_cast<const uint8_t*>(pickle.data()), pickle.size(), "mem");
    ASSERT_EQ(tensors.size(), 1u);
    EXPECT_EQ(tensors[0].storage_numel, numel);
  }
}

// --- official fixtures ---

const char* const kVersions[] = {"v4", "v5", "v5.1", "v5.2", "v6", "v7"};

// Checks that the tensors of a .pth point into one mapping with the file's own layout, i.e.
// were not copied: tensor i uses storage "data/<i>" in these files (torch numbers them in order).
void expect_mapped_in_place(const Checkpoint& ckpt) {
  const auto file = MappedFile::open(ckpt.path());
  const auto entries = io::read_zip_directory(file->data(), file->size(), ckpt.path());
  const std::string prefix = entries[0].name.substr(0, entries[0].name.find('/') + 1);
  auto offset_of = [&](size_t i) {
    for (const io::ZipEntry& e : entries)
      if (e.name == prefix + "data/" + std::to_string(i)) return int64_t(e.data_offset);
    ADD_FAILURE() << "no storage " << i;
    return int64_t(0);
  };
  const auto* first = static_cast<const uint8_t*>(ckpt.tensors()[0].data);
  for (size_t i = 0; i < ckpt.tensors().size(); ++i) {
    const auto* p = static_cast<const uint8_t*>(ckpt.tensors()[i].data);
    EXPECT_EQ(p - first, offset_of(i) - offset_of(0)) << ckpt.tensors()[i].name;
  }
}

TEST(CheckpointFixtures, OfficialFilesMatchTheirManifests) {
  RWKV_REQUIRE_SHARED("fixtures/official");
  for (const char* version : kVersions) {
    SCOPED_TRACE(version);
    const std::string dir = test::shared_path(std::string("fixtures/official/") + version + "/");
    const json manifest = json::parse(read_file(dir + "manifest.json"))["checkpoint"];
    const auto start = std::chrono::steady_clock::now();
    const Checkpoint bf16 = Checkpoint::open(dir + manifest["bf16"]["file"].get<std::string>());
    const Checkpoint fp32 = Checkpoint::open(dir + manifest["fp32"]["file"].get<std::string>());
    const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - start;
    std::cout << "[ timing ] " << version << ": opened both .pth files in " << took.count()
              << " ms\n";
    EXPECT_EQ(bf16.format(), "pth");
    const json& keys = manifest["keys"];
    ASSERT_EQ(bf16.tensors().size(), keys.size());
    ASSERT_EQ(fp32.tensors().size(), keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      const TensorView& b = bf16.tensors()[i];
      const TensorView& f = fp32.tensors()[i];
      const auto name = keys[i]["name"].get<std::string>();
      const auto shape = keys[i]["shape"].get<std::vector<int64_t>>();
      SCOPED_TRACE(name);
      EXPECT_EQ(b.name, name);
      EXPECT_EQ(f.name, name);
      EXPECT_EQ(b.shape, shape);
      EXPECT_EQ(f.shape, shape);
      EXPECT_EQ(b.dtype, DType::BF16);
      ASSERT_EQ(f.dtype, DType::F32);
      EXPECT_EQ(&fp32.get(name), &f);
      std::vector<float> upcast(size_t(b.numel()));
      convert_to_f32(DType::BF16, b.data, upcast.data(), upcast.size());
      EXPECT_EQ(std::memcmp(upcast.data(), f.data, f.nbytes()), 0) << "fp32 != upcast bf16";
    }
    expect_mapped_in_place(bf16);
    expect_mapped_in_place(fp32);
  }
}

// --- round trips ---

TEST(CheckpointRoundTrip, PthKeepsNamesOrderDtypesShapesAndBytes) {
  const TensorSet set = varied_tensors();
  const std::string path = temp_path("round.pth");
  save_pth(path, set.views);
  const Checkpoint ckpt = Checkpoint::open(path);
  EXPECT_EQ(ckpt.format(), "pth");
  expect_same_tensors(ckpt.tensors(), set.views);
  for (const TensorView& t : ckpt.tensors()) {  // mapped in place: torch-style 64-byte alignment
    if (t.nbytes() == 0) continue;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 64, 0u) << t.name;
  }
}

TEST(CheckpointRoundTrip, ForcedZip64PthReadsBack) {
  const TensorSet set = varied_tensors();
  const std::string path = temp_path("zip64.pth");
  io::write_pth(path, set.views, /*force_zip64=*/true);
  EXPECT_NE(read_file(path).find(std::string("PK\x06\x07", 4)), std::string::npos);
  expect_same_tensors(Checkpoint::open(path).tensors(), set.views);
}

TEST(CheckpointRoundTrip, SafetensorsKeepsNamesOrderDtypesShapesAndBytes) {
  const TensorSet set = varied_tensors();
  const std::string path = temp_path("round.safetensors");
  save_safetensors(path, set.views);
  const Checkpoint ckpt = Checkpoint::open(path);
  EXPECT_EQ(ckpt.format(), "safetensors");
  expect_same_tensors(ckpt.tensors(), set.views);
  for (const TensorView& t : ckpt.tensors()) {  // in place or copied, always aligned
    if (t.nbytes() == 0) continue;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % dtype_block_bytes(t.dtype), 0u) << t.name;
  }
}

TEST(CheckpointRoundTrip, EmptyTensorListAndSavingErrors) {
  for (const char* name : {"none.pth", "none.safetensors"}) {
    const std::string path = temp_path(name);
    std::string(name).ends_with(".pth") ? save_pth(path, {}) : save_safetensors(path, {});
    EXPECT_TRUE(Checkpoint::open(path).tensors().empty());
  }
  TensorSet dup;
  dup.add("w", DType::F32, {2}, 0);
  dup.add("w", DType::F32, {3}, 0);
  const std::string path = temp_path("dup.pth");
  EXPECT_THROW(save_pth(path, dup.views), Error);
  EXPECT_FALSE(std::filesystem::exists(path));
  TensorSet bad_name;
  bad_name.add("bad\xff", DType::F32, {2}, 0);
  EXPECT_THROW(save_safetensors(temp_path("bad.safetensors"), bad_name.views), Error);
  EXPECT_THROW(save_pth(temp_path("no/such/dir/x.pth"), varied_tensors().views), Error);
}

TEST(CheckpointRoundTrip, SafetensorsConvertsF64AndCopiesMisalignedTensors) {
  // One bf16 element shifts the following fp32 tensor off its alignment.
  const double f64[] = {1.5, -2.25, 1e-3};
  const uint16_t bf16 = f32_to_bf16(3.0f);
  const float f32[] = {4.0f, 5.0f};
  std::string header =
      R"({"a":{"dtype":"F64","shape":[3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[],"data_offsets":[24,26]},)"
      R"("c":{"dtype":"F32","shape":[2],"data_offsets":[26,34]},"__metadata__":{"x":"y"}})";
  header.append((8 - header.size() % 8) % 8, ' ');  // data 8-aligned, so "c" is not
  std::string file(8, '\0');
  poke32(file, 0, uint32_t(header.size()));
  file += header;
  file.append(reinterpret_cast<const char*>(f64), sizeof f64);
  file.append(reinterpret_cast<const char*>(&bf16), 2);
  file.append(reinterpret_cast<const char*>(f32), sizeof f32);
  const std::string path = temp_path("f64.safetensors");
  write_bytes(path, file);
  const Checkpoint ckpt = Checkpoint::open(path);
  ASSERT_EQ(ckpt.tensors().size(), 3u);
  const TensorView& a = ckpt.get("a");
  EXPECT_EQ(a.dtype, DType::F32);
  EXPECT_EQ(static_cast<const float*>(a.data)[1], -2.25f);
  EXPECT_EQ(static_cast<const float*>(a.data)[2], float(1e-3));
  const TensorView& c = ckpt.get("c");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c.data) % 4, 0u);
  EXPECT_EQ(static_cast<const float*>(c.data)[1], 5.0f);
}

// --- compatibility with torch itself (skipped without Debian's python3-torch) ---

bool have_torch() {
  static const bool available =
      std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
  return available;
}

// "load IN OUT...": torch.load(IN, weights_only=True), each tensor as a JSON line into OUT.
// "make DIR": torch.save of tricky layouts into DIR/*.pth, with the expected tensors as JSON,
// and two files that must be refused: a broadcast view and the legacy (non-zip) format.
constexpr const char* kTorchScript = R"PY(
import json, sys, torch
INTS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
def dump(sd, out):
    with open(out, "w") as f:
        for name, t in sd.items():
            shape = list(t.shape)
            t = t.detach().contiguous().reshape(-1)
            if t.dtype == torch.float64:
                t = t.float()
            raw = t.view(INTS[t.dtype]).numpy().tobytes().hex()
            dtype = str(t.dtype).replace("torch.", "")
            f.write(json.dumps({"name": name, "dtype": dtype, "shape": shape, "hex": raw}) + "\n")
if sys.argv[1] == "load":
    for i in range(2, len(sys.argv), 2):
        dump(torch.load(sys.argv[i], weights_only=True), sys.argv[i + 1])
else:
    d = sys.argv[2]
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    tricky = {
        "transposed": base.t(), "row": base[2], "strided": base[:, ::2],
        "f64": torch.randn(3, 4, dtype=torch.float64, generator=g),
        "f64_t": torch.randn(3, 4, dtype=torch.float64, generator=g).t(),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4),
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
    }
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).state_dict()
    for name, sd, protocol in (("tricky", tricky, 2), ("tricky4", tricky, 4),
                               ("tricky5", tricky, 5), ("module", module, 2)):
        torch.save(sd, f"{d}/{name}.pth", pickle_protocol=protocol)
        dump(sd, f"{d}/{name}.jsonl")
    torch.save({"x": torch.randn(3, 1, generator=g).expand(3, 4)}, f"{d}/expanded.pth")
    torch.save({"x": torch.ones(2)}, f"{d}/legacy.pth", _use_new_zipfile_serialization=False)
)PY";

int run_torch_script(const std::string& args) {
  const std::string script = temp_path("torch_io.py");
  write_bytes(script, kTorchScript);
  return std::system(("/usr/bin/python3 " + script + " " + args + " >&2").c_str());
}

std::string hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) (out += digits[c >> 4]) += digits[c & 15];
  return out;
}

// Compares tensors with the JSON lines the script wrote.
void expect_tensors_match_dump(const std::vector<TensorView>& tensors, const std::string& dump) {
  std::istringstream lines(read_file(dump));
  size_t i = 0;
  for (std::string line; std::getline(lines, line); ++i) {
    const json want = json::parse(line);
    ASSERT_LT(i, tensors.size());
    const TensorView& t = tensors[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, want["name"].get<std::string>());
    EXPECT_EQ(parse_dtype(want["dtype"].get<std::string>()), t.dtype);
    EXPECT_EQ(t.shape, want["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(hex(bytes_of(t)), want["hex"].get<std::string>());
  }
  EXPECT_EQ(i, tensors.size());
}

TEST(CheckpointTorch, TorchLoadsWhatSavePthWrites) {
  if (!have_torch()) GTEST_SKIP() << "python3 with torch is not installed";
  const TensorSet set = varied_tensors();
  const std::string plain = temp_path("for_torch.pth");
  const std::string zip64 = temp_path("for_torch64.pth");
  save_pth(plain, set.views);
  io::write_pth(zip64, set.views, /*force_zip64=*/true);
  ASSERT_EQ(run_torch_script("load " + plain + " " + plain + ".jsonl " + zip64 + " " + zip64 +
                             ".jsonl"),
            0);
  expect_tensors_match_dump(set.views, plain + ".jsonl");
  expect_tensors_match_dump(set.views, zip64 + ".jsonl");
}

TEST(CheckpointTorch, ReadsTorchSavedViewsF64ParametersAndStateDicts) {
  if (!have_torch()) GTEST_SKIP() << "python3 with torch is not installed";
  const std::string dir = test::temp_dir();
  ASSERT_EQ(run_torch_script("make " + dir), 0);
  for (const char* name : {"tricky", "tricky4", "tricky5", "module"}) {
    SCOPED_TRACE(name);
    const Checkpoint ckpt = Checkpoint::open(dir + "/" + name + ".pth");
    expect_tensors_match_dump(ckpt.tensors(), dir + "/" + name + ".jsonl");
  }
  expect_open_error(dir + "/expanded.pth", "broadcast view");
  expect_open_error(dir + "/legacy.pth", "legacy");
}

// --- bad input ---

TEST(CheckpointErrors, MissingEmptyAndForeignFiles) {
  expect_open_error(temp_path("does-not-exist.pth"), "cannot open");
  const std::string empty = temp_path("empty.pth");
  write_bytes(empty, "");
  expect_open_error(empty, "empty");
  std::mt19937 rng(42);
  std::string noise(1000, '\0');
  for (char& c : noise) c = char(rng());
  const std::string random = temp_path("random.bin");
  write_bytes(random, noise);
  expect_open_error(random, "not a checkpoint");
}

TEST(CheckpointErrors, MissingTensorNamesTheTensorAndFile) {
  const std::string path = temp_path("get.pth");
  save_pth(path, varied_tensors().views);
  const Checkpoint ckpt = Checkpoint::open(path);
  EXPECT_EQ(ckpt.find("nope"), nullptr);
  try {
    ckpt.get("nope");
    ADD_FAILURE() << "get() of a missing tensor did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": missing tensor 'nope'"), std::string::npos);
  }
}

TEST(CheckpointErrors, TruncatedPth) {
  const std::string path = temp_path("whole.pth");
  save_pth(path, varied_tensors().views);
  const std::string whole = read_file(path);
  for (size_t length : {whole.size() / 10, whole.size() / 2, whole.size() - 1,
                        whole.size() - 22}) {
    SCOPED_TRACE(length);
    const std::string cut = temp_path("cut.pth");
    write_bytes(cut, whole.substr(0, length));
    expect_open_error(cut, "zip");
  }
}

TEST(CheckpointErrors, CorruptZipStructure) {
  const std::string path = temp_path("base.pth");
  save_pth(path, varied_tensors().views);
  const std::string base = read_file(path);
  const size_t end = base.size() - 22;
  const std::string bad = temp_path("bad.pth");

  std::string moved = base;  // central directory offset past the end of the file
  poke32(moved, end + 16, uint32_t(base.size() + 1000));
  write_bytes(bad, moved);
  expect_open_error(bad, "central directory");

  std::string shifted = base;  // central directory offset off by a few bytes
  poke32(shifted, end + 16, peek32(base, end + 16) + 3);
  write_bytes(bad, shifted);
  expect_open_error(bad, "signature");

  std::string huge = base;  // a storage entry running past EOF
  const size_t entry = central_entry(huge, "archive/data/7");
  poke32(huge, entry + 20, 0x7fffffff);
  poke32(huge, entry + 24, 0x7fffffff);
  write_bytes(bad, huge);
  expect_open_error(bad, "data of entry 'archive/data/7'");

  std::string deflated = base;  // method 8 in the central directory
  deflated[central_entry(deflated, "archive/data.pkl") + 10] = 8;
  write_bytes(bad, deflated);
  expect_open_error(bad, "'archive/data.pkl' is compressed (method 8, deflate)");
}

TEST(CheckpointErrors, DisallowedGlobalsAreRejectedByName) {
  struct Case {
    std::string pickle;
    std::string global;
  };
  const Case cases[] = {
      {"\x80\x02" "cos\nsystem\n(X\x02\x00\x00\x00lstR."s, "os.system"},
      {"\x80\x02" "cbuiltins\neval\n."s, "builtins.eval"},
      {"\x80\x02" "c__builtin__\ngetattr\n."s, "__builtin__.getattr"},
      {"\x80\x04\x8c\x02os\x8c\x06system\x93."s, "os.system"},  // STACK_GLOBAL
  };
  const std::string path = temp_path("evil.pth");
  for (const Case& c : cases) {
    write_bytes(path, pth_with_pickle(c.pickle));
    expect_open_error(path, "pickle references disallowed global '" + c.global + "'");
  }
}

TEST(CheckpointErrors, BadTensorRecords) {
  const std::string path = temp_path("records.pth");
  struct Case {
    std::string pickle;
    std::string fragment;
  };
  const Case cases[] = {
      {one_tensor_pickle("FloatStorage", 4, 0, {5}, {1}), "exceeds its storage of 4 elements"},
      {one_tensor_pickle("FloatStorage", 4, 1, {2, 2}, {2, 1}), "exceeds its storage"},
      {one_tensor_pickle("FloatStorage", 8, 0, {2}, {1}), "too few for 8 elements"},
      {one_tensor_pickle("FloatStorage", 4, 0, {2, 2}, {-1, 1}), "negative stride"},
      {one_tensor_pickle("LongStorage", 2, 0, {2}, {1}), "unsupported storage type"},
      {one_tensor_pickle("FloatStorage", 4, 0, {2}, {1, 1}), "stride has 2"},
      {one_tensor_pickle("FloatStorage", 4, 0, std::vector<int64_t>(17, 1),
                         std::vector<int64_t>(17, 1)), "17 dimensions"},
      {"\x80\x02}X\x01\x00\x00\x00wK\x01s."s, "'w' has type int, not a tensor"},
      {std::string("\x80\x02]."), "expected a dict"},
      {"\x80\x02" + std::string(100000, ']') + std::string(99999, 'a') + ".", "type list"},
      {"\x80\x02}X\x01\x00\x00"s, "truncated"},
      {std::string("\x80\x02}"), "truncated"},
      {"\x80\x02}V."s, "unsupported pickle opcode 0x56"},
      {std::string("\x80\x02s."), "stack underflow"},
      {std::string("\x80\x02h\x05."), "memo key 5"},
      {std::string("\x80\x07}."), "protocol 7"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.fragment);
    write_bytes(path, pth_with_pickle(c.pickle));
    expect_open_error(path, c.fragment);
  }
  // An allowed global that is not a storage type, used as one.
  std::string not_storage = one_tensor_pickle("FloatStorage", 4, 0, {4}, {1});
  const std::string storage_global = "ctorch\nFloatStorage\n";
  not_storage.replace(not_storage.find(storage_global), storage_global.size(),
                      "ccollections\nOrderedDict\n");
  write_bytes(path, pth_with_pickle(not_storage));
  expect_open_error(path, "is not a storage type");

  write_bytes(path, zip_bytes({{"archive/data.pkl", one_tensor_pickle("FloatStorage", 4, 0, {4},
                                                                      {1})}}));
  expect_open_error(path, "no zip entry 'archive/data/0'");
  write_bytes(path, zip_bytes({{"archive/version", "3\n"}}));
  expect_open_error(path, "no 'archive/data.pkl'");
  write_bytes(path, zip_bytes({{"archive/data.pkl", one_tensor_pickle("FloatStorage", 4, 0, {4},
                                                                      {1})},
                               {"archive/byteorder", "big"},
                               {"archive/data/0", std::string(16, '\0')}}));
  expect_open_error(path, "byte order 'big'");
}

TEST(CheckpointErrors, BadSafetensors) {
  const std::string path = temp_path("bad.safetensors");
  auto write_header = [&](const std::string& header, size_t data_bytes) {
    std::string file(8, '\0');
    poke32(file, 0, uint32_t(header.size()));
    write_bytes(path, file + header + std::string(data_bytes, '\0'));
  };
  write_header("{not json", 0);
  expect_open_error(path, "bad safetensors header JSON");
  write_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  expect_open_error(path, "data_offsets [0, 16] lie outside the 8 data bytes");
  write_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}})", 16);
  expect_open_error(path, "needs 16");
  write_header(R"({"w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", 8);
  expect_open_error(path, "unsupported dtype 'I64'");
  write_header(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4);
  expect_open_error(path, "non-negative");
  write_header(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4);
  expect_open_error(path, "no \"shape\"");
  write_header(R"({"w":5})", 0);
  expect_open_error(path, "header entry is not an object");
  write_header("{\"w\":" + std::string(100000, '[') + std::string(100000, ']') + "}", 0);
  expect_open_error(path, "nested deeper than");

  save_safetensors(path, varied_tensors().views);
  const std::string whole = read_file(path);
  write_bytes(path, whole.substr(0, 40));
  expect_open_error(path, "truncated safetensors file");
  write_bytes(path, whole.substr(0, whole.size() - 1));
  expect_open_error(path, "lie outside");
}

// --- fuzz-ish: corrupt small files many ways; every open must succeed or throw rwkv::Error ---

enum class Format { Pth, PthZip64, Safetensors };

std::string small_checkpoint_bytes(Format format) {
  TensorSet set;
  set.add("a", DType::F32, {3, 2}, 1);
  set.add("b", DType::BF16, {5}, 2);
  set.add("c.d", DType::F16, {2, 1, 2}, 3);
  const std::string path = temp_path("small");
  if (format == Format::Safetensors) {
    save_safetensors(path, set.views);
  } else {
    io::write_pth(path, set.views, format == Format::PthZip64);
  }
  return read_file(path);
}

TEST(CheckpointFuzz, RandomByteFlipsAndTruncationsNeverCrash) {
  std::mt19937 rng(1234);
  const std::string path = temp_path("fuzz.bin");
  unsigned sum = 0;
  for (Format format : {Format::Pth, Format::PthZip64, Format::Safetensors}) {
    const std::string original = small_checkpoint_bytes(format);
    int opened = 0;
    for (int iteration = 0; iteration < 400; ++iteration) {
      std::string bytes = original;
      const int flips = 1 + int(rng() % 4);
      for (int i = 0; i < flips; ++i) bytes[rng() % bytes.size()] ^= char(1 + rng() % 255);
      write_bytes(path, bytes);
      opened += open_and_touch(path, sum);
    }
    EXPECT_GT(opened, 0) << "flips in tensor bytes leave a valid file";
    for (size_t length = 0; length < original.size(); length += 7) {
      write_bytes(path, original.substr(0, length));
      EXPECT_FALSE(open_and_touch(path, sum)) << "truncated to " << length << " bytes";
    }
  }
  std::cout << "[ fuzz ] checksum of all bytes read: " << sum << "\n";
}

TEST(CheckpointFuzz, MutatedPicklesNeverCrash) {
  TensorSet set = varied_tensors();
  const std::string path = temp_path("pickle_src.pth");
  save_pth(path, set.views);
  const std::string zip = read_file(path);
  const auto entries = io::read_zip_directory(reinterpret_cast<const uint8_t*>(zip.data()),
                                              zip.size(), path);
  const std::string pickle = zip.substr(entries[0].data_offset, entries[0].size);
  std::mt19937 rng(99);
  for (int iteration = 0; iteration < 3000; ++iteration) {
    std::string bytes = pickle;
    const int flips = 1 + int(rng() % 3);
    for (int i = 0; i < flips; ++i) bytes[rng() % bytes.size()] = char(rng());
    if (iteration % 10 == 0) bytes.resize(rng() % bytes.size());
    try {
      io::read_state_dict_pickle(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                 "fuzz");
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace rwkv
