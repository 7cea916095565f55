// Runtime-dispatched SIMD twins of ops::train::wkv7_train_forward / wkv7_train_backward for fp32
// (ops/cpu/simd_wkv7_train.cpp). Same contract as the templates in ops/train.h — strides,
// checkpoints every `chunk` rows, overwritten gradients, dS0 may alias dS_T — and the same
// arithmetic, so results differ from the float template only by rounding (summation order,
// fused multiply-adds, exp). Any head size N, not only multiples of the vector length.
// Thread-safe: scratch is per thread, so heads may run on parallel threads as the model runs
// them.
#pragma once
#include "ops/train.h"

namespace rwkv::ops::cpu {

void wkv7_train_forward(const train::Wkv7Train<float>& head);
// `scratch` (train::wkv7_train_scratch(chunk, N) floats) is accepted for the template's
// signature but not used: the kernel works in a per-thread buffer laid out for its vectors
// (rows padded to the vector length), which stays in cache from one head to the next.
void wkv7_train_backward(const train::Wkv7Train<float>& head, const float* dy, const float* dS_T,
                         float* dr, float* dw, float* dk, float* dv, float* da, float* db,
                         float* dS0, float* scratch);

}  // namespace rwkv::ops::cpu
