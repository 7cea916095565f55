// Generation and hyper-parameters from key names and shapes (spec §1.3).
#include <algorithm>
#include <cstdlib>
#include <map>

#include "rwkv/error.h"
#include "rwkv/model.h"

namespace rwkv {
namespace {

int max_block_index(const Checkpoint& ckpt) {
  int max_index = -1;
  for (const TensorView& t : ckpt.tensors()) {
    if (t.name.rfind("blocks.", 0) != 0) continue;
    max_index = std::max(max_index, std::atoi(t.name.c_str() + 7));
  }
  return max_index;
}

const TensorView& need(const Checkpoint& ckpt, const std::string& name, size_t ndim) {
  const TensorView* t = ckpt.find(name);
  if (!t) {
    fail(ckpt.path(), ": not an RWKV checkpoint: missing tensor '", name, "'");
  }
  if (t->shape.size() != ndim) {
    fail(ckpt.path(), ": tensor '", name, "' has shape ", t->shape_str(), ", expected ", ndim,
         " dimensions");
  }
  return *t;
}

bool is_rwkvcpp(const Checkpoint& ckpt) { return ckpt.format() == "rwkv.cpp"; }

// Width of a LoRA from its down matrix: official files store it (in, out) = (C, D); rwkv.cpp's
// converter transposes v6's time_maa_w1/time_decay_w1 and all v7 LoRA matrices (spec §1.4).
int lora_width(const Checkpoint& ckpt, const std::string& name) {
  const TensorView& t = need(ckpt, name, 2);
  return int(is_rwkvcpp(ckpt) ? t.dim(0) : t.dim(1));
}

// The dtype holding the most matrix (>= 2-D) elements: rwkv.cpp files keep emb/head in fp32
// next to quantized blocks, so head.weight does not tell.
DType most_common_matrix_dtype(const Checkpoint& ckpt) {
  std::map<DType, size_t> elems;
  for (const TensorView& t : ckpt.tensors())
    if (t.shape.size() >= 2) elems[t.dtype] += size_t(t.numel());
  DType best = DType::F32;
  size_t best_elems = 0;
  for (const auto& [dtype, n] : elems)
    if (n > best_elems) best = dtype, best_elems = n;
  return best;
}

}  // namespace

ModelInfo detect_model(const Checkpoint& ckpt) {
  ModelInfo info;
  const TensorView& emb = need(ckpt, "emb.weight", 2);
  info.vocab_size = int(emb.dim(0));
  info.n_embd = int(emb.dim(1));
  info.n_layer = max_block_index(ckpt) + 1;
  if (info.n_layer <= 0) fail(ckpt.path(), ": not an RWKV checkpoint: no 'blocks.N.' tensors");
  info.file_dtype = need(ckpt, "head.weight", 2).dtype;
  if (is_rwkvcpp(ckpt)) info.file_dtype = most_common_matrix_dtype(ckpt);
  const std::string b = "blocks.0.att.", b1 = info.n_layer > 1 ? "blocks.1.att." : b;
  info.dim_att = int(need(ckpt, b + "key.weight", 2).dim(0));
  info.dim_ffn = int(need(ckpt, "blocks.0.ffn.key.weight", 2).dim(0));
  for (const TensorView& t : ckpt.tensors()) info.n_params += size_t(t.numel());

  // Rows are checked in order; a later match overrides (as ChatRWKV does).
  if (ckpt.find(b + "r_k") || ckpt.find(b + "k_k")) {
    const TensorView& r_k = need(ckpt, b + "r_k", 2);
    info.generation = "x070";
    info.family = "RWKV-7 Goose";
    info.n_head = int(r_k.dim(0));
    info.head_size = int(r_k.dim(1));
    info.lora = {{"decay", lora_width(ckpt, b + "w1")}, {"iclr", lora_width(ckpt, b + "a1")},
                 {"value", ckpt.find(b1 + "v1") ? lora_width(ckpt, b1 + "v1") : 0},
                 {"gate", lora_width(ckpt, b + "g1")}};
  } else if (ckpt.find(b + "time_maa_x")) {
    info.generation = "x060";
    info.family = "RWKV-6 Finch";
    // (H, N); rwkv.cpp stores it as (H, N, 1)
    info.n_head = int(need(ckpt, b + "time_faaaa", is_rwkvcpp(ckpt) ? 3 : 2).dim(0));
    info.head_size = info.dim_att / std::max(1, info.n_head);
    info.lora = {{"mix", lora_width(ckpt, b + "time_maa_w1") / 5},
                 {"decay", lora_width(ckpt, b + "time_decay_w1")}};
  } else if (ckpt.find(b + "ln_x.weight")) {
    const TensorView* decay = ckpt.find(b + "time_decay");
    if (!decay) fail(ckpt.path(), ": missing tensor '", b, "time_decay'");
    info.n_head = int(decay->dim(0));
    info.head_size = info.dim_att / std::max(1, info.n_head);
    if (!ckpt.find(b + "gate.weight")) {
      info.generation = "5.0";
    } else if (is_rwkvcpp(ckpt) ? decay->numel() == decay->dim(0)  // (H, 1, 1) vs (H, N, 1)
                                : decay->shape.size() == 1) {
      info.generation = "5.1";
    } else {
      info.generation = "5.2";
    }
    info.family = "RWKV-5 Eagle";
  } else {
    info.generation = "4";
    info.family = "RWKV-4";
  }
  return info;
}

}  // namespace rwkv
