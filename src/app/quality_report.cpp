#include "app/quality_report.h"

#include <algorithm>
#include <cmath>

#include "rwkv/error.h"

namespace rwkv::app {

namespace {

// Window of the original model's parallel form: its logits are window × V floats.
constexpr int kWindow = 128;

// log-softmax of V logits, in fp64.
void log_softmax(const float* logits, size_t V, std::vector<double>& out) {
  out.resize(V);
  double top = logits[0];
  for (size_t i = 1; i < V; ++i) top = std::max(top, double(logits[i]));
  double sum = 0;
  for (size_t i = 0; i < V; ++i) sum += std::exp(double(logits[i]) - top);
  const double log_sum = top + std::log(sum);
  for (size_t i = 0; i < V; ++i) out[i] = double(logits[i]) - log_sum;
}

size_t argmax(const std::vector<double>& v) {
  return size_t(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace

double QualityReport::perplexity_original() const { return std::exp(nll_original); }
double QualityReport::perplexity_quantized() const { return std::exp(nll_quantized); }

QualityReport compare_models(Model& original, Model& quantized, const std::vector<int>& tokens) {
  const size_t V = size_t(original.info().vocab_size);
  if (quantized.info().vocab_size != original.info().vocab_size) {
    fail("quality report: the models' vocabularies differ (", V, " and ", quantized.info().vocab_size, ")");
  }
  if (tokens.size() < 2) fail("quality report: the text is ", tokens.size(), " token(s); at least 2 are needed");
  std::vector<float> state_a(original.state_spec().floats), state_b(quantized.state_spec().floats);
  original.init_state(state_a.data());
  quantized.init_state(state_b.data());
  float* sa[] = {state_a.data()};
  float* sb[] = {state_b.data()};
  std::vector<float> logits_a(size_t(kWindow) * V), logits_b(V);
  std::vector<double> la, lb;
  QualityReport r;
  size_t agree = 0;
  const size_t T = tokens.size() - 1;  // the last token predicts nothing we can check
  for (size_t t0 = 0; t0 < T; t0 += kWindow) {
    const int n = int(std::min<size_t>(kWindow, T - t0));
    original.forward(tokens.data() + t0, 1, n, sa, logits_a.data(), LogitsMode::All);
    for (int i = 0; i < n; ++i) {
      const size_t t = t0 + size_t(i);
      quantized.step(&tokens[t], 1, sb, logits_b.data());
      log_softmax(logits_a.data() + size_t(i) * V, V, la);
      log_softmax(logits_b.data(), V, lb);
      const size_t next = size_t(tokens[t + 1]);
      r.nll_original -= la[next];
      r.nll_quantized -= lb[next];
      agree += argmax(la) == argmax(lb);
      double kl = 0;
      for (size_t v = 0; v < V; ++v) kl += std::exp(la[v]) * (la[v] - lb[v]);
      r.mean_kl += kl;
    }
  }
  r.positions = T;
  r.nll_original /= double(T);
  r.nll_quantized /= double(T);
  r.mean_kl /= double(T);
  r.top1_agreement = double(agree) / double(T);
  return r;
}

const std::string& sample_text() {
  static const std::string text =
      "The old lighthouse stood at the end of a narrow stone pier, and for more than a century "
      "its lamp had turned every night without fail. The keepers kept a logbook in which they "
      "wrote the weather, the ships that passed and the small repairs they made. Most entries "
      "are short: wind from the west, light rain, two fishing boats returned before dark. A few "
      "are longer, written on nights when storms pushed the sea over the pier and the keepers "
      "climbed the spiral stairs every hour to clean salt from the glass.\n\n"
      "When the light was finally automated, the last keeper moved to a house in the village. "
      "He still walked to the pier each evening to watch the lamp come on, and he told visitors "
      "that the machine was reliable but did not notice the things a person notices: the colour "
      "of the sky before a gale, the way the gulls gathered on the rocks, the sound of the bell "
      "buoy when the tide turned.\n\n"
      "Bread is one of the oldest prepared foods. Flour and water are mixed into a dough, which "
      "is kneaded to develop gluten, left to rise while yeast produces carbon dioxide, shaped, "
      "and baked. A hot oven sets the crust quickly, and steam in the first minutes lets the loaf "
      "expand before the surface hardens. Bakers adjust the amount of water to the flour: strong "
      "flour absorbs more, and a wetter dough gives a more open crumb.\n\n"
      "In mathematics, a prime number is a whole number greater than one whose only divisors are "
      "one and itself. The first few primes are 2, 3, 5, 7, 11 and 13. Every whole number greater "
      "than one can be written as a product of primes in exactly one way, apart from the order "
      "of the factors. There are infinitely many primes: if there were a largest one, multiplying "
      "all the primes together and adding one would give a number that none of them divides.\n\n"
      "The train left the city a little after seven. Through the window the suburbs gave way to "
      "fields, then to low hills covered in pine, and the river appeared and disappeared beside "
      "the track. Most passengers were reading or asleep. At the third station a family got on "
      "with two children, a dog and a large basket of apples, and the carriage suddenly felt "
      "warmer and louder, as if the day had properly begun.\n";
  return text;
}

}  // namespace rwkv::app
