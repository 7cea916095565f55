#include "model/rwkv7_step.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace rwkv::model {
namespace {

using ops::QuantizedVectors;

// The input group a matrix's products need: its block size, 1 for float weights.
int group_of(const ops::Matrix& W) { return is_quantized(W.dtype) ? ops::qdot_group(W.dtype) : 1; }

// The quantized input of the matrices one vector of `cols` feeds, or null when all of them are
// float; `ok` turns false when two of them need different groups.
std::unique_ptr<QuantizedVectors> input_for(std::initializer_list<const ops::Matrix*> consumers,
                                            int cols, bool& ok) {
  int group = 0;
  for (const ops::Matrix* W : consumers) {
    if (W->rows == 0 || !is_quantized(W->dtype)) continue;
    if (group != 0 && group_of(*W) != group) ok = false;
    group = group_of(*W);
  }
  if (group == 0) return nullptr;
  auto q = std::make_unique<QuantizedVectors>();
  q->resize(Rwkv7Step::kMaxBatch, size_t(cols), group);
  return q;
}

}  // namespace

std::unique_ptr<Rwkv7Step> Rwkv7Step::create(const ModelInfo& info, const CommonWeights& common,
                                             const std::vector<Rwkv7Layer>& layers,
                                             const std::vector<ChannelMix>& ffn) {
  std::unique_ptr<Rwkv7Step> step(new Rwkv7Step(info, common, layers, ffn));
  bool ok = info.n_embd % step->unit_ == 0 && info.dim_ffn % step->hidden_unit_ == 0;
  for (int l = 0; l < info.n_layer; ++l) {
    const Rwkv7Layer& y = layers[size_t(l)];
    const ChannelMix& f = ffn[size_t(l)];
    LayerInputs& in = step->inputs_[size_t(l)];
    const int C = info.n_embd;
    in.xr = input_for({&y.receptance}, C, ok);
    in.xw = input_for({&y.w1}, C, ok);
    in.xk = input_for({&y.key}, C, ok);
    in.xv = input_for({&y.value, &y.v1}, C, ok);
    in.xa = input_for({&y.a1}, C, ok);
    in.xg = input_for({&y.g1}, C, ok);
    in.y = input_for({&y.output}, C, ok);
    in.ffn = input_for({&f.key}, C, ok);
    in.hidden = input_for({&f.value}, info.dim_ffn, ok);
  }
  step->head_input_ = input_for({&common.head}, info.n_embd, ok);
  if (!ok) return nullptr;
  return step;
}

Rwkv7Step::Rwkv7Step(const ModelInfo& info, const CommonWeights& common,
                     const std::vector<Rwkv7Layer>& layers, const std::vector<ChannelMix>& ffn)
    : info_(info), common_(common), layers_(layers), ffn_(ffn), inputs_(layers.size()) {
  // A share of channels holds whole heads, whole 64-byte lines of floats and whole groups of
  // every input quantized by channel (the embedding's blocks too); hidden units likewise.
  unit_ = std::lcm(16, info.head_size);
  hidden_unit_ = 16;
  auto widen = [](int& unit, const ops::Matrix& W) { unit = std::lcm(unit, group_of(W)); };
  widen(unit_, common.emb);
  widen(unit_, common.head);
  for (size_t l = 0; l < layers.size(); ++l) {
    const Rwkv7Layer& y = layers[l];
    for (const ops::Matrix* W : {&y.receptance, &y.key, &y.value, &y.output, &y.w1, &y.a1, &y.g1,
                                 &y.v1, &ffn[l].key}) {
      widen(unit_, *W);
    }
    widen(hidden_unit_, ffn[l].value);
    const ops::Matrix* first[4] = {&y.w1, &y.a1, &y.g1, &y.v1};
    for (int i = 0; i < 4; ++i) lora_rows_[i] = std::max(lora_rows_[i], first[i]->rows);
  }
  lora_total_ = lora_rows_[0] + lora_rows_[1] + lora_rows_[2] + lora_rows_[3];

  const size_t C = size_t(info.n_embd), K = kMaxBatch;
  const size_t floats = 19 * C + size_t(info.dim_ffn) + size_t(lora_total_);
  buffer_.assign(K * floats, 0.f);
  float* p = buffer_.data();
  for (float** f : {&x_, &xr_, &xw_, &xk_, &xv_, &xa_, &xg_, &r_, &k_, &v_, &w_, &a_, &g_, &vl_,
                    &b_, &y_, &v_first_, &out_, &ffn_x_}) {
    *f = p;
    p += K * C;
  }
  hidden_ = p;
  p += K * size_t(info.dim_ffn);
  float** lora[4] = {&lw_, &la_, &lg_, &lv_};
  for (int i = 0; i < 4; ++i) {
    *lora[i] = p;
    p += K * size_t(lora_rows_[i]);
  }
  partial_.assign(2 * K * size_t(info.n_embd / unit_ + 1) * 2, 0.0);
}

Rwkv7Step::Share Rwkv7Step::share(int id, int threads) const {
  // Units [0, n) split evenly: thread id gets [n·id/threads, n·(id+1)/threads), times the unit,
  // clamped to `limit`.
  auto split = [&](int n, int unit, int limit) {
    const int64_t b = int64_t(n) * id / threads, e = int64_t(n) * (id + 1) / threads;
    return Span{int(std::min<int64_t>(b * unit, limit)), int(std::min<int64_t>(e * unit, limit))};
  };
  Share s;
  s.id = id;
  s.channels = split(info_.n_embd / unit_, unit_, info_.n_embd);
  s.hidden = split(info_.dim_ffn / hidden_unit_, hidden_unit_, info_.dim_ffn);
  s.head = split((info_.vocab_size + 7) / 8, 8, info_.vocab_size);
  s.lora = split((lora_total_ + 7) / 8, 8, lora_total_);
  return s;
}

void Rwkv7Step::run(const int* tokens, int B, float* const* states, float* logits) {
  B_ = B;
  for (LayerInputs& in : inputs_) {
    for (QuantizedVectors* q : {in.xr.get(), in.xw.get(), in.xk.get(), in.xv.get(), in.xa.get(),
                                in.xg.get(), in.y.get(), in.ffn.get(), in.hidden.get()}) {
      if (q) q->count = B;
    }
  }
  if (head_input_) head_input_->count = B;
  const int threads = ops::cpu::num_threads();
  if (lora_inputs_.size() < size_t(threads)) lora_inputs_.resize(size_t(threads));
#pragma omp parallel num_threads(threads)
  {
    const Share s = share(omp_get_thread_num(), omp_get_num_threads());
    embed(s, tokens);
    for (int l = 0; l < info_.n_layer; ++l) layer(l, s, states);
    head(s, logits);
  }
}

void Rwkv7Step::barrier() {
#pragma omp barrier
}

void Rwkv7Step::rows(const ops::Matrix& W, const float* x, const QuantizedVectors* xq, float* y,
                     const Span& r) {
  if (r.begin < r.end && W.cols > 0) ops::cpu::matvec_rows(W, x, xq, B_, y, r.begin, r.end);
}

void Rwkv7Step::quantize(QuantizedVectors* q, const float* x, const Span& span) {
  if (!q || span.begin >= span.end) return;
  ops::cpu::quantize_groups(ops::cpu::qdot_isa(), x, size_t(span.begin / q->group),
                            size_t(span.end / q->group), *q);
}

void Rwkv7Step::partial_sums(const Span& c, int parity) {
  const int C = info_.n_embd, units = C / unit_;
  for (int b = 0; b < B_; ++b) {
    double* p = partial_.data() + (size_t(parity * kMaxBatch + b) * size_t(units)) * 2;
    for (int u = c.begin / unit_; u < c.end / unit_; ++u) {
      const float* x = x_ + size_t(b) * size_t(C) + size_t(u) * size_t(unit_);
      double sum = 0, sq = 0;
      for (int i = 0; i < unit_; ++i) {
        sum += x[i];
        sq += double(x[i]) * x[i];
      }
      p[2 * u] = sum;
      p[2 * u + 1] = sq;
    }
  }
}

void Rwkv7Step::norm_owned(const Span& c, int parity, const float* w, const float* bias,
                           float* out) {
  const int C = info_.n_embd, units = C / unit_;
  for (int b = 0; b < B_; ++b) {
    const double* p = partial_.data() + (size_t(parity * kMaxBatch + b) * size_t(units)) * 2;
    double sum = 0, sq = 0;
    for (int u = 0; u < units; ++u) {
      sum += p[2 * u];
      sq += p[2 * u + 1];
    }
    // One pass in fp64: E[x²] − mean² loses nothing that fp32 would keep unless the mean is
    // thousands of standard deviations from zero.
    const double mean = sum / C, var = std::max(sq / C - mean * mean, 0.0);
    const float inv = float(1.0 / std::sqrt(var + 1e-5)), mu = float(mean);
    const float* x = x_ + size_t(b) * size_t(C);
    float* y = (out ? out : x_) + size_t(b) * size_t(C);
    for (int i = c.begin; i < c.end; ++i) y[i] = (x[i] - mu) * inv * w[i] + bias[i];
  }
}

void Rwkv7Step::shift_and_mix(float* const* states, size_t shift_offset, int n,
                              const float* const* mix, float* const* out, const Span& c) {
  const int C = info_.n_embd;
  for (int b = 0; b < B_; ++b) {
    const size_t o = size_t(b) * size_t(C);
    float* prev = states[b] + shift_offset;
    const float* xn = out_ + o;
    for (int i = c.begin; i < c.end; ++i) {
      const float d = prev[i] - xn[i];
      prev[i] = xn[i];
      for (int k = 0; k < n; ++k) out[k][o + size_t(i)] = xn[i] + d * mix[k][i];
    }
  }
}

void Rwkv7Step::add_out_to_residual(const Span& c) {
  for (int b = 0; b < B_; ++b) {
    const size_t o = size_t(b) * size_t(info_.n_embd);
    float* __restrict x = x_ + o;
    const float* __restrict add = out_ + o;
    for (int i = c.begin; i < c.end; ++i) x[i] += add[i];
  }
}

void Rwkv7Step::embed(const Share& s, const int* tokens) {
  const ops::Matrix& E = common_.emb;
  const Span& c = s.channels;
  for (int b = 0; b < B_; ++b) {
    const auto* row = static_cast<const uint8_t*>(E.data) + size_t(tokens[b]) * E.row_bytes();
    convert_to_f32(E.dtype, row + dtype_nbytes(E.dtype, size_t(c.begin)),
                   x_ + size_t(b) * size_t(info_.n_embd) + c.begin, size_t(c.end - c.begin));
  }
  partial_sums(c, 0);
  barrier();
  norm_owned(c, 0, common_.ln0_w, common_.ln0_b, nullptr);
  partial_sums(c, 1);
  barrier();
}

void Rwkv7Step::layer(int l, const Share& s, float* const* states) {
  const Rwkv7Layer& y = layers_[size_t(l)];
  const ChannelMix& f = ffn_[size_t(l)];
  LayerInputs& in = inputs_[size_t(l)];
  const int C = info_.n_embd, N = info_.head_size;
  const Span& c = s.channels;
  const size_t att_x = size_t(l) * matrix_state_layer_floats(info_);
  const size_t kv = matrix_state_kv_offset(info_, l), ffn_x = matrix_state_ffn_offset(info_, l);

  // A: x̂ = LN1(x) (into out_), δ = x̂′ − x̂ with x̂′ from the state, the six mixes.
  norm_owned(c, 1, y.ln1_w, y.ln1_b, out_);
  const float* mixes[6] = {y.x_r, y.x_w, y.x_k, y.x_v, y.x_a, y.x_g};
  float* mixed[6] = {xr_, xw_, xk_, xv_, xa_, xg_};
  QuantizedVectors* mixed_q[6] = {in.xr.get(), in.xw.get(), in.xk.get(),
                                  in.xv.get(), in.xa.get(), in.xg.get()};
  shift_and_mix(states, att_x, 6, mixes, mixed, c);
  for (int k = 0; k < 6; ++k) quantize(mixed_q[k], mixed[k], c);
  barrier();

  // B: r, k, v for the owned channels; this thread's rows of the LoRAs' first products, with
  // their activations (tanh for the decay, σ for the gate). Layer 0 has no value LoRA.
  rows(y.receptance, xr_, in.xr.get(), r_, c);
  rows(y.key, xk_, in.xk.get(), k_, c);
  rows(y.value, xv_, in.xv.get(), v_, c);
  const ops::Matrix* first[4] = {&y.w1, &y.a1, &y.g1, &y.v1};
  const float* first_x[4] = {xw_, xa_, xg_, xv_};
  const QuantizedVectors* first_q[4] = {in.xw.get(), in.xa.get(), in.xg.get(), in.xv.get()};
  float* hidden[4] = {lw_, la_, lg_, lv_};
  for (int i = 0, offset = 0; i < 4; offset += lora_rows_[i], ++i) {
    const int n = first[i]->rows;
    const Span r{std::max(s.lora.begin - offset, 0), std::min(s.lora.end - offset, n)};
    if (r.begin >= r.end) continue;
    rows(*first[i], first_x[i], first_q[i], hidden[i], r);
    if (i == 1 || i == 3) continue;
    for (int b = 0; b < B_; ++b) {
      float* h = hidden[i] + size_t(b) * size_t(n) + r.begin;
      const size_t len = size_t(r.end - r.begin);
      if (i == 0) {
        ops::cpu::tanh(h, h, len);
      } else {
        ops::cpu::sigmoid(h, h, len);
      }
    }
  }
  barrier();

  // C: the LoRAs' second products for the owned channels (inputs whole, from every thread),
  // then per owned head the WKV's inputs (spec §2.4), its state update, GroupNorm, bonus, gate.
  LoraInputs& mine = lora_inputs_[size_t(s.id)];
  auto second = [&](const ops::Matrix& W, const float* h, QuantizedVectors& q, float* out) {
    if (W.rows == 0) return;
    if (is_quantized(W.dtype)) {
      ops::cpu::quantize_vectors(ops::cpu::qdot_isa(), h, B_, size_t(W.cols), group_of(W), q);
    }
    rows(W, h, &q, out, c);
  };
  second(y.w2, lw_, mine.w, w_);
  second(y.a2, la_, mine.a, a_);
  second(y.g2, lg_, mine.g, g_);
  second(y.v2, lv_, mine.v, vl_);
  // The gates' arguments for the owned channels, their sigmoids in vector passes, the value
  // residual (layer 0 keeps v as v_first).
  const size_t n = size_t(c.end - c.begin);
  for (int b = 0; b < B_; ++b) {
    const size_t o = size_t(b) * size_t(C) + size_t(c.begin);
    float *a = a_ + o, *w = w_ + o, *vl = vl_ + o, *v = v_ + o, *v_first = v_first_ + o;
    for (size_t i = 0; i < n; ++i) {
      a[i] += y.a0[size_t(c.begin) + i];
      w[i] += y.w0[size_t(c.begin) + i];
    }
    ops::cpu::sigmoid(a, a, n);
    ops::cpu::sigmoid(w, w, n);
    if (l == 0) {
      std::copy(v, v + n, v_first);
      continue;
    }
    for (size_t i = 0; i < n; ++i) vl[i] += y.v0[size_t(c.begin) + i];
    ops::cpu::sigmoid(vl, vl, n);
    for (size_t i = 0; i < n; ++i) v[i] += (v_first[i] - v[i]) * vl[i];
  }
  for (int b = 0; b < B_; ++b) {
    for (int h = c.begin / N; h < c.end / N; ++h) {
      const size_t o = size_t(b) * size_t(C) + size_t(h) * size_t(N);
      float* kk = vl_ + o;  // the value LoRA's output is used up
      double norm = 0;
      for (int i = 0; i < N; ++i) {
        kk[i] = k_[o + size_t(i)] * y.k_k[size_t(h * N + i)];
        norm += double(kk[i]) * kk[i];
      }
      const float inv = 1.f / std::max(float(std::sqrt(norm)), 1e-12f);
      for (int i = 0; i < N; ++i) {
        const size_t j = o + size_t(i), ch = size_t(h * N + i);
        const float kn = kk[i] * inv;
        const float alpha = a_[j];          // σ(a0 + a), above
        w_[j] = -kRwkv7DecayScale * w_[j];  // log-decay from σ(w0 + w)
        k_[j] *= 1.f + (alpha - 1.f) * y.k_a[ch];
        a_[j] = -kn;
        b_[j] = kn * alpha;
      }
      ops::cpu::wkv7_recurrent(ops::Wkv7Head{1, N, C, r_ + o, w_ + o, k_ + o, v_ + o, a_ + o, b_ + o,
                                             y_ + o, states[b] + kv + size_t(h) * size_t(N * N)});
      layer_norm_row(y_ + o, y_ + o, N, y.ln_x_w + size_t(h * N), y.ln_x_b + size_t(h * N),
                     kRwkv7GroupNormEps);
      float bonus = 0;
      for (int i = 0; i < N; ++i) bonus += r_[o + size_t(i)] * k_[o + size_t(i)] * y.r_k[size_t(h * N + i)];
      for (int i = 0; i < N; ++i) {
        y_[o + size_t(i)] = (y_[o + size_t(i)] + bonus * v_[o + size_t(i)]) * g_[o + size_t(i)];
      }
    }
  }
  quantize(in.y.get(), y_, c);
  barrier();

  // D: the output projection added to the residual.
  rows(y.output, y_, in.y.get(), out_, c);
  add_out_to_residual(c);
  partial_sums(c, 0);
  barrier();

  // E: the channel mix's LN2, token shift and mix.
  norm_owned(c, 0, f.ln_w, f.ln_b, out_);
  shift_and_mix(states, ffn_x, 1, &f.mix_k, &ffn_x_, c);
  quantize(in.ffn.get(), ffn_x_, c);
  barrier();

  // F: the key projection for the owned hidden units, ReLU².
  const Span& u = s.hidden;
  const size_t F = size_t(info_.dim_ffn);
  rows(f.key, ffn_x_, in.ffn.get(), hidden_, u);
  for (int b = 0; b < B_; ++b) relu_squared(hidden_ + size_t(b) * F + u.begin, size_t(u.end - u.begin));
  quantize(in.hidden.get(), hidden_, u);
  barrier();

  // G: the value projection added to the residual, the next LayerNorm's partial sums.
  rows(f.value, hidden_, in.hidden.get(), out_, c);
  add_out_to_residual(c);
  partial_sums(c, 1);
  barrier();
}

void Rwkv7Step::head(const Share& s, float* logits) {
  norm_owned(s.channels, 1, common_.ln_out_w, common_.ln_out_b, out_);
  quantize(head_input_.get(), out_, s.channels);
  barrier();
  rows(common_.head, out_, head_input_.get(), logits, s.head);
}

}  // namespace rwkv::model
