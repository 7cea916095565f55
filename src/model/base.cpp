#include "model/base.h"

#include <algorithm>
#include <cstring>

#include "rwkv/error.h"

namespace rwkv::model {

size_t matrix_state_layer_floats(const ModelInfo& info) {
  return 2 * size_t(info.n_embd) + size_t(info.n_head) * size_t(info.head_size) * size_t(info.head_size);
}

size_t matrix_state_kv_offset(const ModelInfo& info, int layer) {
  return size_t(layer) * matrix_state_layer_floats(info) + size_t(info.n_embd);
}

size_t matrix_state_ffn_offset(const ModelInfo& info, int layer) {
  return size_t(layer + 1) * matrix_state_layer_floats(info) - size_t(info.n_embd);
}

std::vector<StatePiece> matrix_state_layout(const ModelInfo& info) {
  std::vector<StatePiece> pieces;
  const int64_t C = info.n_embd, H = info.n_head, N = info.head_size;
  for (int l = 0; l < info.n_layer; ++l) {
    const size_t base = size_t(l) * matrix_state_layer_floats(info);
    const std::string p = cat("blocks.", l, ".");
    pieces.push_back({p + "att_x_prev", {C}, base, size_t(C)});
    pieces.push_back({p + "att_kv", {H, N, N}, matrix_state_kv_offset(info, l), size_t(H * N * N)});
    pieces.push_back({p + "ffn_x_prev", {C}, matrix_state_ffn_offset(info, l), size_t(C)});
  }
  return pieces;
}

void matrix_wkv6(const ops::Kernels& kernels, const ModelInfo& info, int layer, int B, int T,
                 float* const* states, bool parallel, const Wkv6Inputs& in) {
  const int A = info.dim_att, H = info.n_head, N = info.head_size;
  const auto kernel = parallel && T > 1 ? kernels.wkv6_parallel : kernels.wkv6_recurrent;
  const size_t kv = matrix_state_kv_offset(info, layer);
  // Heads are independent; threads pay off once each has a few state updates to do.
  const bool threaded = size_t(B) * size_t(H) * size_t(T) * size_t(N) * size_t(N) >= (1u << 16);
#pragma omp parallel for schedule(static) if (threaded && B * H > 1)
  for (int bh = 0; bh < B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    const size_t o = size_t(b) * size_t(T) * size_t(A) + size_t(h) * size_t(N);
    ops::Wkv6Head head{T,       N,       A,       in.r + o,
                       in.w + o, in.k + o, in.v + o, in.u + size_t(h) * size_t(N),
                       in.y + o, states[b] + kv + size_t(h) * size_t(N) * size_t(N)};
    kernel(head);
  }
}

namespace {

// The CPU kernels for a backend. Backend::Cuda has models of its own (load_model picks them);
// reaching a CPU model with it means no CUDA model took it, and quietly running on the CPU
// would hide that.
const ops::Kernels* cpu_side_kernels(const ModelInfo& info, Backend backend) {
  if (backend == Backend::Cuda) {
    fail("this build has no CUDA model for RWKV generation ", info.generation,
         "; run it on the CPU");
  }
  return backend == Backend::Ref ? &ops::ref_kernels() : &ops::cpu_kernels();
}

}  // namespace

BlockModel::BlockModel(const ModelInfo& info, const LoadOptions& options)
    : info_(info), kernels_(cpu_side_kernels(info, options.backend)) {}

StateSpec make_state_spec(const ModelInfo& info, size_t floats, uint64_t fingerprint) {
  StateSpec s;
  s.generation = info.generation;
  s.n_layer = info.n_layer;
  s.n_embd = info.n_embd;
  s.n_head = info.n_head;
  s.head_size = info.head_size;
  s.floats = floats;
  s.fingerprint = fingerprint;
  return s;
}

void check_token_ids(const int* tokens, size_t n, int vocab) {
  for (size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      fail("token id ", tokens[i], " at position ", i, " is outside the vocabulary [0, ", vocab, ")");
    }
  }
}

StateSpec BlockModel::state_spec() const {
  return make_state_spec(info_, size_t(info_.n_layer) * layer_floats(), fingerprint_);
}

CommonWeights load_common_weights(WeightLoader& load, const ModelInfo& info) {
  const int C = info.n_embd, V = info.vocab_size;
  CommonWeights w;
  w.emb = load.table("emb.weight", V, C);
  w.ln0_w = load.vec("blocks.0.ln0.weight", C);
  w.ln0_b = load.vec("blocks.0.ln0.bias", C);
  w.ln_out_w = load.vec("ln_out.weight", C);
  w.ln_out_b = load.vec("ln_out.bias", C);
  w.head = load.mat("head.weight", V, C);
  return w;
}

void BlockModel::load_common(WeightLoader& load) { common_ = load_common_weights(load, info_); }

ChannelMix load_channel_mix(WeightLoader& load, const ModelInfo& info, int l, FfnMix naming) {
  const int C = info.n_embd, F = info.dim_ffn;
  const std::string p = cat("blocks.", l, "."), f = p + "ffn.";
  ChannelMix m;
  m.ln_w = load.vec(p + "ln2.weight", C);
  m.ln_b = load.vec(p + "ln2.bias", C);
  const bool receptance = naming != FfnMix::kX;
  const std::string prefix = naming == FfnMix::kTimeMix   ? "time_mix_"
                             : naming == FfnMix::kTimeMaa ? "time_maa_"
                                                          : "x_";
  const auto mix = [&](const char* target) {
    const std::string name = f + prefix + target;
    return naming == FfnMix::kTimeMix ? load.one_minus(name, C) : load.vec(name, C);
  };
  m.mix_k = mix("k");
  if (receptance) m.mix_r = mix("r");
  m.key = load.mat(f + "key.weight", F, C);
  m.value = load.mat(f + "value.weight", C, F);
  if (receptance) m.receptance = load.mat(f + "receptance.weight", C, C);
  return m;
}

void BlockModel::finish_load(WeightLoader& load, std::shared_ptr<const Checkpoint> checkpoint) {
  load.check_all_used();
  fingerprint_ = load.fingerprint();
  weight_dtype_ = load.matrix_dtype();
  decode_bytes_ = load.matrix_bytes() - common_.emb.nbytes();
  owned_ = load.take_owned();
  checkpoint_ = std::move(checkpoint);
}

void BlockModel::step(const int* tokens, int B, float* const* states, float* logits) {
  run(tokens, B, 1, states, logits, LogitsMode::All, /*parallel=*/false);
}

void BlockModel::forward(const int* tokens, int B, int T, float* const* states, float* logits,
                         LogitsMode mode) {
  run(tokens, B, T, states, logits, mode, /*parallel=*/true);
}

void BlockModel::run(const int* tokens, int B, int T, float* const* states, float* logits,
                     LogitsMode mode, bool parallel) {
  if (B <= 0 || T <= 0) return;
  check_token_ids(tokens, size_t(B) * size_t(T), info_.vocab_size);
  const int C = info_.n_embd, M = B * T;
  if (M > rows_) {
    // Residual, its norm, token-shift deltas and two scratch rows; the FFN hidden layer.
    const size_t mc = size_t(M) * size_t(std::max(C, info_.dim_att));
    shared_.assign(5 * mc + size_t(M) * size_t(info_.dim_ffn), 0.f);
    float* p = shared_.data();
    for (float** f : {&x_, &xn_, &delta_, &tmp_, &tmp2_}) {
      *f = p;
      p += mc;
    }
    hidden_ = p;
    rows_ = M;
  }
  reserve(M);
  for (int m = 0; m < M; ++m) {
    const size_t row_bytes = common_.emb.row_bytes();
    convert_to_f32(common_.emb.dtype, static_cast<const uint8_t*>(common_.emb.data) + size_t(tokens[m]) * row_bytes,
                   x_ + size_t(m) * size_t(C), size_t(C));
  }
  layer_norm(x_, x_, M, C, common_.ln0_w, common_.ln0_b);
  for (int l = 0; l < info_.n_layer; ++l) {
    time_mix(l, B, T, states, parallel);
    run_channel_mix(ffn_[size_t(l)], B, T, states, ffn_shift_offset(l));
  }
  if (mode == LogitsMode::None) return;
  // Logits for every row, or only for each sequence's last row.
  const int rows = mode == LogitsMode::All ? M : B;
  for (int r = 0; r < rows; ++r) {
    const int m = mode == LogitsMode::All ? r : r * T + T - 1;
    std::memcpy(xn_ + size_t(r) * size_t(C), x_ + size_t(m) * size_t(C), size_t(C) * 4);
  }
  layer_norm(xn_, xn_, rows, C, common_.ln_out_w, common_.ln_out_b);
  kernels_->linear(common_.head, xn_, rows, logits);
}

void BlockModel::mixed_linear(const float* mix, const ops::Matrix& W, int M, float* out) {
  mix_rows(xn_, delta_, mix, nullptr, tmp_, M, info_.n_embd);
  kernels_->linear(W, tmp_, M, out);
}

void BlockModel::run_channel_mix(const ChannelMix& f, int B, int T, float* const* states,
                                 size_t offset) {
  const int C = info_.n_embd, M = B * T;
  const size_t MC = size_t(M) * size_t(C);
  layer_norm(x_, xn_, M, C, f.ln_w, f.ln_b);
  token_shift(xn_, delta_, B, T, C, states, offset);
  mix_rows(xn_, delta_, f.mix_k, nullptr, tmp_, M, C);
  kernels_->linear(f.key, tmp_, M, hidden_);
  const size_t F = size_t(info_.dim_ffn);
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
  for (int m = 0; m < M; ++m) relu_squared(hidden_ + size_t(m) * F, F);
  kernels_->linear(f.value, hidden_, M, tmp2_);
  if (!f.mix_r) {
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
    for (int64_t i = 0; i < int64_t(MC); ++i) x_[i] += tmp2_[i];
    return;
  }
  mix_rows(xn_, delta_, f.mix_r, nullptr, tmp_, M, C);
  kernels_->linear(f.receptance, tmp_, M, xn_);  // xn_ is free again
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
  for (int64_t i = 0; i < int64_t(MC); ++i) x_[i] += sigmoid(xn_[i]) * tmp2_[i];
}

}  // namespace rwkv::model
