// Named states on disk for the API (DESIGN: serve/): a request may start from a saved or
// state-tuned state and may save its final state under a name. Names are plain words (no
// paths); the folder is bounded in files and bytes.
//
// In the folder: NAME.state (the engine's state file, rwkv/state.h) and, read only, NAME.pth: a
// state-tuned checkpoint holding `blocks.N.att.time_state` (H, N_value, N_key) per layer
// (RWKV-5/6/7; the token-shift parts start at zero).
#pragma once
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rwkv/model.h"

namespace rwkv::serve {

class StateStore {
 public:
  // An empty folder turns named states off (every request naming one is refused).
  StateStore(std::string folder, const Model& model, size_t max_files, size_t max_bytes);

  bool enabled() const { return !folder_.empty(); }
  // 1–64 characters of [A-Za-z0-9_-], the first a letter or digit.
  static bool valid_name(std::string_view name);
  // The state named `name`. Throws ApiError: 400 for an invalid name or a file that is not a
  // state of this model, 404 when no such state exists.
  std::vector<float> load(const std::string& name) const;
  // Checks that `name` could be saved now (valid, within the bounds); throws ApiError 400/507.
  void check_save(const std::string& name) const;
  // Saves atomically (temp file + rename). Throws ApiError: 507 when the folder's bounds or the
  // disk are full (nothing is left behind).
  void save(const std::string& name, std::span<const float> state);
  std::vector<std::string> names() const;
  // An id of a state's contents, for the prefix cache (never 0).
  static uint64_t origin_of(std::span<const float> state);

 private:
  // ApiError 400 (naming `param`) when states are off or `name` is not a valid name.
  void check_name(const std::string& name, const char* param) const;
  std::vector<float> load_tuned(const std::string& path) const;
  size_t used_bytes(size_t* files, const std::string& except) const;

  std::string folder_;
  const Model& model_;
  StateSpec spec_;
  size_t max_files_, max_bytes_;
  mutable std::mutex mutex_;  // one save at a time
};

}  // namespace rwkv::serve
