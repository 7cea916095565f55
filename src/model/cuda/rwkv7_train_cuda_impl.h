// Internals of RWKV-7 training on the GPU shared by rwkv7_train_cuda.cpp (buffers, products,
// the model-level walk) and rwkv7_train_cuda_layer.cpp (one block): the tape's and scratch's
// device buffers, the section timer, and Rwkv7TrainCuda::Impl.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/cuda/cuda_model.h"
#include "model/rwkv7_train_cuda.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/train_ops.h"
#include "ops/cuda/wkv7_train.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace train_cuda {

using cuda::Act;
using cuda::DeviceBuffer;
using cuda::train::bf16;
using cuda::train::MutRows;
using cuda::train::Rows;
namespace ct = cuda::train;

constexpr float kLayerNormEps = 1e-5f, kGroupNormEps = 64e-5f;

// What one block's forward saves (device pointers), as Rwkv7LayerCache on the CPU.
struct Cache {
  float* x_in;
  float *h, *ln1_mean, *ln1_rstd;
  float *r, *k_raw, *v_raw, *v, *z, *alpha, *gate, *g, *kn, *k2;  // (M, C)
  float *w_h, *a_h, *g_h, *v_h;                                   // (M, D) after activation
  bf16* y;                                                        // WKV output (M, C)
  float *zo, *gn_mean, *gn_rstd;
  float *checkpoints, *sa;                                        // WKV kernel's
  float *x_mid, *h2, *ln2_mean, *ln2_rstd, *ffn_pre;

  template <class Take>
  void lay_out(Take&& take, const Rwkv7Dims& d, int B, int T) {
    const size_t M = size_t(B) * size_t(T), MC = M * size_t(d.C), H = size_t(d.H);
    for (float** f : {&h, &r, &k_raw, &v_raw, &v, &z, &alpha, &gate, &g, &kn, &k2, &zo, &x_mid, &h2, &sa}) {
      *f = take.template operator()<float>(MC);
    }
    for (float** f : {&ln1_mean, &ln1_rstd, &ln2_mean, &ln2_rstd}) *f = take.template operator()<float>(M);
    gn_mean = take.template operator()<float>(M * H);
    gn_rstd = take.template operator()<float>(M * H);
    w_h = take.template operator()<float>(M * size_t(d.d_decay));
    a_h = take.template operator()<float>(M * size_t(d.d_iclr));
    g_h = take.template operator()<float>(M * size_t(d.d_gate));
    v_h = take.template operator()<float>(M * size_t(std::max(d.d_value, 1)));
    y = take.template operator()<bf16>(MC);
    checkpoints = take.template operator()<float>(cuda::wkv7_train_checkpoint_floats(B, T, d.H, d.N));
    ffn_pre = take.template operator()<float>(M * size_t(d.F));
  }
};

// One window's tape on the device.
struct Tape {
  int B = 0, T = 0, M = 0;
  bool recompute = false, has_state_in = false, has_loss = false;
  size_t key = 0;
  DeviceBuffer buffer;
  std::vector<Cache> layers;     // L, or 1 shared when recomputing
  std::vector<float*> x_in;      // per layer (M, C)
  int *tokens, *targets;         // (M)
  int* token_rows;               // the rows grouped by token (ct::TokenRows), ≤ 3M + 1
  int unique_tokens = 0;
  unsigned char* reset = nullptr;  // (M) rows where a document starts (reset_at_eod), or null
  unsigned char* reset_rows;     // its storage
  float *state_in, *state_out, *dstate;  // (B, state)
  float *x0_mean, *x0_rstd, *v_first, *x_last, *out_mean, *out_rstd;
  bf16* xo16;                    // ln_out output in bf16 (M, C): the head's input
  float* dxo;                    // ∂/∂(ln_out output), from loss()
  float* loss_rows;              // (M)
};

// Gradient and temporary buffers shared by every window's backward (as Rwkv7Scratch).
struct Scratch {
  size_t key = 0;
  DeviceBuffer buffer;
  float *dx, *dh, *ddelta, *delta, *dr, *dk2, *dv, *dv_first, *dxo;
  float* dmix[6];                // ∂ of the time mix's mixes w, a, g, v, r, k (M, C); [0]: the FFN's
  float* ta;                     // LayerNorm backward's per-element terms (M, C)
  float *dlora, *dffn;           // (M, max LoRA), (M, F)
  float *kv_s0, *kv_sT, *kv_ds0;  // (B, H, N, N) gathered WKV states
  float *ln_out;                 // (M, C)
  bf16* mix16[6];                // (M, C)
  bf16 *lora16, *dlora16;        // (M, max LoRA)
  bf16 *act16, *x16, *d16, *dg16, *dy16;  // (M, F), (M, C) ×4
  bf16* wkv16[6];                // r, z, k, v, a, b
  bf16* gwkv16[6];               // their gradients
  float* logits;                 // (rows, V)
  bf16* dlogits16;               // (rows, V)
  int head_rows = 0;
};

// Where a step's GPU time goes: RWKV_TRAIN_PROFILE=sections (by part of the model) or =ops (matrix
// products, WKV, the rest) in the environment. Events at the ends of spans on the stream; a
// span's time is the gap since the previous mark. Printed to stderr at destruction. Off: each
// mark is one branch.
enum class Level { Section, Op };
class Profile {
 public:
  explicit Profile(cudaStream_t stream) : stream_(stream) {
    const char* env = std::getenv("RWKV_TRAIN_PROFILE");
    on_ = env != nullptr;
    level_ = env && std::string(env) == "ops" ? Level::Op : Level::Section;
  }
  ~Profile() {
    report();
    for (auto& [name, e] : marks_) cudaEventDestroy(e);
    for (cudaEvent_t e : spare_) cudaEventDestroy(e);
  }
  void mark(const char* name, Level level = Level::Section) {
    if (!on_ || level != level_) return;
    cudaEvent_t e;
    if (!spare_.empty()) {
      e = spare_.back();
      spare_.pop_back();
    } else {
      RWKV_CUDA_CHECK(cudaEventCreate(&e));
    }
    RWKV_CUDA_CHECK(cudaEventRecord(e, stream_));
    marks_.emplace_back(name, e);
  }
  // Adds the marks so far into the totals.
  void collect() {
    if (!on_ || marks_.empty()) return;
    RWKV_CUDA_CHECK(cudaEventSynchronize(marks_.back().second));
    for (size_t i = 1; i < marks_.size(); ++i) {
      float ms = 0;
      cudaEventElapsedTime(&ms, marks_[i - 1].second, marks_[i].second);
      totals_[marks_[i].first] += ms;
    }
    for (size_t i = 0; i + 1 < marks_.size(); ++i) spare_.push_back(marks_[i].second);
    marks_.erase(marks_.begin(), marks_.end() - 1);  // the last one starts the next span
  }
  void report() {
    collect();
    if (!on_ || totals_.empty()) return;
    double all = 0;
    for (const auto& [name, ms] : totals_) all += ms;
    std::fprintf(stderr, "GPU training time by section (%.1f ms in all):\n", all);
    for (const auto& [name, ms] : totals_) {
      std::fprintf(stderr, "  %-28s %9.2f ms  %5.1f%%\n", name.c_str(), ms, 100 * ms / all);
    }
    totals_.clear();
  }

 private:
  cudaStream_t stream_;
  bool on_;
  Level level_;
  std::vector<std::pair<const char*, cudaEvent_t>> marks_;
  std::vector<cudaEvent_t> spare_;
  std::map<std::string, double> totals_;
};

}  // namespace train_cuda

using namespace train_cuda;  // for Impl and the two files that include this header

struct Rwkv7TrainCuda::Impl {
  Rwkv7Train<float> host;  // the table, the checks, and the export path
  Rwkv7Dims d;
  cuda::Context ctx;
  Rwkv7Train<float>::Options options;
  size_t total = 0;
  DeviceBuffer params_buf, grads_buf, m_buf, v_buf, p16_buf;
  Rwkv7Params<float> p, g;
  Rwkv7Params<bf16> w;  // bf16 copies: the matrix products' weights
  std::vector<std::unique_ptr<Tape>> tapes;
  Scratch s;
  DeviceBuffer norm_buf;
  std::unique_ptr<Profile> prof;

  Impl(const std::vector<TensorView>& tensors, const std::string& source, int device)
      : host(tensors, source), d(host.dims()), ctx(device) {
    if (d.N != 32 && d.N != 64) {
      fail(source, ": GPU training supports head sizes 32 and 64, not ", d.N);
    }
    total = host.table().total;
    for (DeviceBuffer* b : {&params_buf, &grads_buf, &m_buf, &v_buf}) {
      *b = DeviceBuffer(total * sizeof(float));
      RWKV_CUDA_CHECK(cudaMemsetAsync(b->as(), 0, total * sizeof(float), ctx.stream));
    }
    p16_buf = DeviceBuffer(total * sizeof(bf16));
    norm_buf = DeviceBuffer(sizeof(double));
    p = bind_rwkv7_params(host.table(), d.L, params_buf.as<float>());
    g = bind_rwkv7_params(host.table(), d.L, grads_buf.as<float>());
    w = bind_rwkv7_params(host.table(), d.L, p16_buf.as<bf16>());
    upload_params(host.params());
    prof = std::make_unique<Profile>(ctx.stream);
  }

  void upload_params(const float* in) {
    RWKV_CUDA_CHECK(cudaMemcpyAsync(params_buf.as(), in, total * 4, cudaMemcpyHostToDevice, ctx.stream));
    cuda::to_bf16(ctx, params_buf.as<float>(), total, p16_buf.as<bf16>());
    ctx.synchronize();
  }
  void download(const DeviceBuffer& b, float* out) {
    RWKV_CUDA_CHECK(cudaMemcpyAsync(out, b.as(), total * 4, cudaMemcpyDeviceToHost, ctx.stream));
    ctx.synchronize();
  }

  // ---- buffers ----

  Tape& tape(int window) {
    if (window < 0 || window > 1024) fail("RWKV-7 GPU training: window index ", window, " out of range");
    while (int(tapes.size()) <= window) tapes.push_back(std::make_unique<Tape>());
    return *tapes[size_t(window)];
  }

  void lay_out_tape(Tape& t, int B, int T) {
    t.B = B, t.T = T, t.M = B * T;
    t.recompute = options.recompute;
    const size_t M = size_t(t.M), MC = M * size_t(d.C), S = size_t(B) * d.state_floats();
    const size_t key = (M << 20) ^ (size_t(B) << 1) ^ size_t(t.recompute);
    const auto carve = [&](char* base) {
      Carver c(base);
      const auto take = [&]<typename T2>(size_t n) { return c.take<T2>(n); };
      t.layers.assign(t.recompute ? 1 : size_t(d.L), {});
      for (Cache& cache : t.layers) cache.lay_out(take, d, B, T);
      t.x_in.assign(size_t(d.L), nullptr);
      for (float*& x : t.x_in) x = c.take<float>(MC);
      t.tokens = c.take<int>(M);
      t.targets = c.take<int>(M);
      t.token_rows = c.take<int>(ct::token_rows_capacity(M));
      t.reset_rows = c.take<unsigned char>(M);
      t.state_in = c.take<float>(S);
      t.state_out = c.take<float>(S);
      t.dstate = c.take<float>(S);
      for (float** f : {&t.x0_mean, &t.x0_rstd, &t.out_mean, &t.out_rstd, &t.loss_rows}) *f = c.take<float>(M);
      t.v_first = c.take<float>(MC);
      t.x_last = c.take<float>(MC);
      t.dxo = c.take<float>(MC);
      t.xo16 = c.take<bf16>(MC);
      return c.used();
    };
    if (t.key != key) {
      t.buffer = DeviceBuffer();
      t.buffer = DeviceBuffer(carve(nullptr));
      t.key = key;
    }
    carve(t.buffer.as<char>());
  }

  void lay_out_scratch(int B, int T) {
    const size_t M = size_t(B) * size_t(T), C = size_t(d.C), MC = M * C;
    const size_t lora = size_t(std::max({d.d_decay, d.d_iclr, d.d_value, d.d_gate}));
    const size_t kv = size_t(B) * d.H * d.N * d.N, F = size_t(d.F);
    // The head runs over blocks of rows whose logits stay under ~256 M values.
    const int rows = int(std::clamp<size_t>((size_t(1) << 28) / size_t(d.V), 1, M));
    const size_t key = (M << 24) ^ (size_t(B) << 1);
    const auto carve = [&](char* base) {
      Carver c(base);
      for (float** f : {&s.dx, &s.dh, &s.ddelta, &s.delta, &s.dr, &s.dk2, &s.dv, &s.dv_first, &s.dxo, &s.ta,
                        &s.ln_out}) {
        *f = c.take<float>(MC);
      }
      for (float*& f : s.dmix) f = c.take<float>(MC);
      s.dlora = c.take<float>(M * lora);
      s.dffn = c.take<float>(M * F);
      for (float** f : {&s.kv_s0, &s.kv_sT, &s.kv_ds0}) *f = c.take<float>(kv);
      for (bf16*& b : s.mix16) b = c.take<bf16>(MC);
      s.lora16 = c.take<bf16>(M * lora);
      s.dlora16 = c.take<bf16>(M * lora);
      s.act16 = c.take<bf16>(M * F);
      for (bf16** b : {&s.x16, &s.d16, &s.dg16, &s.dy16}) *b = c.take<bf16>(MC);
      for (bf16*& b : s.wkv16) b = c.take<bf16>(MC);
      for (bf16*& b : s.gwkv16) b = c.take<bf16>(MC);
      s.head_rows = rows;
      s.logits = c.take<float>(size_t(rows) * size_t(d.V));
      s.dlogits16 = c.take<bf16>(size_t(rows) * size_t(d.V));
      return c.used();
    };
    if (s.key != key) {
      s.buffer = DeviceBuffer();
      s.buffer = DeviceBuffer(carve(nullptr));
      s.key = key;
    }
    carve(s.buffer.as<char>());
  }

  // ---- matrix products (gemm.h's conventions, row-major) ----

  // y[M, n] (+)= x[M, k]·Wᵀ with W (n, k): nn.Linear.
  void lin(const bf16* x, const bf16* W, int M, int k, int n, float* y, bool acc = false) {
    timed_gemm({M, n, k, x, k, false, W, k, true, y, n, acc});
  }
  // dx[M, k] (+)= dy[M, n]·W.
  void lin_dx(const bf16* dy, const bf16* W, int M, int k, int n, float* dx, bool acc = false) {
    timed_gemm({M, k, n, dy, n, false, W, k, false, dx, k, acc});
  }
  // dW[n, k] += dyᵀ·x.
  void lin_dw(const bf16* dy, const bf16* x, int M, int k, int n, float* dW) {
    timed_gemm({n, k, M, dy, n, true, x, k, false, dW, k, true});
  }
  // y[M, n] (+)= x[M, k]·A with A (k, n): the LoRA tensors.
  void mm(const bf16* x, const bf16* A, int M, int k, int n, float* y, bool acc = false) {
    timed_gemm({M, n, k, x, k, false, A, n, false, y, n, acc});
  }
  // dx[M, k] (+)= dy[M, n]·Aᵀ.
  void mm_dx(const bf16* dy, const bf16* A, int M, int k, int n, float* dx, bool acc = false) {
    timed_gemm({M, k, n, dy, n, false, A, n, true, dx, k, acc});
  }
  // dA[k, n] += xᵀ·dy.
  void mm_dA(const bf16* x, const bf16* dy, int M, int k, int n, float* dA) {
    timed_gemm({k, n, M, x, k, true, dy, n, false, dA, n, true});
  }
  void timed_gemm(const cuda::Gemm& g) {
    prof->mark("element-wise", Level::Op);
    cuda::gemm(ctx, g);
    // The products with a LoRA width (≤ 256) on one side, the head's (V wide), the rest.
    const int small = std::min({g.M, g.N, g.K});
    prof->mark(std::max({g.M, g.N, g.K}) == d.V ? "gemm: head" : small <= 256 ? "gemm: lora" : "gemm: C×C, C×F",
               Level::Op);
  }

  // ---- state pieces ----

  // Copies B rows of `bytes` between strided places (the states' pieces ↔ contiguous buffers).
  void copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t bytes, int B) {
    RWKV_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, bytes, size_t(B),
                                      cudaMemcpyDeviceToDevice, ctx.stream));
  }
  size_t state_bytes() const { return d.state_floats() * sizeof(float); }
  size_t kv_bytes() const { return size_t(d.H) * d.N * d.N * sizeof(float); }

  // ---- one block (rwkv7_train_cuda_layer.cpp) ----
  void layer_forward(Tape& t, int l, Cache& c, float* x_out);
  void layer_backward(Tape& t, int l, Cache& c, float* dx);
  // One LoRA-fed mix, from dpre16 (M, C) at the LoRA's output back to the mix: its up (D, C) and
  // down (C, D) weights' gradients, and dmix (overwritten) for the mix's backward.
  void lora_backward(const bf16* dpre16, const float* hidden, Act act, const bf16* up, float* dup, int D,
                     const bf16* down, float* ddown, const bf16* mix16, int M, float* dmix);
  // The six mixes of the time mix into s.mix16: r, w, k, v, a, g.
  ct::Mixes time_mixes(const Rwkv7LayerParams<float>& y);
  void wkv_inputs(const Cache& c, size_t MC);  // the backward's (the forward's come with the preparation)
  void convert(const float* x, size_t n, bf16* out) { cuda::to_bf16(ctx, x, n, out); }
};

}  // namespace rwkv::model
