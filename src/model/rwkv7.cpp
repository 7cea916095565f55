#include "model/rwkv7.h"

#include <algorithm>
#include <cstring>

#include "model/common.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace {

// e^{−1/2}: the decay is d = exp(−e^{−1/2}·σ(z)) ∈ (0.545, 1) (spec §2.4, §3.4).
constexpr float kDecayScale = 0.60653066f;
constexpr float kGroupNormEps = 64e-5f;

struct Layer {
  const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;       // (C)
  const float *x_r, *x_w, *x_k, *x_v, *x_a, *x_g;   // (C) token-shift mix
  const float *w0, *a0, *v0, *k_k, *k_a, *r_k;      // (C); v0 null in layer 0
  const float *ln_x_w, *ln_x_b;                     // (C)
  ops::Matrix w1, w2, a1, a2, v1, v2, g1, g2;       // LoRA, as (out, in); v1/v2 empty in layer 0
  ops::Matrix receptance, key, value, output;       // (C, C)
  const float* ffn_x_k;                             // (C)
  ops::Matrix ffn_key, ffn_value;                   // (F, C), (C, F)
};

struct Weights {
  ops::Matrix emb;                                  // (V, C)
  const float *ln0_w, *ln0_b, *ln_out_w, *ln_out_b; // (C)
  std::vector<Layer> layers;                        // (L)
  ops::Matrix head;                                 // (V, C)
};

// Activations of one call over M = B·T rows. One allocation, reused across calls.
struct Activations {
  int M = 0;
  std::vector<float> buffer;
  float *x, *xn, *delta, *xr, *xw, *xk, *xv, *xa, *xg;   // (M, C)
  float *r, *w, *k, *v, *a, *g, *kk, *b, *y, *v_first;   // (M, C)
  float *lora_hidden;                                     // (M, max LoRA width)
  float *ffn_hidden;                                      // (M, F)

  void ensure(int rows, int C, int F, int D) {
    if (rows <= M) return;
    M = rows;
    const size_t mc = size_t(M) * size_t(C);
    buffer.assign(19 * mc + size_t(M) * size_t(D) + size_t(M) * size_t(F), 0.f);
    float* p = buffer.data();
    for (float** f : {&x, &xn, &delta, &xr, &xw, &xk, &xv, &xa, &xg, &r, &w, &k, &v, &a, &g, &kk,
                      &b, &y, &v_first}) {
      *f = p;
      p += mc;
    }
    lora_hidden = p;
    ffn_hidden = p + size_t(M) * size_t(D);
  }
};

class Rwkv7 final : public Model {
 public:
  Rwkv7(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : info_(info),
        kernels_(options.backend == Backend::Ref ? &ops::ref_kernels() : &ops::cpu_kernels()) {
    WeightLoader load(ckpt, options);
    load_weights(load);
    load.check_all_used();
    fingerprint_ = load.fingerprint();
    weight_dtype_ = load.matrix_dtype();
    decode_bytes_ = load.matrix_bytes() - w_.emb.nbytes();
    owned_ = load.take_owned();
    checkpoint_ = std::move(ckpt);
    for (const auto& [name, width] : info_.lora) max_lora_ = std::max(max_lora_, width);
  }

  const ModelInfo& info() const override { return info_; }
  DType weight_dtype() const override { return weight_dtype_; }
  size_t decode_bytes_per_token() const override { return decode_bytes_; }

  StateSpec state_spec() const override {
    StateSpec s;
    s.generation = info_.generation;
    s.n_layer = info_.n_layer;
    s.n_embd = info_.n_embd;
    s.n_head = info_.n_head;
    s.head_size = info_.head_size;
    s.floats = size_t(info_.n_layer) * layer_floats();
    s.fingerprint = fingerprint_;
    return s;
  }

  // Per layer: att_x_prev (C), att_kv (H, N, N) value-major, ffn_x_prev (C) — the official
  // package's order, so raw states interoperate.
  std::vector<StatePiece> state_layout() const override {
    std::vector<StatePiece> pieces;
    const int64_t C = info_.n_embd, H = info_.n_head, N = info_.head_size;
    for (int l = 0; l < info_.n_layer; ++l) {
      const size_t base = size_t(l) * layer_floats();
      const std::string p = cat("blocks.", l, ".");
      pieces.push_back({p + "att_x_prev", {C}, base, size_t(C)});
      pieces.push_back({p + "att_kv", {H, N, N}, base + size_t(C), size_t(H * N * N)});
      pieces.push_back({p + "ffn_x_prev", {C}, base + size_t(C + H * N * N), size_t(C)});
    }
    return pieces;
  }

  void init_state(float* state) const override {
    std::fill(state, state + state_spec().floats, 0.f);
  }

  void step(const int* tokens, int B, float* const* states, float* logits) override {
    run(tokens, B, 1, states, logits, LogitsMode::All, /*parallel=*/false);
  }

  void forward(const int* tokens, int B, int T, float* const* states, float* logits,
               LogitsMode mode) override {
    run(tokens, B, T, states, logits, mode, /*parallel=*/true);
  }

 private:
  size_t layer_floats() const {
    const size_t C = size_t(info_.n_embd), N = size_t(info_.head_size);
    return 2 * C + C * N;
  }
  size_t att_x_offset(int l) const { return size_t(l) * layer_floats(); }
  size_t att_kv_offset(int l) const { return att_x_offset(l) + size_t(info_.n_embd); }
  size_t ffn_x_offset(int l) const {
    return att_kv_offset(l) + size_t(info_.n_embd) * size_t(info_.head_size);
  }

  void load_weights(WeightLoader& load) {
    const int C = info_.n_embd, V = info_.vocab_size, F = info_.dim_ffn, L = info_.n_layer;
    if (info_.dim_att != C) fail("RWKV-7: dim_att ", info_.dim_att, " != n_embd ", C);
    if (info_.n_head * info_.head_size != C) {
      fail("RWKV-7: r_k shape (", info_.n_head, ", ", info_.head_size, ") does not cover n_embd ", C);
    }
    w_.emb = load.mat("emb.weight", V, C);
    w_.ln0_w = load.vec("blocks.0.ln0.weight", C);
    w_.ln0_b = load.vec("blocks.0.ln0.bias", C);
    w_.ln_out_w = load.vec("ln_out.weight", C);
    w_.ln_out_b = load.vec("ln_out.bias", C);
    w_.head = load.mat("head.weight", V, C);
    const auto lora_width = [&](const std::string& name) {
      for (const auto& [n, w] : info_.lora) {
        if (n == name) return w;
      }
      return 0;
    };
    const int Dw = lora_width("decay"), Da = lora_width("iclr"), Dv = lora_width("value"),
              Dg = lora_width("gate");
    for (int l = 0; l < L; ++l) {
      const std::string p = cat("blocks.", l, "."), a = p + "att.";
      Layer y{};
      y.ln1_w = load.vec(p + "ln1.weight", C);
      y.ln1_b = load.vec(p + "ln1.bias", C);
      y.ln2_w = load.vec(p + "ln2.weight", C);
      y.ln2_b = load.vec(p + "ln2.bias", C);
      y.x_r = load.vec(a + "x_r", C);
      y.x_w = load.vec(a + "x_w", C);
      y.x_k = load.vec(a + "x_k", C);
      y.x_v = load.vec(a + "x_v", C);
      y.x_a = load.vec(a + "x_a", C);
      y.x_g = load.vec(a + "x_g", C);
      y.w0 = load.vec(a + "w0", C);
      y.a0 = load.vec(a + "a0", C);
      y.k_k = load.vec(a + "k_k", C);
      y.k_a = load.vec(a + "k_a", C);
      y.r_k = load.vec(a + "r_k", C);
      y.ln_x_w = load.vec(a + "ln_x.weight", C);
      y.ln_x_b = load.vec(a + "ln_x.bias", C);
      y.w1 = load.lora(a + "w1", C, Dw);
      y.w2 = load.lora(a + "w2", Dw, C);
      y.a1 = load.lora(a + "a1", C, Da);
      y.a2 = load.lora(a + "a2", Da, C);
      y.g1 = load.lora(a + "g1", C, Dg);
      y.g2 = load.lora(a + "g2", Dg, C);
      if (l == 0) {
        // The value residual starts at layer 0; official files may still carry unused v0/v1/v2.
        for (const char* n : {"v0", "v1", "v2"}) {
          if (load.has(a + n)) load.mark_ignored(a + n);
        }
        y.v0 = nullptr;
      } else {
        y.v0 = load.vec(a + "v0", C);
        y.v1 = load.lora(a + "v1", C, Dv);
        y.v2 = load.lora(a + "v2", Dv, C);
      }
      y.receptance = load.mat(a + "receptance.weight", C, C);
      y.key = load.mat(a + "key.weight", C, C);
      y.value = load.mat(a + "value.weight", C, C);
      y.output = load.mat(a + "output.weight", C, C);
      y.ffn_x_k = load.vec(p + "ffn.x_k", C);
      y.ffn_key = load.mat(p + "ffn.key.weight", F, C);
      y.ffn_value = load.mat(p + "ffn.value.weight", C, F);
      w_.layers.push_back(y);
    }
  }

  void check_tokens(const int* tokens, size_t n) const {
    for (size_t i = 0; i < n; ++i) {
      if (tokens[i] < 0 || tokens[i] >= info_.vocab_size) {
        fail("token id ", tokens[i], " at position ", i, " is outside the vocabulary [0, ",
             info_.vocab_size, ")");
      }
    }
  }

  // LoRA: out = W2ᵀ·f(W1ᵀ·in), through the shared hidden buffer.
  void lora(const ops::Matrix& down, const ops::Matrix& up, const float* in, float* out, int M,
            float (*mid)(float)) {
    kernels_->linear(down, in, M, act_.lora_hidden);
    if (mid) {
      const size_t n = size_t(M) * size_t(down.rows);
      for (size_t i = 0; i < n; ++i) act_.lora_hidden[i] = mid(act_.lora_hidden[i]);
    }
    kernels_->linear(up, act_.lora_hidden, M, out);
  }

  void run(const int* tokens, int B, int T, float* const* states, float* logits, LogitsMode mode,
           bool parallel) {
    if (B <= 0 || T <= 0) return;
    check_tokens(tokens, size_t(B) * size_t(T));
    const int C = info_.n_embd, M = B * T;
    act_.ensure(M, C, info_.dim_ffn, max_lora_);
    // Embedding row, then ln0.
    for (int m = 0; m < M; ++m) {
      const size_t row_bytes = dtype_nbytes(w_.emb.dtype, size_t(C));
      convert_to_f32(w_.emb.dtype,
                     static_cast<const uint8_t*>(w_.emb.data) + size_t(tokens[m]) * row_bytes,
                     act_.x + size_t(m) * size_t(C), size_t(C));
    }
    layer_norm(act_.x, act_.x, M, C, w_.ln0_w, w_.ln0_b);
    for (int l = 0; l < info_.n_layer; ++l) {
      time_mix(l, B, T, states, parallel);
      channel_mix(l, B, T, states);
    }
    if (mode == LogitsMode::None) return;
    // Logits for every row, or only for each sequence's last row.
    const int rows = mode == LogitsMode::All ? M : B;
    for (int r = 0; r < rows; ++r) {
      const int m = mode == LogitsMode::All ? r : r * T + T - 1;
      std::memcpy(act_.xn + size_t(r) * size_t(C), act_.x + size_t(m) * size_t(C), size_t(C) * 4);
    }
    layer_norm(act_.xn, act_.xn, rows, C, w_.ln_out_w, w_.ln_out_b);
    kernels_->linear(w_.head, act_.xn, rows, logits);
  }

  void time_mix(int l, int B, int T, float* const* states, bool parallel) {
    const Layer& y = w_.layers[size_t(l)];
    Activations& s = act_;
    const int C = info_.n_embd, H = info_.n_head, N = info_.head_size, M = B * T;
    const size_t MC = size_t(M) * size_t(C);
    layer_norm(s.x, s.xn, M, C, y.ln1_w, y.ln1_b);
    token_shift(s.xn, s.delta, B, T, C, states, att_x_offset(l));
    for (size_t i = 0; i < MC; ++i) {
      const size_t c = i % size_t(C);
      const float x = s.xn[i], d = s.delta[i];
      s.xr[i] = x + d * y.x_r[c];
      s.xw[i] = x + d * y.x_w[c];
      s.xk[i] = x + d * y.x_k[c];
      s.xv[i] = x + d * y.x_v[c];
      s.xa[i] = x + d * y.x_a[c];
      s.xg[i] = x + d * y.x_g[c];
    }
    kernels_->linear(y.receptance, s.xr, M, s.r);
    kernels_->linear(y.key, s.xk, M, s.k);
    kernels_->linear(y.value, s.xv, M, s.v);
    lora(y.w1, y.w2, s.xw, s.w, M, [](float z) { return std::tanh(z); });
    lora(y.a1, y.a2, s.xa, s.a, M, nullptr);
    lora(y.g1, y.g2, s.xg, s.g, M, [](float z) { return sigmoid(z); });
    if (l == 0) {
      std::memcpy(s.v_first, s.v, MC * 4);
    } else {
      lora(y.v1, y.v2, s.xv, s.xr, M, nullptr);  // xr is free again: reuse it
      for (size_t i = 0; i < MC; ++i) {
        const float gate = sigmoid(y.v0[i % size_t(C)] + s.xr[i]);
        s.v[i] += (s.v_first[i] - s.v[i]) * gate;
      }
    }
    for (int m = 0; m < M; ++m) {
      for (int h = 0; h < H; ++h) {
        const size_t o = size_t(m) * size_t(C) + size_t(h) * size_t(N);
        double norm = 0;
        for (int i = 0; i < N; ++i) {
          const float kk = s.k[o + size_t(i)] * y.k_k[size_t(h * N + i)];
          s.kk[o + size_t(i)] = kk;
          norm += double(kk) * kk;
        }
        const float inv = 1.f / std::max(float(std::sqrt(norm)), 1e-12f);
        for (int i = 0; i < N; ++i) {
          const size_t j = o + size_t(i), c = size_t(h * N + i);
          const float kk = s.kk[j] * inv;
          const float alpha = sigmoid(y.a0[c] + s.a[j]);
          s.w[j] = -kDecayScale * sigmoid(y.w0[c] + s.w[j]);  // log-decay
          s.k[j] *= 1.f + (alpha - 1.f) * y.k_a[c];
          s.a[j] = -kk;         // WKV's a
          s.b[j] = kk * alpha;  // WKV's b
        }
      }
    }
    wkv(l, B, T, states, parallel);
    group_norm(s.y, M, H, N, y.ln_x_w, y.ln_x_b, kGroupNormEps);
    for (int m = 0; m < M; ++m) {
      for (int h = 0; h < H; ++h) {
        const size_t o = size_t(m) * size_t(C) + size_t(h) * size_t(N);
        float bonus = 0;
        for (int i = 0; i < N; ++i) bonus += s.r[o + size_t(i)] * s.k[o + size_t(i)] * y.r_k[size_t(h * N + i)];
        for (int i = 0; i < N; ++i) s.y[o + size_t(i)] += bonus * s.v[o + size_t(i)];
      }
    }
    for (size_t i = 0; i < MC; ++i) s.y[i] *= s.g[i];
    kernels_->linear(y.output, s.y, M, s.xr);
    for (size_t i = 0; i < MC; ++i) s.x[i] += s.xr[i];
  }

  void wkv(int l, int B, int T, float* const* states, bool parallel) {
    const int C = info_.n_embd, H = info_.n_head, N = info_.head_size;
    const auto kernel = parallel && T > 1 ? kernels_->wkv7_parallel : kernels_->wkv7_recurrent;
    Activations& s = act_;
    // Heads are independent; threads pay off once each has a few state updates to do.
    const bool threaded = size_t(B) * size_t(H) * size_t(T) * size_t(N) * size_t(N) >= (1u << 16);
#pragma omp parallel for schedule(static) if (threaded && B * H > 1)
    for (int bh = 0; bh < B * H; ++bh) {
      const int b = bh / H, h = bh % H;
      const size_t o = size_t(b) * size_t(T) * size_t(C) + size_t(h) * size_t(N);
      ops::Wkv7Head head{T,     N,     C,     s.r + o, s.w + o,
                         s.k + o, s.v + o, s.a + o, s.b + o, s.y + o,
                         states[b] + att_kv_offset(l) + size_t(h) * size_t(N) * size_t(N)};
      kernel(head);
    }
  }

  void channel_mix(int l, int B, int T, float* const* states) {
    const Layer& y = w_.layers[size_t(l)];
    Activations& s = act_;
    const int C = info_.n_embd, M = B * T;
    const size_t MC = size_t(M) * size_t(C);
    layer_norm(s.x, s.xn, M, C, y.ln2_w, y.ln2_b);
    token_shift(s.xn, s.delta, B, T, C, states, ffn_x_offset(l));
    for (size_t i = 0; i < MC; ++i) s.xk[i] = s.xn[i] + s.delta[i] * y.ffn_x_k[i % size_t(C)];
    kernels_->linear(y.ffn_key, s.xk, M, s.ffn_hidden);
    const size_t MF = size_t(M) * size_t(info_.dim_ffn);
    for (size_t i = 0; i < MF; ++i) {
      const float z = std::max(s.ffn_hidden[i], 0.f);
      s.ffn_hidden[i] = z * z;
    }
    kernels_->linear(y.ffn_value, s.ffn_hidden, M, s.xr);
    for (size_t i = 0; i < MC; ++i) s.x[i] += s.xr[i];
  }

  ModelInfo info_;
  const ops::Kernels* kernels_;
  Weights w_;
  Activations act_;
  int max_lora_ = 1;
  uint64_t fingerprint_ = 0;
  DType weight_dtype_ = DType::F32;
  size_t decode_bytes_ = 0;
  std::shared_ptr<const Checkpoint> checkpoint_;  // owns the mapped weights
  std::vector<std::unique_ptr<uint8_t[]>> owned_;
};

}  // namespace

std::unique_ptr<Model> load_rwkv7(std::shared_ptr<const Checkpoint> checkpoint,
                                  const ModelInfo& info, const LoadOptions& options) {
  return std::make_unique<Rwkv7>(std::move(checkpoint), info, options);
}

}  // namespace rwkv::model
