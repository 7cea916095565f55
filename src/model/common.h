// Helpers shared by every generation: norms, token shift, activations, weight loading.
// Element-wise and per-row ops are written once, plainly; they are their own reference.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ops/ops.h"
#include "rwkv/checkpoint.h"
#include "rwkv/model.h"

namespace rwkv::model {

// Element-wise loops over rows use the threads from this many rows on (prefill); a decode step's
// few rows are not worth a fork and join.
constexpr int kParallelRows = 64;

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }
inline float silu(float x) { return x * sigmoid(x); }

// h = max(h, 0)² for n values (the channel mix's squared ReLU). The sign bit clears a negative
// value to +0 in integer lanes: GCC keeps a branch per element for a float comparison (trapping
// math), and half of them mispredict on activations of either sign. (A NaN with the sign bit
// set gives 0 here.)
inline void relu_squared(float* __restrict h, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, h + i, 4);
    u &= ~uint32_t(int32_t(u) >> 31);
    float z;
    std::memcpy(&z, &u, 4);
    h[i] = z * z;
  }
}

// out[m][c] = x[m][c] + d[m][c]·(mix[c] + add[m][c]) for M rows of C (add may be null). Rows, then
// columns: an index's column as i % C would cost a division per element.
inline void mix_rows(const float* x, const float* d, const float* mix, const float* add,
                     float* out, int M, int C) {
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
  for (int m = 0; m < M; ++m) {
    const size_t o = size_t(m) * size_t(C);
    if (add) {  // add may be out (RWKV-6's DDLerp)
      for (int c = 0; c < C; ++c) out[o + c] = x[o + c] + d[o + c] * (mix[c] + add[o + c]);
    } else {
      const float* __restrict xr = x + o;
      const float* __restrict dr = d + o;
      float* __restrict outr = out + o;
      for (int c = 0; c < C; ++c) outr[c] = xr[c] + dr[c] * mix[c];
    }
  }
}

// LayerNorm of one row of C (biased variance), x → y (may alias), on the calling thread.
void layer_norm_row(const float* x, float* y, int C, const float* weight, const float* bias,
                    float eps);
// LayerNorm of M rows of C (biased variance, eps 1e-5), in → out (may alias).
void layer_norm(const float* in, float* out, int M, int C, const float* weight, const float* bias,
                float eps = 1e-5f);
// GroupNorm of M rows of H·N: each head's N channels by their own mean and variance, then the
// per-channel affine. In place.
void group_norm(float* x, int M, int H, int N, const float* weight, const float* bias, float eps);

// Token shift for B sequences of T rows of C: delta[b,t] = prev − x[b,t], where prev is the
// previous row of the same sequence, or prev_state[b] for t = 0; then prev_state[b] ← x[b,T−1].
void token_shift(const float* x, float* delta, int B, int T, int C, float* const* prev_state,
                 size_t prev_offset);

// Loads tensors of a checkpoint into a model's weights, checking shapes and tracking which
// tensors were used so that unknown ones can be reported.
class WeightLoader {
 public:
  WeightLoader(std::shared_ptr<const Checkpoint> ckpt, const LoadOptions& options);

  // A small fp32 vector: the tensor must have `numel` elements (any shape, e.g. (1,1,C)).
  const float* vec(const std::string& name, int64_t numel);
  // A vector of `numel` elements with f applied to each (load-time preprocessing, spec §1.4).
  const float* vec_map(const std::string& name, int64_t numel, float (*f)(float));
  // 1 − μ for a mix coefficient μ (RWKV-4/5 store the weight of x̂, the models use that of x̂′).
  const float* one_minus(const std::string& name, int64_t numel) {
    return vec_map(name, numel, [](float m) { return 1.f - m; });
  }
  // Keeps values derived at load time (e.g. per-head decays broadcast over channels).
  const float* keep(const std::vector<float>& values);
  // An nn.Linear weight (rows=out, cols=in) kept in its stored dtype unless converted.
  ops::Matrix mat(const std::string& name, int rows, int cols);
  // The same for a table read by rows (the embedding): never repacked for products.
  ops::Matrix table(const std::string& name, int rows, int cols);
  // A LoRA matrix, as (out, in) for ops::linear. Official files store (in, out) (it is
  // transposed here); rwkv.cpp files store it transposed already (spec §1.4).
  ops::Matrix lora(const std::string& name, int in, int out);
  // Slab `index` of a stack of LoRA matrices stored (count, in, out) (rwkv.cpp: (count, out,
  // in)), as (out, in).
  ops::Matrix lora_slab(const std::string& name, int index, int count, int in, int out);
  bool has(const std::string& name) const { return ckpt_->find(name) != nullptr; }
  void mark_ignored(const std::string& name);
  // Throws rwkv::Error naming the first tensor nothing used (an unsupported variant).
  void check_all_used() const;
  DType matrix_dtype() const;  // the dtype holding most of the matrices' bytes
  uint64_t fingerprint() const;
  size_t matrix_bytes() const { return matrix_bytes_; }

 private:
  const TensorView& get(const std::string& name, std::vector<int64_t> expected_numel_or_shape,
                        bool exact_shape);
  // n fp32 values converted to dtype in a buffer the loader owns.
  const void* own(DType dtype, const float* values, size_t n);
  // A (rows, cols) matrix at data, converted to the requested dtype (or `want`) if that differs.
  ops::Matrix matrix(DType stored, const void* data, int rows, int cols);
  ops::Matrix matrix(DType stored, const void* data, int rows, int cols, DType want);
  // (in, out) values at src, as an (out, in) matrix in the wanted dtype.
  ops::Matrix transposed(DType stored, const void* src, int in, int out);
  std::shared_ptr<const Checkpoint> ckpt_;
  LoadOptions options_;
  bool lora_out_in_ = false;
  std::vector<std::string> used_;
  std::vector<std::unique_ptr<uint8_t[]>> owned_;
  void count(const ops::Matrix& m);
  ops::Matrix for_products(const ops::Matrix& m);
  DType target_dtype(DType stored, int cols) const;
  DType lora_dtype(DType stored, int cols) const;
  size_t matrix_bytes_ = 0;
  size_t bytes_by_dtype_[kDTypeCount] = {};  // by DType

 public:
  // Owned buffers (converted or transposed weights) move into the model with the checkpoint.
  std::vector<std::unique_ptr<uint8_t[]>> take_owned() { return std::move(owned_); }
};

}  // namespace rwkv::model
