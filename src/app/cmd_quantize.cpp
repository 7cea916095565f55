// rwkv quantize IN OUT --type int8|int4 [--group N]: an official checkpoint's projections as
// symmetric int8/int4 blocks (model/quantize.h) in a safetensors file every command loads, and
// with --report what that costs: each tensor's error, then perplexity, top-1 agreement and KL
// divergence of the quantized model (decoding) against the original on a text.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "app/common.h"
#include "app/quality_report.h"
#include "model/quantize.h"
#include "ops/ops.h"
#include "rwkv/error.h"
#include "rwkv/file_io.h"

namespace rwkv::app {
namespace {

struct QuantizeArgs {
  std::string in, out, type, text;
  int group = model::QuantizeOptions{}.group;
  bool keep_embedding = false, report = false, json = false;
  int report_tokens = 512;
  int threads = 0;
  TokenizerOptions tokenizer;
};

double mb(size_t bytes) { return double(bytes) / 1e6; }

void check_paths(const QuantizeArgs& a) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(a.out, ec) && fs::equivalent(a.in, a.out, ec)) {
    fail("quantize: the output ", a.out, " is the input file; write to a new file");
  }
}

void print_report(const model::QuantizedCheckpoint& q, const QualityReport& quality,
                  const std::string& original_dtype, const std::string& quantized_dtype,
                  const std::string& text_name, bool json) {
  if (json) {
    nlohmann::json j;
    for (const auto& e : q.errors) {
      j["tensors"].push_back({{"name", e.name}, {"shape", e.shape}, {"from", dtype_name(e.from)},
                              {"to", dtype_name(e.to)}, {"rel_rms_error", e.rel_rms},
                              {"max_abs_error", e.max_abs}, {"max_abs_weight", e.max_weight}});
    }
    j["text"] = {{"source", text_name},
                 {"positions", quality.positions},
                 {"perplexity_original", quality.perplexity_original()},
                 {"perplexity_quantized", quality.perplexity_quantized()},
                 {"top1_agreement", quality.top1_agreement},
                 {"mean_kl", quality.mean_kl}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("\n%-40s %-14s %-8s %14s %12s %10s\n", "tensor", "shape", "type", "rel. RMS error",
              "max |error|", "max |w|");
  double sum = 0;
  const model::TensorError* worst = nullptr;
  for (const auto& e : q.errors) {
    const std::string shape = TensorView{e.name, e.to, e.shape, nullptr}.shape_str();
    std::printf("%-40s %-14s %-8s %14.4f %12.3g %10.3g\n", e.name.c_str(), shape.c_str(),
                dtype_name(e.to), e.rel_rms, e.max_abs, e.max_weight);
    sum += e.rel_rms;
    if (!worst || e.rel_rms > worst->rel_rms) worst = &e;
  }
  if (worst) {
    std::printf("%zu tensors: rel. RMS error mean %.4f, worst %.4f (%s)\n", q.errors.size(),
                sum / double(q.errors.size()), worst->rel_rms, worst->name.c_str());
  }
  const double po = quality.perplexity_original(), pq = quality.perplexity_quantized();
  std::printf("\n%s: %zu next-token predictions (original: parallel form; quantized: decoding)\n",
              text_name.c_str(), quality.positions);
  std::printf("  perplexity  original (%s) %.3f   quantized (%s) %.3f   %+.2f%%\n",
              original_dtype.c_str(), po, quantized_dtype.c_str(), pq, 100 * (pq / po - 1));
  std::printf("  top-1 agreement %.1f%%   mean KL(original || quantized) %.4f nats\n",
              100 * quality.top1_agreement, quality.mean_kl);
}

void run(const QuantizeArgs& a) {
  if (a.threads > 0) ops::cpu::set_num_threads(a.threads);
  check_paths(a);
  const auto t0 = std::chrono::steady_clock::now();
  auto ckpt = std::make_shared<const Checkpoint>(Checkpoint::open(a.in));
  // Load it as a model first: a file that is not an RWKV checkpoint is refused before any work.
  auto original = load_model(ckpt);
  model::QuantizeOptions opt;
  opt.bits = a.type == "int4" ? 4 : 8;
  opt.group = a.group;
  opt.quantize_embedding = !a.keep_embedding;
  const model::QuantizedCheckpoint q = model::quantize_checkpoint(*ckpt, opt);
  const std::string what = cat(a.type, " in groups of ", a.group);
  save_safetensors(a.out, q.tensors,
                   {{"rwkv.source", std::filesystem::path(a.in).filename().string()},
                    {"rwkv.quantization", cat(what, a.keep_embedding ? ", embedding as stored" : ", embedding int8")}});
  const double seconds = seconds_since(t0);
  // The output must load like any model file.
  auto quantized = load_model(a.out);
  if (!a.json) {
    std::printf("wrote %s: %s (%s), %zu tensors quantized, %zu kept; %.1f MB -> %.1f MB (%.2fx) in %.1f s\n",
                a.out.c_str(), what.c_str(), dtype_name(model::quantized_dtype(opt.bits, a.group)),
                q.errors.size(), q.tensors.size() - q.errors.size(), mb(q.bytes_in), mb(q.bytes_out),
                double(q.bytes_in) / double(std::max<size_t>(q.bytes_out, 1)), seconds);
    for (const std::string& note : q.notes) std::printf("  note: %s\n", note.c_str());
  }
  if (!a.report) return;
  std::string text_name = "built-in sample text";
  std::string text = sample_text();
  if (!a.text.empty()) {
    text = read_file(a.text);
    text_name = a.text;
  }
  const auto tok = a.tokenizer.load(a.in, original->info().vocab_size);
  std::vector<int> ids = tok->encode(text);
  if (a.report_tokens > 0 && ids.size() > size_t(a.report_tokens)) ids.resize(size_t(a.report_tokens));
  const QualityReport quality = compare_models(*original, *quantized, ids);
  print_report(q, quality, dtype_name(original->weight_dtype()), dtype_name(quantized->weight_dtype()),
               text_name, a.json);
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "quantize", "write an official checkpoint's weight matrices as int8 or int4 (safetensors)");
  cmd->add_option("input", a->in, "official checkpoint (.pth or .safetensors)")->required();
  cmd->add_option("output", a->out, "quantized model file to write (.safetensors)")->required();
  cmd->add_option("--type", a->type, "int8 or int4 (symmetric, one fp16 scale per group)")
      ->required()->check(CLI::IsMember({"int8", "int4"}));
  cmd->add_option("--group", a->group, "weights per scale: 32, 64 or 128")
      ->check(CLI::IsMember({32, 64, 128}))
      ->capture_default_str();
  cmd->add_flag("--keep-embedding", a->keep_embedding,
                "keep the embedding as stored (default: int8, the same group)");
  cmd->add_flag("--report", a->report,
                "print each tensor's error, then perplexity, top-1 agreement and KL divergence "
                "of the quantized model against the original on a text");
  cmd->add_option("--text", a->text, "text file for --report (default: a built-in sample)");
  cmd->add_option("--report-tokens", a->report_tokens, "tokens of the text --report uses (0 = all)")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "print the --report as JSON");
  cmd->add_option("-t,--threads", a->threads, "CPU threads (0 = all cores)");
  a->tokenizer.add(*cmd);
  cmd->callback([a] { run(*a); });
}

}  // namespace rwkv::app
