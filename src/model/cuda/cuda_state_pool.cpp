#include <algorithm>

#include "model/cuda/cuda_model.h"
#include "model/host_state_pool.h"

namespace rwkv::model {
namespace {

class CudaStatePool final : public StatePool {
 public:
  CudaStatePool(std::shared_ptr<cuda::Context> ctx, int n, size_t floats, const float* start)
      : ctx_(std::move(ctx)), n_(n), floats_(floats) {
    if (n < 0) fail("state pool: ", n, " slots");
    data_.ensure(std::max<size_t>(size_t(n) * floats * 4, 4));
    RWKV_CUDA_CHECK(cudaMemsetAsync(data_.as(), 0, data_.bytes(), ctx_->stream));
    for (int i = 0; start && i < n; ++i) {
      RWKV_CUDA_CHECK(cudaMemcpyAsync(at(i), start, floats_ * 4, cudaMemcpyHostToDevice, ctx_->stream));
    }
    ctx_->synchronize();
  }
  int size() const override { return n_; }
  size_t floats() const override { return floats_; }
  void write(int slot, const float* state) override {
    RWKV_CUDA_CHECK(cudaMemcpyAsync(at(slot), state, floats_ * 4, cudaMemcpyHostToDevice, ctx_->stream));
    ctx_->synchronize();
  }
  void read(int slot, float* state) const override {
    RWKV_CUDA_CHECK(cudaMemcpyAsync(state, at(slot), floats_ * 4, cudaMemcpyDeviceToHost, ctx_->stream));
    ctx_->synchronize();
  }
  void copy(int dst, int src) override {
    if (dst == src) return;
    RWKV_CUDA_CHECK(cudaMemcpyAsync(at(dst), at(src), floats_ * 4, cudaMemcpyDeviceToDevice, ctx_->stream));
  }

  float* base() const { return data_.as<float>(); }
  const cuda::Context* context() const { return ctx_.get(); }

 private:
  float* at(int slot) const {
    if (slot < 0 || slot >= n_) fail("state pool: slot ", slot, " is outside [0, ", n_, ")");
    return data_.as<float>() + size_t(slot) * floats_;
  }
  std::shared_ptr<cuda::Context> ctx_;
  int n_;
  size_t floats_;
  cuda::DeviceBuffer data_;
};

}  // namespace

std::unique_ptr<StatePool> make_cuda_state_pool(std::shared_ptr<cuda::Context> ctx, int n,
                                                size_t floats, const float* start) {
  return std::make_unique<CudaStatePool>(std::move(ctx), n, floats, start);
}

float* cuda_state_pool_data(StatePool& pool, const cuda::Context& ctx, size_t floats,
                            const int* slots, int B) {
  auto* p = dynamic_cast<CudaStatePool*>(&pool);
  if (!p || p->context() != &ctx) fail("state pool: it was not made by this GPU model (new_state_pool)");
  check_pool_slots(pool, floats, slots, B);
  return p->base();
}

}  // namespace rwkv::model
