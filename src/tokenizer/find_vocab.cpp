// Finding the World vocabulary file: --vocab, beside the model, or $RWKV_VOCAB.
#include <cstdlib>
#include <filesystem>

#include "rwkv/error.h"
#include "rwkv/tokenizer.h"

namespace rwkv {

const char* const kWorldVocabFileName = "rwkv_vocab_v20230424.txt";

namespace {

bool is_file(const std::string& path) {
  std::error_code ec;  // an unreadable directory counts as "not there", not as a crash
  return std::filesystem::is_regular_file(path, ec);
}

}  // namespace

std::string find_world_vocab(const std::string& explicit_path, const std::string& model_path) {
  if (!explicit_path.empty()) {
    if (!is_file(explicit_path)) fail("vocabulary file ", explicit_path, " does not exist");
    return explicit_path;
  }
  std::string looked;
  if (!model_path.empty()) {
    const std::string beside =
        (std::filesystem::path(model_path).parent_path() / kWorldVocabFileName).string();
    if (is_file(beside)) return beside;
    looked = cat(beside, " (beside the model), ");
  }
  const char* env = std::getenv("RWKV_VOCAB");
  if (env != nullptr && *env != '\0') {
    if (is_file(env)) return env;
    looked += cat("$RWKV_VOCAB = ", env, " (no such file)");
  } else {
    looked += "$RWKV_VOCAB (not set)";
  }
  fail("no World vocabulary found; looked at ", looked, ". The official World vocabulary ",
       kWorldVocabFileName,
       " is distributed with the official RWKV repositories (BlinkDL/ChatRWKV"
       " rwkv_pip_package/src/rwkv/, BlinkDL/RWKV-LM) and the `rwkv` pip package;"
       " pass it with --vocab or set RWKV_VOCAB");
}

}  // namespace rwkv
