// The bytes tokenizer (id = byte value, for byte-level models) and the shared decode loop.
#include <cstdint>

#include "rwkv/error.h"
#include "rwkv/tokenizer.h"

namespace rwkv {
namespace {

class BytesTokenizer : public Tokenizer {
 public:
  std::string name() const override { return "bytes"; }

  std::vector<int> encode(std::string_view bytes) const override {
    std::vector<int> ids(bytes.size());
    for (size_t i = 0; i < bytes.size(); ++i) ids[i] = uint8_t(bytes[i]);
    return ids;
  }

  std::string decode(int id) const override {
    if (id < 0 || id >= vocab_size()) {
      fail("token id ", id, " is outside the bytes vocabulary (0..", vocab_size() - 1, ")");
    }
    return std::string(1, char(id));
  }

  int vocab_size() const override { return 256; }
};

}  // namespace

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::string out;
  for (int id : ids) out += decode(id);
  return out;
}

std::unique_ptr<Tokenizer> make_bytes_tokenizer() { return std::make_unique<BytesTokenizer>(); }

}  // namespace rwkv
