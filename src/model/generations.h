// One loader per generation (one file each: rwkv4.cpp, rwkv5.cpp, rwkv6.cpp, rwkv7.cpp), chosen by
// load_model from the detected generation.
#pragma once
#include <memory>

#include "rwkv/model.h"

namespace rwkv::model {

std::unique_ptr<Model> load_rwkv4(std::shared_ptr<const Checkpoint> checkpoint,
                                  const ModelInfo& info, const LoadOptions& options);
// 5.0, 5.1 and 5.2.
std::unique_ptr<Model> load_rwkv5(std::shared_ptr<const Checkpoint> checkpoint,
                                  const ModelInfo& info, const LoadOptions& options);
std::unique_ptr<Model> load_rwkv6(std::shared_ptr<const Checkpoint> checkpoint,
                                  const ModelInfo& info, const LoadOptions& options);
std::unique_ptr<Model> load_rwkv7(std::shared_ptr<const Checkpoint> checkpoint,
                                  const ModelInfo& info, const LoadOptions& options);
// Any generation on a GPU (model/cuda/; a build without nvcc throws rwkv::Error saying so).
std::unique_ptr<Model> load_cuda_model(std::shared_ptr<const Checkpoint> checkpoint,
                                       const ModelInfo& info, const LoadOptions& options);

}  // namespace rwkv::model
