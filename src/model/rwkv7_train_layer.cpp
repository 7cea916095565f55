// RWKV-7 training form, one block (spec §2.4 forward over [B, T]; §4.4 backward): the time mix
// (token shift, six mixes, r/k/v, the decay/ICLR/gate/value-residual LoRAs, κ̂, WKV, ln_x,
// bonus, gate, output) and the squared-ReLU channel mix. The backward mirrors the forward
// line by line, newest op first; mixes are recomputed instead of saved (O(M·C) each).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "model/rwkv7_train_impl.h"
#include "ops/cpu/wkv7_train.h"
#include "ops/train.h"

namespace rwkv::model {
namespace {

namespace ot = ops::train;
constexpr double kDecayScale = 0.6065306597126334;  // e^{−1/2} (spec §2.4)
constexpr double kLayerNormEps = 1e-5, kGroupNormEps = 64e-5, kNormEps = 1e-12;

template <class R>
R sigmoid(R x) {
  return R(1) / (R(1) + std::exp(-x));
}

template <class R>
void zero(R* p, size_t n) {
  std::fill(p, p + n, R(0));
}

// rows[b] = state[b][offset … offset + C) for every sequence b.
template <class R>
void gather_state(const R* states, size_t state_floats, size_t offset, int B, int C, R* rows) {
  for (int b = 0; b < B; ++b) {
    std::copy_n(states + size_t(b) * state_floats + offset, C, rows + size_t(b) * C);
  }
}

// out = h + δ⊙μ over M rows (one token-shift mix).
template <class R>
void mix(const R* h, const R* delta, const R* mu, size_t M, size_t C, R* out) {
#pragma omp parallel for schedule(static)
  for (size_t m = 0; m < M; ++m) {
    for (size_t c = 0; c < C; ++c) out[m * C + c] = h[m * C + c] + delta[m * C + c] * mu[c];
  }
}

// Σ over rows of a⊙b, added into out (C).
template <class R>
void add_column_products(const R* a, const R* b, size_t M, size_t C, R* out) {
  for (size_t m = 0; m < M; ++m) {
    for (size_t c = 0; c < C; ++c) out[c] += a[m * C + c] * b[m * C + c];
  }
}

// Backward of mix(): dh += dout ; ddelta += dout⊙μ ; dμ += Σ_rows dout⊙δ.
template <class R>
void mix_backward(const R* dout, const R* delta, const R* mu, size_t M, size_t C, R* dh,
                  R* ddelta, R* dmu) {
#pragma omp parallel for schedule(static)
  for (size_t m = 0; m < M; ++m) {
    for (size_t c = 0; c < C; ++c) {
      const size_t i = m * C + c;
      dh[i] += dout[i];
      ddelta[i] += dout[i] * mu[c];
    }
  }
  add_column_products(dout, delta, M, C, dmu);
}

// Σ over rows of x, added into out (C).
template <class R>
void add_column_sums(const R* x, size_t M, size_t C, R* out) {
  for (size_t m = 0; m < M; ++m) {
    for (size_t c = 0; c < C; ++c) out[c] += x[m * C + c];
  }
}

// The WKV's a = −κ̂ and b = κ̂⊙α (spec §2.4) over the cache's M·C values.
template <class R>
void wkv_inputs(const Rwkv7LayerCache<R>& c, size_t MC, R* a, R* b) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < MC; ++i) {
    a[i] = -c.kn[i];
    b[i] = c.kn[i] * c.alpha[i];
  }
}

// The WKV of head h of sequence bb over the cache's rows (stride C), with WKV inputs a and b.
template <class R>
ops::train::Wkv7Train<R> wkv_head(const typename Rwkv7Tape<R>::Impl& t,
                                  const Rwkv7LayerCache<R>& c, const R* a, const R* b, int bb,
                                  int h, int C, int N, int chunk, R* y, R* S) {
  const size_t o = size_t(bb) * size_t(t.T) * C + size_t(h) * N;
  const size_t H = size_t(C / N), NN = size_t(N) * N;
  const unsigned char* reset = t.reset_rows();
  return {t.T, N, C, chunk, c.r + o, c.logw + o, c.k2 + o, c.v + o, a + o, b + o,
          y ? y + o : nullptr, S, c.checkpoints + (size_t(bb) * H + h) * size_t(t.chunks) * NN,
          reset ? reset + size_t(bb) * t.T : nullptr};
}

}  // namespace

template <class R>
void Rwkv7Train<R>::layer_forward(Rwkv7Tape<R>& tape, int l, Rwkv7LayerCache<R>& c, R* x_out) {
  auto& t = *tape.impl_;
  auto& s = t.s;
  const Rwkv7LayerParams<R>& y = p_.layers[size_t(l)];
  const Rwkv7Dims& d = dims_;
  const int B = t.B, T = t.T, M = t.M, C = d.C, H = d.H, N = d.N;
  const size_t MC = size_t(M) * size_t(C), SF = d.state_floats(), NN = size_t(N) * N;
  const Rwkv7Dims::LayerState so = d.layer_state(l);
  R* delta = s.tmp;
  R* x = s.tmp2;

  // ---- time mix ----
  ot::layer_norm_forward<R>(c.x_in, M, C, y.ln1_w, y.ln1_b, R(kLayerNormEps), c.h, c.ln1_mean,
                            c.ln1_rstd);
  gather_state(t.state_in.data(), SF, so.att_x, B, C, s.prev);
  ot::token_shift_forward<R>(c.h, s.prev, B, T, C, delta, t.reset_rows());
  mix(c.h, delta, y.x_r, M, C, x);
  ot::linear_forward<R>(x, y.receptance, M, C, C, c.r);
  mix(c.h, delta, y.x_k, M, C, x);
  ot::linear_forward<R>(x, y.key, M, C, C, c.k_raw);
  mix(c.h, delta, y.x_v, M, C, x);
  ot::linear_forward<R>(x, y.value, M, C, C, c.v_raw);
  if (l > 0) ot::matmul_forward<R>(x, y.v1, M, C, d.d_value, c.v_h);
  mix(c.h, delta, y.x_w, M, C, x);
  ot::matmul_forward<R>(x, y.w1, M, C, d.d_decay, c.w_h);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < size_t(M) * d.d_decay; ++i) c.w_h[i] = std::tanh(c.w_h[i]);
  mix(c.h, delta, y.x_a, M, C, x);
  ot::matmul_forward<R>(x, y.a1, M, C, d.d_iclr, c.a_h);
  mix(c.h, delta, y.x_g, M, C, x);
  ot::matmul_forward<R>(x, y.g1, M, C, d.d_gate, c.g_h);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < size_t(M) * d.d_gate; ++i) c.g_h[i] = sigmoid(c.g_h[i]);

  ot::matmul_forward<R>(c.w_h, y.w2, M, d.d_decay, C, c.logw);
  ot::matmul_forward<R>(c.a_h, y.a2, M, d.d_iclr, C, c.alpha);
  ot::matmul_forward<R>(c.g_h, y.g2, M, d.d_gate, C, c.g);
  if (l == 0) {
    std::copy_n(c.v_raw, MC, c.v);
    std::copy_n(c.v_raw, MC, t.v_first);
  } else {
    ot::matmul_forward<R>(c.v_h, y.v2, M, d.d_value, C, c.v_gate);
  }
  R* kk = s.dmix;
#pragma omp parallel for schedule(static)
  for (size_t m = 0; m < size_t(M); ++m) {
    for (size_t ch = 0; ch < size_t(C); ++ch) {
      const size_t i = m * C + ch;
      c.logw[i] = R(-kDecayScale) * sigmoid(y.w0[ch] + c.logw[i]);
      c.alpha[i] = sigmoid(y.a0[ch] + c.alpha[i]);
      if (l > 0) {
        c.v_gate[i] = sigmoid(y.v0[ch] + c.v_gate[i]);
        c.v[i] = c.v_raw[i] + (t.v_first[i] - c.v_raw[i]) * c.v_gate[i];
      }
      kk[i] = c.k_raw[i] * y.k_k[ch];
      c.k2[i] = c.k_raw[i] * (R(1) + (c.alpha[i] - R(1)) * y.k_a[ch]);
    }
  }
  ot::l2_normalize_forward<R>(kk, M, H, N, R(kNormEps), c.kn);
  R *a = s.da, *b = s.db;
  wkv_inputs(c, MC, a, b);
#pragma omp parallel for collapse(2) schedule(static)
  for (int bb = 0; bb < B; ++bb) {
    for (int h = 0; h < H; ++h) {
      R* S = t.state_out.data() + size_t(bb) * SF + so.kv + size_t(h) * NN;
      std::copy_n(t.state_in.data() + size_t(bb) * SF + so.kv + size_t(h) * NN, NN, S);
      const auto head = wkv_head<R>(t, c, a, b, bb, h, C, N, options_.wkv_chunk, c.y, S);
      if constexpr (std::is_same_v<R, float>) {
        ops::cpu::wkv7_train_forward(head);  // SIMD twin of the template (same contract)
      } else {
        ot::wkv7_train_forward(head);
      }
    }
  }
  ot::group_norm_forward<R>(c.y, M, H, N, y.ln_x_w, y.ln_x_b, R(kGroupNormEps), c.z, c.gn_mean,
                            c.gn_rstd);
  // Bonus (spec §2.4): z += (Σ_j r_j k_j ρ_j)·v per head, with the modified k and mixed v.
#pragma omp parallel for schedule(static)
  for (size_t m = 0; m < size_t(M); ++m) {
    for (int h = 0; h < H; ++h) {
      const size_t o = m * C + size_t(h) * N;
      R sum = 0;
      for (int j = 0; j < N; ++j) sum += c.r[o + j] * c.k2[o + j] * y.r_k[size_t(h) * N + j];
      for (int j = 0; j < N; ++j) c.z[o + j] += sum * c.v[o + j];
    }
  }
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < MC; ++i) x[i] = c.z[i] * c.g[i];
  ot::linear_forward<R>(x, y.output, M, C, C, c.x_mid);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < MC; ++i) c.x_mid[i] += c.x_in[i];
  for (int bb = 0; bb < B; ++bb) {
    std::copy_n(c.h + (size_t(bb) * T + T - 1) * C, C, t.state_out.data() + size_t(bb) * SF + so.att_x);
  }

  // ---- channel mix: x_out = x_mid + W_v·relu(W_k·x_k)² ----
  ot::layer_norm_forward<R>(c.x_mid, M, C, y.ln2_w, y.ln2_b, R(kLayerNormEps), c.h2, c.ln2_mean,
                            c.ln2_rstd);
  gather_state(t.state_in.data(), SF, so.ffn_x, B, C, s.prev);
  ot::token_shift_forward<R>(c.h2, s.prev, B, T, C, delta, t.reset_rows());
  mix(c.h2, delta, y.ffn_x_k, M, C, x);
  ot::linear_forward<R>(x, y.ffn_key, M, C, d.F, c.ffn_pre);
  const size_t MF = size_t(M) * d.F;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < MF; ++i) {
    const R r = std::max(c.ffn_pre[i], R(0));
    s.dffn[i] = r * r;
  }
  ot::linear_forward<R>(s.dffn, y.ffn_value, M, d.F, C, x_out);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < MC; ++i) x_out[i] += c.x_mid[i];
  for (int bb = 0; bb < B; ++bb) {
    std::copy_n(c.h2 + (size_t(bb) * T + T - 1) * C, C, t.state_out.data() + size_t(bb) * SF + so.ffn_x);
  }
}

template <class R>
void Rwkv7Train<R>::layer_backward(Rwkv7Tape<R>& tape, int l, Rwkv7LayerCache<R>& c, R* dx) {
  auto& t = *tape.impl_;
  auto& s = t.s;
  const Rwkv7LayerParams<R>& y = p_.layers[size_t(l)];
  Rwkv7LayerParams<R>& gy = g_.layers[size_t(l)];
  const Rwkv7Dims& d = dims_;
  const int B = t.B, T = t.T, M = t.M, C = d.C, H = d.H, N = d.N;
  const size_t MC = size_t(M) * size_t(C), SF = d.state_floats(), NN = size_t(N) * N;
  const size_t MF = size_t(M) * d.F;
  const Rwkv7Dims::LayerState so = d.layer_state(l);
  R* delta = s.tmp;
  R* x = s.tmp2;
  R* dstate = t.dstate.data();

  // ∂/∂(last row of h) from ∂/∂(the state's token-shift piece); then that piece's gradient
  // becomes ∂/∂(the initial state's piece).
  const auto add_final_row = [&](size_t offset, R* dh) {
    for (int bb = 0; bb < B; ++bb) {
      const R* g = dstate + size_t(bb) * SF + offset;
      R* row = dh + (size_t(bb) * T + T - 1) * C;
      for (int i = 0; i < C; ++i) row[i] += g[i];
    }
  };
  const auto shift_backward = [&](size_t offset, R* ddelta, R* dh) {
    zero(s.prev, size_t(B) * C);
    ot::token_shift_backward<R>(ddelta, B, T, C, dh, s.prev, t.reset_rows());
    for (int bb = 0; bb < B; ++bb) {
      std::copy_n(s.prev + size_t(bb) * C, C, dstate + size_t(bb) * SF + offset);
    }
  };

  // ---- channel mix ----
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < MF; ++i) {
    const R r = std::max(c.ffn_pre[i], R(0));
    s.dffn[i] = r * r;
  }
  ot::linear_backward<R>(dx, s.dffn, y.ffn_value, M, d.F, C, nullptr, gy.ffn_value);
  zero(s.dffn, MF);
  ot::linear_backward<R>(dx, s.dffn, y.ffn_value, M, d.F, C, s.dffn, nullptr);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < MF; ++i) s.dffn[i] *= R(2) * std::max(c.ffn_pre[i], R(0));
  gather_state(t.state_in.data(), SF, so.ffn_x, B, C, s.prev);
  ot::token_shift_forward<R>(c.h2, s.prev, B, T, C, delta, t.reset_rows());
  mix(c.h2, delta, y.ffn_x_k, M, C, x);
  zero(s.dmix, MC);
  ot::linear_backward<R>(s.dffn, x, y.ffn_key, M, C, d.F, s.dmix, gy.ffn_key);
  zero(s.dh, MC);
  zero(s.ddelta, MC);
  mix_backward(s.dmix, delta, y.ffn_x_k, M, C, s.dh, s.ddelta, gy.ffn_x_k);
  add_final_row(so.ffn_x, s.dh);
  shift_backward(so.ffn_x, s.ddelta, s.dh);
  ot::layer_norm_backward<R>(s.dh, c.x_mid, M, C, y.ln2_w, c.ln2_mean, c.ln2_rstd, dx, gy.ln2_w,
                             gy.ln2_b);

  // ---- time mix: output, gate, bonus, ln_x ----
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < MC; ++i) x[i] = c.z[i] * c.g[i];
  zero(s.dz, MC);
  ot::linear_backward<R>(dx, x, y.output, M, C, C, s.dz, gy.output);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < MC; ++i) {
    s.dg[i] = s.dz[i] * c.z[i];
    s.dz[i] *= c.g[i];
  }
  zero(s.tmp, MC);  // ∂/∂(WKV output)
  ot::group_norm_backward<R>(s.dz, c.y, M, H, N, y.ln_x_w, c.gn_mean, c.gn_rstd, s.tmp, gy.ln_x_w,
                             gy.ln_x_b);

  // ---- WKV ----
  R *a = s.tmp2, *b = s.dmix;  // recomputed rather than kept: O(M·C)
  wkv_inputs(c, MC, a, b);
#pragma omp parallel for collapse(2) schedule(static)
  for (int bb = 0; bb < B; ++bb) {
    for (int h = 0; h < H; ++h) {
      const size_t o = size_t(bb) * T * C + size_t(h) * N;
      R* dS = dstate + size_t(bb) * SF + so.kv + size_t(h) * NN;  // ∂/∂S_T in, ∂/∂S_0 out
      const auto head = wkv_head<R>(t, c, a, b, bb, h, C, N, options_.wkv_chunk, nullptr, nullptr);
      R* scratch = s.wkv + (size_t(bb) * H + h) * ot::wkv7_train_scratch(options_.wkv_chunk, N);
      if constexpr (std::is_same_v<R, float>) {
        ops::cpu::wkv7_train_backward(head, s.tmp + o, dS, s.dr + o, s.dlogw + o, s.dk2 + o,
                                      s.dv + o, s.da + o, s.db + o, dS, scratch);
      } else {
        ot::wkv7_train_backward(head, s.tmp + o, dS, s.dr + o, s.dlogw + o, s.dk2 + o, s.dv + o,
                                s.da + o, s.db + o, dS, scratch);
      }
    }
  }
  // Bonus: z += sb·v with sb = Σ_j r_j k2_j ρ_j per head; dsb = Σ_j dz_j v_j is kept (in tmp,
  // free after the WKV) for ρ's gradient, summed over rows below.
  R* dsb_rows = s.tmp;  // (M, H)
#pragma omp parallel for schedule(static)
  for (size_t m = 0; m < size_t(M); ++m) {
    for (int h = 0; h < H; ++h) {
      const size_t o = m * C + size_t(h) * N;
      const R* rk = y.r_k + size_t(h) * N;
      R sb = 0, dsb = 0;
      for (int j = 0; j < N; ++j) {
        sb += c.r[o + j] * c.k2[o + j] * rk[j];
        dsb += s.dz[o + j] * c.v[o + j];
      }
      dsb_rows[m * H + size_t(h)] = dsb;
      for (int j = 0; j < N; ++j) {
        s.dv[o + j] += s.dz[o + j] * sb;
        s.dr[o + j] += dsb * c.k2[o + j] * rk[j];
        s.dk2[o + j] += dsb * c.r[o + j] * rk[j];
      }
    }
  }
  for (size_t m = 0; m < size_t(M); ++m) {
    for (int h = 0; h < H; ++h) {
      const size_t o = m * C + size_t(h) * N;
      const R dsb = dsb_rows[m * H + size_t(h)];
      for (int j = 0; j < N; ++j) gy.r_k[size_t(h) * N + j] += dsb * c.r[o + j] * c.k2[o + j];
    }
  }

  // ---- a = −κ̂, b = κ̂⊙α, k2 = k⊙(1 + (α−1)⊙k_a), κ̂ = normalize(k⊙k_k), log-decay ----
  R* dkn = s.db;  // reuses db's buffer, element by element
  R* kk = s.tmp2;
  for (size_t m = 0; m < size_t(M); ++m) {
    for (size_t ch = 0; ch < size_t(C); ++ch) {
      const size_t i = m * C + ch;
      gy.k_a[ch] += s.dk2[i] * c.k_raw[i] * (c.alpha[i] - R(1));
    }
  }
#pragma omp parallel for schedule(static)
  for (size_t m = 0; m < size_t(M); ++m) {
    for (size_t ch = 0; ch < size_t(C); ++ch) {
      const size_t i = m * C + ch;
      const R alpha = c.alpha[i], k = c.k_raw[i];
      s.dalpha[i] = s.db[i] * c.kn[i] + s.dk2[i] * k * y.k_a[ch];
      dkn[i] = s.db[i] * alpha - s.da[i];
      s.dk[i] = s.dk2[i] * (R(1) + (alpha - R(1)) * y.k_a[ch]);
      kk[i] = k * y.k_k[ch];
      // d/dz of −e^{−1/2}σ(z), with σ = −logw/e^{−1/2}
      const R sig = -c.logw[i] / R(kDecayScale);
      s.dlogw[i] *= R(-kDecayScale) * sig * (R(1) - sig);
    }
  }
  zero(s.dmix, MC);
  ot::l2_normalize_backward<R>(dkn, kk, M, H, N, R(kNormEps), s.dmix);
#pragma omp parallel for schedule(static)
  for (size_t m = 0; m < size_t(M); ++m) {
    for (size_t ch = 0; ch < size_t(C); ++ch) s.dk[m * C + ch] += s.dmix[m * C + ch] * y.k_k[ch];
  }
  add_column_products(s.dmix, c.k_raw, M, C, gy.k_k);

  // ---- the projections and LoRAs back to the mixes, each mix back to h and δ ----
  gather_state(t.state_in.data(), SF, so.att_x, B, C, s.prev);
  ot::token_shift_forward<R>(c.h, s.prev, B, T, C, delta, t.reset_rows());
  zero(s.dh, MC);
  zero(s.ddelta, MC);
  R* dl = s.dlora;
  // One LoRA-fed mix: dpre (M, C) at the LoRA's output → its up/down weights → the mix.
  const auto lora_backward = [&](const R* dpre, const R* hidden, const R* up, R* dup, int D,
                                 const R* down, R* ddown, const R* mu,
                                 void (*act)(R*, const R*, size_t)) {
    zero(dl, size_t(M) * D);
    ot::matmul_backward<R>(dpre, hidden, up, M, D, C, dl, dup);
    if (act) act(dl, hidden, size_t(M) * D);
    mix(c.h, delta, mu, M, C, x);
    zero(s.dmix, MC);
    ot::matmul_backward<R>(dl, x, down, M, C, D, s.dmix, ddown);
  };
  // Decay: z = w0 + tanh(x_w·w1)·w2.
  add_column_sums(s.dlogw, M, C, gy.w0);
  lora_backward(s.dlogw, c.w_h, y.w2, gy.w2, d.d_decay, y.w1, gy.w1, y.x_w,
                [](R* g, const R* th, size_t n) {
                  for (size_t i = 0; i < n; ++i) g[i] *= R(1) - th[i] * th[i];
                });
  mix_backward(s.dmix, delta, y.x_w, M, C, s.dh, s.ddelta, gy.x_w);
  // ICLR: α = σ(a0 + (x_a·a1)·a2).
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < MC; ++i) s.dalpha[i] *= c.alpha[i] * (R(1) - c.alpha[i]);
  add_column_sums(s.dalpha, M, C, gy.a0);
  lora_backward(s.dalpha, c.a_h, y.a2, gy.a2, d.d_iclr, y.a1, gy.a1, y.x_a, nullptr);
  mix_backward(s.dmix, delta, y.x_a, M, C, s.dh, s.ddelta, gy.x_a);
  // Gate: g = σ(x_g·g1)·g2.
  lora_backward(s.dg, c.g_h, y.g2, gy.g2, d.d_gate, y.g1, gy.g1, y.x_g,
                [](R* g, const R* sg, size_t n) {
                  for (size_t i = 0; i < n; ++i) g[i] *= sg[i] * (R(1) - sg[i]);
                });
  mix_backward(s.dmix, delta, y.x_g, M, C, s.dh, s.ddelta, gy.x_g);
  // Value: v = v_raw + (v_first − v_raw)⊙σ(v0 + (x_v·v1)·v2) in layers ≥ 1; v_first = v in 0.
  if (l == 0) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < MC; ++i) s.dv[i] += t.dv_first[i];
    mix(c.h, delta, y.x_v, M, C, x);
    zero(s.dmix, MC);
  } else {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < MC; ++i) {
      const R gate = c.v_gate[i];
      t.dv_first[i] += s.dv[i] * gate;
      s.dvf[i] = s.dv[i] * (t.v_first[i] - c.v_raw[i]) * gate * (R(1) - gate);
      s.dv[i] *= R(1) - gate;
    }
    add_column_sums(s.dvf, M, C, gy.v0);
    lora_backward(s.dvf, c.v_h, y.v2, gy.v2, d.d_value, y.v1, gy.v1, y.x_v, nullptr);
  }
  ot::linear_backward<R>(s.dv, x, y.value, M, C, C, s.dmix, gy.value);
  mix_backward(s.dmix, delta, y.x_v, M, C, s.dh, s.ddelta, gy.x_v);
  // Receptance and key.
  mix(c.h, delta, y.x_r, M, C, x);
  zero(s.dmix, MC);
  ot::linear_backward<R>(s.dr, x, y.receptance, M, C, C, s.dmix, gy.receptance);
  mix_backward(s.dmix, delta, y.x_r, M, C, s.dh, s.ddelta, gy.x_r);
  mix(c.h, delta, y.x_k, M, C, x);
  zero(s.dmix, MC);
  ot::linear_backward<R>(s.dk, x, y.key, M, C, C, s.dmix, gy.key);
  mix_backward(s.dmix, delta, y.x_k, M, C, s.dh, s.ddelta, gy.x_k);

  add_final_row(so.att_x, s.dh);
  shift_backward(so.att_x, s.ddelta, s.dh);
  ot::layer_norm_backward<R>(s.dh, c.x_in, M, C, y.ln1_w, c.ln1_mean, c.ln1_rstd, dx, gy.ln1_w,
                             gy.ln1_b);
}

template void Rwkv7Train<float>::layer_forward(Rwkv7Tape<float>&, int, Rwkv7LayerCache<float>&,
                                               float*);
template void Rwkv7Train<double>::layer_forward(Rwkv7Tape<double>&, int,
                                                Rwkv7LayerCache<double>&, double*);
template void Rwkv7Train<float>::layer_backward(Rwkv7Tape<float>&, int, Rwkv7LayerCache<float>&,
                                                float*);
template void Rwkv7Train<double>::layer_backward(Rwkv7Tape<double>&, int,
                                                 Rwkv7LayerCache<double>&, double*);

}  // namespace rwkv::model
