// Model loading: detect the generation, hand the checkpoint to that generation's loader.
#include <charconv>

#include "model/generations.h"
#include "rwkv/error.h"
#include "rwkv/model.h"

namespace rwkv {

std::unique_ptr<Model> load_model(std::shared_ptr<const Checkpoint> checkpoint,
                                  const LoadOptions& options) {
  const ModelInfo info = detect_model(*checkpoint);
  const std::string& g = info.generation;
  if (options.backend == Backend::Cuda) return model::load_cuda_model(std::move(checkpoint), info, options);
  if (g == "x070") return model::load_rwkv7(std::move(checkpoint), info, options);
  if (g == "x060") return model::load_rwkv6(std::move(checkpoint), info, options);
  if (g == "5.0" || g == "5.1" || g == "5.2") return model::load_rwkv5(std::move(checkpoint), info, options);
  if (g == "4") return model::load_rwkv4(std::move(checkpoint), info, options);
  fail(checkpoint->path(), ": unknown generation '", g, "'");
}

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  return load_model(std::make_shared<const Checkpoint>(Checkpoint::open(path)), options);
}

int parse_device(const std::string& device) {
  if (device == "cpu") return -1;
  if (device == "cuda") return 0;
  const std::string index = device.starts_with("cuda:") ? device.substr(5) : "";
  int n = -1;
  const auto [end, ec] = std::from_chars(index.data(), index.data() + index.size(), n);
  if (index.empty() || ec != std::errc() || end != index.data() + index.size() || n < 0) {
    fail("device '", device, "': expected cpu, cuda or cuda:N (N a GPU index: 0, 1, ...)");
  }
  return n;
}

}  // namespace rwkv
