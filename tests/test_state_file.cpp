#include "rwkv/state.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "testing.h"

namespace rwkv {
namespace {

namespace fs = std::filesystem;

StateSpec small_spec() {
  StateSpec s;
  s.generation = "x070";
  s.n_layer = 2;
  s.n_embd = 8;
  s.n_head = 2;
  s.head_size = 4;
  s.floats = size_t(s.n_layer) * (2 * s.n_embd + s.n_head * s.head_size * s.head_size);
  s.fingerprint = 0x0123456789abcdefull;
  return s;
}

// Random values plus the bit patterns a lossy path would break: -0, denormal, inf, NaN payload.
std::vector<float> state_data(size_t n) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  v[0] = -0.0f;
  v[1] = std::numeric_limits<float>::denorm_min();
  v[2] = -std::numeric_limits<float>::infinity();
  const uint32_t nan_bits = 0x7fc12345u;
  std::memcpy(&v[3], &nan_bits, 4);
  return v;
}

std::string path_in_temp(const std::string& name) {
  const fs::path dir = fs::path(test::temp_dir()) /
                       testing::UnitTest::GetInstance()->current_test_info()->name();
  fs::create_directories(dir);
  return (dir / name).string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  write_file_atomic(path, bytes.data(), bytes.size());
}

// A valid state file's bytes, for the tests to damage.
std::string valid_file_bytes(const std::string& path) {
  save_state_file(path, small_spec(), state_data(small_spec().floats));
  return read_file(path);
}

void put_u32(std::string& bytes, size_t offset, uint32_t v) {
  for (int i = 0; i < 4; ++i) bytes[offset + size_t(i)] = char(v >> (8 * i));
}

// Loading `path` fails with a message that names the file and contains every fragment.
void expect_load_error(const std::string& path, const StateSpec& expected,
                       const std::vector<std::string>& fragments) {
  try {
    load_state_file(path, expected);
    ADD_FAILURE() << "loading " << path << " did not throw";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    for (const std::string& f : fragments)
      EXPECT_NE(message.find(f), std::string::npos) << "'" << f << "' not in: " << message;
  }
}

// No temp files left beside a failed write.
void expect_only_file(const std::string& path, bool exists) {
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(fs::path(path).parent_path())) {
    ++entries;
    EXPECT_EQ(e.path().string(), path);
  }
  EXPECT_EQ(entries, exists ? 1u : 0u);
}

TEST(StateFile, RoundtripIsBitExact) {
  const std::string path = path_in_temp("s.rwkvstate");
  const std::vector<float> data = state_data(small_spec().floats);
  save_state_file(path, small_spec(), data);
  EXPECT_EQ(fs::file_size(path), 80 + data.size() * 4);
  const std::vector<float> back = load_state_file(path, small_spec());
  ASSERT_EQ(back.size(), data.size());
  EXPECT_EQ(std::memcmp(back.data(), data.data(), data.size() * 4), 0);
}

TEST(StateFile, HeaderLayoutIsAsDocumented) {
  const std::string bytes = valid_file_bytes(path_in_temp("s.rwkvstate"));
  ASSERT_GE(bytes.size(), 80u);
  EXPECT_EQ(bytes.substr(0, 8), "RWKVSTAT");
  auto u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | uint8_t(bytes[at + size_t(i)]);
    return v;
  };
  EXPECT_EQ(u32(8), 1u);    // version
  EXPECT_EQ(u32(12), 80u);  // header_bytes
  EXPECT_EQ(bytes.substr(16, 5), std::string("x070\0", 5));
  EXPECT_EQ(u32(32), 2u);   // n_layer
  EXPECT_EQ(u32(36), 8u);   // n_embd
  EXPECT_EQ(u32(40), 2u);   // n_head
  EXPECT_EQ(u32(44), 4u);   // head_size
  EXPECT_EQ(u32(48), small_spec().floats);
  EXPECT_EQ(u32(56), 0x89abcdefu);  // fingerprint, low half first
  EXPECT_EQ(u32(60), 0x01234567u);
  EXPECT_EQ(u32(64), 0u);  // dtype
}

TEST(StateFile, EmptyStateRoundtrips) {
  StateSpec spec = small_spec();
  spec.floats = 0;
  const std::string path = path_in_temp("empty.rwkvstate");
  save_state_file(path, spec, {});
  EXPECT_TRUE(load_state_file(path, spec).empty());
}

TEST(StateFile, RejectsWrongMagic) {
  const std::string path = path_in_temp("s.rwkvstate");
  std::string bytes = valid_file_bytes(path);
  bytes[0] = 'X';
  write_bytes(path, bytes);
  expect_load_error(path, small_spec(), {"not an rwkv state file"});
  write_bytes(path, "hello");
  expect_load_error(path, small_spec(), {"not an rwkv state file"});
}

TEST(StateFile, RejectsUnsupportedVersion) {
  const std::string path = path_in_temp("s.rwkvstate");
  std::string bytes = valid_file_bytes(path);
  put_u32(bytes, 8, 2);
  write_bytes(path, bytes);
  expect_load_error(path, small_spec(), {"unsupported state file version 2"});
}

TEST(StateFile, RejectsTruncatedHeader) {
  const std::string path = path_in_temp("s.rwkvstate");
  const std::string bytes = valid_file_bytes(path);
  write_bytes(path, bytes.substr(0, 40));
  expect_load_error(path, small_spec(), {"truncated state file header", "got 40 bytes"});
  // header_bytes pointing past the end of the file.
  std::string long_header = bytes.substr(0, 80);
  put_u32(long_header, 12, 4096);
  write_bytes(path, long_header);
  expect_load_error(path, small_spec(), {"truncated state file header"});
}

TEST(StateFile, RejectsTruncatedAndOversizedData) {
  const std::string path = path_in_temp("s.rwkvstate");
  const std::string bytes = valid_file_bytes(path);
  write_bytes(path, bytes.substr(0, bytes.size() - 4));
  const size_t want = small_spec().floats * 4;
  expect_load_error(path, small_spec(),
                    {"truncated state data", std::to_string(want - 4), std::to_string(want)});
  write_bytes(path, bytes + "xyzw");
  expect_load_error(path, small_spec(), {"4 unexpected bytes"});
}

TEST(StateFile, RejectsChecksumMismatch) {
  const std::string path = path_in_temp("s.rwkvstate");
  std::string bytes = valid_file_bytes(path);
  bytes[100] ^= 0x01;
  write_bytes(path, bytes);
  expect_load_error(path, small_spec(), {"checksum mismatch"});
}

TEST(StateFile, RejectsOtherDtype) {
  const std::string path = path_in_temp("s.rwkvstate");
  std::string bytes = valid_file_bytes(path);
  put_u32(bytes, 64, 1);
  write_bytes(path, bytes);
  expect_load_error(path, small_spec(), {"dtype 1"});
}

TEST(StateFile, RejectsAnotherModelNamingBothSpecs) {
  const std::string path = path_in_temp("s.rwkvstate");
  save_state_file(path, small_spec(), state_data(small_spec().floats));
  std::vector<StateSpec> others(7, small_spec());
  others[0].generation = "x060";
  others[1].n_layer = 3;
  others[2].n_embd = 16;
  others[3].n_head = 4;
  others[4].head_size = 8;
  others[5].floats += 1;
  others[6].fingerprint ^= 1;
  for (const StateSpec& other : others) {
    SCOPED_TRACE(other.describe());
    expect_load_error(path, other,
                      {"another model", small_spec().describe(), other.describe()});
  }
}

TEST(StateFile, DescribeNamesEveryField) {
  EXPECT_EQ(small_spec().describe(),
            "x070 L2 C8 H2x4 (" + std::to_string(small_spec().floats) +
                " floats, fingerprint 0x123456789abcdef)");
}

TEST(StateFile, SaveRejectsMismatchedDataAndLongGeneration) {
  const std::string path = path_in_temp("s.rwkvstate");
  EXPECT_THROW(save_state_file(path, small_spec(), state_data(small_spec().floats - 1)), Error);
  StateSpec long_name = small_spec();
  long_name.generation = std::string(17, 'x');
  EXPECT_THROW(save_state_file(path, long_name, state_data(long_name.floats)), Error);
  expect_only_file(path, false);
}

TEST(StateFile, FailedWriteIntoMissingDirectoryLeavesNoFile) {
  const std::string path = path_in_temp("missing/s.rwkvstate");
  EXPECT_THROW(save_state_file(path, small_spec(), state_data(small_spec().floats)), Error);
  EXPECT_THROW(write_raw_state(path, state_data(4)), Error);
  EXPECT_FALSE(fs::exists(path));
}

// A full disk, simulated with a file size limit (it also binds root): the write fails, the old
// file survives untouched and no temp file is left.
TEST(StateFile, FailedOverwriteLeavesTheOldFile) {
  const std::string path = path_in_temp("s.rwkvstate");
  const std::string old_bytes = valid_file_bytes(path);
  StateSpec big = small_spec();
  big.floats = 100000;

  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  rlimit limited = saved;
  limited.rlim_cur = 4096;
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);  // get EFBIG, not a signal
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limited), 0);
  bool threw = false;
  try {
    save_state_file(path, big, std::vector<float>(big.floats, 1.0f));
  } catch (const Error&) {
    threw = true;
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);

  EXPECT_TRUE(threw);
  EXPECT_EQ(read_file(path), old_bytes);
  expect_only_file(path, true);
}

TEST(StateFile, RawRoundtripIsBitExact) {
  const std::string path = path_in_temp("raw.bin");
  const std::vector<float> data = state_data(1000);
  write_raw_state(path, data);
  EXPECT_EQ(fs::file_size(path), 4000u);
  const std::vector<float> back = read_raw_state(path, 1000);
  ASSERT_EQ(back.size(), data.size());
  EXPECT_EQ(std::memcmp(back.data(), data.data(), 4000), 0);
}

TEST(StateFile, RawSizeMismatchThrows) {
  const std::string path = path_in_temp("raw.bin");
  write_raw_state(path, state_data(1000));
  for (size_t expected : {999u, 1001u}) {
    try {
      read_raw_state(path, expected);
      ADD_FAILURE() << "no error for " << expected << " floats";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(path), std::string::npos) << message;
      EXPECT_NE(message.find("got 4000 bytes, expected " + std::to_string(expected * 4)),
                std::string::npos)
          << message;
    }
  }
  EXPECT_THROW(read_raw_state(path_in_temp("absent.bin"), 1000), Error);
}

}  // namespace
}  // namespace rwkv
