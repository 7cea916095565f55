// The `rwkv` command. Every subcommand lives in its own file and registers itself here.
#include <cstdio>

#include "app/common.h"
#include "rwkv/error.h"

int main(int argc, char** argv) {
  CLI::App app{"rwkv: run, inspect and benchmark RWKV language models"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every subcommand");
  rwkv::app::register_generate(app);
  rwkv::app::register_chat(app);
  rwkv::app::register_logits(app);
  rwkv::app::register_tokenize(app);
  rwkv::app::register_bench(app);
  rwkv::app::register_info(app);
  rwkv::app::register_init(app);
  rwkv::app::register_grad(app);
  rwkv::app::register_train(app);
  rwkv::app::register_bench_train(app);
  rwkv::app::register_tokenize_data(app);
  rwkv::app::register_eval(app);
  rwkv::app::register_serve(app);
  rwkv::app::register_quantize(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const rwkv::Error& e) {
    std::fprintf(stderr, "rwkv: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rwkv: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
