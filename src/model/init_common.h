// Pieces shared by the initialisers of every generation (init4/5/6/7.cpp, spec §5): per-tensor
// random streams, torch-style orthogonal matrices, and a builder that collects tensors in the
// official key order and converts them to the output dtype.
#pragma once
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "rwkv/init.h"

namespace rwkv::init_detail {

// One stream per tensor, keyed by its name, so a tensor's values depend on the seed and its name
// only, not on which tensors were generated before it. mt19937_64 is bit-exact by the standard;
// the std distributions are not, so the draws are our own.
class Random {
 public:
  Random(uint64_t seed, const std::string& name);
  double uniform() { return double(rng_() >> 11) * 0x1p-53; }  // [0, 1)
  // Marsaglia's polar method: two standard normals per point drawn uniformly in the unit disc.
  void fill_gaussian(double* x, size_t n);

 private:
  std::mt19937_64 rng_;
};

// A rows × cols matrix with orthonormal rows (rows ≤ cols) or columns (rows > cols), times gain,
// as torch.nn.init.orthogonal_ (the smaller dimension's vectors orthonormalised from a Gaussian
// matrix). Bytes may differ in the last bits between CPUs (BLAS rounding).
std::vector<float> orthogonal(int64_t rows, int64_t cols, double gain, Random& random);

// Collects tensors in order, converting fp32 values to the output dtype.
class Builder {
 public:
  explicit Builder(const InitConfig& config) : config_(config) {}

  void add(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v);
  void add_constant(const std::string& name, std::vector<int64_t> shape, float value);
  // torch.nn.init.orthogonal_(gain) of a (rows, cols) matrix; stream keyed by the name.
  void add_orthogonal(const std::string& name, int64_t rows, int64_t cols, double gain);
  // uniform(−bound, bound) of any shape; stream keyed by the name.
  void add_uniform(const std::string& name, std::vector<int64_t> shape, double bound);
  OwnedTensors take() { return std::move(out_); }

 private:
  const InitConfig& config_;
  OwnedTensors out_;
};

std::vector<float> per_channel(int C, const std::function<double(int)>& f);

// LayerNorm / GroupNorm affine: weight 1, bias 0.
void add_layer_norm(Builder& out, const std::string& prefix, int C);

// Throws rwkv::Error("<who>: <what> must be > 0, got <value>").
void check_positive(const char* who, const char* what, int value);
// Throws unless value ≥ 0 (0 = the generation's default).
void check_defaultable(const char* who, const char* what, int value);
// Throws when a width that only another generation uses was set (≠ 0).
void check_unused(const char* who, const char* what, int value, const char* used_by);

// The layer ramps of every RWKV-LM constructor (spec §5): r01 = i/(L−1) (0 for L = 1, where
// Python would divide by zero) and r1 = 1 − i/L.
inline double ratio_0_to_1(int i, int L) { return L > 1 ? double(i) / (L - 1) : 0.0; }
inline double ratio_1_to_almost0(int i, int L) { return 1.0 - double(i) / L; }
// n/(count−1): the channel (or head) ramp of the decay curves; 0 when count = 1 (Python would
// divide by zero).
inline double position(int n, int count) { return count > 1 ? double(n) / (count - 1) : 0.0; }

// The per-channel decay and bonus curves shared by RWKV-LM's x052 (5.2) and x060 (v6)
// constructors (spec §5.2), for channel n of A: time_decay_n = −6 + 5·(n/(A−1))^{0.7 + 1.3·r01},
// time_faaaa_n = r01·(1 − n/(A−1)) + 0.1·((n+1) mod 3 − 1).
double eagle_decay(int n, int A, double r01);
double eagle_bonus(int n, int A, double r01);

// head.weight's orthogonal gain in every RWKV-LM trainer: 0.5·√(V/C) if V > C, else 0.5.
double head_gain(int vocab, int n_embd);

// A whole model in the official key order: emb.weight uniform(±emb_bound); blocks 0 … L−1, each
// ln1, ln2 (and ln0 in block 0), then the generation's "blocks.i.att." and "blocks.i.ffn."
// tensors; ln_out; head.weight orthogonal with head_gain.
using AddPart = std::function<void(Builder& out, int layer, const std::string& prefix)>;
OwnedTensors build_model(const InitConfig& config, int V, int C, int L, double emb_bound,
                         const AddPart& time_mix, const AddPart& channel_mix);

}  // namespace rwkv::init_detail
