#include "serve/state_store.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "core/hash.h"
#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "serve/api.h"

namespace rwkv::serve {

namespace fs = std::filesystem;

StateStore::StateStore(std::string folder, const Model& model, size_t max_files, size_t max_bytes)
    : folder_(std::move(folder)),
      model_(model),
      spec_(model.state_spec()),
      max_files_(max_files),
      max_bytes_(max_bytes) {
  if (folder_.empty()) return;
  std::error_code ec;
  fs::create_directories(folder_, ec);
  if (!fs::is_directory(folder_)) fail("state folder ", folder_, " is not a folder and cannot be made");
}

bool StateStore::valid_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '_' && c != '-'))) return false;
  }
  return true;
}

uint64_t StateStore::origin_of(std::span<const float> state) {
  const uint64_t h = fnv1a64(state.data(), state.size_bytes());
  return h == 0 ? 1 : h;
}

void StateStore::check_name(const std::string& name, const char* param) const {
  if (!enabled()) throw ApiError(400, "named states are off on this server (see --state-dir)", param);
  if (!valid_name(name)) {
    throw ApiError(400, "invalid state name (1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit)", param);
  }
}

std::vector<float> StateStore::load(const std::string& name) const {
  check_name(name, "state");
  const fs::path saved = fs::path(folder_) / (name + ".state");
  const fs::path tuned = fs::path(folder_) / (name + ".pth");
  try {
    if (fs::exists(saved)) return load_state_file(saved.string(), spec_);
    if (fs::exists(tuned)) return load_tuned(tuned.string());
  } catch (const Error& e) {
    throw ApiError(400, cat("state '", name, "' cannot be used with this model: ", e.what()), "state");
  }
  throw ApiError(404, cat("no state named '", name, "'"), "state", "", "state_not_found");
}

// A state-tuned checkpoint: each layer's WKV state from blocks.N.att.time_state, stored in the
// training kernels' (H, N_value, N_key) layout (spec §2.6); RWKV-5/6 states are kept here as
// (H, N_key, N_value), RWKV-7's as (H, N_value, N_key).
std::vector<float> StateStore::load_tuned(const std::string& path) const {
  const Checkpoint ckpt = Checkpoint::open(path);
  std::vector<float> state(spec_.floats);
  model_.init_state(state.data());
  const ModelInfo& info = model_.info();
  if (info.n_head == 0) fail(path, ": RWKV-", info.generation, " has no matrix state to tune");
  const bool transpose = info.generation != "x070";
  const int H = info.n_head, N = info.head_size;
  int found = 0;
  for (const StatePiece& piece : model_.state_layout()) {
    // "blocks.L.att_kv" holds layer L's matrices (model/base.cpp).
    if (!piece.name.ends_with(".att_kv")) continue;
    const std::string layer = piece.name.substr(0, piece.name.size() - 7);  // "blocks.L"
    const TensorView* t = ckpt.find(layer + ".att.time_state");
    if (!t) continue;
    if (t->numel() != int64_t(piece.numel)) {
      fail(path, ": ", t->name, " has shape ", t->shape_str(), ", expected (", H, ", ", N, ", ", N, ")");
    }
    std::vector<float> m(piece.numel);
    convert_to_f32(t->dtype, t->data, m.data(), m.size());
    float* dst = state.data() + piece.offset;
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < N; ++i) {
        for (int j = 0; j < N; ++j) {
          const size_t src = (size_t(h) * N + size_t(i)) * N + size_t(j);
          const size_t out = transpose ? (size_t(h) * N + size_t(j)) * N + size_t(i) : src;
          dst[out] = m[src];
        }
      }
    }
    ++found;
  }
  if (found != info.n_layer) {
    fail(path, ": has time_state for ", found, " of ", info.n_layer, " layers");
  }
  return state;
}

size_t StateStore::used_bytes(size_t* files, const std::string& except) const {
  size_t bytes = 0;
  *files = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(folder_, ec)) {
    if (!entry.is_regular_file() || entry.path().filename() == except) continue;
    ++*files;
    bytes += size_t(entry.file_size(ec));
  }
  return bytes;
}

void StateStore::check_save(const std::string& name) const {
  check_name(name, "save_state");
  size_t files = 0;
  const size_t bytes = used_bytes(&files, name + ".state");
  const size_t need = spec_.floats * sizeof(float) + 128;
  if (files + 1 > max_files_ || bytes + need > max_bytes_) {
    throw ApiError(507, cat("the state folder is full (", files, " files, ", bytes >> 20, " MiB; bounds ",
                            max_files_, " files, ", max_bytes_ >> 20, " MiB)"),
                   "save_state", "server_error", "state_storage_full");
  }
}

void StateStore::save(const std::string& name, std::span<const float> state) {
  std::lock_guard lock(mutex_);
  check_save(name);
  try {
    save_state_file((fs::path(folder_) / (name + ".state")).string(), spec_, state);
  } catch (const Error& e) {
    throw ApiError(507, cat("could not save state '", name, "': ", e.what()), "save_state",
                   "server_error", "state_storage_full");
  }
}

std::vector<std::string> StateStore::names() const {
  std::vector<std::string> out;
  if (!enabled()) return out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(folder_, ec)) {
    const fs::path p = entry.path();
    if (entry.is_regular_file() && (p.extension() == ".state" || p.extension() == ".pth") &&
        valid_name(p.stem().string())) {
      out.push_back(p.stem().string());
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace rwkv::serve
