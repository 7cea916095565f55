// rwkv train: trains an RWKV-7 on the CPU (new model or --init-from an official checkpoint),
// configured by flags and/or a JSON file, with a live progress line; --resume DIR continues a
// run exactly where its last checkpoint left it.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "app/common.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"
#include "rwkv/tokenizer.h"
#include "train/trainer.h"

namespace rwkv::app {
namespace {

struct TrainArgs {
  train::TrainConfig c;
  std::string config_file, resume;
  bool quiet = false;
};

// A binidx dataset (PREFIX, PREFIX.bin or PREFIX.idx), or a text file tokenized whole.
train::TokenData load_data(const train::TrainConfig& c) {
  if (c.data.empty()) fail("training: --data is required");
  namespace fs = std::filesystem;
  const std::string& p = c.data;
  const auto ends = [&](const char* s) { return p.size() > 4 && p.compare(p.size() - 4, 4, s) == 0; };
  if (ends(".bin") || ends(".idx") || fs::exists(p + ".idx")) return train::TokenData::open(p);
  if (c.tokenizer != "bytes" && c.tokenizer != "world") {
    fail("training: --tokenizer must be bytes or world, not '", c.tokenizer, "'");
  }
  const std::string text = read_file(p);
  const auto tokenizer = c.tokenizer == "bytes" ? make_bytes_tokenizer()
                                                : load_world_tokenizer(find_world_vocab(c.vocab_file, ""));
  std::vector<int> tokens = tokenizer->encode(text);
  if (tokens.empty()) fail(p, ": no text to train on");
  return train::TokenData(std::move(tokens));
}

std::string duration(double s) {
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(s) % 60);
  }
  return buf;
}

void run(TrainArgs& a, const std::vector<std::string>& explicit_flags) {
  train::TrainConfig c = a.c;
  if (!a.resume.empty()) {
    // The run's own config; flags given now may extend it (e.g. more --steps).
    c = train::TrainConfig::from_json(read_json_file(a.resume + "/config.json"));
    for (const std::string& f : explicit_flags) {
      if (f == "steps") c.steps = a.c.steps;
      else if (f == "save_every") c.save_every = a.c.save_every;
      else if (f == "threads") c.threads = a.c.threads;
      else if (f == "device") c.device = a.c.device;
      else if (f != "resume" && f != "quiet") fail("training: --", f, " cannot change on --resume");
    }
    c.out_dir = a.resume;
  } else if (!a.config_file.empty()) {
    nlohmann::json j = read_json_file(a.config_file);
    for (const std::string& f : explicit_flags) {
      if (f != "config" && f != "quiet") j[f] = a.c.to_json()[f];  // flags override the file
    }
    c = train::TrainConfig::from_json(j);
  }
  const train::TokenData data = load_data(c);
  const bool tty = isatty(STDERR_FILENO);
  std::fprintf(stderr, "training on %zu tokens (%s), %d×%d tokens per step, %lld steps → %s\n",
               data.size(), data.source().c_str(), c.batch * c.grad_accum, c.ctx_len * c.bptt,
               static_cast<long long>(c.steps), c.out_dir.c_str());
  // A terminal gets the line redrawn every step; a log file one line every 5 s (and the last).
  auto last_line = std::chrono::steady_clock::now() - std::chrono::hours(1);
  train::train(c, data, !a.resume.empty(), [&](const train::StepReport& r) {
    if (a.quiet) return;
    const bool last = r.row.step + 1 == r.total_steps;
    const auto now = std::chrono::steady_clock::now();
    if (!tty && !last && now - last_line < std::chrono::seconds(5)) return;
    last_line = now;
    std::fprintf(stderr, "%sstep %lld/%lld | loss %.4f | %.0f tok/s | lr %.3g | ETA %s%s",
                 tty ? "\r\033[K" : "", static_cast<long long>(r.row.step + 1),
                 static_cast<long long>(r.total_steps), r.row.loss, r.row.tokens_per_s, r.row.lr,
                 duration(r.eta_s).c_str(), tty && !last ? "" : "\n");
  });
  std::printf("saved %s/model.pth (and train_state.bin, log.csv, loss.svg)\n", c.out_dir.c_str());
}

}  // namespace

void register_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  train::TrainConfig& c = a->c;
  CLI::App* cmd = app.add_subcommand("train", "train an RWKV-7 on the CPU or a GPU (new or --init-from)");
  cmd->add_option("--config", a->config_file, "JSON file with any of the options below (flags win)");
  cmd->add_option("--resume", a->resume, "continue the run in this output directory");
  cmd->add_option("-o,--out", c.out_dir, "output directory");
  cmd->add_option("--data", c.data, "binidx prefix (.bin/.idx) or a text file");
  cmd->add_option("--tokenizer", c.tokenizer, "for text data: bytes or world")->capture_default_str();
  cmd->add_option("--vocab", c.vocab_file, "World vocabulary file (tokenizer world)");
  cmd->add_option("--init-from", c.init_from, "fine-tune this official RWKV-7 checkpoint");
  cmd->add_option("--layers", c.layers, "new model: layers")->capture_default_str();
  cmd->add_option("--embd", c.embd, "new model: width")->capture_default_str();
  cmd->add_option("--head-size", c.head_size, "new model: head size")->capture_default_str();
  cmd->add_option("--vocab-size", c.vocab, "new model: vocabulary (256 bytes, 65536 World)")
      ->capture_default_str();
  cmd->add_option("--ffn", c.ffn, "new model: FFN width (0 = 4 × embd)")->capture_default_str();
  cmd->add_option("--order", c.order, "random | magic_prime | sequential (state passing)")
      ->capture_default_str();
  cmd->add_option("--ctx", c.ctx_len, "tokens per window")->capture_default_str();
  cmd->add_option("--batch", c.batch, "windows per step")->capture_default_str();
  cmd->add_option("--bptt", c.bptt, "sequential: windows per step the gradient flows through")
      ->capture_default_str();
  cmd->add_option("--grad-accum", c.grad_accum, "micro-batches per optimizer step")
      ->capture_default_str();
  cmd->add_flag("--reset-at-eod", c.reset_at_eod,
               "restart the state at every token 0 (documents do not see each other)");
  cmd->add_option("--steps", c.steps)->capture_default_str();
  cmd->add_option("--warmup-steps", c.warmup_steps)->capture_default_str();
  cmd->add_option("--exit-tokens", c.exit_tokens, "tokens where the cosine ends (0 = at --steps)")
      ->capture_default_str();
  cmd->add_option("--lr-init", c.lr_init)->capture_default_str();
  cmd->add_option("--lr-final", c.lr_final)->capture_default_str();
  cmd->add_option("--beta1", c.beta1)->capture_default_str();
  cmd->add_option("--beta2", c.beta2)->capture_default_str();
  cmd->add_option("--adam-eps", c.adam_eps)->capture_default_str();
  cmd->add_option("--weight-decay", c.weight_decay)->capture_default_str();
  cmd->add_option("--grad-clip", c.grad_clip, "0 = off")->capture_default_str();
  cmd->add_option("--l2wrap", c.l2wrap, "L2Wrap factor (0 = off)")->capture_default_str();
  cmd->add_option("--seed", c.seed)->capture_default_str();
  cmd->add_option("--save-every", c.save_every, "steps between checkpoints (0 = at the end)")
      ->capture_default_str();
  cmd->add_option("--save-dtype", c.save_dtype, "bf16 | fp32")->capture_default_str();
  cmd->add_option("--wkv-chunk", c.wkv_chunk, "rows between saved WKV states")->capture_default_str();
  cmd->add_flag("--recompute", c.recompute, "save only block inputs; redo blocks in the backward");
  cmd->add_option("--threads", c.threads, "0 = all cores")->capture_default_str();
  cmd->add_option("--device", c.device, "cpu, cuda or cuda:N (bf16 mixed precision on the GPU)")
      ->capture_default_str();
  cmd->add_flag("-q,--quiet", a->quiet, "no progress line");
  cmd->callback([a, cmd] {
    // Which options were given explicitly, by config key (--save-every → save_every).
    std::vector<std::string> given;
    for (const CLI::Option* o : cmd->get_options()) {
      if (o->count() == 0 || o->get_lnames().empty()) continue;
      std::string key = o->get_lnames()[0];
      for (char& ch : key) ch = ch == '-' ? '_' : ch;
      if (key == "out") key = "out_dir";
      else if (key == "vocab") key = "vocab_file";
      else if (key == "vocab_size") key = "vocab";
      else if (key == "ctx") key = "ctx_len";
      else if (key == "init_from") key = "init_from";
      given.push_back(key);
    }
    run(*a, given);
  });
}

}  // namespace rwkv::app
