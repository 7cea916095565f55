// Quantizing a checkpoint's weight matrices (`rwkv quantize`): symmetric int8 or int4 per group
// of 32, 64 or 128 weights with an fp16 scale (rwkv/dtype.h: Q8_0/Q8_G64/Q8_G128,
// Q4_0/Q4_G64/Q4_G128) for every 2-D projection `*.weight`, the head included, and optionally the
// embedding (int8 only: it is gathered, not multiplied, so 4 bits would save no time). Decays,
// mixes, LoRAs, norms and every other tensor stay as stored.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rwkv/checkpoint.h"

namespace rwkv::model {

struct QuantizeOptions {
  int bits = 8;                    // 8 or 4
  int group = 64;                  // 32, 64 or 128
  bool quantize_embedding = true;  // as int8 with the same group
};

// The block type for `bits` and `group` (32 gives ggml's Q8_0 / Q4_0); rwkv::Error otherwise.
DType quantized_dtype(int bits, int group);

// What quantizing did to one tensor: ‖W − Ŵ‖/‖W‖ and max |W − Ŵ| against its stored values.
struct TensorError {
  std::string name;
  std::vector<int64_t> shape;
  DType from, to;
  double rel_rms = 0, max_abs = 0, max_weight = 0;
};

struct QuantizedCheckpoint {
  std::vector<TensorView> tensors;  // every tensor, in the input's order
  std::vector<TensorError> errors;  // the quantized ones
  // Projections not quantized as asked (rows not whole groups), and what they became instead.
  std::vector<std::string> notes;
  size_t bytes_in = 0, bytes_out = 0;
  std::vector<std::unique_ptr<uint8_t[]>> owned;  // the quantized tensors' bytes
};

// Quantizes ckpt's projections (OpenMP threads over rows). Throws rwkv::Error for an rwkv.cpp file
// (its tensors are in rwkv.cpp's layout) or one whose weights are quantized already.
QuantizedCheckpoint quantize_checkpoint(const Checkpoint& ckpt, const QuantizeOptions& options);

}  // namespace rwkv::model
