// States in host memory: the StatePool of CPU models (Model::new_state_pool's default), and the
// checks every pool-based step/forward makes before it runs, CPU or CUDA.
#pragma once
#include <vector>

#include "rwkv/model.h"

namespace rwkv::model {

// Throws rwkv::Error, before anything runs, unless slots[0..B) are B ≥ 1 distinct slots of `pool`
// and the pool's states have `floats` floats (the running model's state_spec().floats: a pool of
// another model's states has another length).
void check_pool_slots(const StatePool& pool, size_t floats, const int* slots, int B);

// n states, each `floats` floats, in one allocation; slot i at data[i · floats].
class HostStatePool final : public StatePool {
 public:
  // Every slot starts as model.init_state() (throws rwkv::Error for n < 1).
  HostStatePool(const Model& model, int n);

  int size() const override { return n_; }
  size_t floats() const override { return floats_; }
  void write(int slot, const float* state) override;
  void read(int slot, float* state) const override;
  void copy(int dst, int src) override;
  // Slot i's state, in place (throws rwkv::Error for i outside [0, size())).
  float* slot(int i);

 private:
  void check_slot(int i, const char* what) const;

  int n_;
  size_t floats_;
  std::vector<float> data_;  // (n, floats)
};

}  // namespace rwkv::model
