// The recurrent state: one flat fp32 buffer per sequence (DESIGN §3). Its layout is the official
// `rwkv` package's list order, flattened (see the model's state_layout()), so raw import/export
// is a plain copy. Fork = copy. Files: a versioned header that names the model it belongs to.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace rwkv {

// What a state belongs to. Two specs are compatible when every field is equal.
struct StateSpec {
  std::string generation;  // "x070", ...
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int head_size = 0;
  size_t floats = 0;         // length of the flat buffer
  uint64_t fingerprint = 0;  // hash of the model's tensor names, shapes and sampled bytes
  // "x070 L12 C768 H12x64 (1234 floats, fingerprint 0x…)"
  std::string describe() const;
  bool operator==(const StateSpec&) const = default;
};

// State file, little-endian:
//   "RWKVSTAT" | u32 version=1 | u32 header_bytes | char generation[16] | i32 n_layer, n_embd,
//   n_head, head_size | u64 floats | u64 fingerprint | u32 dtype (0 = fp32) | u32 reserved |
//   u64 fnv1a64 checksum of the data bytes | data (floats × f32)
// header_bytes is where the data starts (80 in version 1; a reader skips header bytes it does not
// know). generation is NUL-padded (at most 16 bytes). Written atomically (temp + rename); a failed
// write (full disk) throws and leaves no file. Throws rwkv::Error if data.size() != spec.floats.
void save_state_file(const std::string& path, const StateSpec& spec, std::span<const float> data);
// Reads a state file; throws rwkv::Error naming the file if it is not a state file, has another
// version or dtype, is truncated, fails its checksum, or belongs to another model (any field of
// the spec differs; the message names both specs).
std::vector<float> load_state_file(const std::string& path, const StateSpec& expected);

// Raw float32 state in the official package's layout (no header): size must be exactly
// expected_floats × 4 bytes.
std::vector<float> read_raw_state(const std::string& path, size_t expected_floats);
void write_raw_state(const std::string& path, std::span<const float> data);

}  // namespace rwkv
