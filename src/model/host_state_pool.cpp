// Host state pools, and Model's default pool methods: CPU models keep states in host memory, so
// their pooled forms are the pointer forms over slots of a HostStatePool.
#include "model/host_state_pool.h"

#include <algorithm>
#include <cstring>

#include "rwkv/error.h"

namespace rwkv::model {

void check_pool_slots(const StatePool& pool, size_t floats, const int* slots, int B) {
  if (B < 1) fail("state pool: batch of ", B, " sequences (need at least 1)");
  if (pool.floats() != floats) {
    fail("state pool holds states of ", pool.floats(), " floats but this model's have ", floats,
         ": the pool belongs to another model");
  }
  for (int b = 0; b < B; ++b) {
    if (slots[b] < 0 || slots[b] >= pool.size()) {
      fail("state pool: slot ", slots[b], " of sequence ", b, " is outside [0, ", pool.size(), ")");
    }
  }
  // Two sequences updating one state would race and leave neither's result.
  std::vector<int> sorted(slots, slots + B);
  std::sort(sorted.begin(), sorted.end());
  const auto twin = std::adjacent_find(sorted.begin(), sorted.end());
  if (twin != sorted.end()) fail("state pool: slot ", *twin, " is used by two sequences");
}

HostStatePool::HostStatePool(const Model& model, int n)
    : n_(n), floats_(model.state_spec().floats) {
  if (n < 1) fail("state pool of ", n, " states (need at least 1)");
  data_.resize(size_t(n) * floats_);
  model.init_state(data_.data());
  for (int i = 1; i < n; ++i) copy(i, 0);
}

void HostStatePool::check_slot(int i, const char* what) const {
  if (i < 0 || i >= n_) fail("state pool ", what, ": slot ", i, " is outside [0, ", n_, ")");
}

float* HostStatePool::slot(int i) {
  check_slot(i, "slot");
  return data_.data() + size_t(i) * floats_;
}

void HostStatePool::write(int slot_index, const float* state) {
  std::memcpy(slot(slot_index), state, floats_ * sizeof(float));
}

void HostStatePool::read(int slot_index, float* state) const {
  check_slot(slot_index, "read");
  std::memcpy(state, data_.data() + size_t(slot_index) * floats_, floats_ * sizeof(float));
}

void HostStatePool::copy(int dst, int src) {
  check_slot(dst, "copy");
  check_slot(src, "copy");
  if (dst != src) std::memcpy(slot(dst), slot(src), floats_ * sizeof(float));
}

namespace {

// The host addresses of the B states a pooled call runs on, after every check.
std::vector<float*> pooled_states(const Model& model, StatePool& pool, const int* slots, int B) {
  check_pool_slots(pool, model.state_spec().floats, slots, B);
  auto* host = dynamic_cast<HostStatePool*>(&pool);
  if (!host) fail("state pool belongs to another device/model: this model runs on the CPU");
  std::vector<float*> states(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b) states[size_t(b)] = host->slot(slots[b]);
  return states;
}

}  // namespace
}  // namespace rwkv::model

namespace rwkv {

std::unique_ptr<StatePool> Model::new_state_pool(int n) const {
  return std::make_unique<model::HostStatePool>(*this, n);
}

void Model::step_pooled(const int* tokens, int B, StatePool& pool, const int* slots,
                        float* logits) {
  const std::vector<float*> states = model::pooled_states(*this, pool, slots, B);
  step(tokens, B, states.data(), logits);
}

void Model::forward_pooled(const int* tokens, int B, int T, StatePool& pool, const int* slots,
                           float* logits, LogitsMode mode) {
  if (T < 1) fail("forward over ", T, " tokens per sequence (need at least 1)");
  const std::vector<float*> states = model::pooled_states(*this, pool, slots, B);
  forward(tokens, B, T, states.data(), logits, mode);
}

}  // namespace rwkv
