// Fresh RWKV-7 weights with the official initialisation (spec §5.1), in the official key names,
// order and shapes, ready to save as .pth (`rwkv init`) or to train from.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "rwkv/tensor.h"

namespace rwkv {

struct InitConfig {
  int n_layer = 2;
  int n_embd = 128;
  int vocab_size = 256;
  int head_size = 64;
  int dim_ffn = 0;  // 0 = 4 · n_embd
  // LoRA widths; 0 = the released models' formulas of spec §1.2 (C=768 → 64/64/32/128).
  int d_decay = 0, d_iclr = 0, d_value = 0, d_gate = 0;
  uint64_t seed = 0;
  DType dtype = DType::BF16;
};

// Tensors plus the buffers their data points into.
struct OwnedTensors {
  std::vector<TensorView> tensors;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> storage;
};

// Throws rwkv::Error for invalid configs (n_embd not a multiple of head_size, sizes ≤ 0, …).
OwnedTensors init_rwkv7(const InitConfig& config);

}  // namespace rwkv
