// Reading and writing weight files: PyTorch .pth (zip + restricted pickle) and safetensors.
// A Checkpoint owns the bytes its TensorViews point at (a memory map of the file, plus buffers
// for tensors that had to be copied, e.g. non-contiguous ones). Nothing in a file is executed.
#pragma once
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "rwkv/tensor.h"

namespace rwkv {

class Checkpoint {
 public:
  // Opens a .pth (zip) or .safetensors file, chosen by the file's magic bytes, not its name.
  // Contiguous, aligned tensors point into the memory-mapped file; others (views with strides,
  // misaligned data) are copied, and fp64 tensors are converted to fp32.
  // Throws rwkv::Error naming the file and the problem for anything truncated, corrupt,
  // foreign or unsupported (e.g. a pickle naming a global outside the allowlist).
  static Checkpoint open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::string& format() const { return format_; }  // "pth" or "safetensors"
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
// Writes tensors as .safetensors, atomically.
void save_safetensors(const std::string& path, const std::vector<TensorView>& tensors);

}  // namespace rwkv
