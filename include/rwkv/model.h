// A loaded RWKV model, any generation, in both forms (DESIGN "The two forms"):
//   step     recurrent: one token for each of B independent sequences
//   forward  parallel over [B, T] (prefill, training); equal to repeated step()
// States are flat fp32 buffers (state_spec().floats each) owned by the caller.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "rwkv/checkpoint.h"
#include "rwkv/dtype.h"
#include "rwkv/state.h"

namespace rwkv {

// Hyper-parameters, all read from tensor names and shapes (spec §1.3), never from file names.
struct ModelInfo {
  std::string generation;  // "x070" (RWKV-7), "x060", "5.2", "5.1", "5.0", "4"
  std::string family;      // "RWKV-7 Goose", ...
  int n_layer = 0;
  int n_embd = 0;      // C
  int dim_att = 0;     // A
  int dim_ffn = 0;     // F
  int n_head = 0;      // H (0 for RWKV-4)
  int head_size = 0;   // N
  int vocab_size = 0;  // V
  std::vector<std::pair<std::string, int>> lora;  // LoRA widths by name ("decay", 64), …
  DType file_dtype = DType::F32;                  // dtype of most matrices in the file
  size_t n_params = 0;
};

// Reads the hyper-parameters of any generation from a checkpoint. Throws rwkv::Error for a file
// that is not an RWKV checkpoint (naming what is missing).
ModelInfo detect_model(const Checkpoint& checkpoint);

// Ref: plain loops (CPU); Cpu: SIMD/BLAS/threads; Cuda: an NVIDIA GPU (builds with nvcc only).
enum class Backend { Ref, Cpu, Cuda };
enum class LogitsMode { All, Last, None };

struct LoadOptions {
  std::optional<DType> weight_dtype;  // convert matrices at load; default: keep as stored
  Backend backend = Backend::Cpu;
  int cuda_device = 0;  // which GPU, for Backend::Cuda
};

// n states of one model, kept where that model computes: host memory for CPU models, GPU memory
// for CUDA models, so decoding never moves states through the host. A new pool's slots hold the
// start-of-sequence state. Pools belong to the model that made them (new_state_pool).
class StatePool {
 public:
  virtual ~StatePool() = default;
  virtual int size() const = 0;
  virtual size_t floats() const = 0;  // per state (the model's state_spec().floats)
  // Host copies in and out (the layout of state_layout()); copy() forks within the pool.
  virtual void write(int slot, const float* state) = 0;
  virtual void read(int slot, float* state) const = 0;
  virtual void copy(int dst, int src) = 0;
};

// One piece of the state, in the official package's list order (spec §2.5).
struct StatePiece {
  std::string name;  // "blocks.0.att_x_prev"
  std::vector<int64_t> shape;
  size_t offset = 0;
  size_t numel = 0;
};

// A Model holds scratch activations: call it from one thread at a time (a server runs batches
// of states through one model; separate threads need separate models).
class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelInfo& info() const = 0;
  virtual StateSpec state_spec() const = 0;
  virtual std::vector<StatePiece> state_layout() const = 0;
  // The start-of-sequence state (all zeros for RWKV-5/6/7).
  virtual void init_state(float* state) const = 0;
  // Weight bytes read per decoded token (every matrix but the embedding, whose one row is read).
  virtual size_t decode_bytes_per_token() const = 0;
  virtual DType weight_dtype() const = 0;
  // The GPU this model computes on, or −1 for the CPU.
  virtual int cuda_device() const { return -1; }

  // Recurrent form: tokens[B], states[B] updated in place, logits [B, V].
  // Throws rwkv::Error for a token outside [0, V) before touching any state.
  virtual void step(const int* tokens, int B, float* const* states, float* logits) = 0;
  // Parallel form: tokens [B, T] row-major, states[B] in/out. logits: [B, T, V] for All,
  // [B, V] (after each sequence's last token) for Last, unused for None.
  virtual void forward(const int* tokens, int B, int T, float* const* states, float* logits,
                       LogitsMode mode) = 0;

  // The same two forms over states in a pool from this model's new_state_pool(): sequence b uses
  // slot slots[b] (distinct, in range; else rwkv::Error before anything runs). Logits as above,
  // in host memory. CPU models run them through the pointer forms; CUDA models natively.
  virtual std::unique_ptr<StatePool> new_state_pool(int n) const;
  virtual void step_pooled(const int* tokens, int B, StatePool& pool, const int* slots,
                           float* logits);
  virtual void forward_pooled(const int* tokens, int B, int T, StatePool& pool, const int* slots,
                              float* logits, LogitsMode mode);
};

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options = {});
// GPUs this build can run models on: 0 without the CUDA backend, a driver or a device.
int cuda_device_count();
// "cpu" → −1, "cuda" → 0, "cuda:N" → N; rwkv::Error naming the accepted forms otherwise.
int parse_device(const std::string& device);
// A GPU's name and the ceilings its benchmarks quote, measured now: device-to-device copy
// bandwidth counting bytes read plus written, and a bf16 GEMM (fp32 accumulation) at 8192³.
// Throws rwkv::Error without the CUDA backend or that GPU.
struct GpuCeilings {
  std::string name;
  double copy_gb_per_s = 0;
  double gemm_tflops = 0;
};
GpuCeilings measure_gpu_ceilings(int device);
std::unique_ptr<Model> load_model(std::shared_ptr<const Checkpoint> checkpoint,
                                  const LoadOptions& options = {});

// n zeroed floats of host memory for what a model returns (logits of a batch). page_locked (pass
// model.cuda_device() >= 0): page-locked memory, into which a GPU model's copy runs at the bus's
// speed (batch-256 logits, 67 MB: 1.2 ms on an H200's host, 6 ms into ordinary memory); ordinary
// memory where page-locking fails (no CUDA backend or GPU) and where page_locked is false (a CPU
// model: no GPU context is made for it).
class HostFloats {
 public:
  HostFloats() = default;
  HostFloats(size_t n, bool page_locked);
  HostFloats(HostFloats&& other) noexcept;
  HostFloats& operator=(HostFloats&& other) noexcept;
  HostFloats(const HostFloats&) = delete;
  HostFloats& operator=(const HostFloats&) = delete;
  ~HostFloats();
  float* data() { return data_; }
  const float* data() const { return data_; }
  size_t size() const { return size_; }
  bool page_locked() const { return page_locked_; }

 private:
  void release();
  float* data_ = nullptr;
  size_t size_ = 0;
  bool page_locked_ = false;
};

}  // namespace rwkv
