// RWKV-7 "Goose" (x070), spec §2.4 (recurrent) and §4.5 (chunked parallel form).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "model/base.h"
#include "model/generations.h"
#include "model/rwkv7_step.h"
#include "model/rwkv7_weights.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace {

// Activations of one call over M = B·T rows (beside the shared ones). One allocation, reused.
struct Activations {
  int M = 0;
  std::vector<float> buffer;
  float *xr, *xw, *xk, *xv, *xa, *xg;                     // (M, C)
  float *r, *w, *k, *v, *a, *g, *kk, *b, *y, *v_first;   // (M, C)
  float *lora_hidden;                                     // 4 × (M, max LoRA width)

  void ensure(int rows, int C, int D) {
    if (rows <= M) return;
    M = rows;
    const size_t mc = size_t(M) * size_t(C);
    buffer.assign(16 * mc + 4 * size_t(M) * size_t(D), 0.f);
    float* p = buffer.data();
    for (float** f : {&xr, &xw, &xk, &xv, &xa, &xg, &r, &w, &k, &v, &a, &g, &kk, &b, &y,
                      &v_first}) {
      *f = p;
      p += mc;
    }
    lora_hidden = p;
  }
};

class Rwkv7 final : public MatrixStateModel {
 public:
  Rwkv7(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, const LoadOptions& options)
      : MatrixStateModel(info, options) {
    WeightLoader load(ckpt, options);
    load_weights(load);
    finish_load(load, std::move(ckpt));
    for (const auto& [name, width] : info_.lora) max_lora_ = std::max(max_lora_, width);
    // Decode steps of a few sequences run in one team of threads (model/rwkv7_step.h), unless
    // RWKV_CPU_FUSED_STEP=0 asks for the layer-by-layer path (for comparisons).
    const char* fused = std::getenv("RWKV_CPU_FUSED_STEP");
    if (options.backend == Backend::Cpu && !(fused && std::string(fused) == "0")) {
      step_ = Rwkv7Step::create(info_, common(), layers_, ffn_);
    }
  }

  void step(const int* tokens, int B, float* const* states, float* logits) override {
    if (!step_ || B < 1 || B > Rwkv7Step::kMaxBatch) return BlockModel::step(tokens, B, states, logits);
    check_token_ids(tokens, size_t(B), info_.vocab_size);
    step_->run(tokens, B, states, logits);
  }

  // Per layer: att_x_prev (C), att_kv (H, N, N) value-major, ffn_x_prev (C) — the official
  // package's order, so raw states interoperate.
  std::vector<StatePiece> state_layout() const override { return matrix_state_layout(info_); }

  void init_state(float* state) const override {
    std::fill(state, state + state_spec().floats, 0.f);
  }

  size_t att_x_offset(int l) const { return size_t(l) * layer_floats(); }
  size_t att_kv_offset(int l) const { return matrix_state_kv_offset(info_, l); }

  void reserve(int M) override { act_.ensure(M, info_.n_embd, max_lora_); }

  void load_weights(WeightLoader& load) {
    check_rwkv7_dims(info_);
    load_common(load);
    for (int l = 0; l < info_.n_layer; ++l) {
      layers_.push_back(load_rwkv7_layer(load, info_, l));
      ffn_.push_back(load_channel_mix(load, info_, l, FfnMix::kX));
    }
  }

  void time_mix(int l, int B, int T, float* const* states, bool parallel) override {
    const Rwkv7Layer& y = layers_[size_t(l)];
    Activations& s = act_;
    const int C = info_.n_embd, H = info_.n_head, N = info_.head_size, M = B * T;
    const size_t MC = size_t(M) * size_t(C);
    layer_norm(x_, xn_, M, C, y.ln1_w, y.ln1_b);
    token_shift(xn_, delta_, B, T, C, states, att_x_offset(l));
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
    for (int m = 0; m < M; ++m) {
      // Six distinct buffers: __restrict lets the compiler vectorize (else it reloads after
      // every store, in case the outputs alias the inputs).
      const size_t o = size_t(m) * size_t(C);
      const float* __restrict x = xn_ + o;
      const float* __restrict d = delta_ + o;
      float* __restrict xr = s.xr + o;
      float* __restrict xw = s.xw + o;
      float* __restrict xk = s.xk + o;
      float* __restrict xv = s.xv + o;
      float* __restrict xa = s.xa + o;
      float* __restrict xg = s.xg + o;
      for (int c = 0; c < C; ++c) {
        xr[c] = x[c] + d[c] * y.x_r[c];
        xw[c] = x[c] + d[c] * y.x_w[c];
        xk[c] = x[c] + d[c] * y.x_k[c];
        xv[c] = x[c] + d[c] * y.x_v[c];
        xa[c] = x[c] + d[c] * y.x_a[c];
        xg[c] = x[c] + d[c] * y.x_g[c];
      }
    }
    // The projections and the LoRAs' down products (W1ᵀ·x), then their up products (W2ᵀ·f(h)),
    // each set in one call. Layer 0 has no value LoRA: its v is v_first.
    const int lorae = l == 0 ? 3 : 4;
    float* hidden[4];
    for (int i = 0; i < 4; ++i) hidden[i] = s.lora_hidden + size_t(i) * size_t(M) * size_t(max_lora_);
    const ops::Product down[] = {{y.receptance, s.xr, s.r}, {y.key, s.xk, s.k}, {y.value, s.xv, s.v},
                                 {y.w1, s.xw, hidden[0]},   {y.a1, s.xa, hidden[1]},
                                 {y.g1, s.xg, hidden[2]},   {y.v1, s.xv, hidden[3]}};
    kernels_->linear_many(down, 3 + lorae, M);
    const size_t nw = size_t(y.w1.rows), ng = size_t(y.g1.rows);
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
    for (int m = 0; m < M; ++m) {
      kernels_->tanh(hidden[0] + size_t(m) * nw, hidden[0] + size_t(m) * nw, nw);
      kernels_->sigmoid(hidden[2] + size_t(m) * ng, hidden[2] + size_t(m) * ng, ng);
    }
    const ops::Product up[] = {{y.w2, hidden[0], s.w}, {y.a2, hidden[1], s.a},
                               {y.g2, hidden[2], s.g}, {y.v2, hidden[3], s.kk}};
    kernels_->linear_many(up, lorae, M);
    if (l == 0) {
      std::memcpy(s.v_first, s.v, MC * 4);
    } else {
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
      for (int m = 0; m < M; ++m) {  // kk holds the value LoRA's output until it is needed
        const size_t o = size_t(m) * size_t(C);
        float* gate = s.kk + o;
        for (int c = 0; c < C; ++c) gate[c] += y.v0[c];
        kernels_->sigmoid(gate, gate, size_t(C));
        float* v = s.v + o;
        const float* v_first = s.v_first + o;
        for (int c = 0; c < C; ++c) v[c] += (v_first[c] - v[c]) * gate[c];
      }
    }
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
    for (int m = 0; m < M; ++m) {
      // The in-context learning rate α = σ(a0 + a) and the decay's σ(w0 + w), a row at a time.
      float* a = s.a + size_t(m) * size_t(C);
      float* w = s.w + size_t(m) * size_t(C);
      for (int c = 0; c < C; ++c) {
        a[c] += y.a0[c];
        w[c] += y.w0[c];
      }
      kernels_->sigmoid(a, a, size_t(C));
      kernels_->sigmoid(w, w, size_t(C));
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
          const float alpha = s.a[j];
          s.w[j] = -kRwkv7DecayScale * s.w[j];  // log-decay
          s.k[j] *= 1.f + (alpha - 1.f) * y.k_a[c];
          s.a[j] = -kk;         // WKV's a
          s.b[j] = kk * alpha;  // WKV's b
        }
      }
    }
    wkv(l, B, T, states, parallel);
    group_norm(s.y, M, H, N, y.ln_x_w, y.ln_x_b, kRwkv7GroupNormEps);
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
    for (int m = 0; m < M; ++m) {
      for (int h = 0; h < H; ++h) {
        const size_t o = size_t(m) * size_t(C) + size_t(h) * size_t(N);
        float bonus = 0;
        for (int i = 0; i < N; ++i) bonus += s.r[o + size_t(i)] * s.k[o + size_t(i)] * y.r_k[size_t(h * N + i)];
        for (int i = 0; i < N; ++i) s.y[o + size_t(i)] += bonus * s.v[o + size_t(i)];
      }
    }
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
    for (int64_t i = 0; i < int64_t(MC); ++i) s.y[i] *= s.g[i];
    kernels_->linear(y.output, s.y, M, s.xr);
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
    for (int64_t i = 0; i < int64_t(MC); ++i) x_[i] += s.xr[i];
  }

  void wkv(int l, int B, int T, float* const* states, bool parallel) {
    const int C = info_.n_embd, H = info_.n_head, N = info_.head_size;
    const auto kernel = parallel && T > 1 ? kernels_->wkv7_parallel : kernels_->wkv7_recurrent;
    Activations& s = act_;
    // Heads are independent; threads pay off once each has a few state updates to do (one
    // token of a 0.1B model's 12 heads is enough: 20 µs alone).
    const bool threaded = size_t(B) * size_t(H) * size_t(T) * size_t(N) * size_t(N) >= (1u << 15);
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

  std::vector<Rwkv7Layer> layers_;
  std::unique_ptr<Rwkv7Step> step_;  // null: layer by layer
  Activations act_;
  int max_lora_ = 1;
};

}  // namespace

std::unique_ptr<Model> load_rwkv7(std::shared_ptr<const Checkpoint> checkpoint,
                                  const ModelInfo& info, const LoadOptions& options) {
  return std::make_unique<Rwkv7>(std::move(checkpoint), info, options);
}

}  // namespace rwkv::model
