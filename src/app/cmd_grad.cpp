// rwkv grad: the mean cross-entropy of one batch and every parameter's gradient, written as
// raw float32 files named by official key (the conformance tool against PyTorch).
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "app/common.h"
#include "model/rwkv7_train.h"
#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"

namespace rwkv::app {
namespace {

struct GradArgs {
  std::string model, batch, out, precision = "fp32";
};

// {"input_ids": [[...], ...], "targets": [[...], ...]}: B rows of T ids each.
struct Batch {
  int B = 0, T = 0;
  std::vector<int> inputs, targets;
};

std::vector<int> read_rows(const nlohmann::json& j, const char* key, const std::string& path,
                           int& B, int& T) {
  if (!j.contains(key) || !j[key].is_array() || j[key].empty()) {
    fail(path, ": '", key, "' must be a non-empty array of token-id arrays");
  }
  std::vector<int> out;
  const int rows = int(j[key].size());
  for (int b = 0; b < rows; ++b) {
    const auto& row = j[key][size_t(b)];
    if (!row.is_array() || row.empty()) fail(path, ": ", key, "[", b, "] must be a non-empty array");
    if (b == 0) T = int(row.size());
    if (int(row.size()) != T) fail(path, ": ", key, "[", b, "] has ", row.size(), " ids, row 0 has ", T);
    for (const auto& v : row) {
      if (!v.is_number_integer()) fail(path, ": ", key, "[", b, "] holds a non-integer");
      out.push_back(v.get<int>());
    }
  }
  B = rows;
  return out;
}

Batch read_batch(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  Batch batch;
  int B2 = 0, T2 = 0;
  batch.inputs = read_rows(j, "input_ids", path, batch.B, batch.T);
  batch.targets = read_rows(j, "targets", path, B2, T2);
  if (B2 != batch.B || T2 != batch.T) {
    fail(path, ": targets are ", B2, "×", T2, " but input_ids are ", batch.B, "×", batch.T);
  }
  return batch;
}

template <class R>
void run_grad(const GradArgs& a, const Checkpoint& ckpt, const Batch& batch) {
  model::Rwkv7Train<R> net(ckpt.tensors(), ckpt.path());
  model::Rwkv7Tape<R> tape;
  net.forward(tape, batch.inputs.data(), batch.B, batch.T, nullptr, nullptr);
  const double loss = net.loss(tape, batch.targets.data(), 0.0);
  net.backward(tape, nullptr, nullptr);
  std::error_code ec;
  std::filesystem::create_directories(a.out, ec);
  if (ec) fail(a.out, ": cannot create the output directory: ", ec.message());
  char text[64];
  std::snprintf(text, sizeof text, "%.17g\n", loss);
  write_file_atomic(a.out + "/loss.txt", text, std::strlen(text));
  std::vector<float> buf;
  for (const model::ParamTensor& t : net.table().tensors) {
    buf.assign(net.grads() + t.offset, net.grads() + t.offset + t.numel);
    write_file_atomic(a.out + "/" + t.name + ".f32", buf.data(), buf.size() * sizeof(float));
  }
  std::printf("loss %.9g over %d×%d tokens; %zu gradients written to %s\n", loss, batch.B,
              batch.T, net.table().tensors.size(), a.out.c_str());
}

}  // namespace

void register_grad(CLI::App& app) {
  auto a = std::make_shared<GradArgs>();
  CLI::App* cmd = app.add_subcommand(
      "grad", "mean cross-entropy of a batch and every parameter's gradient (RWKV-7)");
  cmd->add_option("-m,--model", a->model, "official-layout checkpoint (.pth or .safetensors)")
      ->required();
  cmd->add_option("--batch", a->batch, R"(JSON file {"input_ids": [[...]], "targets": [[...]]})")
      ->required();
  cmd->add_option("-o,--out", a->out, "directory for loss.txt and <key>.f32 files")->required();
  cmd->add_option("--precision", a->precision, "fp32 (training) or fp64")
      ->check(CLI::IsMember({"fp32", "fp64"}))
      ->capture_default_str();
  cmd->callback([a] {
    const Checkpoint ckpt = Checkpoint::open(a->model);
    const Batch batch = read_batch(a->batch);
    if (a->precision == "fp64") {
      run_grad<double>(*a, ckpt, batch);
    } else {
      run_grad<float>(*a, ckpt, batch);
    }
  });
}

}  // namespace rwkv::app
