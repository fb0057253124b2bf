#include "tasks/importance.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/error.hpp"
#include "spec/router.hpp"

namespace vmoe {
namespace {

// log softmax(logits)[y], in double.
double log_prob_of(const float* logits, int classes, int y) {
  double top = logits[0];
  for (int c = 1; c < classes; ++c) top = std::max(top, double{logits[c]});
  double sum = 0;
  for (int c = 0; c < classes; ++c) sum += std::exp(double{logits[c]} - top);
  return double{logits[y]} - top - std::log(sum);
}

int argmax(const float* v, int n) { return static_cast<int>(std::max_element(v, v + n) - v); }

// Puts the engine's routing back when the importance passes are done (or threw).
class KeepRouting {
 public:
  explicit KeepRouting(Engine& e) : engine_(e), saved_(*e.routing()) {}
  ~KeepRouting() { engine_.set_routing(saved_); }
  KeepRouting(const KeepRouting&) = delete;
  KeepRouting& operator=(const KeepRouting&) = delete;

 private:
  Engine& engine_;
  MoeConfig saved_;
};

// Variants per forward pass: at most this many floats of residual states (64 MiB).
constexpr int64_t kMaxVariantFloats = int64_t{16} << 20;

}  // namespace

std::vector<float> PatchImportance::block_scores(int j) const {
  std::vector<float> out(static_cast<size_t>(images) * tokens);
  for (int b = 0; b < images; ++b) std::copy(of(b, j), of(b, j) + tokens, out.begin() + static_cast<size_t>(b) * tokens);
  return out;
}

PatchImportance patch_importance(Engine& engine, const float* images, int B, bool keep_inputs) {
  const ModelConfig& c = engine.config();
  if (!c.moe || c.moe->layers.empty()) fail("importance: the model is dense, it has no MoE output to remove");
  if (!c.moe->router->drops())
    fail("importance: the {} router drops nothing, so there is no kept importance to measure (docs/ROUTING.md)",
         c.moe->router->name());
  if (B < 1) fail("importance: batch of {} images", B);
  const KeepRouting keep(engine);
  MoeConfig reference = inference_routing(*c.moe);
  reference.group_images = 1;
  if (reference.router->top_k_options()) reference.dropless = true;
  engine.set_routing(reference);

  const int T = c.num_tokens(), D = c.hidden_size, C = c.num_classes;
  PatchImportance imp;
  imp.images = B, imp.tokens = T;
  std::vector<float> logits(static_cast<size_t>(B) * C);
  std::vector<MoeTap> taps;
  imp.reference.detail = true;
  engine.forward(logits.data(), images, B, &imp.reference, nullptr, &taps);
  for (MoeTap& tap : taps) {
    imp.blocks.push_back(tap.block);
    if (keep_inputs) imp.inputs.push_back(std::move(tap.normed));
  }
  const int L = static_cast<int>(imp.blocks.size());
  imp.predicted.resize(B);
  imp.log_prob.resize(B);
  for (int b = 0; b < B; ++b) {
    imp.predicted[b] = argmax(logits.data() + static_cast<size_t>(b) * C, C);
    imp.log_prob[b] = static_cast<float>(log_prob_of(logits.data() + static_cast<size_t>(b) * C, C, imp.predicted[b]));
  }
  imp.values.assign(static_cast<size_t>(B) * L * T, 0.0f);

  const int64_t image_floats = int64_t{T} * D;
  const int max_variants = static_cast<int>(std::clamp<int64_t>(kMaxVariantFloats / image_floats, 1, 1024));
  struct Variant {
    int image, token;
  };
  std::vector<Variant> variants;
  std::vector<float> states, variant_logits;
  for (int j = 0; j < L; ++j) {
    const MoeTap& tap = taps[j];
    // Every (image, token) whose routed output is not zero, i.e. that some expert took.
    variants.clear();
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        const size_t row = (static_cast<size_t>(b) * T + t) * D;
        if (std::memcmp(tap.after.data() + row, tap.without_routed.data() + row, sizeof(float) * D) != 0)
          variants.push_back({b, t});
      }
    for (size_t first = 0; first < variants.size(); first += max_variants) {
      const int V = static_cast<int>(std::min<size_t>(max_variants, variants.size() - first));
      states.resize(static_cast<size_t>(V) * image_floats);
      for (int v = 0; v < V; ++v) {
        const auto [b, t] = variants[first + v];
        float* s = states.data() + static_cast<size_t>(v) * image_floats;
        std::memcpy(s, tap.after.data() + static_cast<size_t>(b) * image_floats, sizeof(float) * image_floats);
        std::memcpy(s + static_cast<size_t>(t) * D, tap.without_routed.data() + (static_cast<size_t>(b) * T + t) * D,
                    sizeof(float) * D);
      }
      variant_logits.resize(static_cast<size_t>(V) * C);
      engine.forward_from(variant_logits.data(), states.data(), V, tap.block + 1);
      for (int v = 0; v < V; ++v) {
        const auto [b, t] = variants[first + v];
        const double without = log_prob_of(variant_logits.data() + static_cast<size_t>(v) * C, C, imp.predicted[b]);
        imp.values[(static_cast<size_t>(b) * L + j) * T + t] = static_cast<float>(imp.log_prob[b] - without);
      }
    }
  }
  return imp;
}

std::optional<KeptShare> importance_kept(const PatchImportance& imp, int image, int j, const MoeLayerTrace& trace,
                                         int model_k) {
  const float* v = imp.of(image, j);
  const int T = imp.tokens;
  if (trace.tokens_per_image != T) fail("importance kept: the trace has {} tokens an image, not {}", trace.tokens_per_image, T);
  const int all = trace.router->all_choices(trace, model_k);
  double total = 0, any = 0, kept_all = 0;
  for (int t = 0; t < T; ++t) {
    if (!(v[t] > 0)) continue;
    const int taken = trace.times_taken.at(static_cast<size_t>(image) * T + t);
    total += v[t];
    if (taken > 0) any += v[t];
    if (taken >= all) kept_all += v[t];
  }
  if (!(total > 0)) return std::nullopt;
  return KeptShare{any / total, kept_all / total};
}

namespace {
std::vector<double> average_ranks(const std::vector<float>& x) {
  std::vector<size_t> order(x.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
  std::vector<double> rank(x.size());
  for (size_t i = 0; i < order.size();) {
    size_t end = i;
    while (end + 1 < order.size() && x[order[end + 1]] == x[order[i]]) ++end;
    const double r = 0.5 * static_cast<double>(i + end);
    for (size_t q = i; q <= end; ++q) rank[order[q]] = r;
    i = end + 1;
  }
  return rank;
}
}  // namespace

double spearman(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) fail("spearman: {} values against {}", a.size(), b.size());
  if (a.size() < 2) return 0;
  const std::vector<double> ra = average_ranks(a), rb = average_ranks(b);
  const double n = static_cast<double>(a.size()), mean = (n - 1) / 2;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (ra[i] - mean) * (rb[i] - mean);
    saa += (ra[i] - mean) * (ra[i] - mean);
    sbb += (rb[i] - mean) * (rb[i] - mean);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 0.0;
}

}  // namespace vmoe
