// RWKV-7 "Goose" (x070), spec §2.4 (recurrent) and §4.5 (chunked parallel form).
#pragma once
#include <memory>

#include "rwkv/model.h"

namespace rwkv::model {

std::unique_ptr<Model> load_rwkv7(std::shared_ptr<const Checkpoint> checkpoint,
                                  const ModelInfo& info, const LoadOptions& options);

}  // namespace rwkv::model
