#include "model/common.h"

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "core/hash.h"
#include "ops/qdot.h"
#include "rwkv/error.h"

namespace rwkv::model {

void layer_norm_row(const float* x, float* y, int C, const float* weight, const float* bias,
                    float eps) {
  // fp64 sums in four interleaved partial sums: one chain of dependent additions would take
  // C adds' latency.
  double sum[4] = {}, sq[4] = {};
  int c = 0;
  for (; c + 4 <= C; c += 4)
    for (int k = 0; k < 4; ++k) sum[k] += x[c + k];
  for (; c < C; ++c) sum[0] += x[c];
  const double mean = (sum[0] + sum[1] + sum[2] + sum[3]) / C;
  for (c = 0; c + 4 <= C; c += 4)
    for (int k = 0; k < 4; ++k) sq[k] += (x[c + k] - mean) * (x[c + k] - mean);
  for (; c < C; ++c) sq[0] += (x[c] - mean) * (x[c] - mean);
  const double var = (sq[0] + sq[1] + sq[2] + sq[3]) / C;
  const float inv = float(1.0 / std::sqrt(var + eps)), mu = float(mean);
  for (c = 0; c < C; ++c) y[c] = (x[c] - mu) * inv * weight[c] + bias[c];
}

void layer_norm(const float* in, float* out, int M, int C, const float* weight, const float* bias,
                float eps) {
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
  for (int m = 0; m < M; ++m) {
    layer_norm_row(in + size_t(m) * size_t(C), out + size_t(m) * size_t(C), C, weight, bias, eps);
  }
}

void group_norm(float* x, int M, int H, int N, const float* weight, const float* bias, float eps) {
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
  for (int m = 0; m < M; ++m) {
    for (int h = 0; h < H; ++h) {
      float* g = x + (size_t(m) * size_t(H) + size_t(h)) * size_t(N);
      layer_norm_row(g, g, N, weight + size_t(h) * size_t(N), bias + size_t(h) * size_t(N), eps);
    }
  }
}

void token_shift(const float* x, float* delta, int B, int T, int C, float* const* prev_state,
                 size_t prev_offset) {
  for (int b = 0; b < B; ++b) {
    float* prev = prev_state[b] + prev_offset;
#pragma omp parallel for schedule(static) if (T >= kParallelRows)
    for (int t = 0; t < T; ++t) {
      const size_t row = (size_t(b) * size_t(T) + size_t(t)) * size_t(C);
      const float* p = t == 0 ? prev : x + row - size_t(C);
      for (int c = 0; c < C; ++c) delta[row + size_t(c)] = p[c] - x[row + size_t(c)];
    }
    std::memcpy(prev, x + (size_t(b) * size_t(T) + size_t(T - 1)) * size_t(C), size_t(C) * 4);
  }
}

WeightLoader::WeightLoader(std::shared_ptr<const Checkpoint> ckpt, const LoadOptions& options)
    : ckpt_(std::move(ckpt)), options_(options), lora_out_in_(ckpt_->format() == "rwkv.cpp") {}

const TensorView& WeightLoader::get(const std::string& name, std::vector<int64_t> expected,
                                    bool exact_shape) {
  const TensorView& t = ckpt_->get(name);
  const bool ok = exact_shape ? t.shape == expected : t.numel() == expected.at(0);
  if (!ok) {
    std::string want = exact_shape ? TensorView{"", DType::F32, expected, nullptr}.shape_str()
                                   : cat(expected.at(0), " elements");
    fail(ckpt_->path(), ": tensor '", name, "' has shape ", t.shape_str(), ", expected ", want);
  }
  used_.push_back(name);
  return t;
}

const float* WeightLoader::vec(const std::string& name, int64_t numel) {
  const TensorView& t = get(name, {numel}, false);
  auto buf = std::make_unique<uint8_t[]>(size_t(numel) * 4);
  auto* out = reinterpret_cast<float*>(buf.get());
  convert_to_f32(t.dtype, t.data, out, size_t(numel));
  owned_.push_back(std::move(buf));
  return out;
}

DType WeightLoader::matrix_dtype() const {
  DType best = DType::F32;
  size_t most = 0;
  for (size_t i = 0; i < std::size(bytes_by_dtype_); ++i) {
    if (bytes_by_dtype_[i] > most) {
      most = bytes_by_dtype_[i];
      best = DType(i);
    }
  }
  return best;
}

ops::Matrix WeightLoader::mat(const std::string& name, int rows, int cols) {
  const TensorView& t = get(name, {rows, cols}, true);
  return for_products(matrix(t.dtype, t.data, rows, cols));
}

ops::Matrix WeightLoader::table(const std::string& name, int rows, int cols) {
  const TensorView& t = get(name, {rows, cols}, true);
  return matrix(t.dtype, t.data, rows, cols);
}

// 4-bit matrices for the CPU's kernels are repacked into 8-row panels (ops/qdot.h); a
// conversion's row-major copy is dropped, a checkpoint's stays in its file.
ops::Matrix WeightLoader::for_products(const ops::Matrix& m) {
  if (options_.backend != Backend::Cpu || !ops::cpu::panels_supported(m.dtype)) return m;
  ops::Matrix padded = m;
  padded.panels = true;
  // 64-byte aligned: the kernels' 32-byte loads of quants then never straddle cache lines.
  auto buf = std::make_unique<uint8_t[]>(padded.nbytes() + 64);
  const auto at = reinterpret_cast<uintptr_t>(buf.get());
  const ops::Matrix P = ops::cpu::to_panels(m, buf.get() + (64 - at % 64) % 64);
  if (!owned_.empty() && owned_.back().get() == m.data) owned_.pop_back();
  owned_.push_back(std::move(buf));
  return P;
}

// The dtype a matrix is kept in: the requested one, except that rows which are not whole
// quantized blocks keep their stored dtype.
DType WeightLoader::target_dtype(DType stored, int cols) const {
  const DType want = options_.weight_dtype.value_or(stored);
  return cols % int(dtype_block_elems(want)) == 0 ? want : stored;
}

ops::Matrix WeightLoader::matrix(DType stored, const void* data, int rows, int cols) {
  return matrix(stored, data, rows, cols, target_dtype(stored, cols));
}

ops::Matrix WeightLoader::matrix(DType stored, const void* data, int rows, int cols, DType want) {
  ops::Matrix m{want, rows, cols, data};
  if (want != stored) {
    const size_t n = size_t(rows) * size_t(cols);
    std::vector<float> values(n);
    convert_to_f32(stored, data, values.data(), n);
    m.data = own(want, values.data(), n);
  }
  count(m);
  return m;
}

void WeightLoader::count(const ops::Matrix& m) {
  matrix_bytes_ += m.nbytes();
  bytes_by_dtype_[size_t(m.dtype)] += m.nbytes();
}

// LoRA matrices (small, and the decay's is sensitive) are not quantized: a quantized request
// keeps them as stored.
DType WeightLoader::lora_dtype(DType stored, int cols) const {
  const DType want = target_dtype(stored, cols);
  return is_quantized(want) && !is_quantized(stored) ? stored : want;
}

ops::Matrix WeightLoader::lora(const std::string& name, int in, int out) {
  if (lora_out_in_) {
    const TensorView& t = get(name, {out, in}, true);
    return matrix(t.dtype, t.data, out, in, lora_dtype(t.dtype, in));
  }
  const TensorView& t = get(name, {in, out}, true);
  return transposed(t.dtype, t.data, in, out);
}

ops::Matrix WeightLoader::lora_slab(const std::string& name, int index, int count, int in,
                                    int out) {
  const size_t slab = size_t(in) * size_t(out);
  if (lora_out_in_) {
    const TensorView& t = get(name, {count, out, in}, true);
    return matrix(t.dtype, static_cast<const uint8_t*>(t.data) +
                               dtype_nbytes(t.dtype, size_t(index) * slab), out, in,
                  lora_dtype(t.dtype, in));
  }
  const TensorView& t = get(name, {count, in, out}, true);
  return transposed(t.dtype, static_cast<const uint8_t*>(t.data) +
                                 dtype_nbytes(t.dtype, size_t(index) * slab), in, out);
}

ops::Matrix WeightLoader::transposed(DType stored, const void* src, int in, int out) {
  const DType want = lora_dtype(stored, in);
  const size_t n = size_t(in) * size_t(out);
  std::vector<float> values(n), t(n);
  convert_to_f32(stored, src, values.data(), n);
  for (size_t i = 0; i < size_t(in); ++i) {
    for (size_t o = 0; o < size_t(out); ++o) t[o * size_t(in) + i] = values[i * size_t(out) + o];
  }
  ops::Matrix m{want, out, in, own(want, t.data(), n)};
  count(m);
  return m;
}

const float* WeightLoader::vec_map(const std::string& name, int64_t numel, float (*f)(float)) {
  float* v = const_cast<float*>(vec(name, numel));  // our own buffer
  for (int64_t i = 0; i < numel; ++i) v[i] = f(v[i]);
  return v;
}

const float* WeightLoader::keep(const std::vector<float>& values) {
  return static_cast<const float*>(own(DType::F32, values.data(), values.size()));
}

const void* WeightLoader::own(DType dtype, const float* values, size_t n) {
  auto buf = std::make_unique<uint8_t[]>(dtype_nbytes(dtype, n));
  convert_from_f32(dtype, values, buf.get(), n);
  owned_.push_back(std::move(buf));
  return owned_.back().get();
}

void WeightLoader::mark_ignored(const std::string& name) { used_.push_back(name); }

void WeightLoader::check_all_used() const {
  std::unordered_set<std::string> used(used_.begin(), used_.end());
  for (const TensorView& t : ckpt_->tensors()) {
    if (!used.count(t.name)) {
      fail(ckpt_->path(), ": unexpected tensor '", t.name, "' ", t.shape_str(),
           " (an unsupported model variant?)");
    }
  }
}

// Names, shapes and the first values of the embedding and head, rounded to bf16 so that the
// fp32 and bf16 files of one model (same values) share states.
uint64_t WeightLoader::fingerprint() const {
  uint64_t h = kFnv1a64Basis;
  for (const TensorView& t : ckpt_->tensors()) {
    h = fnv1a64(t.name.data(), t.name.size(), h);
    h = fnv1a64(t.shape.data(), t.shape.size() * sizeof(int64_t), h);
  }
  for (const char* name : {"emb.weight", "head.weight"}) {
    const TensorView& t = ckpt_->get(name);
    const size_t n = std::min<size_t>(size_t(t.numel()), 4096);
    std::vector<float> values(n);
    convert_to_f32(t.dtype, t.data, values.data(), n);
    for (float v : values) {
      const uint16_t b = f32_to_bf16(v);
      h = fnv1a64(&b, 2, h);
    }
  }
  return h;
}

}  // namespace rwkv::model
