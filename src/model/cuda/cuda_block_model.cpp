#include "model/cuda/cuda_block_model.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "model/generations.h"
#include "ops/cuda/kernels_v456.h"
#include "rwkv/error.h"

namespace rwkv::model {

using cuda::Act;
using cuda::LinearJob;

CudaBlockModel::CudaBlockModel(const ModelInfo& info, LoadOptions options,
                               std::initializer_list<int> head_sizes)
    : info_(info), options_(std::move(options)), ctx_(std::make_shared<cuda::Context>(options_.cuda_device)) {
  if (head_sizes.size() > 0 && std::find(head_sizes.begin(), head_sizes.end(), info_.head_size) == head_sizes.end()) {
    std::string sizes;
    for (int n : head_sizes) sizes += (sizes.empty() ? "" : ", ") + std::to_string(n);
    fail("the CUDA backend runs ", info_.family, " with head sizes ", sizes, "; this model's is ",
         info_.head_size);
  }
  // The GPU kernels read fp32/fp16/bf16; quantized files (rwkv.cpp Q5/Q8) become fp16.
  if (!options_.weight_dtype && is_quantized(info_.file_dtype)) options_.weight_dtype = DType::F16;
  if (options_.weight_dtype && is_quantized(*options_.weight_dtype)) {
    fail("the CUDA backend keeps weights in fp32, fp16 or bf16, not ", dtype_name(*options_.weight_dtype));
  }
  const char* graphs = std::getenv("RWKV_CUDA_GRAPHS");  // 0: launch kernel by kernel
  use_graphs_ = !(graphs && std::string(graphs) == "0");
}

CudaBlockModel::~CudaBlockModel() { drop_graphs(); }

void CudaBlockModel::finish_load(WeightLoader& load, size_t state_floats) {
  load.check_all_used();
  spec_ = make_state_spec(info_, state_floats, load.fingerprint());
  weight_dtype_ = load.matrix_dtype();
  decode_bytes_ = load.matrix_bytes() - common_.emb.nbytes();
  upload();
  std::vector<float> start(state_floats);
  init_state(start.data());
  if (std::any_of(start.begin(), start.end(), [](float v) { return v != 0.f; })) start_state_ = std::move(start);
}

// Copies every tensor into one device allocation and repoints the weights at it.
void CudaBlockModel::upload() {
  const int C = info_.n_embd;
  const auto visit_all = [&](const VecVisitor& vec, const MatVisitor& mat) {
    mat(common_.emb), mat(common_.head);
    for (const float** p : {&common_.ln0_w, &common_.ln0_b, &common_.ln_out_w, &common_.ln_out_b}) vec(*p, C);
    for (ChannelMix& f : ffn_) {
      for (const float** p : {&f.ln_w, &f.ln_b, &f.mix_k, &f.mix_r}) {
        if (*p) vec(*p, C);
      }
      for (ops::Matrix* m : {&f.key, &f.value, &f.receptance}) {
        if (m->data) mat(*m);
      }
    }
    visit_layers(vec, mat);
  };
  const auto aligned = [](size_t n) { return (n + 255) / 256 * 256; };
  size_t total = 0;
  visit_all([&](const float*&, int n) { total += aligned(size_t(n) * 4); },
            [&](ops::Matrix& m) { total += aligned(m.nbytes()); });
  weights_.ensure(total);
  char* at = weights_.as<char>();
  const auto put = [&](const void* host, size_t bytes) {
    RWKV_CUDA_CHECK(cudaMemcpy(at, host, bytes, cudaMemcpyHostToDevice));
    void* dev = at;
    at += aligned(bytes);
    return dev;
  };
  visit_all([&](const float*& p, int n) { p = static_cast<const float*>(put(p, size_t(n) * 4)); },
            [&](ops::Matrix& m) { m.data = put(m.data, m.nbytes()); });
}

std::unique_ptr<StatePool> CudaBlockModel::new_state_pool(int n) const {
  return make_cuda_state_pool(ctx_, n, spec_.floats, start_state_.empty() ? nullptr : start_state_.data());
}

void CudaBlockModel::step(const int* tokens, int B, float* const* states, float* logits) {
  run_host_states(tokens, B, 1, states, logits, LogitsMode::All);
}

void CudaBlockModel::forward(const int* tokens, int B, int T, float* const* states, float* logits,
                             LogitsMode mode) {
  run_host_states(tokens, B, T, states, logits, mode);
}

void CudaBlockModel::step_pooled(const int* tokens, int B, StatePool& pool, const int* slots,
                                 float* logits) {
  run(tokens, B, 1, pool, slots, logits, LogitsMode::All);
}

void CudaBlockModel::forward_pooled(const int* tokens, int B, int T, StatePool& pool,
                                    const int* slots, float* logits, LogitsMode mode) {
  run(tokens, B, T, pool, slots, logits, mode);
}

void CudaBlockModel::run_host_states(const int* tokens, int B, int T, float* const* states,
                                     float* logits, LogitsMode mode) {
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

bool CudaBlockModel::Shared::ensure(int rows, const ModelInfo& info) {
  return ensure_activations(buffer, M, rows, [&](Carver& c, int n) {
    const size_t mc = size_t(n) * size_t(info.n_embd);
    for (float** f : {&x, &xn, &xk, &xr, &rr, &ffn_out}) *f = c.take<float>(mc);
    hidden = c.take<float>(size_t(n) * size_t(info.dim_ffn));
    logits = c.take<float>(size_t(n) * size_t(info.vocab_size));
    tokens = c.take<int>(size_t(n));
  });
}

void CudaBlockModel::run(const int* tokens, int B, int T, StatePool& pool, const int* slots,
                         float* logits, LogitsMode mode) {
  if (B <= 0 || T <= 0) return;
  check_token_ids(tokens, size_t(B) * size_t(T), info_.vocab_size);
  float* pool_data = cuda_state_pool_data(pool, *ctx_, spec_.floats, slots, B);
  cuda::Context& c = *ctx_;
  const int M = B * T;
  const bool shared_moved = shared_.ensure(M, info_);
  if (reserve(M) || shared_moved) drop_graphs();
  if (size_t(B) * 4 > slots_.bytes()) {
    drop_graphs();
    slots_.ensure(size_t(std::max(B, 64)) * 4);
  }
  RWKV_CUDA_CHECK(cudaMemcpyAsync(shared_.tokens, tokens, size_t(M) * 4, cudaMemcpyHostToDevice, c.stream));
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
    RWKV_CUDA_CHECK(cudaMemcpyAsync(logits, shared_.logits, size_t(rows) * size_t(info_.vocab_size) * 4,
                                    cudaMemcpyDeviceToHost, c.stream));
  }
  c.synchronize();
}

cudaGraphExec_t CudaBlockModel::capture(const std::function<void()>& work) {
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

void CudaBlockModel::drop_graphs() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

void CudaBlockModel::enqueue(int B, int T, const cuda::StateRef& states, LogitsMode mode) {
  cuda::Context& c = *ctx_;
  const int C = info_.n_embd, M = B * T;
  if (T == 1 && enqueue_step(B, states, mode != LogitsMode::None)) return;
  cuda::embed(c, shared_.tokens, M, common_.emb, shared_.x);
  cuda::layer_norm(c, shared_.x, C, shared_.x, M, C, common_.ln0_w, common_.ln0_b);
  for (int l = 0; l < info_.n_layer; ++l) {
    time_mix(l, B, T, states);
    channel_mix(l, B, T, states);
  }
  if (mode == LogitsMode::None) return;
  // Logits for every row, or only for each sequence's last row.
  const int rows = mode == LogitsMode::All ? M : B;
  const float* in = mode == LogitsMode::All ? shared_.x : shared_.x + size_t(T - 1) * size_t(C);
  const int ld = mode == LogitsMode::All ? C : T * C;
  cuda::layer_norm(c, in, ld, shared_.xn, rows, C, common_.ln_out_w, common_.ln_out_b);
  cuda::linear(c, common_.head, shared_.xn, rows, shared_.logits);
}

// Spec §2.1/§2.4: out = [σ(W_r x_r) ⊙] W_v sqrelu(W_k x_k), added to the residual.
void CudaBlockModel::channel_mix(int l, int B, int T, const cuda::StateRef& states) {
  const ChannelMix& f = ffn_[size_t(l)];
  Shared& s = shared_;
  cuda::Context& c = *ctx_;
  const int C = info_.n_embd, M = B * T;
  cuda::layer_norm(c, s.x, C, s.xn, M, C, f.ln_w, f.ln_b);
  const cuda::ShiftMix mix{f.mix_r ? 2 : 1, {f.mix_k, f.mix_r}, {s.xk, s.xr}};
  cuda::token_shift_mix(c, s.xn, B, T, C, states, ffn_shift_offset(l), mix);
  if (!f.mix_r) {
    cuda::linear(c, f.key, s.xk, M, s.hidden, Act::SqRelu);
    cuda::linear(c, f.value, s.hidden, M, s.x, Act::None, /*accumulate=*/true);
    return;
  }
  const LinearJob first[] = {{f.key, s.xk, s.hidden, Act::SqRelu}, {f.receptance, s.xr, s.rr, Act::Sigmoid}};
  cuda::linear_jobs(c, first, 2, M);
  cuda::linear(c, f.value, s.hidden, M, s.ffn_out);
  cuda::mul_add(c, s.x, s.rr, s.ffn_out, size_t(M) * size_t(C));
}

std::unique_ptr<Model> load_cuda_model(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options) {
  const std::string& g = info.generation;
  if (g == "x070") return load_rwkv7_cuda(std::move(checkpoint), info, options);
  if (g == "x060") return load_rwkv6_cuda(std::move(checkpoint), info, options);
  if (g == "5.0" || g == "5.1" || g == "5.2") return load_rwkv5_cuda(std::move(checkpoint), info, options);
  if (g == "4") return load_rwkv4_cuda(std::move(checkpoint), info, options);
  fail(checkpoint->path(), ": unknown generation '", g, "'");
}

}  // namespace rwkv::model
