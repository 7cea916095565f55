// The RWKV-7 training loop (see trainer.h).
#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "ops/ops.h"
#include "rwkv/checkpoint.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/init.h"
#include "rwkv/model.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/train_net.h"
#include "train/train_state.h"

namespace rwkv::train {

// ---- configuration -------------------------------------------------------------------------

// Every field once, for to_json and from_json.
#define RWKV_TRAIN_FIELDS(X)                                                                  \
  X(init_from) X(layers) X(embd) X(head_size) X(vocab) X(ffn) X(data) X(tokenizer)             \
  X(vocab_file) X(order) X(ctx_len) X(batch) X(bptt) X(grad_accum) X(reset_at_eod) X(steps) X(warmup_steps)  \
  X(exit_tokens) X(lr_init) X(lr_final) X(beta1) X(beta2) X(adam_eps) X(weight_decay)          \
  X(grad_clip) X(l2wrap) X(seed) X(out_dir) X(save_every) X(save_dtype) X(wkv_chunk)           \
  X(recompute) X(threads) X(device)

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j;
#define X(f) j[#f] = f;
  RWKV_TRAIN_FIELDS(X)
#undef X
  return j;
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) fail("training config: expected a JSON object");
  TrainConfig c;
  for (const auto& [key, value] : j.items()) {
    bool known = false;
    try {
#define X(f)                      \
  if (key == #f) {                \
    value.get_to(c.f);            \
    known = true;                 \
  }
      RWKV_TRAIN_FIELDS(X)
#undef X
    } catch (const nlohmann::json::exception&) {
      fail("training config: '", key, "' has the wrong type (", value.dump(), ")");
    }
    if (!known) fail("training config: unknown key '", key, "'");
  }
  return c;
}

void TrainConfig::validate() const {
  if (out_dir.empty()) fail("training: an output directory is required");
  if (ctx_len < 1 || batch < 1 || bptt < 1) {
    fail("training: ctx_len, batch and bptt must be ≥ 1 (got ", ctx_len, ", ", batch, ", ", bptt, ")");
  }
  if (steps < 1) fail("training: steps must be ≥ 1, got ", steps);
  if (order != "random" && order != "magic_prime" && order != "sequential") {
    fail("training: order must be random, magic_prime or sequential, not '", order, "'");
  }
  if (bptt > 1 && order != "sequential") fail("training: bptt > 1 needs order sequential");
  if (grad_accum < 1) fail("training: grad_accum must be ≥ 1, got ", grad_accum);
  if (grad_accum > 1 && order == "sequential") {
    fail("training: grad_accum > 1 needs order random or magic_prime (sequential rows carry state)");
  }
  if (save_dtype != "bf16" && save_dtype != "fp32") fail("training: save_dtype must be bf16 or fp32");
  if (save_every < 0) fail("training: save_every must be ≥ 0");
  if (wkv_chunk < 1) fail("training: wkv_chunk must be ≥ 1");
  if (grad_clip < 0 || l2wrap < 0 || weight_decay < 0) {
    fail("training: grad_clip, l2wrap and weight_decay must be ≥ 0");
  }
  parse_device(device);
}

namespace {

using Clock = std::chrono::steady_clock;

// A new model with the official initialisation, or the tensors of `init_from`, on c.device.
std::unique_ptr<TrainNet> make_model(const TrainConfig& c) {
  const model::Rwkv7Train<float>::Options options{c.wkv_chunk, c.recompute, c.reset_at_eod};
  if (!c.init_from.empty()) {
    const Checkpoint ckpt = Checkpoint::open(c.init_from);
    return make_train_net(ckpt.tensors(), ckpt.path(), c.device, options);
  }
  InitConfig init;
  init.generation = "x070";
  init.n_layer = c.layers;
  init.n_embd = c.embd;
  init.vocab_size = c.vocab;
  init.head_size = c.head_size;
  init.dim_ffn = c.ffn;
  init.seed = c.seed;
  init.dtype = DType::F32;
  const OwnedTensors tensors = init_rwkv7(init);
  return make_train_net(tensors.tensors, "new RWKV-7", c.device, options);
}

// Batch rows of the sequential order: row b walks the data's whole windows in order from its
// own start, wrapping around (where its state restarts from zero).
struct SequentialWindows {
  size_t windows = 0;  // whole windows of ctx_len + 1 tokens (overlapping by one)
  int ctx = 0, batch = 0;
  SequentialWindows(size_t tokens, int ctx_len, int rows) : ctx(ctx_len), batch(rows) {
    if (tokens < size_t(ctx_len) + 1) {
      fail("training: context ", ctx_len, " is longer than the data (", tokens, " tokens)");
    }
    windows = (tokens - 1) / size_t(ctx_len);
  }
  size_t index(int64_t k, int row) const {
    return (size_t(row) * windows / size_t(batch) + size_t(k)) % windows;
  }
};

class Run {
 public:
  Run(const TrainConfig& c, const TokenData& data) : c_(c), data_(data) {}

  void go(bool resume, const std::function<void(const StepReport&)>& on_step);

 private:
  void load_state(const std::string& path);
  void save(int64_t step_done);
  double step(int64_t step, double lr, double* grad_norm);

  const TrainConfig& c_;
  const TokenData& data_;
  std::unique_ptr<TrainNet> net_;
  std::vector<float> carried_;
  std::vector<ParamGroup> groups_;
  std::unique_ptr<WindowSampler> sampler_;
  std::unique_ptr<SequentialWindows> sequential_;
  int64_t start_step_ = 0, tokens_ = 0;
  double elapsed_before_ = 0;
  Clock::time_point started_ = Clock::now();
};

void Run::load_state(const std::string& path) {
  const TrainState st = load_train_state(path);
  const auto need = [&](const char* name, size_t n) -> const std::vector<float>& {
    const std::vector<float>* a = st.find(name);
    if (!a || a->size() != n) {
      fail(path, ": array '", name, "' is missing or has the wrong size for this model");
    }
    return *a;
  };
  const size_t total = net_->table().total;
  net_->write_state(need("params", total), need("adam_m", total), need("adam_v", total));
  carried_ = need("carried_states", carried_.size());
  try {
    start_step_ = st.meta.at("step").get<int64_t>();
    tokens_ = st.meta.at("tokens").get<int64_t>();
    elapsed_before_ = st.meta.at("elapsed_s").get<double>();
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": bad metadata: ", e.what());
  }
}

void Run::save(int64_t step_done) {
  // One copy of the state (from the device, for a GPU run) serves both files.
  std::vector<float> params, m, v;
  net_->read_state(params, m, v);
  std::vector<std::vector<uint8_t>> storage;
  const DType dtype = c_.save_dtype == "fp32" ? DType::F32 : DType::BF16;
  save_pth(c_.out_dir + "/model.pth", model::export_rwkv7_tensors(net_->table(), params.data(), dtype, storage));
  TrainState st;
  const double elapsed = elapsed_before_ + std::chrono::duration<double>(Clock::now() - started_).count();
  st.meta = {{"step", step_done}, {"tokens", tokens_}, {"elapsed_s", elapsed}, {"config", c_.to_json()}};
  st.arrays.emplace_back("params", std::move(params));
  st.arrays.emplace_back("adam_m", std::move(m));
  st.arrays.emplace_back("adam_v", std::move(v));
  st.arrays.emplace_back("carried_states", carried_);
  save_train_state(c_.out_dir + "/train_state.bin", st);
}

// One optimiser step's forward and backward; returns the mean loss (without L2Wrap).
double Run::step(int64_t step, double lr, double* grad_norm) {
  const int B = c_.batch, T = c_.ctx_len, W = c_.bptt;
  const size_t S = net_->dims().state_floats();
  net_->zero_grads();
  std::vector<int> inputs(size_t(B) * T), targets(size_t(B) * T);
  double loss = 0;
  if (!sequential_) {
    // backward() adds into the gradients: micro-batch i of step s is sampler step s·A + i, its
    // loss weighted 1/A so that the sum is the mean over all A·B windows.
    const int A = c_.grad_accum;
    for (int i = 0; i < A; ++i) {
      sampler_->batch(step * A + i, inputs.data(), targets.data());
      net_->forward(0, inputs.data(), B, T, nullptr, nullptr);
      loss += net_->loss(0, targets.data(), c_.l2wrap, 1.0 / A) / A;
      net_->backward(0, nullptr, nullptr);
    }
  } else {
    // W windows per row with the state carried through them, the gradient flowing back through
    // the state across them; the final state is carried to the next step, detached.
    std::vector<std::vector<float>> states(size_t(W) + 1, std::vector<float>(size_t(B) * S));
    std::vector<std::vector<char>> restart(size_t(W), std::vector<char>(size_t(B), 0));
    states[0] = carried_;
    std::vector<int> window(size_t(T) + 1);
    for (int w = 0; w < W; ++w) {
      const int64_t k = step * W + w;
      for (int b = 0; b < B; ++b) {
        const size_t index = sequential_->index(k, b);
        if (index == 0 && k > 0) {  // wrapped around: this row starts over
          restart[size_t(w)][size_t(b)] = 1;
          std::fill_n(states[size_t(w)].begin() + std::ptrdiff_t(size_t(b) * S), S, 0.f);
        }
        data_.read(index * size_t(T), size_t(T) + 1, window.data());
        std::copy_n(window.begin(), T, inputs.begin() + std::ptrdiff_t(size_t(b) * T));
        std::copy_n(window.begin() + 1, T, targets.begin() + std::ptrdiff_t(size_t(b) * T));
      }
      net_->forward(w, inputs.data(), B, T, states[size_t(w)].data(), states[size_t(w) + 1].data());
      // Each window's loss is its own mean: weight it 1/W in the step's mean.
      loss += net_->loss(w, targets.data(), c_.l2wrap, 1.0 / W) / W;
    }
    std::vector<float> dstate(size_t(B) * S), dprev(size_t(B) * S);
    for (int w = W - 1; w >= 0; --w) {
      net_->backward(w, w + 1 < W ? dstate.data() : nullptr, w > 0 ? dprev.data() : nullptr);
      if (w == 0) break;
      for (int b = 0; b < B; ++b) {  // a restarted row's state did not come from the window before
        if (restart[size_t(w)][size_t(b)]) std::fill_n(dprev.begin() + std::ptrdiff_t(size_t(b) * S), S, 0.f);
      }
      dstate.swap(dprev);
    }
    carried_ = states[size_t(W)];
  }
  *grad_norm = net_->clip_grad_norm(c_.grad_clip);
  if (!std::isfinite(loss) || !std::isfinite(*grad_norm)) {
    fail("training: step ", step, " gave a non-finite loss (", loss, ") or gradient norm (",
         *grad_norm, "); lower the learning rate or check the data");
  }
  AdamW adam{float(c_.beta1), float(c_.beta2), float(c_.adam_eps)};
  net_->adamw_step(adam, groups_, float(lr), step + 1);
  return loss;
}

void Run::go(bool resume, const std::function<void(const StepReport&)>& on_step) {
  c_.validate();
  if (c_.threads > 0) ops::cpu::set_num_threads(c_.threads);
  std::error_code ec;
  std::filesystem::create_directories(c_.out_dir, ec);
  if (ec) fail(c_.out_dir, ": cannot create the output directory: ", ec.message());
  net_ = make_model(c_);
  carried_.assign(size_t(c_.batch) * net_->dims().state_floats(), 0.f);
  groups_ = official_param_groups(net_->table(), float(c_.weight_decay));
  if (c_.order == "sequential") {
    sequential_ = std::make_unique<SequentialWindows>(data_.size(), c_.ctx_len, c_.batch);
  } else {
    sampler_ = std::make_unique<WindowSampler>(data_, c_.ctx_len, c_.batch,
                                               WindowSampler::parse_order(c_.order), c_.seed);
  }
  const std::string state_path = c_.out_dir + "/train_state.bin";
  if (resume) load_state(state_path);
  if (!resume) {
    const std::string text = c_.to_json().dump(2) + "\n";
    write_file_atomic(c_.out_dir + "/config.json", text.data(), text.size());
  }
  LrSchedule schedule{c_.lr_init, c_.lr_final, c_.warmup_steps,
                      c_.exit_tokens > 0 ? c_.exit_tokens
                                         : std::max(c_.steps, c_.warmup_steps + 1) * c_.tokens_per_step(),
                      c_.tokens_per_step()};
  schedule.validate();
  TrainLog log(c_.out_dir + "/log.csv", start_step_);
  started_ = Clock::now();
  for (int64_t s = start_step_; s < c_.steps; ++s) {
    const auto t0 = Clock::now();
    const double lr = schedule.lr(s);
    double grad_norm = 0;
    const double loss = step(s, lr, &grad_norm);
    tokens_ += c_.tokens_per_step();
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - t0).count();
    const double run_time = std::chrono::duration<double>(now - started_).count();
    StepReport report;
    report.row = {s, tokens_, loss, lr, grad_norm, double(c_.tokens_per_step()) / dt,
                  elapsed_before_ + run_time};
    report.total_steps = c_.steps;
    report.eta_s = run_time / double(s + 1 - start_step_) * double(c_.steps - s - 1);
    log.append(report.row);
    const bool last = s + 1 == c_.steps;
    if (last || (c_.save_every > 0 && (s + 1) % c_.save_every == 0)) {
      save(s + 1);
      write_loss_svg(c_.out_dir + "/loss.svg", read_log_csv(log.path()));
    }
    if (on_step) on_step(report);
  }
}

}  // namespace

void train(const TrainConfig& config, const TokenData& data, bool resume,
           const std::function<void(const StepReport&)>& on_step) {
  Run run(config, data);
  run.go(resume, on_step);
}

}  // namespace rwkv::train
