// Model loading: detect the generation, hand the checkpoint to that generation's loader.
#include "model/rwkv7.h"
#include "rwkv/error.h"
#include "rwkv/model.h"

namespace rwkv {

std::unique_ptr<Model> load_model(std::shared_ptr<const Checkpoint> checkpoint,
                                  const LoadOptions& options) {
  const ModelInfo info = detect_model(*checkpoint);
  if (info.generation == "x070") return model::load_rwkv7(std::move(checkpoint), info, options);
  fail(checkpoint->path(), ": ", info.family, " (generation ", info.generation,
       ") is recognised but not supported yet; supported: RWKV-7 (x070)");
}

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  return load_model(std::make_shared<const Checkpoint>(Checkpoint::open(path)), options);
}

}  // namespace rwkv
