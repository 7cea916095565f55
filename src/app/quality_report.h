// What quantizing costs a model, measured on a text: the original model's logits (parallel form)
// against the quantized model's as it decodes (recurrent form, one token at a time: the 8-bit
// input products a user's generation runs through).
#pragma once
#include <string>
#include <vector>

#include "rwkv/model.h"

namespace rwkv::app {

struct QualityReport {
  size_t positions = 0;  // predictions compared (tokens − 1)
  double nll_original = 0, nll_quantized = 0;  // mean cross-entropy of the next token, nats
  double top1_agreement = 0;                   // share of positions with the same argmax
  double mean_kl = 0;                          // mean KL(original ‖ quantized), nats
  double perplexity_original() const;
  double perplexity_quantized() const;
};

// tokens must hold at least 2 ids below both models' vocabulary (the same).
QualityReport compare_models(Model& original, Model& quantized, const std::vector<int>& tokens);

// A few paragraphs of plain English for the report when no text is given.
const std::string& sample_text();

}  // namespace rwkv::app
