#include "testing.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <cstdlib>
#include <filesystem>

#include "rwkv/file_io.h"

namespace rwkv::test {

std::string shared_path(const std::string& relative) {
  const char* env = std::getenv("RWKV_SHARED_DIR");
  return std::string(env && *env ? env : RWKV_SHARED_DIR) + "/" + relative;
}

bool shared_exists(const std::string& relative) {
  return std::filesystem::exists(shared_path(relative));
}

std::string temp_dir() {
  static std::string dir = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "rwkv-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) std::abort();
    return tmpl;
  }();
  static struct Cleanup {
    ~Cleanup() { std::error_code ec; std::filesystem::remove_all(dir, ec); }
  } cleanup;
  return dir;
}

std::vector<float> read_f32_file(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

std::vector<double> read_f64_file(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<double> out(bytes.size() / 8);
  std::memcpy(out.data(), bytes.data(), out.size() * 8);
  return out;
}

ErrorStats compare(std::span<const float> got, std::span<const float> want) {
  EXPECT_EQ(got.size(), want.size());
  ErrorStats s;
  const size_t n = std::min(got.size(), want.size());
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(double(got[i]) - double(want[i]));
    if (!(d <= s.max_abs)) s.max_abs = std::isnan(d) ? INFINITY : d;
    if (std::fabs(want[i]) > 1e-3) s.max_rel = std::max(s.max_rel, d / std::fabs(double(want[i])));
  }
  return s;
}

}  // namespace rwkv::test
