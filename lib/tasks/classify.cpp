#include "tasks/classify.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"
#include "io/image.hpp"
#include "spec/router.hpp"

namespace vmoe {

std::vector<ClassScore> top_classes(const float* logits, const ModelConfig& config, int top_n) {
  const int C = config.num_classes;
  const float mx = *std::max_element(logits, logits + C);
  std::vector<double> probs(C);
  double sum = 0;
  for (int i = 0; i < C; ++i) sum += probs[i] = std::exp(double{logits[i]} - mx);
  std::vector<int> order(C);
  std::iota(order.begin(), order.end(), 0);
  const int n = std::clamp(top_n, 0, C);
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](int a, int b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
  std::vector<ClassScore> top;
  for (int i = 0; i < n; ++i) top.push_back({order[i], config.label(order[i]), static_cast<float>(probs[order[i]] / sum)});
  return top;
}

std::vector<Prediction> classify_files(Engine& engine, const std::vector<std::string>& paths, int top_n, int max_batch) {
  const ModelConfig& c = engine.config();
  const int group = engine.routing() ? engine.routing()->group_images : 1;
  const int batch = std::max(group, max_batch / group * group);
  const int64_t image_size = int64_t{c.image.height} * c.image.width * c.image.channels;
  std::vector<float> images(static_cast<size_t>(batch) * image_size);
  std::vector<float> logits(static_cast<size_t>(batch) * c.num_classes);
  std::vector<Prediction> out;
  RoutingTrace trace;
  for (size_t first = 0; first < paths.size(); first += batch) {
    const int B = static_cast<int>(std::min<size_t>(batch, paths.size() - first));
    for (int b = 0; b < B; ++b) load_image(images.data() + b * image_size, paths[first + b], c.image);
    engine.forward(logits.data(), images.data(), B, &trace);
    for (int b = 0; b < B; ++b) {
      Prediction p;
      p.image = paths[first + b];
      const float* l = logits.data() + static_cast<size_t>(b) * c.num_classes;
      p.logits.assign(l, l + c.num_classes);
      p.top = top_classes(l, c, top_n);
      for (const MoeLayerTrace& t : trace.layers)
        p.moe.push_back({t.layer, t.router->drops() ? t.capacity_of_image(b) : 0, t.dropped_fraction(b),
                         t.dropped_choice_fraction(b)});
      out.push_back(std::move(p));
    }
  }
  return out;
}

}  // namespace vmoe
