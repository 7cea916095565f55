// Shared initialisation pieces (see init_common.h). Moved out of init7.cpp unchanged, so RWKV-7
// weights stay byte for byte what they were.
#include "model/init_common.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/hash.h"
#include "rwkv/error.h"

namespace rwkv::init_detail {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// ---- orthogonal matrices (torch.nn.init.orthogonal_) ---------------------------------------

// A dot product in a fixed summation order: OpenBLAS's ddot splits long vectors across threads,
// which would make the bytes depend on the thread count.
double dot(const double* a, const double* b, int n) {
  double s[4] = {0, 0, 0, 0};
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int j = 0; j < 4; ++j) s[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) s[0] += a[i] * b[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// Modified Gram–Schmidt of b consecutive rows of length n against each other.
void mgs_rows(double* rows, int b, int n) {
  for (int i = 0; i < b; ++i) {
    double* v = rows + size_t(i) * size_t(n);
    for (int p = 0; p < i; ++p) {
      const double* u = rows + size_t(p) * size_t(n);
      cblas_daxpy(n, -dot(u, v, n), u, 1, v, 1);
    }
    const double norm = std::sqrt(dot(v, v, n));
    if (!(norm > 0)) fail("init: orthogonal init met a degenerate random matrix");
    cblas_dscal(n, 1.0 / norm, v, 1);
  }
}

// Orthonormalises the k rows (length n ≥ k, row-major) of q in place by block Gram–Schmidt with
// re-orthogonalisation: each block of rows gets the earlier rows projected out (two GEMMs) and is
// then orthonormalised by modified Gram–Schmidt, both steps twice ("twice is enough" keeps the
// rows orthonormal to rounding). About 4·n·k² flops, nearly all in GEMMs: a row-at-a-time sweep
// would stream the whole 400 MB of a 768 × 65536 head from memory once per row.
void orthonormalise_rows(std::vector<double>& q, int k, int n) {
  constexpr int kBlock = 32;
  std::vector<double> proj(size_t(kBlock) * size_t(k));
  for (int j0 = 0; j0 < k; j0 += kBlock) {
    const int b = std::min(kBlock, k - j0);
    double* block = q.data() + size_t(j0) * size_t(n);
    for (int pass = 0; pass < 2; ++pass) {
      if (j0 > 0) {
        // proj = block · earlierᵀ; block −= proj · earlier.
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, j0, n, 1.0, block, n, q.data(), n,
                    0.0, proj.data(), j0);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, n, j0, -1.0, proj.data(), j0,
                    q.data(), n, 1.0, block, n);
      }
      mgs_rows(block, b, n);
    }
  }
}

// out (rows × cols) = gain · qᵀ for q (cols × rows), in tiles that stay in cache: a plain loop
// would miss the cache on every element of the 65536-row head.
void transpose_scaled(const double* q, int64_t rows, int64_t cols, double gain, float* out) {
  constexpr int64_t kTile = 64;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      for (int64_t c = c0; c < std::min(cols, c0 + kTile); ++c) {
        for (int64_t r = r0; r < std::min(rows, r0 + kTile); ++r) {
          out[r * cols + c] = float(gain * q[c * rows + r]);
        }
      }
    }
  }
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

// ---- random numbers -----------------------------------------------------------------------

Random::Random(uint64_t seed, const std::string& name)
    : rng_(splitmix64(seed + splitmix64(fnv1a64(name)))) {}

void Random::fill_gaussian(double* x, size_t n) {
  for (size_t i = 0; i < n; i += 2) {
    double u, v, s;
    do {
      u = 2.0 * uniform() - 1.0;
      v = 2.0 * uniform() - 1.0;
      s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    const double f = std::sqrt(-2.0 * std::log(s) / s);
    x[i] = u * f;
    if (i + 1 < n) x[i + 1] = v * f;
  }
}

std::vector<float> orthogonal(int64_t rows, int64_t cols, double gain, Random& random) {
  const int k = int(std::min(rows, cols)), n = int(std::max(rows, cols));
  std::vector<double> q(size_t(k) * size_t(n));
  random.fill_gaussian(q.data(), q.size());
  orthonormalise_rows(q, k, n);
  std::vector<float> out(q.size());
  if (rows > cols) {
    transpose_scaled(q.data(), rows, cols, gain, out.data());
  } else {
    for (size_t i = 0; i < q.size(); ++i) out[i] = float(gain * q[i]);
  }
  return out;
}

// ---- the builder ---------------------------------------------------------------------------

void Builder::add(const std::string& name, std::vector<int64_t> shape,
                  const std::vector<float>& v) {
  auto bytes = std::make_shared<std::vector<uint8_t>>(dtype_nbytes(config_.dtype, v.size()));
  convert_from_f32(config_.dtype, v.data(), bytes->data(), v.size());
  out_.tensors.push_back(TensorView{name, config_.dtype, std::move(shape), bytes->data()});
  out_.storage.push_back(std::move(bytes));
}

void Builder::add_constant(const std::string& name, std::vector<int64_t> shape, float value) {
  const int64_t n = numel(shape);
  add(name, std::move(shape), std::vector<float>(size_t(n), value));
}

void Builder::add_orthogonal(const std::string& name, int64_t rows, int64_t cols, double gain) {
  Random random(config_.seed, name);
  add(name, {rows, cols}, orthogonal(rows, cols, gain, random));
}

void Builder::add_uniform(const std::string& name, std::vector<int64_t> shape, double bound) {
  Random random(config_.seed, name);
  std::vector<float> v(size_t(numel(shape)));
  for (float& x : v) x = float(bound * (2.0 * random.uniform() - 1.0));
  add(name, std::move(shape), v);
}

std::vector<float> per_channel(int C, const std::function<double(int)>& f) {
  std::vector<float> v(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) v[size_t(c)] = float(f(c));
  return v;
}

void add_layer_norm(Builder& out, const std::string& prefix, int C) {
  out.add_constant(prefix + ".weight", {C}, 1.f);
  out.add_constant(prefix + ".bias", {C}, 0.f);
}

void check_positive(const char* who, const char* what, int value) {
  if (value <= 0) fail(who, ": ", what, " must be > 0, got ", value);
}

void check_defaultable(const char* who, const char* what, int value) {
  if (value < 0) fail(who, ": ", what, " must be ≥ 0 (0 = default), got ", value);
}

void check_unused(const char* who, const char* what, int value, const char* used_by) {
  if (value != 0) {
    fail(who, ": ", what, " (", value, ") is only used by ", used_by, "; leave it 0");
  }
}

double eagle_decay(int n, int A, double r01) {
  return -6.0 + 5.0 * std::pow(position(n, A), 0.7 + 1.3 * r01);
}

double eagle_bonus(int n, int A, double r01) {
  return r01 * (1.0 - position(n, A)) + 0.1 * ((n + 1) % 3 - 1);
}

double head_gain(int vocab, int n_embd) {
  return vocab > n_embd ? 0.5 * std::sqrt(double(vocab) / n_embd) : 0.5;
}

OwnedTensors build_model(const InitConfig& config, int V, int C, int L, double emb_bound,
                         const AddPart& time_mix, const AddPart& channel_mix) {
  Builder out(config);
  out.add_uniform("emb.weight", {V, C}, emb_bound);
  for (int i = 0; i < L; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    add_layer_norm(out, b + "ln1", C);
    add_layer_norm(out, b + "ln2", C);
    if (i == 0) add_layer_norm(out, b + "ln0", C);
    time_mix(out, i, b + "att.");
    channel_mix(out, i, b + "ffn.");
  }
  add_layer_norm(out, "ln_out", C);
  out.add_orthogonal("head.weight", V, C, head_gain(V, C));
  return out.take();
}

}  // namespace rwkv::init_detail

// ---- generation names and the dispatcher ---------------------------------------------------

namespace rwkv {

std::string canonical_generation(const std::string& spelling) {
  static const std::pair<const char*, const char*> names[] = {
      {"4", "4"},       {"v4", "4"},       {"5.0", "5.0"},   {"v5.0", "5.0"},
      {"5.1", "5.1"},   {"v5.1", "5.1"},   {"5.2", "5.2"},   {"v5.2", "5.2"},
      {"x052", "5.2"},  {"6", "x060"},     {"v6", "x060"},   {"x060", "x060"},
      {"7", "x070"},    {"v7", "x070"},    {"x070", "x070"},
  };
  for (const auto& [name, canonical] : names) {
    if (spelling == name) return canonical;
  }
  if (spelling == "5" || spelling == "v5") {
    fail("unknown RWKV generation '", spelling,
         "': RWKV-5 has three layouts, say 5.0, 5.1 or 5.2 (the released Eagle models are 5.2)");
  }
  fail("unknown RWKV generation '", spelling,
       "': expected 4, 5.0, 5.1, 5.2, 6 (x060) or 7 (x070)");
}

int default_dim_ffn(const std::string& generation, int n_embd) {
  const std::string g = canonical_generation(generation);
  // RWKV-LM: v4neo's train.py uses 4·C unless the variant has the gate ("r3": 5.1);
  // RWKV-v5's model.py (5.2, x060) uses int((C·3.5)//32·32); x070 uses 4·C.
  if (g == "4" || g == "5.0" || g == "x070") return 4 * n_embd;
  return std::max(32, (7 * n_embd) / 64 * 32);  // floor(3.5·C/32)·32 in integers
}

OwnedTensors init_rwkv(const InitConfig& config) {
  InitConfig c = config;
  c.generation = canonical_generation(config.generation);
  if (c.generation == "4") return init_rwkv4(c);
  if (c.generation == "x060") return init_rwkv6(c);
  if (c.generation == "x070") return init_rwkv7(c);
  return init_rwkv5(c);
}

}  // namespace rwkv
