// RWKV-7 weights with the official initialisation (spec §5.1): the module-level values of
// RWKV-LM's x070 constructors, overridden where the model-level `generate_init_weight` pass
// says so, in the official key names, order and shapes (§1.2).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/hash.h"
#include "rwkv/error.h"
#include "rwkv/init.h"

namespace rwkv {
namespace {

// ---- random numbers -----------------------------------------------------------------------

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// One stream per tensor, keyed by its name, so a tensor's values depend on the seed and its name
// only, not on which tensors were generated before it. mt19937_64 is bit-exact by the standard;
// the std distributions are not, so the draws below are our own. (Orthogonal matrices still
// depend on the BLAS kernels' rounding, so bytes may differ in the last bits between CPUs.)
class Random {
 public:
  Random(uint64_t seed, const std::string& name)
      : rng_(splitmix64(seed + splitmix64(fnv1a64(name)))) {}

  double uniform() { return double(rng_() >> 11) * 0x1p-53; }  // [0, 1)

  // Marsaglia's polar method: two standard normals per point drawn uniformly in the unit disc.
  void fill_gaussian(double* x, size_t n) {
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

 private:
  std::mt19937_64 rng_;
};

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
    if (!(norm > 0)) fail("init_rwkv7: orthogonal init met a degenerate random matrix");
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

// A rows × cols matrix with orthonormal rows (rows ≤ cols) or columns (rows > cols), times gain:
// the smaller dimension's vectors are orthonormalised from a Gaussian matrix, as orthogonal_'s QR.
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

// ---- the tensor list -----------------------------------------------------------------------

struct Dims {
  int L, C, H, N, F, V;
  int d_decay, d_iclr, d_value, d_gate;
};

// Released LoRA width (§1.2): max(32, 32·round(factor·C^power/32)). nearbyint in the default
// rounding mode rounds half to even, as Python's round does.
int released_width(int C, double factor, double power) {
  return std::max(32, 32 * int(std::nearbyint(factor * std::pow(double(C), power) / 32)));
}

void check_positive(const char* what, int value) {
  if (value <= 0) fail("init_rwkv7: ", what, " must be > 0, got ", value);
}

Dims validate(const InitConfig& c) {
  check_positive("n_layer", c.n_layer);
  check_positive("n_embd", c.n_embd);
  check_positive("vocab_size", c.vocab_size);
  check_positive("head_size", c.head_size);
  // The decay zigzag of §5.1 divides by N − 1.
  if (c.head_size < 2) fail("init_rwkv7: head_size must be at least 2, got ", c.head_size);
  if (c.n_embd % c.head_size != 0) {
    fail("init_rwkv7: n_embd (", c.n_embd, ") must be a multiple of head_size (", c.head_size, ")");
  }
  const std::pair<const char*, int> defaultable[] = {{"dim_ffn", c.dim_ffn},
                                                     {"d_decay", c.d_decay},
                                                     {"d_iclr", c.d_iclr},
                                                     {"d_value", c.d_value},
                                                     {"d_gate", c.d_gate}};
  for (auto [what, value] : defaultable) {
    if (value < 0) fail("init_rwkv7: ", what, " must be ≥ 0 (0 = default), got ", value);
  }
  const int C = c.n_embd;
  const LoraWidths released = released_lora_widths(C);
  auto or_released = [](int forced, int released) { return forced ? forced : released; };
  return Dims{.L = c.n_layer,
              .C = C,
              .H = C / c.head_size,
              .N = c.head_size,
              .F = c.dim_ffn ? c.dim_ffn : 4 * C,
              .V = c.vocab_size,
              .d_decay = or_released(c.d_decay, released.decay),
              .d_iclr = or_released(c.d_iclr, released.iclr),
              .d_value = or_released(c.d_value, released.value),
              .d_gate = or_released(c.d_gate, released.gate)};
}

// Collects tensors in order, converting fp32 values to the output dtype.
class Builder {
 public:
  explicit Builder(const InitConfig& config) : config_(config) {}

  void add(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    auto bytes = std::make_shared<std::vector<uint8_t>>(dtype_nbytes(config_.dtype, v.size()));
    convert_from_f32(config_.dtype, v.data(), bytes->data(), v.size());
    out_.tensors.push_back(TensorView{name, config_.dtype, std::move(shape), bytes->data()});
    out_.storage.push_back(std::move(bytes));
  }
  void add_constant(const std::string& name, std::vector<int64_t> shape, float value) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    add(name, std::move(shape), std::vector<float>(size_t(n), value));
  }
  void add_orthogonal(const std::string& name, int64_t rows, int64_t cols, double gain) {
    Random random(config_.seed, name);
    add(name, {rows, cols}, orthogonal(rows, cols, gain, random));
  }
  void add_uniform(const std::string& name, std::vector<int64_t> shape, double bound) {
    Random random(config_.seed, name);
    std::vector<float> v(size_t(shape[0] * shape[1]));
    for (float& x : v) x = float(bound * (2.0 * random.uniform() - 1.0));
    add(name, std::move(shape), v);
  }
  OwnedTensors take() { return std::move(out_); }

 private:
  const InitConfig& config_;
  OwnedTensors out_;
};

std::vector<float> per_channel(int C, const std::function<double(int)>& f) {
  std::vector<float> v(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) v[size_t(c)] = float(f(c));
  return v;
}

void add_layer_norm(Builder& out, const std::string& prefix, int C) {
  out.add_constant(prefix + ".weight", {C}, 1.f);
  out.add_constant(prefix + ".bias", {C}, 0.f);
}

// X1 (C, D) zero, X2 (D, C) orthogonal 0.1 (× √(D/C) when D > C, as ortho_init), then X0 if any.
void add_lora(Builder& out, const std::string& prefix, int C, int D, const std::vector<float>* x0) {
  out.add_constant(prefix + "1", {C, D}, 0.f);
  out.add_orthogonal(prefix + "2", D, C, 0.1 * (D > C ? std::sqrt(double(D) / C) : 1.0));
  if (x0) out.add(prefix + "0", {1, 1, C}, *x0);
}

// The per-channel curves of the time-mix constructor (§5.1) for layer i.
struct Curves {
  Curves(const Dims& d, int i)
      : C(d.C),
        N(d.N),
        r01(d.L > 1 ? double(i) / (d.L - 1) : 0.0),  // §5.1: guard L = 1
        r1(1.0 - double(i) / d.L) {}
  double ddd(int c) const { return double(c) / C; }
  double lin(int c) const { return double(c) / (C - 1) - 0.5; }
  double zig(int c) const {
    const double half = (N - 1) / 2.0, z = ((c % N) - half) / half;
    return z * std::abs(z);
  }
  double www(int c) const {
    return -6.0 + 6.0 * std::pow(double(c) / (C - 1), 1.0 + std::pow(r01, 0.3));
  }
  int C, N;
  double r01, r1;
};

void add_time_mix(Builder& out, const Dims& d, int i, const std::string& a) {
  const Curves curve(d, i);
  const int C = d.C;
  const char* mix_names[] = {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g"};
  const double mix_powers[] = {0.2, 0.9, 0.7, 0.7, 0.9, 0.2};
  for (int j = 0; j < 6; ++j) {
    out.add(a + mix_names[j], {1, 1, C}, per_channel(C, [&](int c) {
              return 1.0 - std::pow(curve.ddd(c), mix_powers[j] * curve.r1);
            }));
  }
  const auto w0 = per_channel(C, [&](int c) { return curve.www(c) + 0.5 + 2.5 * curve.zig(c); });
  const auto a0 =
      per_channel(C, [&](int c) { return -0.19 + 0.3 * curve.zig(c) + 0.4 * curve.lin(c); });
  const auto v0 = per_channel(C, [&](int c) { return 0.73 - 0.4 * curve.lin(c); });
  add_lora(out, a + "w", C, d.d_decay, &w0);
  add_lora(out, a + "a", C, d.d_iclr, &a0);
  // Block 0 stores its value as v_first and has no value-residual LoRA (fixture manifest).
  if (i > 0) add_lora(out, a + "v", C, d.d_value, &v0);
  add_lora(out, a + "g", C, d.d_gate, nullptr);
  out.add(a + "k_k", {1, 1, C}, per_channel(C, [&](int c) { return 0.71 - 0.1 * curve.lin(c); }));
  out.add_constant(a + "k_a", {1, 1, C}, 1.02f);
  out.add_constant(a + "r_k", {d.H, d.N}, -0.04f);
  // Model-level pass: orthogonal r/k/v (key gain 0.1), zero output, ln_x weight ((1+i)/L)^0.7.
  out.add_orthogonal(a + "receptance.weight", C, C, 1.0);
  out.add_orthogonal(a + "key.weight", C, C, 0.1);
  out.add_orthogonal(a + "value.weight", C, C, 1.0);
  out.add_constant(a + "output.weight", {C, C}, 0.f);
  out.add_constant(a + "ln_x.weight", {C}, float(std::pow((1.0 + i) / d.L, 0.7)));
  out.add_constant(a + "ln_x.bias", {C}, 0.f);
}

void add_channel_mix(Builder& out, const Dims& d, int i, const std::string& f) {
  const Curves curve(d, i);
  out.add(f + "x_k", {1, 1, d.C}, per_channel(d.C, [&](int c) {
            return 1.0 - std::pow(curve.ddd(c), std::pow(curve.r1, 4));
          }));
  out.add_orthogonal(f + "key.weight", d.F, d.C, 1.0);
  out.add_constant(f + "value.weight", {d.C, d.F}, 0.f);
}

void add_block(Builder& out, const Dims& d, int i) {
  const std::string b = "blocks." + std::to_string(i) + ".";
  add_layer_norm(out, b + "ln1", d.C);
  add_layer_norm(out, b + "ln2", d.C);
  if (i == 0) add_layer_norm(out, b + "ln0", d.C);
  add_time_mix(out, d, i, b + "att.");
  add_channel_mix(out, d, i, b + "ffn.");
}

}  // namespace

LoraWidths released_lora_widths(int n_embd) {
  return {released_width(n_embd, 1.8, 0.5), released_width(n_embd, 1.8, 0.5),
          released_width(n_embd, 1.3, 0.5), released_width(n_embd, 0.6, 0.8)};
}

OwnedTensors init_rwkv7(const InitConfig& config) {
  const Dims d = validate(config);
  Builder out(config);
  out.add_uniform("emb.weight", {d.V, d.C}, 1e-4);
  for (int i = 0; i < d.L; ++i) add_block(out, d, i);
  add_layer_norm(out, "ln_out", d.C);
  const double head_gain = d.V > d.C ? 0.5 * std::sqrt(double(d.V) / d.C) : 0.5;
  out.add_orthogonal("head.weight", d.V, d.C, head_gain);
  return out.take();
}

}  // namespace rwkv
