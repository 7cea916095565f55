// A named, read-only view of a tensor's bytes (row-major, contiguous). The bytes are owned by
// whoever produced the view (a Checkpoint's mapped file or buffers, a model's weights).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "rwkv/dtype.h"

namespace rwkv {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return dtype_nbytes(dtype, size_t(numel())); }
  int64_t dim(int i) const { return shape.at(size_t(i < 0 ? int(shape.size()) + i : i)); }
  // "(768, 64)" for messages.
  std::string shape_str() const;
};

}  // namespace rwkv
