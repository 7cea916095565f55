// Megatron binidx token datasets (io/binidx): the layout byte by byte, round trips, bad files.
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "io/binidx.h"
#include "rwkv/error.h"
#include "testing.h"

namespace rwkv::io {
namespace {

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                              std::streamsize(bytes.size()));
}

template <class T>
void put(std::vector<uint8_t>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

// An index written field by field as RWKV-LM's binidx.py does (struct.pack "<Q", "<B", then
// int32 sizes, int64 pointers, int64 doc_idx), independent of write_binidx.
std::vector<uint8_t> python_index(uint8_t code, const std::vector<int32_t>& sizes,
                                  const std::vector<int64_t>& pointers,
                                  const std::vector<int64_t>& doc_idx) {
  std::vector<uint8_t> out = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
  put<uint64_t>(out, 1);
  put<uint8_t>(out, code);
  put<uint64_t>(out, sizes.size());
  put<uint64_t>(out, doc_idx.size());
  for (int32_t s : sizes) put(out, s);
  for (int64_t p : pointers) put(out, p);
  for (int64_t d : doc_idx) put(out, d);
  return out;
}

void expect_error(const std::string& prefix, const std::string& phrase) {
  try {
    BinIdx::open(prefix);
    ADD_FAILURE() << "opened; expected an error containing '" << phrase << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(phrase), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(prefix), std::string::npos) << e.what();
  }
}

TEST(BinIdx, ReadsTheFormatRwkvLmWrites) {
  const std::string prefix = test::temp_dir() + "/python";
  std::vector<uint8_t> data;
  for (uint16_t t : {5, 65535, 0, 7, 9}) put(data, t);
  write_bytes(prefix + ".bin", data);
  write_bytes(prefix + ".idx", python_index(8, {2, 3}, {0, 4}, {0, 1, 2}));
  const BinIdx d = BinIdx::open(prefix);
  EXPECT_EQ(d.num_sequences(), 2u);
  EXPECT_EQ(d.num_tokens(), 5u);
  EXPECT_EQ(d.token_bytes(), 2u);
  EXPECT_EQ(d.sequence_start(1), 2u);
  EXPECT_EQ(d.sequence_size(1), 3u);
  EXPECT_EQ(d.doc_idx(), (std::vector<int64_t>{0, 1, 2}));
  std::vector<int> got(5);
  d.read(0, 5, got.data());
  EXPECT_EQ(got, (std::vector<int>{5, 65535, 0, 7, 9}));
}

TEST(BinIdx, RoundTripsNarrowAndWideIds) {
  for (int max_id : {255, 65535, 65536, 1 << 30}) {
    const std::string prefix = test::temp_dir() + "/rt" + std::to_string(max_id);
    const std::vector<std::vector<int>> docs = {{1, 2, max_id}, {}, {0, max_id, 3, 4}};
    write_binidx(prefix, docs);
    const BinIdx d = BinIdx::open(prefix);
    EXPECT_EQ(d.token_bytes(), max_id <= 65535 ? 2u : 4u);
    ASSERT_EQ(d.num_sequences(), 3u);
    EXPECT_EQ(d.num_tokens(), 7u);
    for (size_t i = 0; i < docs.size(); ++i) {
      std::vector<int> got(d.sequence_size(i));
      d.read(d.sequence_start(i), got.size(), got.data());
      EXPECT_EQ(got, docs[i]) << max_id << " doc " << i;
    }
    std::vector<int> one(1);
    EXPECT_THROW(d.read(7, 1, one.data()), Error);
    EXPECT_THROW(d.read(6, 2, one.data()), Error);
  }
  EXPECT_THROW(write_binidx(test::temp_dir() + "/neg", {{1, -2}}), Error);
}

TEST(BinIdx, BadFilesAreClearErrors) {
  const std::string dir = test::temp_dir() + "/bad";
  std::vector<uint8_t> data;
  for (uint16_t t : {1, 2, 3, 4}) put(data, t);
  const auto make = [&](const std::string& name, const std::vector<uint8_t>& idx,
                        const std::vector<uint8_t>& bin) {
    const std::string prefix = test::temp_dir() + "/" + name;
    write_bytes(prefix + ".idx", idx);
    if (!bin.empty()) write_bytes(prefix + ".bin", bin);
    return prefix;
  };
  const auto good = python_index(8, {4}, {0}, {0, 1});
  ASSERT_NO_THROW(BinIdx::open(make("good", good, data)));

  auto magic = good;
  magic[0] = 'X';
  expect_error(make("magic", magic, data), "not a binidx index");
  auto version = good;
  version[9] = 2;
  expect_error(make("version", version, data), "version 2");
  expect_error(make("float", python_index(6, {4}, {0}, {0, 1}), data), "does not hold token ids");
  expect_error(make("short", {good.begin(), good.begin() + 20}, data), "not a binidx index");
  expect_error(make("truncated", {good.begin(), good.end() - 5}, data), "truncated index");
  auto huge = good;
  huge[18 + 7] = 0x7f;  // n_sequences ≈ 2^62
  expect_error(make("huge", huge, data), "truncated index");
  expect_error(make("past_end", python_index(8, {3}, {4}, {0, 1}), data), "does not lie inside");
  expect_error(make("negative", python_index(8, {-1}, {0}, {0, 1}), data), "does not lie inside");
  expect_error(make("docidx", python_index(8, {4}, {0}, {0, 5}), data), "document index");
  expect_error(make("odd_bin", good, {1, 2, 3}), "whole number");
  try {
    BinIdx::open(make("no_bin", good, {}));
    ADD_FAILURE() << "opened without a .bin";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no_bin.bin"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace rwkv::io
