// WKV-7 for training in its chunked form on tensor cores (wkv7_chunked.cu): the same contract as
// wkv7_train.h's sequential kernels (checkpoints, S·a) but for document resets, which it does not
// take. wkv7_train_forward and _backward choose it (Wkv7Form).
#pragma once
#include "ops/cuda/wkv7_train.h"

namespace rwkv::cuda {

// Whether the chunked kernels take p: no resets, N ∈ {32, 64}, rows 16-byte aligned.
bool wkv7_chunked_applies(const Wkv7Train& p);
void wkv7_chunked_forward(Context& ctx, const Wkv7Train& p);
void wkv7_chunked_backward(Context& ctx, const Wkv7Train& p, const Wkv7TrainGrads& g);

}  // namespace rwkv::cuda
