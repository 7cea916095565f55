// RWKV-7 training form, model level: parameters, embedding, ln0/ln_out, head, loss, and the
// walk over the blocks (rwkv7_train_layer.cpp does one block).
#include "model/rwkv7_train.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <type_traits>

#include "model/rwkv7_train_impl.h"
#include "ops/train.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace {

namespace ot = ops::train;
constexpr double kLayerNormEps = 1e-5;

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const TensorView* find(const std::vector<TensorView>& tensors, const std::string& name) {
  for (const TensorView& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const TensorView& need(const std::vector<TensorView>& tensors, const std::string& name, int dims,
                       const std::string& source) {
  const TensorView* t = find(tensors, name);
  if (!t) fail(source, ": not an RWKV-7 model: missing tensor '", name, "'");
  if (int(t->shape.size()) != dims) {
    fail(source, ": tensor '", name, "' has shape ", t->shape_str(), ", expected ", dims, " dims");
  }
  return *t;
}

// Every tensor of the model with its expected element count; matrices also their shape.
std::map<std::string, std::vector<int64_t>> expected_tensors(const Rwkv7Dims& d) {
  const int64_t C = d.C, V = d.V, F = d.F;
  std::map<std::string, std::vector<int64_t>> e;
  e["emb.weight"] = {V, C};
  e["ln_out.weight"] = e["ln_out.bias"] = {C};
  e["head.weight"] = {V, C};
  for (int l = 0; l < d.L; ++l) {
    const std::string p = cat("blocks.", l, "."), a = p + "att.";
    for (const char* n : {"ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"}) e[p + n] = {C};
    if (l == 0) e[p + "ln0.weight"] = e[p + "ln0.bias"] = {C};
    for (const char* n : {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"}) {
      e[a + n] = {C};
    }
    e[a + "w1"] = {C, d.d_decay};
    e[a + "w2"] = {d.d_decay, C};
    e[a + "a1"] = {C, d.d_iclr};
    e[a + "a2"] = {d.d_iclr, C};
    e[a + "g1"] = {C, d.d_gate};
    e[a + "g2"] = {d.d_gate, C};
    if (l > 0) {
      e[a + "v0"] = {C};
      e[a + "v1"] = {C, d.d_value};
      e[a + "v2"] = {d.d_value, C};
    }
    e[a + "r_k"] = {d.H, d.N};
    for (const char* n : {"receptance", "key", "value", "output"}) e[a + n + ".weight"] = {C, C};
    e[a + "ln_x.weight"] = e[a + "ln_x.bias"] = {C};
    e[p + "ffn.x_k"] = {C};
    e[p + "ffn.key.weight"] = {F, C};
    e[p + "ffn.value.weight"] = {C, F};
  }
  return e;
}

bool is_unused_layer0_value_lora(const std::string& name) {
  return name == "blocks.0.att.v0" || name == "blocks.0.att.v1" || name == "blocks.0.att.v2";
}

}  // namespace

void check_rwkv7_tokens(const int* tokens, size_t M, int V) {
  for (size_t i = 0; i < M; ++i) {
    if (tokens[i] < 0 || tokens[i] >= V) {
      fail("RWKV-7 training: token id ", tokens[i], " at position ", i, " is outside the vocabulary (", V, ")");
    }
  }
}

int count_rwkv7_targets(const int* targets, size_t M, int V) {
  int counted = 0;
  for (size_t m = 0; m < M; ++m) {
    if (targets[m] >= V) {
      fail("RWKV-7 training: target id ", targets[m], " at position ", m, " is outside the vocabulary (", V, ")");
    }
    counted += targets[m] >= 0;
  }
  if (counted == 0) fail("RWKV-7 training: no targets to score");
  return counted;
}

Rwkv7Dims rwkv7_dims(const std::vector<TensorView>& tensors, const std::string& source) {
  Rwkv7Dims d;
  const TensorView& emb = need(tensors, "emb.weight", 2, source);
  d.V = int(emb.shape[0]);
  d.C = int(emb.shape[1]);
  for (const TensorView& t : tensors) {
    if (t.name.rfind("blocks.", 0) == 0) d.L = std::max(d.L, std::atoi(t.name.c_str() + 7) + 1);
  }
  if (d.L == 0) fail(source, ": not an RWKV-7 model: no blocks.N tensors");
  const TensorView& r_k = need(tensors, "blocks.0.att.r_k", 2, source);
  d.H = int(r_k.shape[0]);
  d.N = int(r_k.shape[1]);
  if (d.H * d.N != d.C) fail(source, ": r_k shape ", r_k.shape_str(), " does not cover n_embd ", d.C);
  d.F = int(need(tensors, "blocks.0.ffn.key.weight", 2, source).shape[0]);
  d.d_decay = int(need(tensors, "blocks.0.att.w1", 2, source).shape[1]);
  d.d_iclr = int(need(tensors, "blocks.0.att.a1", 2, source).shape[1]);
  d.d_gate = int(need(tensors, "blocks.0.att.g1", 2, source).shape[1]);
  if (d.L > 1) d.d_value = int(need(tensors, "blocks.1.att.v1", 2, source).shape[1]);
  return d;
}

template <class R>
Rwkv7Train<R>::Rwkv7Train(const std::vector<TensorView>& tensors, const std::string& source)
    : dims_(rwkv7_dims(tensors, source)) {
  const auto expected = expected_tensors(dims_);
  for (const TensorView& t : tensors) {
    if (is_unused_layer0_value_lora(t.name)) continue;
    const auto it = expected.find(t.name);
    if (it == expected.end()) fail(source, ": unknown tensor '", t.name, "' for RWKV-7");
    // Vectors may come as (C) or (1, 1, C); matrices must match exactly.
    const bool matrix = it->second.size() == 2;
    if (matrix ? t.shape != it->second : t.numel() != numel_of(it->second)) {
      fail(source, ": tensor '", t.name, "' has shape ", t.shape_str(), ", expected ",
           numel_of(it->second), matrix ? " elements as a matrix" : " elements");
    }
    if (is_quantized(t.dtype)) fail(source, ": tensor '", t.name, "' is quantized; training needs float weights");
    if (table_.find(t.name)) fail(source, ": duplicate tensor '", t.name, "'");
    table_.add(t.name, t.shape);
  }
  for (const auto& [name, shape] : expected) {
    if (!table_.find(name)) fail(source, ": not an RWKV-7 model: missing tensor '", name, "'");
  }
  params_.assign(table_.total, R(0));
  grads_.assign(table_.total, R(0));
  std::vector<float> buf;
  for (const TensorView& t : tensors) {
    const ParamTensor* p = table_.find(t.name);
    if (!p || is_unused_layer0_value_lora(t.name)) continue;
    buf.resize(p->numel);
    convert_to_f32(t.dtype, t.data, buf.data(), p->numel);
    std::copy(buf.begin(), buf.end(), params_.begin() + std::ptrdiff_t(p->offset));
  }
  p_ = bind_rwkv7_params(table_, dims_.L, params_.data());
  g_ = bind_rwkv7_params(table_, dims_.L, grads_.data());
}

template <class R>
void Rwkv7Train<R>::zero_grads() {
  std::fill(grads_.begin(), grads_.end(), R(0));
}

std::vector<TensorView> export_rwkv7_tensors(const ParamTable& table, const float* params, DType dtype,
                                             std::vector<std::vector<uint8_t>>& storage) {
  if (dtype != DType::F32 && dtype != DType::BF16) {
    fail("RWKV-7 training: checkpoints are saved in fp32 or bf16, not ", dtype_name(dtype));
  }
  std::vector<TensorView> out;
  for (const ParamTensor& t : table.tensors) {
    storage.emplace_back(dtype_nbytes(dtype, t.numel));
    convert_from_f32(dtype, params + t.offset, storage.back().data(), t.numel);
    out.push_back(TensorView{t.name, dtype, t.shape, storage.back().data()});
  }
  return out;
}

template <class R>
std::vector<TensorView> Rwkv7Train<R>::export_tensors(
    DType dtype, std::vector<std::vector<uint8_t>>& storage) const {
  if constexpr (std::is_same_v<R, float>) {
    return export_rwkv7_tensors(table_, params_.data(), dtype, storage);
  } else {
    const std::vector<float> f(params_.begin(), params_.end());
    return export_rwkv7_tensors(table_, f.data(), dtype, storage);
  }
}

// ---- the tape ------------------------------------------------------------------------------

template <class R>
Rwkv7Tape<R>::Rwkv7Tape() : impl_(std::make_unique<Impl>()) {}
template <class R>
Rwkv7Tape<R>::~Rwkv7Tape() = default;
template <class R>
R* Rwkv7Tape<R>::logits() { return impl_->logits; }
template <class R>
R* Rwkv7Tape<R>::dlogits() { return impl_->logits; }
template <class R>
int Rwkv7Tape<R>::B() const { return impl_->B; }
template <class R>
int Rwkv7Tape<R>::T() const { return impl_->T; }

namespace {

// Lays the tape's buffers out for B×T rows (one allocation; reused while the size fits).
template <class R>
void layout_tape(typename Rwkv7Tape<R>::Impl& t, const Rwkv7Dims& d, int B, int T, int chunk,
                 bool recompute) {
  t.B = B;
  t.T = T;
  t.M = B * T;
  t.chunks = (T + chunk - 1) / chunk;
  t.recompute = recompute;
  const size_t M = size_t(t.M), C = size_t(d.C), MC = M * C, H = size_t(d.H), N = size_t(d.N);
  const size_t lora = size_t(std::max({d.d_decay, d.d_iclr, d.d_value, d.d_gate}));
  const size_t cache_floats = 17 * MC + M * size_t(d.d_decay + d.d_iclr + d.d_value + d.d_gate) +
                              4 * M + 3 * M * H + size_t(B) * H * size_t(t.chunks) * N * N +
                              M * size_t(d.F) + 16 * 32;
  const size_t n_caches = recompute ? 1 : size_t(d.L);
  const size_t wkv_scratch = ops::train::wkv7_train_scratch(chunk, d.N);
  const size_t total = n_caches * cache_floats + size_t(d.L) * MC + 6 * MC + 4 * M +
                       M * size_t(d.V) + 20 * MC + M * lora + M * size_t(d.F) +
                       size_t(B) * H * wkv_scratch + size_t(B) * C + 64 * 32;
  const size_t key = total ^ (size_t(recompute) << 62);
  if (t.allocated_for != key) {
    t.buffer.assign(total, R(0));
    t.allocated_for = key;
  }
  R* p = t.buffer.data();
  const auto take = [&](size_t n) {
    R* q = p;
    p += (n + 31) / 32 * 32;  // keep every buffer 128-byte aligned
    return q;
  };
  t.layers.assign(n_caches, {});
  for (Rwkv7LayerCache<R>& c : t.layers) {
    for (R** f : {&c.h, &c.r, &c.k_raw, &c.v_raw, &c.v, &c.logw, &c.alpha, &c.g, &c.v_gate, &c.kn,
                  &c.k2, &c.y, &c.z, &c.x_mid, &c.h2}) {
      *f = take(MC);
    }
    c.ln1_mean = take(M);
    c.ln1_rstd = take(M);
    c.ln2_mean = take(M);
    c.ln2_rstd = take(M);
    c.gn_mean = take(M * H);
    c.gn_rstd = take(M * H);
    c.w_h = take(M * size_t(d.d_decay));
    c.a_h = take(M * size_t(d.d_iclr));
    c.v_h = take(M * size_t(d.d_value));
    c.g_h = take(M * size_t(d.d_gate));
    c.checkpoints = take(size_t(B) * H * size_t(t.chunks) * N * N);
    c.ffn_pre = take(M * size_t(d.F));
  }
  t.x_in.assign(size_t(d.L), nullptr);
  for (R*& x : t.x_in) x = take(MC);
  t.x0_mean = take(M);
  t.x0_rstd = take(M);
  t.v_first = take(MC);
  t.dv_first = take(MC);
  t.x_last = take(MC);
  t.xo = take(MC);
  t.out_mean = take(M);
  t.out_rstd = take(M);
  t.logits = take(M * size_t(d.V));
  Rwkv7Scratch<R>& s = t.s;
  for (R** f : {&s.dx, &s.dh, &s.ddelta, &s.dmix, &s.dr, &s.dk2, &s.dv, &s.dlogw, &s.da, &s.db,
                &s.dalpha, &s.dg, &s.dz, &s.dk, &s.dvf, &s.tmp, &s.tmp2}) {
    *f = take(MC);
  }
  s.dlora = take(M * lora);
  s.dffn = take(M * size_t(d.F));
  s.wkv = take(size_t(B) * H * wkv_scratch);
  s.prev = take(size_t(B) * C);
  if (p > t.buffer.data() + t.buffer.size()) fail("RWKV-7 training: tape layout overflow");
}

}  // namespace

// ---- forward, loss, backward ---------------------------------------------------------------

template <class R>
const R* Rwkv7Train<R>::forward(Rwkv7Tape<R>& tape, const int* tokens, int B, int T,
                                const R* state_in, R* state_out) {
  if (B <= 0 || T <= 0) fail("RWKV-7 training: batch ", B, " × length ", T, " is empty");
  const size_t M = size_t(B) * size_t(T), C = size_t(dims_.C);
  check_rwkv7_tokens(tokens, M, dims_.V);
  auto& t = *tape.impl_;
  layout_tape<R>(t, dims_, B, T, options_.wkv_chunk, options_.recompute);
  t.tokens.assign(tokens, tokens + M);
  t.reset.clear();
  if (options_.reset_at_eod) {
    for (size_t m = 0; m < M; ++m) t.reset.push_back(tokens[m] == 0);
  }
  const size_t S = dims_.state_floats();
  if (state_in) {
    t.state_in.assign(state_in, state_in + size_t(B) * S);
  } else {
    t.state_in.assign(size_t(B) * S, R(0));
  }
  t.state_out.assign(size_t(B) * S, R(0));
  // x = ln0(emb[token]); the gathered rows go through x_last, free until the last block.
  for (size_t m = 0; m < M; ++m) {
    std::copy_n(p_.emb + size_t(tokens[m]) * C, C, t.x_last + m * C);
  }
  ot::layer_norm_forward<R>(t.x_last, int(M), dims_.C, p_.ln0_w, p_.ln0_b, R(kLayerNormEps),
                            t.x_in[0], t.x0_mean, t.x0_rstd);
  for (int l = 0; l < dims_.L; ++l) {
    Rwkv7LayerCache<R>& c = t.layers[t.recompute ? 0 : size_t(l)];
    c.x_in = t.x_in[size_t(l)];
    layer_forward(tape, l, c, l + 1 < dims_.L ? t.x_in[size_t(l + 1)] : t.x_last);
  }
  ot::layer_norm_forward<R>(t.x_last, int(M), dims_.C, p_.ln_out_w, p_.ln_out_b,
                            R(kLayerNormEps), t.xo, t.out_mean, t.out_rstd);
  ot::linear_forward<R>(t.xo, p_.head, int(M), dims_.C, dims_.V, t.logits);
  if (state_out) std::copy(t.state_out.begin(), t.state_out.end(), state_out);
  return t.logits;
}

template <class R>
double Rwkv7Train<R>::loss(Rwkv7Tape<R>& tape, const int* targets, double l2wrap, int* count,
                           double weight) {
  auto& t = *tape.impl_;
  const int counted = count_rwkv7_targets(targets, size_t(t.M), dims_.V);
  int n = 0;
  const R scale = R(weight / counted);
  const double sum = ot::cross_entropy<R>(t.logits, targets, t.M, dims_.V, scale,
                                          R(weight * l2wrap / counted), t.logits, &n);
  if (count) *count = n;
  return sum / n;
}

template <class R>
void Rwkv7Train<R>::backward(Rwkv7Tape<R>& tape, const R* dstate_out, R* dstate_in) {
  auto& t = *tape.impl_;
  if (t.M == 0) fail("RWKV-7 training: backward() before forward()");
  const size_t M = size_t(t.M), C = size_t(dims_.C), MC = M * C;
  const size_t S = size_t(t.B) * dims_.state_floats();
  if (dstate_out) {
    t.dstate.assign(dstate_out, dstate_out + S);
  } else {
    t.dstate.assign(S, R(0));
  }
  R* dx = t.s.dx;
  std::fill(dx, dx + MC, R(0));
  std::fill(t.s.tmp, t.s.tmp + MC, R(0));
  ot::linear_backward<R>(t.logits, t.xo, p_.head, int(M), dims_.C, dims_.V, t.s.tmp, g_.head);
  ot::layer_norm_backward<R>(t.s.tmp, t.x_last, int(M), dims_.C, p_.ln_out_w, t.out_mean,
                             t.out_rstd, dx, g_.ln_out_w, g_.ln_out_b);
  std::fill(t.dv_first, t.dv_first + MC, R(0));
  for (int l = dims_.L - 1; l >= 0; --l) {
    Rwkv7LayerCache<R>& c = t.layers[t.recompute ? 0 : size_t(l)];
    c.x_in = t.x_in[size_t(l)];
    if (t.recompute) layer_forward(tape, l, c, t.s.dr);  // dr: not used by a forward
    layer_backward(tape, l, c, dx);
  }
  // ln0 of the embedding rows, then scatter into their rows of emb.
  for (size_t m = 0; m < M; ++m) {
    std::copy_n(p_.emb + size_t(t.tokens[m]) * C, C, t.s.tmp + m * C);
  }
  std::fill(t.s.tmp2, t.s.tmp2 + MC, R(0));
  ot::layer_norm_backward<R>(dx, t.s.tmp, int(M), dims_.C, p_.ln0_w, t.x0_mean, t.x0_rstd,
                             t.s.tmp2, g_.ln0_w, g_.ln0_b);
  for (size_t m = 0; m < M; ++m) {
    R* row = g_.emb + size_t(t.tokens[m]) * C;
    const R* src = t.s.tmp2 + m * C;
    for (size_t i = 0; i < C; ++i) row[i] += src[i];
  }
  if (dstate_in) std::copy(t.dstate.begin(), t.dstate.end(), dstate_in);
}

template class Rwkv7Tape<float>;
template class Rwkv7Tape<double>;
template class Rwkv7Train<float>;
template class Rwkv7Train<double>;

}  // namespace rwkv::model
