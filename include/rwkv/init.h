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

// The released models' LoRA widths for n_embd C (spec §1.2), used where InitConfig leaves a
// width 0: D_w = D_a = max(32, 32·round(1.8·√C/32)), D_v = max(32, 32·round(1.3·√C/32)),
// D_g = max(32, 32·round(0.6·C^0.8/32)), round half to even. C=768 → 64/64/32/128.
struct LoraWidths {
  int decay, iclr, value, gate;
};
LoraWidths released_lora_widths(int n_embd);

// Tensors plus the buffers their data points into.
struct OwnedTensors {
  std::vector<TensorView> tensors;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> storage;
};

// All tensors in config.dtype, in the official key order (emb, blocks.0 … blocks.L−1, ln_out,
// head; block 0 has ln0 and no value-residual LoRA v0/v1/v2). Random tensors (emb, head, the
// orthogonal matrices) come from config.seed and the tensor's name only. Throws rwkv::Error for
// invalid configs (n_embd not a multiple of head_size, head_size < 2, sizes ≤ 0, …).
OwnedTensors init_rwkv7(const InitConfig& config);

}  // namespace rwkv
