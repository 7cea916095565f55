// RWKV-7 training on the GPU, one block (rwkv7_train_layer.cpp's walk with the ops of
// ops/cuda): the time mix and the channel mix, forward and backward.
#include "model/cuda/rwkv7_train_cuda_impl.h"

namespace rwkv::model {

// ---- forward ----

void Rwkv7TrainCuda::Impl::layer_forward(Tape& t, int l, Cache& c, float* x_out) {
  const Rwkv7LayerParams<float>& y = p.layers[size_t(l)];
  const Rwkv7LayerParams<bf16>& y16 = w.layers[size_t(l)];
  const int B = t.B, T = t.T, M = t.M, C = d.C, H = d.H, N = d.N;
  const size_t MC = size_t(M) * C, SF = d.state_floats();
  const Rwkv7Dims::LayerState so = d.layer_state(l);
  const Rows prev_att{t.has_state_in ? t.state_in + so.att_x : nullptr, SF};
  const Rows prev_ffn{t.has_state_in ? t.state_in + so.ffn_x : nullptr, SF};
  bf16** mx = s.mix16;  // r, w, k, v, a, g

  // ---- time mix ----
  ct::layer_norm_forward(ctx, c.x_in, M, C, y.ln1_w, y.ln1_b, kLayerNormEps, c.h, c.ln1_mean, c.ln1_rstd);
  ct::shift_mix_bf16(ctx, c.h, prev_att, B, T, C, time_mixes(y), nullptr, t.reset);
  lin(mx[0], y16.receptance, M, C, C, c.r);
  lin(mx[2], y16.key, M, C, C, c.k_raw);
  lin(mx[3], y16.value, M, C, C, c.v_raw);
  mm(mx[1], y16.w1, M, C, d.d_decay, c.w_h);
  ct::activate_bf16(ctx, c.w_h, size_t(M) * d.d_decay, Act::Tanh, s.lora16);
  mm(s.lora16, y16.w2, M, d.d_decay, C, c.z);
  mm(mx[4], y16.a1, M, C, d.d_iclr, c.a_h);
  ct::activate_bf16(ctx, c.a_h, size_t(M) * d.d_iclr, Act::None, s.lora16);
  mm(s.lora16, y16.a2, M, d.d_iclr, C, c.alpha);
  mm(mx[5], y16.g1, M, C, d.d_gate, c.g_h);
  ct::activate_bf16(ctx, c.g_h, size_t(M) * d.d_gate, Act::Sigmoid, s.lora16);
  mm(s.lora16, y16.g2, M, d.d_gate, C, c.g);
  if (l > 0) {
    mm(mx[3], y16.v1, M, C, d.d_value, c.v_h);
    ct::activate_bf16(ctx, c.v_h, size_t(M) * d.d_value, Act::None, s.lora16);
    mm(s.lora16, y16.v2, M, d.d_value, C, c.gate);
  }
  ct::PrepareForward prep{c.z, c.alpha, c.gate, c.v, c.kn, c.k2, t.v_first, c.k_raw,
                          c.v_raw, y.w0, y.a0, y.v0, y.k_k, y.k_a, l == 0};
  prep.r = c.r;
  std::copy_n(s.wkv16, 6, prep.wkv16);
  ct::rwkv7_prepare_forward(ctx, M, H, N, prep);
  prof->mark("fwd: time mix in");
  if (t.has_state_in) copy_rows(s.kv_s0, kv_bytes(), t.state_in + so.kv, state_bytes(), kv_bytes(), B);
  cuda::Wkv7Train wkv;
  wkv.B = B, wkv.T = T, wkv.H = H, wkv.N = N;
  wkv.r = s.wkv16[0], wkv.z = s.wkv16[1], wkv.k = s.wkv16[2], wkv.v = s.wkv16[3];
  wkv.a = s.wkv16[4], wkv.b = s.wkv16[5];
  wkv.y = c.y;
  wkv.s0 = t.has_state_in ? s.kv_s0 : nullptr;
  wkv.sT = s.kv_sT;
  wkv.checkpoints = c.checkpoints;
  wkv.sa = c.sa;
  wkv.reset = t.reset;
  prof->mark("element-wise", Level::Op);
  cuda::wkv7_train_forward(ctx, wkv);
  prof->mark("fwd: wkv");
  prof->mark("wkv forward", Level::Op);
  copy_rows(t.state_out + so.kv, state_bytes(), s.kv_sT, kv_bytes(), kv_bytes(), B);
  ct::rwkv7_output_forward(ctx, M, H, N, kGroupNormEps, {c.y, c.r, c.k2, c.v, c.g, y.r_k, y.ln_x_w,
                                                         y.ln_x_b, c.zo, c.gn_mean, c.gn_rstd, s.x16});
  RWKV_CUDA_CHECK(cudaMemcpyAsync(c.x_mid, c.x_in, MC * 4, cudaMemcpyDeviceToDevice, ctx.stream));
  lin(s.x16, y16.output, M, C, C, c.x_mid, true);
  copy_rows(t.state_out + so.att_x, state_bytes(), c.h + size_t(T - 1) * C, size_t(T) * C * 4, size_t(C) * 4, B);

  // ---- channel mix ----
  ct::layer_norm_forward(ctx, c.x_mid, M, C, y.ln2_w, y.ln2_b, kLayerNormEps, c.h2, c.ln2_mean, c.ln2_rstd);
  ct::shift_mix_bf16(ctx, c.h2, prev_ffn, B, T, C, {1, {y.ffn_x_k}, {mx[0]}}, nullptr, t.reset);
  lin(mx[0], y16.ffn_key, M, C, d.F, c.ffn_pre);
  ct::sqrelu_bf16(ctx, c.ffn_pre, size_t(M) * d.F, s.act16);
  RWKV_CUDA_CHECK(cudaMemcpyAsync(x_out, c.x_mid, MC * 4, cudaMemcpyDeviceToDevice, ctx.stream));
  lin(s.act16, y16.ffn_value, M, d.F, C, x_out, true);
  copy_rows(t.state_out + so.ffn_x, state_bytes(), c.h2 + size_t(T - 1) * C, size_t(T) * C * 4, size_t(C) * 4, B);
  prof->mark("fwd: time mix out + ffn");
}

ct::Mixes Rwkv7TrainCuda::Impl::time_mixes(const Rwkv7LayerParams<float>& y) {
  bf16** mx = s.mix16;
  return {6, {y.x_r, y.x_w, y.x_k, y.x_v, y.x_a, y.x_g}, {mx[0], mx[1], mx[2], mx[3], mx[4], mx[5]}};
}

void Rwkv7TrainCuda::Impl::wkv_inputs(const Cache& c, size_t MC) {
  ct::rwkv7_wkv_inputs(ctx, MC, {c.r, c.z, c.k2, c.v, c.kn, c.alpha, s.wkv16[0], s.wkv16[1], s.wkv16[2],
                                 s.wkv16[3], s.wkv16[4], s.wkv16[5]});
}

// ---- backward ----

void Rwkv7TrainCuda::Impl::lora_backward(const bf16* dpre16, const float* hidden, Act act, const bf16* up,
                                         float* dup, int D, const bf16* down, float* ddown, const bf16* mix16,
                                         int M, float* dmix) {
  const int C = d.C;
  convert(hidden, size_t(M) * D, s.lora16);
  mm_dA(s.lora16, dpre16, M, D, C, dup);
  mm_dx(dpre16, up, M, D, C, s.dlora);
  ct::activation_backward_bf16(ctx, s.dlora, hidden, size_t(M) * D, act, s.dlora16);
  mm_dA(mix16, s.dlora16, M, C, D, ddown);
  mm_dx(s.dlora16, down, M, C, D, dmix);
}

void Rwkv7TrainCuda::Impl::layer_backward(Tape& t, int l, Cache& c, float* dx) {
  const Rwkv7LayerParams<float>& y = p.layers[size_t(l)];
  const Rwkv7LayerParams<bf16>& y16 = w.layers[size_t(l)];
  Rwkv7LayerParams<float>& gy = g.layers[size_t(l)];
  const int B = t.B, T = t.T, M = t.M, C = d.C, H = d.H, N = d.N, F = d.F;
  const size_t MC = size_t(M) * C, SF = d.state_floats();
  const Rwkv7Dims::LayerState so = d.layer_state(l);
  const Rows prev_att{t.has_state_in ? t.state_in + so.att_x : nullptr, SF};
  const Rows prev_ffn{t.has_state_in ? t.state_in + so.ffn_x : nullptr, SF};
  bf16** mx = s.mix16;
  // ∂/∂(last row of h) from the state's token-shift piece; then that piece becomes
  // ∂/∂(the initial state's piece).
  const auto shift_backward = [&](size_t offset) {
    ct::add_rows(ctx, {t.dstate + offset, SF}, B, C, {s.dh + size_t(T - 1) * C, size_t(T) * C});
    ct::token_shift_backward(ctx, s.ddelta, B, T, C, s.dh, {t.dstate + offset, SF}, t.reset);
  };

  // ---- channel mix ----
  convert(dx, MC, s.d16);
  ct::sqrelu_bf16(ctx, c.ffn_pre, size_t(M) * F, s.act16);
  lin_dw(s.d16, s.act16, M, F, C, gy.ffn_value);
  lin_dx(s.d16, y16.ffn_value, M, F, C, s.dffn);
  ct::sqrelu_backward_bf16(ctx, s.dffn, c.ffn_pre, size_t(M) * F, s.act16);
  ct::shift_mix_bf16(ctx, c.h2, prev_ffn, B, T, C, {1, {y.ffn_x_k}, {mx[0]}}, s.delta, t.reset);
  lin_dw(s.act16, mx[0], M, C, F, gy.ffn_key);
  lin_dx(s.act16, y16.ffn_key, M, C, F, s.dmix[0]);
  ct::MixGrads ffn_mix;
  ffn_mix.n = 1, ffn_mix.dout[0] = s.dmix[0], ffn_mix.mu[0] = y.ffn_x_k, ffn_mix.dmu[0] = gy.ffn_x_k;
  ct::mix_backward(ctx, ffn_mix, s.delta, M, C, s.dh, s.ddelta);
  shift_backward(so.ffn_x);
  ct::layer_norm_backward(ctx, s.dh, c.x_mid, M, C, y.ln2_w, c.ln2_mean, c.ln2_rstd, dx, gy.ln2_w,
                          gy.ln2_b, s.ta);
  prof->mark("bwd: ffn");

  // ---- time mix: output, gate, bonus, ln_x ----
  convert(dx, MC, s.d16);
  ct::gate_bf16(ctx, c.zo, c.g, MC, s.x16);
  lin_dw(s.d16, s.x16, M, C, C, gy.output);
  lin_dx(s.d16, y16.output, M, C, C, s.dxo);
  ct::rwkv7_output_backward(ctx, M, H, N, {s.dxo, c.y, c.zo, c.gn_mean, c.gn_rstd, c.r, c.k2, c.v, c.g,
                                           y.r_k, y.ln_x_w, s.dg16, s.dr, s.dk2, s.dv, s.dy16, gy.ln_x_w,
                                           gy.ln_x_b, gy.r_k});

  prof->mark("bwd: time mix out");
  // ---- WKV ----
  wkv_inputs(c, MC);
  copy_rows(s.kv_sT, kv_bytes(), t.dstate + so.kv, state_bytes(), kv_bytes(), B);  // ∂/∂S_T
  // S₀ again: below a document reset in the first chunk the backward recomputes from it.
  if (t.has_state_in) copy_rows(s.kv_s0, kv_bytes(), t.state_in + so.kv, state_bytes(), kv_bytes(), B);
  cuda::Wkv7Train wkv;
  wkv.B = B, wkv.T = T, wkv.H = H, wkv.N = N;
  wkv.r = s.wkv16[0], wkv.z = s.wkv16[1], wkv.k = s.wkv16[2], wkv.v = s.wkv16[3];
  wkv.a = s.wkv16[4], wkv.b = s.wkv16[5];
  wkv.s0 = t.has_state_in ? s.kv_s0 : nullptr;
  wkv.checkpoints = c.checkpoints;
  wkv.sa = c.sa;
  wkv.reset = t.reset;
  cuda::Wkv7TrainGrads wg;
  wg.dy = s.dy16;
  wg.dsT = s.kv_sT;
  wg.dr = s.gwkv16[0], wg.dz = s.gwkv16[1], wg.dk = s.gwkv16[2], wg.dv = s.gwkv16[3];
  wg.da = s.gwkv16[4], wg.db = s.gwkv16[5];
  wg.ds0 = s.kv_ds0;
  prof->mark("bwd: time mix out");
  prof->mark("element-wise", Level::Op);
  cuda::wkv7_train_backward(ctx, wkv, wg);
  prof->mark("bwd: wkv");
  prof->mark("wkv backward", Level::Op);
  copy_rows(t.dstate + so.kv, state_bytes(), s.kv_ds0, kv_bytes(), kv_bytes(), B);

  // ---- back through the preparation ----
  // In place: the WKV's gradients of r, z, k, v, a, b become those of r, z, k_raw, the value
  // projection, α and the gate (each before its sigmoid), the products' bf16 inputs.
  bf16** gw = s.gwkv16;
  ct::rwkv7_prepare_backward(ctx, M, H, N, {gw[0], gw[1], gw[2], gw[3], gw[4], gw[5], c.k_raw, c.v_raw, c.kn,
                                            c.alpha, c.gate, t.v_first, y.k_k, y.k_a, s.dr, s.dk2, s.dv, gw[0],
                                            gw[2], gw[3], gw[4], gw[5], s.dv_first, l == 0, gy.k_a, gy.k_k,
                                            gy.w0, gy.a0, gy.v0});

  // ---- the projections and LoRAs back to the mixes, each mix back to h and δ ----
  ct::shift_mix_bf16(ctx, c.h, prev_att, B, T, C, time_mixes(y), s.delta, t.reset);
  float** dm = s.dmix;  // w, a, g, v, r, k
  lora_backward(gw[1], c.w_h, Act::Tanh, y16.w2, gy.w2, d.d_decay, y16.w1, gy.w1, mx[1], M, dm[0]);
  lora_backward(gw[4], c.a_h, Act::None, y16.a2, gy.a2, d.d_iclr, y16.a1, gy.a1, mx[4], M, dm[1]);
  lora_backward(s.dg16, c.g_h, Act::Sigmoid, y16.g2, gy.g2, d.d_gate, y16.g1, gy.g1, mx[5], M, dm[2]);
  if (l > 0) lora_backward(gw[5], c.v_h, Act::None, y16.v2, gy.v2, d.d_value, y16.v1, gy.v1, mx[3], M, dm[3]);
  lin_dw(gw[3], mx[3], M, C, C, gy.value);
  lin_dx(gw[3], y16.value, M, C, C, dm[3], l > 0);
  lin_dw(gw[0], mx[0], M, C, C, gy.receptance);
  lin_dx(gw[0], y16.receptance, M, C, C, dm[4]);
  lin_dw(gw[2], mx[2], M, C, C, gy.key);
  lin_dx(gw[2], y16.key, M, C, C, dm[5]);
  // The six mixes' backward in one pass: dh and ddelta written once.
  const ct::MixGrads mixes{6,
                           {dm[0], dm[1], dm[2], dm[3], dm[4], dm[5]},
                           {y.x_w, y.x_a, y.x_g, y.x_v, y.x_r, y.x_k},
                           {gy.x_w, gy.x_a, gy.x_g, gy.x_v, gy.x_r, gy.x_k}};
  ct::mix_backward(ctx, mixes, s.delta, M, C, s.dh, s.ddelta);
  shift_backward(so.att_x);
  ct::layer_norm_backward(ctx, s.dh, c.x_in, M, C, y.ln1_w, c.ln1_mean, c.ln1_rstd, dx, gy.ln1_w,
                          gy.ln1_b, s.ta);
  prof->mark("bwd: time mix in");
}

}  // namespace rwkv::model
