// RWKV-7 training on the GPU (rwkv7_train_cuda.h): the CPU training form's walk
// (rwkv7_train.cpp, rwkv7_train_layer.cpp) with every op from ops/cuda. The forward and the
// backward mirror the CPU's line by line; the comments there say why each step is what it is.
#include "model/rwkv7_train_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "ops/cuda/gemm.h"
#include "ops/cuda/train_ops.h"
#include "ops/cuda/wkv7_train.h"
#include "rwkv/error.h"

namespace rwkv::model {
namespace {

using cuda::Act;
using cuda::DeviceBuffer;
using cuda::train::bf16;
using cuda::train::MutRows;
using cuda::train::Rows;
namespace ct = cuda::train;

constexpr float kLayerNormEps = 1e-5f, kGroupNormEps = 64e-5f;

// Carves one device allocation into aligned pieces; measure with a null base first.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* take(size_t n) {
    T* at = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += (n * sizeof(T) + 255) / 256 * 256;  // 256-byte aligned (cuBLASLt, 16-byte loads)
    return at;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

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
  float *dx, *dh, *ddelta, *dmix, *delta, *dr, *dk2, *dv, *dz, *dalpha, *dg, *dvf, *dv_first, *dxo;
  float *ta, *tb, *tc;           // per-element terms of column sums (M, C)
  float *dlora, *dffn;           // (M, max LoRA), (M, F)
  float *kv_s0, *kv_sT, *kv_ds0;  // (B, H, N, N) gathered WKV states
  float *ln_out;                 // (M, C)
  bf16* mix16[6];                // (M, C)
  bf16 *lora16, *dlora16;        // (M, max LoRA)
  bf16 *act16, *x16, *d16, *dp16, *dy16;  // (M, F), (M, C) ×4
  bf16* wkv16[6];                // r, z, k, v, a, b
  bf16* gwkv16[6];               // their gradients
  float* logits;                 // (rows, V)
  bf16* dlogits16;               // (rows, V)
  int head_rows = 0;
};

struct StatePlace {
  size_t att_x, kv, ffn_x;
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

}  // namespace

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

  StatePlace place(int l) const {
    const size_t C = size_t(d.C), kv = size_t(d.H) * d.N * d.N, base = size_t(l) * (2 * C + kv);
    return {base, base + C, base + C + kv};
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
      for (float** f : {&s.dx, &s.dh, &s.ddelta, &s.dmix, &s.delta, &s.dr, &s.dk2, &s.dv, &s.dz, &s.dalpha,
                        &s.dg, &s.dvf, &s.dv_first, &s.dxo, &s.ta, &s.tb, &s.tc, &s.ln_out}) {
        *f = c.take<float>(MC);
      }
      s.dlora = c.take<float>(M * lora);
      s.dffn = c.take<float>(M * F);
      for (float** f : {&s.kv_s0, &s.kv_sT, &s.kv_ds0}) *f = c.take<float>(kv);
      for (bf16*& b : s.mix16) b = c.take<bf16>(MC);
      s.lora16 = c.take<bf16>(M * lora);
      s.dlora16 = c.take<bf16>(M * lora);
      s.act16 = c.take<bf16>(M * F);
      for (bf16** b : {&s.x16, &s.d16, &s.dp16, &s.dy16}) *b = c.take<bf16>(MC);
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

  // ---- forward ----

  void layer_forward(Tape& t, int l, Cache& c, float* x_out) {
    const Rwkv7LayerParams<float>& y = p.layers[size_t(l)];
    const Rwkv7LayerParams<bf16>& y16 = w.layers[size_t(l)];
    const int B = t.B, T = t.T, M = t.M, C = d.C, H = d.H, N = d.N;
    const size_t MC = size_t(M) * C, SF = d.state_floats();
    const StatePlace so = place(l);
    const Rows prev_att{t.has_state_in ? t.state_in + so.att_x : nullptr, SF};
    const Rows prev_ffn{t.has_state_in ? t.state_in + so.ffn_x : nullptr, SF};
    bf16** mx = s.mix16;  // r, w, k, v, a, g

    // ---- time mix ----
    ct::layer_norm_forward(ctx, c.x_in, M, C, y.ln1_w, y.ln1_b, kLayerNormEps, c.h, c.ln1_mean, c.ln1_rstd);
    ct::token_shift(ctx, c.h, prev_att, B, T, C, s.delta);
    ct::mix_bf16(ctx, c.h, s.delta, M, C, time_mixes(y));
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
    ct::rwkv7_prepare_forward(ctx, M, H, N, {c.z, c.alpha, c.gate, c.v, c.kn, c.k2, t.v_first, c.k_raw,
                                             c.v_raw, y.w0, y.a0, y.v0, y.k_k, y.k_a, l == 0});
    wkv_inputs(c, MC);
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
    ct::token_shift(ctx, c.h2, prev_ffn, B, T, C, s.delta);
    ct::mix_bf16(ctx, c.h2, s.delta, M, C, {1, {y.ffn_x_k}, {mx[0]}});
    lin(mx[0], y16.ffn_key, M, C, d.F, c.ffn_pre);
    ct::sqrelu_bf16(ctx, c.ffn_pre, size_t(M) * d.F, s.act16);
    RWKV_CUDA_CHECK(cudaMemcpyAsync(x_out, c.x_mid, MC * 4, cudaMemcpyDeviceToDevice, ctx.stream));
    lin(s.act16, y16.ffn_value, M, d.F, C, x_out, true);
    copy_rows(t.state_out + so.ffn_x, state_bytes(), c.h2 + size_t(T - 1) * C, size_t(T) * C * 4, size_t(C) * 4, B);
    prof->mark("fwd: time mix out + ffn");
  }

  // The six mixes of the time mix into s.mix16: r, w, k, v, a, g.
  ct::Mixes time_mixes(const Rwkv7LayerParams<float>& y) {
    bf16** mx = s.mix16;
    return {6, {y.x_r, y.x_w, y.x_k, y.x_v, y.x_a, y.x_g}, {mx[0], mx[1], mx[2], mx[3], mx[4], mx[5]}};
  }

  void wkv_inputs(const Cache& c, size_t MC) {
    ct::rwkv7_wkv_inputs(ctx, MC, {c.r, c.z, c.k2, c.v, c.kn, c.alpha, s.wkv16[0], s.wkv16[1], s.wkv16[2],
                                   s.wkv16[3], s.wkv16[4], s.wkv16[5]});
  }

  // ---- backward ----

  // One LoRA-fed mix, from dpre (M, C) at the LoRA's output back to the mix: its up (D, C) and
  // down (C, D) weights' gradients, and dmix (overwritten) for the mix's backward.
  void lora_backward(const float* dpre, const float* hidden, Act act, const bf16* up, float* dup, int D,
                     const bf16* down, float* ddown, const bf16* mix16, int M) {
    const int C = d.C;
    cuda::to_bf16(ctx, dpre, size_t(M) * C, s.dp16);
    convert(hidden, size_t(M) * D, s.lora16);
    mm_dA(s.lora16, s.dp16, M, D, C, dup);
    mm_dx(s.dp16, up, M, D, C, s.dlora);
    ct::activation_backward_bf16(ctx, s.dlora, hidden, size_t(M) * D, act, s.dlora16);
    mm_dA(mix16, s.dlora16, M, C, D, ddown);
    mm_dx(s.dlora16, down, M, C, D, s.dmix);
  }
  void convert(const float* x, size_t n, bf16* out) { cuda::to_bf16(ctx, x, n, out); }

  void layer_backward(Tape& t, int l, Cache& c, float* dx) {
    const Rwkv7LayerParams<float>& y = p.layers[size_t(l)];
    const Rwkv7LayerParams<bf16>& y16 = w.layers[size_t(l)];
    Rwkv7LayerParams<float>& gy = g.layers[size_t(l)];
    const int B = t.B, T = t.T, M = t.M, C = d.C, H = d.H, N = d.N, F = d.F;
    const size_t MC = size_t(M) * C, SF = d.state_floats();
    const StatePlace so = place(l);
    const Rows prev_att{t.has_state_in ? t.state_in + so.att_x : nullptr, SF};
    const Rows prev_ffn{t.has_state_in ? t.state_in + so.ffn_x : nullptr, SF};
    bf16** mx = s.mix16;
    // ∂/∂(last row of h) from the state's token-shift piece; then that piece becomes
    // ∂/∂(the initial state's piece).
    const auto shift_backward = [&](size_t offset) {
      ct::add_rows(ctx, {t.dstate + offset, SF}, B, C, {s.dh + size_t(T - 1) * C, size_t(T) * C});
      ct::token_shift_backward(ctx, s.ddelta, B, T, C, s.dh, {t.dstate + offset, SF});
    };
    const auto zero = [&](float* a, size_t n) {
      RWKV_CUDA_CHECK(cudaMemsetAsync(a, 0, n * 4, ctx.stream));
    };

    // ---- channel mix ----
    convert(dx, MC, s.d16);
    ct::sqrelu_bf16(ctx, c.ffn_pre, size_t(M) * F, s.act16);
    lin_dw(s.d16, s.act16, M, F, C, gy.ffn_value);
    lin_dx(s.d16, y16.ffn_value, M, F, C, s.dffn);
    ct::sqrelu_backward_bf16(ctx, s.dffn, c.ffn_pre, size_t(M) * F, s.act16);
    ct::token_shift(ctx, c.h2, prev_ffn, B, T, C, s.delta);
    ct::mix_bf16(ctx, c.h2, s.delta, M, C, {1, {y.ffn_x_k}, {mx[0]}});
    lin_dw(s.act16, mx[0], M, C, F, gy.ffn_key);
    lin_dx(s.act16, y16.ffn_key, M, C, F, s.dmix);
    zero(s.dh, MC);
    zero(s.ddelta, MC);
    ct::mix_backward(ctx, s.dmix, s.delta, y.ffn_x_k, M, C, s.dh, s.ddelta, gy.ffn_x_k);
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
                                             y.r_k, y.ln_x_w, s.dg, s.dr, s.dk2, s.dv, s.ta, s.tb, s.tc, s.dy16});
    ct::col_sum(ctx, s.ta, nullptr, M, C, gy.ln_x_w);
    ct::col_sum(ctx, s.tb, nullptr, M, C, gy.ln_x_b);
    ct::col_sum(ctx, s.tc, nullptr, M, C, gy.r_k);

    prof->mark("bwd: time mix out");
    // ---- WKV ----
    wkv_inputs(c, MC);
    copy_rows(s.kv_sT, kv_bytes(), t.dstate + so.kv, state_bytes(), kv_bytes(), B);  // ∂/∂S_T
    cuda::Wkv7Train wkv;
    wkv.B = B, wkv.T = T, wkv.H = H, wkv.N = N;
    wkv.r = s.wkv16[0], wkv.z = s.wkv16[1], wkv.k = s.wkv16[2], wkv.v = s.wkv16[3];
    wkv.a = s.wkv16[4], wkv.b = s.wkv16[5];
    wkv.checkpoints = c.checkpoints;
    wkv.sa = c.sa;
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
    ct::rwkv7_prepare_backward(ctx, M, H, N, {s.gwkv16[0], s.gwkv16[1], s.gwkv16[2], s.gwkv16[3], s.gwkv16[4],
                                              s.gwkv16[5], c.k_raw, c.v_raw, c.kn, c.alpha, c.gate, t.v_first,
                                              y.k_k, y.k_a, s.dr, s.dk2, s.dv, s.dz, s.dalpha, s.dvf,
                                              s.dv_first, s.ta, s.tb, l == 0});
    ct::col_sum(ctx, s.ta, nullptr, M, C, gy.k_a);
    ct::col_sum(ctx, s.tb, nullptr, M, C, gy.k_k);
    ct::col_sum(ctx, s.dz, nullptr, M, C, gy.w0);
    ct::col_sum(ctx, s.dalpha, nullptr, M, C, gy.a0);
    if (l > 0) ct::col_sum(ctx, s.dvf, nullptr, M, C, gy.v0);

    // ---- the projections and LoRAs back to the mixes, each mix back to h and δ ----
    ct::token_shift(ctx, c.h, prev_att, B, T, C, s.delta);
    ct::mix_bf16(ctx, c.h, s.delta, M, C, time_mixes(y));
    zero(s.dh, MC);
    zero(s.ddelta, MC);
    lora_backward(s.dz, c.w_h, Act::Tanh, y16.w2, gy.w2, d.d_decay, y16.w1, gy.w1, mx[1], M);
    ct::mix_backward(ctx, s.dmix, s.delta, y.x_w, M, C, s.dh, s.ddelta, gy.x_w);
    lora_backward(s.dalpha, c.a_h, Act::None, y16.a2, gy.a2, d.d_iclr, y16.a1, gy.a1, mx[4], M);
    ct::mix_backward(ctx, s.dmix, s.delta, y.x_a, M, C, s.dh, s.ddelta, gy.x_a);
    lora_backward(s.dg, c.g_h, Act::Sigmoid, y16.g2, gy.g2, d.d_gate, y16.g1, gy.g1, mx[5], M);
    ct::mix_backward(ctx, s.dmix, s.delta, y.x_g, M, C, s.dh, s.ddelta, gy.x_g);
    if (l > 0) lora_backward(s.dvf, c.v_h, Act::None, y16.v2, gy.v2, d.d_value, y16.v1, gy.v1, mx[3], M);
    convert(s.dv, MC, s.d16);
    lin_dw(s.d16, mx[3], M, C, C, gy.value);
    lin_dx(s.d16, y16.value, M, C, C, s.dmix, l > 0);
    ct::mix_backward(ctx, s.dmix, s.delta, y.x_v, M, C, s.dh, s.ddelta, gy.x_v);
    convert(s.dr, MC, s.d16);
    lin_dw(s.d16, mx[0], M, C, C, gy.receptance);
    lin_dx(s.d16, y16.receptance, M, C, C, s.dmix);
    ct::mix_backward(ctx, s.dmix, s.delta, y.x_r, M, C, s.dh, s.ddelta, gy.x_r);
    convert(s.dk2, MC, s.d16);  // ∂/∂k_raw after the preparation's backward
    lin_dw(s.d16, mx[2], M, C, C, gy.key);
    lin_dx(s.d16, y16.key, M, C, C, s.dmix);
    ct::mix_backward(ctx, s.dmix, s.delta, y.x_k, M, C, s.dh, s.ddelta, gy.x_k);
    shift_backward(so.att_x);
    ct::layer_norm_backward(ctx, s.dh, c.x_in, M, C, y.ln1_w, c.ln1_mean, c.ln1_rstd, dx, gy.ln1_w,
                            gy.ln1_b, s.ta);
    prof->mark("bwd: time mix in");
  }
};

Rwkv7TrainCuda::Rwkv7TrainCuda(const std::vector<TensorView>& tensors, const std::string& source, int device)
    : impl_(std::make_unique<Impl>(tensors, source, device)) {}
Rwkv7TrainCuda::~Rwkv7TrainCuda() = default;

const Rwkv7Dims& Rwkv7TrainCuda::dims() const { return impl_->d; }
const ParamTable& Rwkv7TrainCuda::table() const { return impl_->host.table(); }

void Rwkv7TrainCuda::set_options(const Rwkv7Train<float>::Options& options) {
  if (options.reset_at_eod) fail("GPU training does not support reset_at_eod yet");
  impl_->options = options;
}

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
  for (size_t i = 0; i < M; ++i) {
    if (tokens[i] < 0 || tokens[i] >= d.V) {
      fail("RWKV-7 training: token id ", tokens[i], " at position ", i, " is outside the vocabulary (", d.V, ")");
    }
  }
  Tape& t = m.tape(window);
  m.lay_out_tape(t, B, T);
  m.lay_out_scratch(B, T);
  cudaStream_t st = m.ctx.stream;
  const size_t S = size_t(B) * d.state_floats();
  RWKV_CUDA_CHECK(cudaMemcpyAsync(t.tokens, tokens, M * sizeof(int), cudaMemcpyHostToDevice, st));
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
  int counted = 0;
  for (int i = 0; i < t.M; ++i) {
    if (targets[i] >= d.V) {
      fail("RWKV-7 training: target id ", targets[i], " at position ", i, " is outside the vocabulary (", d.V, ")");
    }
    counted += targets[i] >= 0;
  }
  if (counted == 0) fail("RWKV-7 training: no targets to score");
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
  ct::embed_backward(m.ctx, t.tokens, s.ddelta, int(M), d.C, m.g.emb);
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
                           int64_t t, float grad_scale) {
  if (t < 1) fail("AdamW: the step count t is 1-based, got ", t);
  Impl& m = *impl_;
  const float c1 = float(1.0 - std::pow(double(beta1), double(t)));
  const float c2 = float(1.0 - std::pow(double(beta2), double(t)));
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

std::vector<TensorView> Rwkv7TrainCuda::export_tensors(DType dtype, std::vector<std::vector<uint8_t>>& storage) {
  read_params(impl_->host.params());
  return impl_->host.export_tensors(dtype, storage);
}

}  // namespace rwkv::model
