// Reading and writing weight files: PyTorch .pth (zip + restricted pickle), safetensors and
// rwkv.cpp model files (spec §7.1). A Checkpoint owns the bytes its TensorViews point at (a
// memory map of the file, plus buffers for tensors that had to be copied, e.g. non-contiguous
// ones). Nothing in a file is executed.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "rwkv/tensor.h"

namespace rwkv {

class Checkpoint {
 public:
  // Opens a .pth (zip), .safetensors or rwkv.cpp .bin file, chosen by the file's magic bytes,
  // not its name. Contiguous, aligned tensors point into the memory-mapped file; others (views
  // with strides, misaligned data) are copied, and fp64 tensors are converted to fp32.
  // Quantized tensors (rwkv.cpp files) always point into the map, at any alignment. Shapes are
  // in PyTorch order (rwkv.cpp's reversed dims are turned around).
  // Throws rwkv::Error naming the file and the problem for anything truncated, corrupt,
  // foreign or unsupported (e.g. a pickle naming a global outside the allowlist).
  static Checkpoint open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::string& format() const { return format_; }  // "pth", "safetensors", "rwkv.cpp"
  // Tensors in file order (for .pth, the order of the pickled dict).
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;
  // Like find(), but throws rwkv::Error("<file>: missing tensor '<name>'") when absent.
  const TensorView& get(const std::string& name) const;

  // Used by the readers.
  Checkpoint(std::string path, std::string format, std::vector<TensorView> tensors,
             std::vector<std::shared_ptr<const void>> owners);

 private:
  std::string path_;
  std::string format_;
  std::vector<TensorView> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::vector<std::shared_ptr<const void>> owners_;  // keep mapped file / buffers alive
};

// Writes tensors as a PyTorch-loadable .pth (torch.load gives a dict name -> tensor), atomically
// (temp file + rename). Throws rwkv::Error on I/O failure (e.g. a full disk), leaving no file.
void save_pth(const std::string& path, const std::vector<TensorView>& tensors);
// Writes tensors as .safetensors, atomically, with string metadata (keys "rwkv.quantized" and
// "rwkv.dtype.*" are the writer's own). Quantized tensors (whole blocks per row) are stored as
// U8 bytes and named in the metadata (layout in io/safetensors.cpp); Checkpoint::open reads
// them back as their block type.
void save_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
// Writes tensors as an rwkv.cpp model file (spec §7.1; file version 100 or 101), atomically.
// The header's n_vocab/n_embed come from `emb.weight` (required, 2-D), n_layer from the
// `blocks.N.` indices, data_type from the dtype holding most matrix (>= 2-D) elements.
// Tensors need 1 to 3 non-zero dimensions; F32, F16 and the quantized types can be stored
// (quantized ones only in version 101, innermost dimension a multiple of 32), BF16 cannot.
// The bytes are written as given: converting official weights (rwkv.cpp's baked-in
// transforms, spec §1.4) is the caller's job.
void save_rwkvcpp(const std::string& path, const std::vector<TensorView>& tensors,
                  int version = 101);

}  // namespace rwkv
