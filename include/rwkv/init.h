// Fresh RWKV weights of any generation (4, 5.0, 5.1, 5.2, 6, 7) with RWKV-LM's initialisation
// (spec §5), in the official key names, order and shapes (§1.2), ready to save as .pth
// (`rwkv init`) or to train from.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rwkv/tensor.h"

namespace rwkv {

struct InitConfig {
  // "x070" (RWKV-7 Goose), "x060" (RWKV-6 Finch), "5.2", "5.1", "5.0" (RWKV-5 Eagle and its
  // previews), "4": the names ModelInfo::generation uses. init_rwkv() also accepts the other
  // spellings of canonical_generation().
  std::string generation = "x070";
  int n_layer = 2;
  int n_embd = 128;
  int vocab_size = 256;
  int head_size = 64;  // N, v5/v6/v7 (n_head = n_embd / head_size); RWKV-4 has no heads
  int dim_ffn = 0;     // 0 = default_dim_ffn(generation, n_embd)
  // LoRA widths, 0 = default. d_decay: v7 the released formula of spec §1.2 (C=768 → 64), v6 64.
  // d_iclr, d_value, d_gate: v7 only (released formula). d_mix: v6 only (32; time_maa_w1 has
  // 5·d_mix columns). Setting a width another generation uses is an error.
  int d_decay = 0, d_iclr = 0, d_value = 0, d_gate = 0;
  int d_mix = 0;
  uint64_t seed = 0;
  DType dtype = DType::BF16;
};

// The canonical generation name for a user's spelling: "4"/"v4" → "4"; "5.0", "5.1", "5.2"
// (also "v5.2", "x052") → themselves; "6"/"v6"/"x060" → "x060"; "7"/"v7"/"x070" → "x070".
// Throws rwkv::Error listing the accepted names for anything else (a bare "5" is ambiguous).
std::string canonical_generation(const std::string& spelling);

// RWKV-LM's default FFN width: 4·C for RWKV-4, 5.0 and RWKV-7; int(3.5·C/32)·32 (at least 32)
// for 5.1, 5.2 and RWKV-6 (C=768 → 2688, C=128 → 448).
int default_dim_ffn(const std::string& generation, int n_embd);

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

// All tensors in config.dtype, in the official key order (RWKV-LM's state_dict order: emb,
// blocks.0 … blocks.L−1 with ln0 in block 0 only, ln_out, head). Random tensors (emb, head, the
// orthogonal matrices, the uniform LoRAs) come from config.seed and the tensor's name only.
// Throw rwkv::Error for invalid configs (n_embd not a multiple of head_size, sizes ≤ 0, …).
OwnedTensors init_rwkv(const InitConfig& config);  // dispatches on config.generation
OwnedTensors init_rwkv4(const InitConfig& config);  // spec §5.3; ignores head_size
OwnedTensors init_rwkv5(const InitConfig& config);  // generation must be 5.0, 5.1 or 5.2
OwnedTensors init_rwkv6(const InitConfig& config);  // spec §5.2
OwnedTensors init_rwkv7(const InitConfig& config);  // spec §5.1; block 0 has no v0/v1/v2

}  // namespace rwkv
