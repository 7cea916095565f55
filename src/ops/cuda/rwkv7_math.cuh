// RWKV-7's per-channel preparation of the WKV inputs (spec §2.4), shared by the layer-by-layer
// kernel (rwkv7_prepare_kernel) and the fused decode step (rwkv7_step.cu), so the formulas live
// in one place.
#pragma once
#include "ops/cuda/device_math.cuh"

namespace rwkv::cuda {

// e^{−1/2}: the log-decay is −e^{−1/2}·σ(z) (spec §2.4).
constexpr float kRwkv7DecayScale = 0.60653066f;

struct Rwkv7Channel {
  float w;  // log-decay, ≤ 0
  float k;  // the key after the in-context rate's replacement
  float a;  // −κ̂
  float b;  // κ̂·α
};

// From the key k, its normalised κ̂ (kh), and the LoRA pre-activations w0 + w_lora and
// a0 + a_lora; k_a the key's replacement rate.
__device__ __forceinline__ Rwkv7Channel rwkv7_channel(float k, float kh, float w_pre, float a_pre, float k_a) {
  const float alpha = sigmoidf(a_pre);
  return {-kRwkv7DecayScale * sigmoidf(w_pre), k * (1.f + (alpha - 1.f) * k_a), -kh, kh * alpha};
}

// The value after layer 0: mixed towards layer 0's value by σ(v0 + v_lora).
__device__ __forceinline__ float rwkv7_value(float v, float v_first, float v_pre) {
  return v + (v_first - v) * sigmoidf(v_pre);
}

}  // namespace rwkv::cuda
