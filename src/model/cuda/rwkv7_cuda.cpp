// RWKV-7 on an NVIDIA GPU: the CPU model's math (rwkv7.cpp, spec §2.4) with every op from
// ops/cuda. Weights live on the GPU in their stored (or --dtype) type; states live in GPU state
// pools, so decoding moves only token ids in and logits out.
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>
#include <memory>
#include <vector>

#include "model/base.h"
#include "model/cuda/cuda_model.h"
#include "model/rwkv7_weights.h"
#include "ops/cuda/kernels.h"

namespace rwkv::model {
namespace {

using cuda::Act;
using cuda::DeviceBuffer;
using cuda::LinearJob;

struct FfnWeights {
  const float *ln_w, *ln_b, *x_k;  // (C)
  ops::Matrix key, value;          // (F, C), (C, F)
};

// Every tensor pointer of the model, host pointers while loading, device pointers after upload.
struct Weights {
  ops::Matrix emb, head;
  const float *ln0_w, *ln0_b, *ln_out_w, *ln_out_b;
  std::vector<Rwkv7Layer> att;
  std::vector<FfnWeights> ffn;

  // Calls vec(pointer&, floats) and mat(matrix&) for every tensor.
  template <typename Vec, typename Mat>
  void visit(int C, Vec vec, Mat mat) {
    mat(emb), mat(head);
    for (const float** p : {&ln0_w, &ln0_b, &ln_out_w, &ln_out_b}) vec(*p, C);
    for (Rwkv7Layer& y : att) {
      for (const float** p : {&y.ln1_w, &y.ln1_b, &y.x_r, &y.x_w, &y.x_k, &y.x_v, &y.x_a, &y.x_g,
                              &y.w0, &y.a0, &y.v0, &y.k_k, &y.k_a, &y.r_k, &y.ln_x_w, &y.ln_x_b}) {
        if (*p) vec(*p, C);
      }
      for (ops::Matrix* m : {&y.w1, &y.w2, &y.a1, &y.a2, &y.v1, &y.v2, &y.g1, &y.g2, &y.receptance,
                             &y.key, &y.value, &y.output}) {
        if (m->data) mat(*m);
      }
    }
    for (FfnWeights& f : ffn) {
      for (const float** p : {&f.ln_w, &f.ln_b, &f.x_k}) vec(*p, C);
      mat(f.key), mat(f.value);
    }
  }
};

// Activations of one call over M rows, one device allocation.
struct Activations {
  int M = 0;
  DeviceBuffer buffer;
  float *x, *xn, *xr, *xw, *xk, *xv, *xa, *xg, *r, *w, *k, *v, *a, *b, *g, *y, *v_first;  // (M, C)
  float *hw, *ha, *hg, *hv;  // (M, max LoRA width)
  float* hidden;             // (M, F)
  float* logits;             // (M, V)
  int* tokens;               // (M)

  // True when the buffer moved (CUDA graphs captured over it are stale).
  bool ensure(int rows, const ModelInfo& info, int lora) {
    if (rows <= M) return false;
    const size_t mc = size_t(rows) * size_t(info.n_embd), ml = size_t(rows) * size_t(lora);
    const size_t floats = 17 * mc + 4 * ml + size_t(rows) * size_t(info.dim_ffn) +
                          size_t(rows) * size_t(info.vocab_size) + size_t(rows);
    buffer = DeviceBuffer();  // free first: the old and new buffers need not fit together
    buffer.ensure(floats * 4 + 64 * 256);
    char* p = buffer.as<char>();
    const auto take = [&](size_t n) {
      char* at = p;
      p += (n * 4 + 255) / 256 * 256;  // 256-byte aligned pieces (16-byte loads, cuBLASLt)
      return reinterpret_cast<float*>(at);
    };
    for (float** f : {&x, &xn, &xr, &xw, &xk, &xv, &xa, &xg, &r, &w, &k, &v, &a, &b, &g, &y, &v_first}) {
      *f = take(mc);
    }
    for (float** f : {&hw, &ha, &hg, &hv}) *f = take(ml);
    hidden = take(size_t(rows) * size_t(info.dim_ffn));
    logits = take(size_t(rows) * size_t(info.vocab_size));
    tokens = reinterpret_cast<int*>(take(size_t(rows)));
    M = rows;
    return true;
  }
};

class Rwkv7Cuda final : public Model {
 public:
  Rwkv7Cuda(std::shared_ptr<const Checkpoint> ckpt, const ModelInfo& info, LoadOptions options)
      : info_(info), ctx_(std::make_shared<cuda::Context>(options.cuda_device)) {
    check_rwkv7_dims(info_);
    const int N = info_.head_size;
    if (N != 16 && N != 32 && N != 64 && N != 128) {
      fail("the CUDA backend runs head sizes 16, 32, 64 and 128; this model's is ", N);
    }
    // The GPU kernels read fp32/fp16/bf16; quantized files (rwkv.cpp Q5/Q8) become fp16.
    if (!options.weight_dtype && is_quantized(info_.file_dtype)) options.weight_dtype = DType::F16;
    if (options.weight_dtype && is_quantized(*options.weight_dtype)) {
      fail("the CUDA backend keeps weights in fp32, fp16 or bf16, not ", dtype_name(*options.weight_dtype));
    }
    WeightLoader load(ckpt, options);
    load_weights(load);
    load.check_all_used();
    spec_ = make_state_spec(info_, size_t(info_.n_layer) * matrix_state_layer_floats(info_),
                            load.fingerprint());
    weight_dtype_ = load.matrix_dtype();
    decode_bytes_ = load.matrix_bytes() - w_.emb.nbytes();
    upload();
    for (const auto& [name, width] : info_.lora) max_lora_ = std::max(max_lora_, width);
    const char* graphs = std::getenv("RWKV_CUDA_GRAPHS");  // 0: launch kernel by kernel
    use_graphs_ = !(graphs && std::string(graphs) == "0");
  }
  ~Rwkv7Cuda() override { drop_graphs(); }

  const ModelInfo& info() const override { return info_; }
  StateSpec state_spec() const override { return spec_; }
  std::vector<StatePiece> state_layout() const override { return matrix_state_layout(info_); }
  void init_state(float* state) const override { std::fill(state, state + spec_.floats, 0.f); }
  size_t decode_bytes_per_token() const override { return decode_bytes_; }
  DType weight_dtype() const override { return weight_dtype_; }

  std::unique_ptr<StatePool> new_state_pool(int n) const override {
    return make_cuda_state_pool(ctx_, n, spec_.floats);
  }

  // The pointer forms: states go up into a scratch pool and come back down.
  void step(const int* tokens, int B, float* const* states, float* logits) override {
    run_host_states(tokens, B, 1, states, logits, LogitsMode::All);
  }
  void forward(const int* tokens, int B, int T, float* const* states, float* logits,
               LogitsMode mode) override {
    run_host_states(tokens, B, T, states, logits, mode);
  }

  void step_pooled(const int* tokens, int B, StatePool& pool, const int* slots,
                   float* logits) override {
    run(tokens, B, 1, pool, slots, logits, LogitsMode::All);
  }
  void forward_pooled(const int* tokens, int B, int T, StatePool& pool, const int* slots,
                      float* logits, LogitsMode mode) override {
    run(tokens, B, T, pool, slots, logits, mode);
  }

 private:
  void load_weights(WeightLoader& load) {
    const int C = info_.n_embd, V = info_.vocab_size, F = info_.dim_ffn;
    w_.emb = load.mat("emb.weight", V, C);
    w_.ln0_w = load.vec("blocks.0.ln0.weight", C);
    w_.ln0_b = load.vec("blocks.0.ln0.bias", C);
    w_.ln_out_w = load.vec("ln_out.weight", C);
    w_.ln_out_b = load.vec("ln_out.bias", C);
    w_.head = load.mat("head.weight", V, C);
    for (int l = 0; l < info_.n_layer; ++l) {
      w_.att.push_back(load_rwkv7_layer(load, info_, l));
      const std::string p = cat("blocks.", l, ".");
      FfnWeights f;
      f.ln_w = load.vec(p + "ln2.weight", C);
      f.ln_b = load.vec(p + "ln2.bias", C);
      f.x_k = load.vec(p + "ffn.x_k", C);
      f.key = load.mat(p + "ffn.key.weight", F, C);
      f.value = load.mat(p + "ffn.value.weight", C, F);
      w_.ffn.push_back(f);
    }
  }

  // Copies every tensor into one device allocation and repoints the weights at it.
  void upload() {
    const int C = info_.n_embd;
    const auto aligned = [](size_t n) { return (n + 255) / 256 * 256; };
    size_t total = 0;
    w_.visit(C, [&](const float*&, int n) { total += aligned(size_t(n) * 4); },
             [&](ops::Matrix& m) { total += aligned(m.nbytes()); });
    weights_.ensure(total);
    char* at = weights_.as<char>();
    const auto put = [&](const void* host, size_t bytes) {
      RWKV_CUDA_CHECK(cudaMemcpy(at, host, bytes, cudaMemcpyHostToDevice));
      void* dev = at;
      at += aligned(bytes);
      return dev;
    };
    w_.visit(C, [&](const float*& p, int n) { p = static_cast<const float*>(put(p, size_t(n) * 4)); },
             [&](ops::Matrix& m) { m.data = put(m.data, m.nbytes()); });
  }

  void run_host_states(const int* tokens, int B, int T, float* const* states, float* logits,
                       LogitsMode mode) {
    if (B <= 0 || T <= 0) return;
    // run() checks the tokens before anything runs; the caller's states are read back only after.
    if (!scratch_pool_ || scratch_pool_->size() < B) scratch_pool_ = new_state_pool(B);
    std::vector<int> slots(static_cast<size_t>(B));
    for (int b = 0; b < B; ++b) {
      slots[size_t(b)] = b;
      scratch_pool_->write(b, states[b]);
    }
    run(tokens, B, T, *scratch_pool_, slots.data(), logits, mode);
    for (int b = 0; b < B; ++b) scratch_pool_->read(b, states[b]);
  }

  void run(const int* tokens, int B, int T, StatePool& pool, const int* slots, float* logits,
           LogitsMode mode) {
    if (B <= 0 || T <= 0) return;
    check_token_ids(tokens, size_t(B) * size_t(T), info_.vocab_size);
    float* pool_data = cuda_state_pool_data(pool, *ctx_, spec_.floats, slots, B);
    cuda::Context& c = *ctx_;
    const int M = B * T;
    if (act_.ensure(M, info_, max_lora_)) drop_graphs();
    if (size_t(B) * 4 > slots_.bytes()) {
      drop_graphs();
      slots_.ensure(size_t(std::max(B, 64)) * 4);
    }
    RWKV_CUDA_CHECK(cudaMemcpyAsync(act_.tokens, tokens, size_t(M) * 4, cudaMemcpyHostToDevice, c.stream));
    RWKV_CUDA_CHECK(cudaMemcpyAsync(slots_.as(), slots, size_t(B) * 4, cudaMemcpyHostToDevice, c.stream));
    const cuda::StateRef states{pool_data, slots_.as<int>(), spec_.floats};
    if (T == 1 && use_graphs_) {
      // A decode step is hundreds of small launches: replaying them as one CUDA graph takes the
      // launch overhead off the step. One graph per (batch, pool, logits mode).
      if (graph_generation_ != c.generation) drop_graphs();
      const auto key = std::make_tuple(B, pool_data, int(mode));
      auto it = graphs_.find(key);
      if (it == graphs_.end()) {
        if (graphs_.size() >= 16) drop_graphs();
        it = graphs_.emplace(key, capture([&] { enqueue(B, T, states, mode); })).first;
        graph_generation_ = c.generation;
      }
      RWKV_CUDA_CHECK(cudaGraphLaunch(it->second, c.stream));
    } else {
      enqueue(B, T, states, mode);
    }
    if (mode != LogitsMode::None) {
      const int rows = mode == LogitsMode::All ? M : B;
      RWKV_CUDA_CHECK(cudaMemcpyAsync(logits, act_.logits, size_t(rows) * size_t(info_.vocab_size) * 4,
                                      cudaMemcpyDeviceToHost, c.stream));
    }
    c.synchronize();
  }

  // Records what `work` enqueues on the stream as an executable graph.
  template <typename Work>
  cudaGraphExec_t capture(Work work) {
    cuda::Context& c = *ctx_;
    // Relaxed: first calls may allocate scratch (cuBLASLt plans, buffers) while capturing.
    RWKV_CUDA_CHECK(cudaStreamBeginCapture(c.stream, cudaStreamCaptureModeRelaxed));
    const int generation = c.generation;
    try {
      work();
    } catch (...) {
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(c.stream, &g);
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      throw;
    }
    cudaGraph_t graph = nullptr;
    RWKV_CUDA_CHECK(cudaStreamEndCapture(c.stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t st = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    RWKV_CUDA_CHECK(st);
    if (c.generation != generation) {
      // A scratch buffer moved while capturing (a first, larger product): capture again.
      cudaGraphExecDestroy(exec);
      return capture(work);
    }
    return exec;
  }

  void drop_graphs() {
    for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
    graphs_.clear();
  }

  // Every kernel of one call, on the stream (tokens and slots already on the device).
  void enqueue(int B, int T, const cuda::StateRef& states, LogitsMode mode) {
    cuda::Context& c = *ctx_;
    const int C = info_.n_embd, M = B * T;
    cuda::embed(c, act_.tokens, M, w_.emb, act_.x);
    cuda::layer_norm(c, act_.x, C, act_.x, M, C, w_.ln0_w, w_.ln0_b);
    for (int l = 0; l < info_.n_layer; ++l) {
      time_mix(l, B, T, states);
      channel_mix(l, B, T, states);
    }
    if (mode == LogitsMode::None) return;
    // Logits for every row, or only for each sequence's last row.
    const int rows = mode == LogitsMode::All ? M : B;
    const float* in = mode == LogitsMode::All ? act_.x : act_.x + size_t(T - 1) * size_t(C);
    const int ld = mode == LogitsMode::All ? C : T * C;
    cuda::layer_norm(c, in, ld, act_.xn, rows, C, w_.ln_out_w, w_.ln_out_b);
    cuda::linear(c, w_.head, act_.xn, rows, act_.logits);
  }

  void time_mix(int l, int B, int T, const cuda::StateRef& states) {
    const Rwkv7Layer& y = w_.att[size_t(l)];
    Activations& s = act_;
    cuda::Context& c = *ctx_;
    const int C = info_.n_embd, H = info_.n_head, N = info_.head_size, M = B * T;
    const size_t layer = size_t(l) * matrix_state_layer_floats(info_);
    cuda::layer_norm(c, s.x, C, s.xn, M, C, y.ln1_w, y.ln1_b);
    cuda::ShiftMix mix{6, {y.x_r, y.x_w, y.x_k, y.x_v, y.x_a, y.x_g}, {s.xr, s.xw, s.xk, s.xv, s.xa, s.xg}};
    cuda::token_shift_mix(c, s.xn, B, T, C, states, layer, mix);
    const bool v_residual = l > 0;
    const LinearJob first[] = {
        {y.receptance, s.xr, s.r}, {y.key, s.xk, s.k},           {y.value, s.xv, s.v},
        {y.w1, s.xw, s.hw, Act::Tanh}, {y.a1, s.xa, s.ha},       {y.g1, s.xg, s.hg, Act::Sigmoid},
        {y.v1, s.xv, s.hv}};
    cuda::linear_jobs(c, first, v_residual ? 7 : 6, M);
    // xr is free once r is computed: it takes the value LoRA's output.
    const LinearJob second[] = {{y.w2, s.hw, s.w}, {y.a2, s.ha, s.a}, {y.g2, s.hg, s.g}, {y.v2, s.hv, s.xr}};
    cuda::linear_jobs(c, second, v_residual ? 4 : 3, M);
    cuda::rwkv7_prepare(c, M, H, N,
                        {s.w, s.k, s.v, s.a, s.b, s.v_first, v_residual ? s.xr : nullptr, y.w0, y.a0,
                         y.v0, y.k_k, y.k_a});
    cuda::wkv7_scan(c, B, T, H, N, s.r, s.w, s.k, s.v, s.a, s.b, s.y, states,
                    matrix_state_kv_offset(info_, l));
    cuda::rwkv7_output(c, M, H, N, {s.y, s.r, s.k, s.v, s.g, y.r_k, y.ln_x_w, y.ln_x_b},
                       kRwkv7GroupNormEps);
    cuda::linear(c, y.output, s.y, M, s.x, Act::None, /*accumulate=*/true);
  }

  void channel_mix(int l, int B, int T, const cuda::StateRef& states) {
    const FfnWeights& f = w_.ffn[size_t(l)];
    Activations& s = act_;
    cuda::Context& c = *ctx_;
    const int C = info_.n_embd, M = B * T;
    cuda::layer_norm(c, s.x, C, s.xn, M, C, f.ln_w, f.ln_b);
    cuda::ShiftMix mix{1, {f.x_k}, {s.xk}};
    cuda::token_shift_mix(c, s.xn, B, T, C, states, matrix_state_ffn_offset(info_, l), mix);
    cuda::linear(c, f.key, s.xk, M, s.hidden, Act::SqRelu);
    cuda::linear(c, f.value, s.hidden, M, s.x, Act::None, /*accumulate=*/true);
  }

  ModelInfo info_;
  StateSpec spec_;
  DType weight_dtype_ = DType::F32;
  size_t decode_bytes_ = 0;
  std::shared_ptr<cuda::Context> ctx_;
  Weights w_{};
  DeviceBuffer weights_;
  Activations act_;
  DeviceBuffer slots_;
  std::unique_ptr<StatePool> scratch_pool_;
  int max_lora_ = 1;
  // Decode-step graphs by (batch, pool base, logits mode), valid for Context::generation.
  bool use_graphs_ = true;
  std::map<std::tuple<int, float*, int>, cudaGraphExec_t> graphs_;
  int graph_generation_ = 0;
};

}  // namespace

std::unique_ptr<Model> load_rwkv7_cuda(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options) {
  return std::make_unique<Rwkv7Cuda>(std::move(checkpoint), info, options);
}

}  // namespace rwkv::model
