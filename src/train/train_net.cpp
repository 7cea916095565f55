// The CPU and GPU TrainNets (train_net.h).
#include "train/train_net.h"


#include "model/rwkv7_train_cuda.h"
#include "rwkv/error.h"
#include "rwkv/model.h"

namespace rwkv::train {
namespace {

class CpuNet final : public TrainNet {
 public:
  CpuNet(const std::vector<TensorView>& tensors, const std::string& source) : net_(tensors, source) {
    m_.assign(net_.table().total, 0.f);
    v_.assign(net_.table().total, 0.f);
  }
  void set_options(const model::Rwkv7Train<float>::Options& o) { net_.set_options(o); }
  const model::Rwkv7Dims& dims() const override { return net_.dims(); }
  const model::ParamTable& table() const override { return net_.table(); }
  void zero_grads() override { net_.zero_grads(); }
  void forward(int window, const int* tokens, int B, int T, const float* state_in, float* state_out) override {
    net_.forward(tape(window), tokens, B, T, state_in, state_out);
  }
  double loss(int window, const int* targets, double l2wrap, double weight) override {
    return net_.loss(tape(window), targets, l2wrap, nullptr, weight);
  }
  void backward(int window, const float* dstate_out, float* dstate_in) override {
    net_.backward(tape(window), dstate_out, dstate_in);
  }
  double clip_grad_norm(double max_norm) override {
    return train::clip_grad_norm(net_.grads(), net_.table().total, max_norm);
  }
  void adamw_step(const AdamW& adam, const std::vector<ParamGroup>& groups, float lr, int64_t t) override {
    adam.step(net_.params(), net_.grads(), m_.data(), v_.data(), groups, lr, t);
  }
  void read_state(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) override {
    params.assign(net_.params(), net_.params() + net_.table().total);
    m = m_;
    v = v_;
  }
  void write_state(const std::vector<float>& params, const std::vector<float>& m,
                   const std::vector<float>& v) override {
    std::copy(params.begin(), params.end(), net_.params());
    m_ = m;
    v_ = v;
  }

 private:
  model::Rwkv7Tape<float>& tape(int window) {
    while (int(tapes_.size()) <= window) tapes_.push_back(std::make_unique<model::Rwkv7Tape<float>>());
    return *tapes_[size_t(window)];
  }
  model::Rwkv7Train<float> net_;
  std::vector<float> m_, v_;
  std::vector<std::unique_ptr<model::Rwkv7Tape<float>>> tapes_;
};

#ifdef RWKV_WITH_CUDA
class GpuNet final : public TrainNet {
 public:
  GpuNet(const std::vector<TensorView>& tensors, const std::string& source, int device)
      : net_(tensors, source, device) {}
  void set_options(const model::Rwkv7Train<float>::Options& o) { net_.set_options(o); }
  const model::Rwkv7Dims& dims() const override { return net_.dims(); }
  const model::ParamTable& table() const override { return net_.table(); }
  void zero_grads() override { net_.zero_grads(); }
  void forward(int window, const int* tokens, int B, int T, const float* state_in, float* state_out) override {
    net_.forward(window, tokens, B, T, state_in, state_out);
  }
  double loss(int window, const int* targets, double l2wrap, double weight) override {
    return net_.loss(window, targets, l2wrap, nullptr, weight);
  }
  void backward(int window, const float* dstate_out, float* dstate_in) override {
    net_.backward(window, dstate_out, dstate_in);
  }
  double clip_grad_norm(double max_norm) override {
    const double norm = net_.grad_norm();
    // The clip coefficient is applied inside the AdamW step rather than by a pass of its own.
    scale_ = float(clip_factor(norm, max_norm));
    return norm;
  }
  void adamw_step(const AdamW& adam, const std::vector<ParamGroup>& groups, float lr, int64_t t) override {
    const AdamW::Corrections c = adam.check(lr, t);
    std::vector<model::Rwkv7TrainCuda::AdamWGroup> g;
    for (const ParamGroup& p : groups) g.push_back({p.offset, p.count, lr * p.lr_scale, p.weight_decay});
    net_.adamw(g, adam.beta1, adam.beta2, adam.eps, c.c1, c.c2, scale_);
    scale_ = 1.f;
  }
  void read_state(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) override {
    const size_t n = net_.table().total;
    params.resize(n), m.resize(n), v.resize(n);
    net_.read_params(params.data());
    net_.read_moments(m.data(), v.data());
  }
  void write_state(const std::vector<float>& params, const std::vector<float>& m,
                   const std::vector<float>& v) override {
    net_.write_params(params.data());
    net_.write_moments(m.data(), v.data());
  }

 private:
  model::Rwkv7TrainCuda net_;
  float scale_ = 1.f;  // clip coefficient for the next AdamW step
};
#endif

}  // namespace

std::unique_ptr<TrainNet> make_train_net(const std::vector<TensorView>& tensors, const std::string& source,
                                         const std::string& device,
                                         const model::Rwkv7Train<float>::Options& options) {
  const int gpu = parse_device(device);
  if (gpu < 0) {
    auto net = std::make_unique<CpuNet>(tensors, source);
    net->set_options(options);
    return net;
  }
#ifdef RWKV_WITH_CUDA
  auto net = std::make_unique<GpuNet>(tensors, source, gpu);
  net->set_options(options);
  return net;
#else
  fail("training on ", device, ": this build has no CUDA backend (nvcc was not found when it was built)");
#endif
}

}  // namespace rwkv::train
