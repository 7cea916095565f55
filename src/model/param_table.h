// A flat layout of named parameter tensors (official key names and shapes, official key
// order): one allocation holds all of them, and gradients and optimizer moments use the same
// offsets (DESIGN §2: zero-grad is one memset, the optimizer one flat loop).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rwkv::model {

struct ParamTensor {
  std::string name;             // official key, e.g. "blocks.0.att.key.weight"
  std::vector<int64_t> shape;   // official shape, e.g. {C, C}
  size_t offset = 0;            // in elements, into the flat buffer
  size_t numel = 0;
};

struct ParamTable {
  std::vector<ParamTensor> tensors;
  size_t total = 0;  // elements of the flat buffer

  // Appends a tensor; returns its offset. Offsets are rounded up to 16 elements (64 bytes).
  size_t add(const std::string& name, std::vector<int64_t> shape) {
    size_t numel = 1;
    for (int64_t d : shape) numel *= size_t(d);
    const size_t offset = (total + 15) / 16 * 16;
    tensors.push_back({name, std::move(shape), offset, numel});
    total = offset + numel;
    return offset;
  }
  const ParamTensor* find(const std::string& name) const {
    for (const ParamTensor& t : tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
};

}  // namespace rwkv::model
