#include "model/quantize.h"

#include <algorithm>
#include <cmath>

#include "core/quant.h"
#include "rwkv/error.h"

namespace rwkv::model {

DType quantized_dtype(int bits, int group) {
  if (bits == 8 && group == 32) return DType::Q8_0;
  if (bits == 8 && group == 64) return DType::Q8_G64;
  if (bits == 8 && group == 128) return DType::Q8_G128;
  if (bits == 4 && group == 32) return DType::Q4_0;
  if (bits == 4 && group == 64) return DType::Q4_G64;
  if (bits == 4 && group == 128) return DType::Q4_G128;
  fail("quantize: ", bits, "-bit weights in groups of ", group,
       " are not a format (bits 8 or 4; groups of 32, 64 or 128)");
}

namespace {

bool is_projection(const TensorView& t) {
  return t.shape.size() == 2 && t.name.ends_with(".weight") && t.name != "emb.weight";
}

// Quantizes the (rows, cols) tensor t to `to`, measuring the error row by row in fp64.
TensorView quantize_tensor(const TensorView& t, DType to, QuantizedCheckpoint& out) {
  const int64_t rows = t.shape[0], cols = t.shape[1];
  const size_t in_row = dtype_nbytes(t.dtype, size_t(cols)), out_row = dtype_nbytes(to, size_t(cols));
  auto bytes = std::make_unique<uint8_t[]>(size_t(rows) * out_row);
  double err2 = 0, norm2 = 0, max_abs = 0, max_weight = 0;
#pragma omp parallel reduction(+ : err2, norm2) reduction(max : max_abs, max_weight)
  {
    std::vector<float> w(static_cast<size_t>(cols)), back(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      convert_to_f32(t.dtype, static_cast<const uint8_t*>(t.data) + size_t(r) * in_row, w.data(), w.size());
      uint8_t* q = bytes.get() + size_t(r) * out_row;
      quant::quantize_least_squares(to, w.data(), q, w.size());
      convert_to_f32(to, q, back.data(), back.size());
      for (size_t j = 0; j < w.size(); ++j) {
        const double d = double(back[j]) - double(w[j]);
        err2 += d * d;
        norm2 += double(w[j]) * double(w[j]);
        max_abs = std::max(max_abs, std::fabs(d));
        max_weight = std::max(max_weight, std::fabs(double(w[j])));
      }
    }
  }
  out.errors.push_back({t.name, t.shape, t.dtype, to, norm2 > 0 ? std::sqrt(err2 / norm2) : 0.0,
                        max_abs, max_weight});
  TensorView q{t.name, to, t.shape, bytes.get()};
  out.owned.push_back(std::move(bytes));
  return q;
}

}  // namespace

QuantizedCheckpoint quantize_checkpoint(const Checkpoint& ckpt, const QuantizeOptions& options) {
  const int group = options.group;
  const DType target = quantized_dtype(options.bits, group);
  if (ckpt.format() == "rwkv.cpp") {
    fail(ckpt.path(), ": an rwkv.cpp file (its tensors are in rwkv.cpp's own layout); quantize "
         "reads official checkpoints (.pth or .safetensors) — rwkv.cpp's quantized files load as "
         "they are");
  }
  QuantizedCheckpoint out;
  for (const TensorView& t : ckpt.tensors()) {
    if (is_quantized(t.dtype)) fail(ckpt.path(), ": tensor '", t.name, "' is quantized already (", dtype_name(t.dtype), ")");
    out.bytes_in += t.nbytes();
    const bool embedding = t.name == "emb.weight" && t.shape.size() == 2 && options.quantize_embedding;
    if (!is_projection(t) && !embedding) {
      out.tensors.push_back(t);
      continue;
    }
    // The embedding is only gathered: int8 keeps it small at no cost in speed or accuracy.
    DType to = embedding ? quantized_dtype(8, group) : target;
    const int64_t cols = t.shape[1];
    if (cols % int64_t(dtype_block_elems(to)) != 0) {
      const DType small = quantized_dtype(embedding ? 8 : options.bits, 32);
      if (cols % 32 != 0) {
        out.notes.push_back(cat(t.name, " ", t.shape_str(), ": rows of ", cols, " are not whole groups of 32; kept as stored"));
        out.tensors.push_back(t);
        continue;
      }
      out.notes.push_back(cat(t.name, " ", t.shape_str(), ": rows of ", cols, " are not whole groups of ",
                             dtype_block_elems(to), "; quantized as ", dtype_name(small)));
      to = small;
    }
    out.tensors.push_back(quantize_tensor(t, to, out));
  }
  for (const TensorView& t : out.tensors) out.bytes_out += t.nbytes();
  return out;
}

}  // namespace rwkv::model
