// RWKV-7 training on the GPU (rwkv7_train_cuda.h): the CPU training form's walk
// (rwkv7_train.cpp, rwkv7_train_layer.cpp) with every op from ops/cuda. The forward and the
// backward mirror the CPU's line by line; the comments there say why each step is what it is.
// Buffers and Impl: rwkv7_train_cuda_impl.h; one block: rwkv7_train_cuda_layer.cpp.
#include "model/cuda/rwkv7_train_cuda_impl.h"

namespace rwkv::model {

Rwkv7TrainCuda::Rwkv7TrainCuda(const std::vector<TensorView>& tensors, const std::string& source, int device)
    : impl_(std::make_unique<Impl>(tensors, source, device)) {}
Rwkv7TrainCuda::~Rwkv7TrainCuda() = default;

const Rwkv7Dims& Rwkv7TrainCuda::dims() const { return impl_->d; }
const ParamTable& Rwkv7TrainCuda::table() const { return impl_->host.table(); }

void Rwkv7TrainCuda::set_options(const Rwkv7Train<float>::Options& options) { impl_->options = options; }

void Rwkv7TrainCuda::zero_grads() {
  Impl& m = *impl_;
  RWKV_CUDA_CHECK(cudaMemsetAsync(m.grads_buf.as(), 0, m.total * 4, m.ctx.stream));
}

void Rwkv7TrainCuda::forward(int window, const int* tokens, int B, int T, const float* state_in,
                             float* state_out) {
  Impl& m = *impl_;
  const Rwkv7Dims& d = m.d;
  if (B <= 0 || T <= 0) fail("RWKV-7 training: batch ", B, " × length ", T, " is empty");
  const size_t M = size_t(B) * size_t(T), C = size_t(d.C);
  check_rwkv7_tokens(tokens, M, d.V);
  Tape& t = m.tape(window);
  m.lay_out_tape(t, B, T);
  m.lay_out_scratch(B, T);
  cudaStream_t st = m.ctx.stream;
  const size_t S = size_t(B) * d.state_floats();
  RWKV_CUDA_CHECK(cudaMemcpyAsync(t.tokens, tokens, M * sizeof(int), cudaMemcpyHostToDevice, st));
  const ct::TokenRows grouped = ct::group_rows_by_token(tokens, M, d.V);
  t.unique_tokens = grouped.unique;
  t.reset = nullptr;
  if (m.options.reset_at_eod) {  // the end-of-document token (0) starts a new document
    std::vector<unsigned char> reset(M);
    for (size_t i = 0; i < M; ++i) reset[i] = tokens[i] == 0;
    RWKV_CUDA_CHECK(cudaMemcpyAsync(t.reset_rows, reset.data(), M, cudaMemcpyHostToDevice, st));
    t.reset = t.reset_rows;
  }
  RWKV_CUDA_CHECK(cudaMemcpyAsync(t.token_rows, grouped.data.data(), grouped.data.size() * sizeof(int),
                                  cudaMemcpyHostToDevice, st));
  t.has_state_in = state_in != nullptr;
  if (state_in) {
    RWKV_CUDA_CHECK(cudaMemcpyAsync(t.state_in, state_in, S * 4, cudaMemcpyHostToDevice, st));
  }
  t.has_loss = false;
  m.prof->mark("other");
  cuda::embed(m.ctx, t.tokens, int(M), {DType::F32, d.V, d.C, m.p.emb}, t.x_last);
  ct::layer_norm_forward(m.ctx, t.x_last, int(M), d.C, m.p.ln0_w, m.p.ln0_b, kLayerNormEps, t.x_in[0],
                         t.x0_mean, t.x0_rstd);
  for (int l = 0; l < d.L; ++l) {
    Cache& c = t.layers[t.recompute ? 0 : size_t(l)];
    c.x_in = t.x_in[size_t(l)];
    m.layer_forward(t, l, c, l + 1 < d.L ? t.x_in[size_t(l + 1)] : t.x_last);
  }
  ct::layer_norm_forward(m.ctx, t.x_last, int(M), d.C, m.p.ln_out_w, m.p.ln_out_b, kLayerNormEps,
                         m.s.ln_out, t.out_mean, t.out_rstd);
  cuda::to_bf16(m.ctx, m.s.ln_out, M * C, t.xo16);
  m.prof->mark("fwd: embed, ln0, ln_out");
  if (state_out) {
    RWKV_CUDA_CHECK(cudaMemcpyAsync(state_out, t.state_out, S * 4, cudaMemcpyDeviceToHost, st));
  }
  m.ctx.synchronize();
}

double Rwkv7TrainCuda::loss(int window, const int* targets, double l2wrap, int* count, double weight) {
  Impl& m = *impl_;
  Tape& t = m.tape(window);
  if (t.M == 0) fail("RWKV-7 training: loss() before forward()");
  const Rwkv7Dims& d = m.d;
  const int counted = count_rwkv7_targets(targets, size_t(t.M), d.V);
  m.lay_out_scratch(t.B, t.T);
  cudaStream_t st = m.ctx.stream;
  RWKV_CUDA_CHECK(cudaMemcpyAsync(t.targets, targets, size_t(t.M) * sizeof(int), cudaMemcpyHostToDevice, st));
  const float scale = float(weight / counted), l2 = float(weight * l2wrap / counted);
  const int C = d.C, V = d.V;
  // The head over blocks of rows: logits, cross-entropy → their gradient (bf16), then at once
  // ∂/∂(ln_out output) and the head's gradient; the logits never exist for all rows at once.
  for (int r0 = 0; r0 < t.M; r0 += m.s.head_rows) {
    const int rows = std::min(m.s.head_rows, t.M - r0);
    const bf16* x = t.xo16 + size_t(r0) * C;
    m.lin(x, m.w.head, rows, C, V, m.s.logits);
    m.prof->mark("element-wise", Level::Op);
    ct::cross_entropy(m.ctx, m.s.logits, t.targets + r0, rows, V, scale, l2, t.loss_rows + r0, m.s.dlogits16);
    m.prof->mark("cross-entropy", Level::Op);
    m.lin_dx(m.s.dlogits16, m.w.head, rows, C, V, t.dxo + size_t(r0) * C);
    m.lin_dw(m.s.dlogits16, x, rows, C, V, m.g.head);
  }
  m.prof->mark("head + cross-entropy");
  std::vector<float> rows(size_t(t.M));
  RWKV_CUDA_CHECK(cudaMemcpyAsync(rows.data(), t.loss_rows, rows.size() * 4, cudaMemcpyDeviceToHost, st));
  m.ctx.synchronize();
  double sum = 0;
  for (float r : rows) sum += double(r);
  t.has_loss = true;
  if (count) *count = counted;
  return sum / counted;
}

void Rwkv7TrainCuda::backward(int window, const float* dstate_out, float* dstate_in) {
  Impl& m = *impl_;
  Tape& t = m.tape(window);
  if (t.M == 0) fail("RWKV-7 training: backward() before forward()");
  if (!t.has_loss) fail("RWKV-7 GPU training: backward() needs loss() first (it starts the head's backward)");
  const Rwkv7Dims& d = m.d;
  m.lay_out_scratch(t.B, t.T);
  Scratch& s = m.s;
  cudaStream_t st = m.ctx.stream;
  const size_t M = size_t(t.M), C = size_t(d.C), MC = M * C, S = size_t(t.B) * d.state_floats();
  if (dstate_out) {
    RWKV_CUDA_CHECK(cudaMemcpyAsync(t.dstate, dstate_out, S * 4, cudaMemcpyHostToDevice, st));
  } else {
    RWKV_CUDA_CHECK(cudaMemsetAsync(t.dstate, 0, S * 4, st));
  }
  RWKV_CUDA_CHECK(cudaMemsetAsync(s.dx, 0, MC * 4, st));
  ct::layer_norm_backward(m.ctx, t.dxo, t.x_last, int(M), d.C, m.p.ln_out_w, t.out_mean, t.out_rstd, s.dx,
                          m.g.ln_out_w, m.g.ln_out_b, s.ta);
  RWKV_CUDA_CHECK(cudaMemsetAsync(s.dv_first, 0, MC * 4, st));
  m.prof->mark("bwd: ln_out");
  for (int l = d.L - 1; l >= 0; --l) {
    Cache& c = t.layers[t.recompute ? 0 : size_t(l)];
    c.x_in = t.x_in[size_t(l)];
    if (t.recompute) m.layer_forward(t, l, c, s.dr);  // dr: not read by a forward
    m.layer_backward(t, l, c, s.dx);
  }
  // ln0 of the embedding rows, then into their rows of emb.
  cuda::embed(m.ctx, t.tokens, int(M), {DType::F32, d.V, d.C, m.p.emb}, s.dh);
  RWKV_CUDA_CHECK(cudaMemsetAsync(s.ddelta, 0, MC * 4, st));
  ct::layer_norm_backward(m.ctx, s.dx, s.dh, int(M), d.C, m.p.ln0_w, t.x0_mean, t.x0_rstd, s.ddelta,
                          m.g.ln0_w, m.g.ln0_b, s.ta);
  ct::embed_backward(m.ctx, t.token_rows, t.unique_tokens, s.ddelta, int(M), d.C, m.g.emb);
  m.prof->mark("bwd: ln0, embed");
  if (dstate_in) RWKV_CUDA_CHECK(cudaMemcpyAsync(dstate_in, t.dstate, S * 4, cudaMemcpyDeviceToHost, st));
  m.ctx.synchronize();
  m.prof->collect();
}

double Rwkv7TrainCuda::grad_norm() {
  Impl& m = *impl_;
  ct::sum_squares(m.ctx, m.grads_buf.as<float>(), m.total, m.norm_buf.as<double>());
  double sum = 0;
  RWKV_CUDA_CHECK(cudaMemcpyAsync(&sum, m.norm_buf.as(), sizeof sum, cudaMemcpyDeviceToHost, m.ctx.stream));
  m.ctx.synchronize();
  return std::sqrt(sum);
}

void Rwkv7TrainCuda::adamw(const std::vector<AdamWGroup>& groups, float beta1, float beta2, float eps,
                           float c1, float c2, float grad_scale) {
  Impl& m = *impl_;
  for (const AdamWGroup& grp : groups) {
    if (grp.offset + grp.count > m.total) fail("AdamW: group outside the parameters");
    ct::adamw(m.ctx, m.params_buf.as<float>(), m.grads_buf.as<float>(), m.m_buf.as<float>(), m.v_buf.as<float>(),
              m.p16_buf.as<bf16>(), {grp.offset, grp.count, grp.lr, grp.weight_decay}, beta1, beta2, eps, c1,
              c2, grad_scale);
  }
  m.prof->mark("optimizer");
  m.prof->mark("optimizer", Level::Op);
  m.ctx.synchronize();
}

void Rwkv7TrainCuda::read_params(float* out) const { impl_->download(impl_->params_buf, out); }
void Rwkv7TrainCuda::write_params(const float* in) { impl_->upload_params(in); }
void Rwkv7TrainCuda::read_grads(float* out) const { impl_->download(impl_->grads_buf, out); }
void Rwkv7TrainCuda::read_moments(float* m, float* v) const {
  impl_->download(impl_->m_buf, m);
  impl_->download(impl_->v_buf, v);
}
void Rwkv7TrainCuda::write_moments(const float* m, const float* v) {
  Impl& i = *impl_;
  RWKV_CUDA_CHECK(cudaMemcpyAsync(i.m_buf.as(), m, i.total * 4, cudaMemcpyHostToDevice, i.ctx.stream));
  RWKV_CUDA_CHECK(cudaMemcpyAsync(i.v_buf.as(), v, i.total * 4, cudaMemcpyHostToDevice, i.ctx.stream));
  i.ctx.synchronize();
}

}  // namespace rwkv::model
