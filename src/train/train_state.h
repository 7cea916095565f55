// The resumable training state (not the weights, which go to a checkpoint): optimiser moments,
// step counters, data-loader position, RNG state — whatever the trainer needs to continue a run
// exactly as if it had not stopped. Arbitrary metadata as JSON plus named float32 arrays.
//
// File format "RWKVTRN1" (all integers little-endian, no padding):
//   magic          8 bytes  "RWKVTRN1"
//   version        u32      1
//   json_length    u64      then json_length bytes of UTF-8 JSON (the `meta` object)
//   array_count    u32
//   per array:     u32 name_length, name bytes (UTF-8, unique within the file),
//                  u64 element_count, element_count × float32
//   checksum       u64      FNV-1a 64 (core/hash.h) of every byte before it
// The file ends right after the checksum. It is written atomically (temp file, fsync, rename):
// a crash or a full disk leaves the previous file, never a half-written one.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace rwkv::train {

inline constexpr char kTrainStateMagic[8] = {'R', 'W', 'K', 'V', 'T', 'R', 'N', '1'};
inline constexpr uint32_t kTrainStateVersion = 1;

struct TrainState {
  nlohmann::json meta;
  std::vector<std::pair<std::string, std::vector<float>>> arrays;

  // The array called `name`, or nullptr.
  const std::vector<float>* find(const std::string& name) const;
};

// Throws rwkv::Error naming the file when it cannot be written (the previous file, if any, is
// left intact) or when two arrays share a name.
void save_train_state(const std::string& path, const TrainState& state);

// Throws rwkv::Error naming the file and the problem: unreadable, wrong magic, unsupported
// version, truncated, sizes that do not fit the file, trailing bytes, checksum mismatch, invalid
// JSON, duplicate array names.
TrainState load_train_state(const std::string& path);

}  // namespace rwkv::train
