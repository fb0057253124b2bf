// Priority heatmap. Top-k: each patch coloured by its Batch Priority Routing score (the
// model's scorer: top-1 gate, sum of gates, minus entropy, random or learned) and
// labelled with its BPR rank (1 = routed first).
// Experts-choice: each patch coloured by its largest gate (no processing order).
#include <algorithm>
#include <numeric>

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include "core/error.hpp"
#include "spec/router.hpp"
#include "viz/layer_view.hpp"

namespace vmoe::viz {

Picture priority_heatmap(const RouteResult& r, size_t layer) {
  const MoeLayerTrace& t = r.main.trace.layers.at(layer);
  if (!t.router->draws(RouteView::priority_heatmap)) fail("priority heatmap: layer {} is a Soft-MoE layer", t.layer);
  const bool top_k = t.k > 0;  // per-token choices and BPR scores
  if (!top_k && t.gates.empty()) fail("priority heatmap: layer {} trace has no gates", t.layer);
  const TokenGrid g = token_grid(r);
  const int N = g.tokens(), E = t.num_experts;
  std::vector<float> value(N);
  for (int n = 0; n < N; ++n) {
    if (top_k) value[n] = t.priority_score.empty() ? t.choice_gate[static_cast<size_t>(n) * t.k] : t.priority_score[n];
    else value[n] = *std::max_element(t.gates.begin() + static_cast<ptrdiff_t>(n) * E, t.gates.begin() + static_cast<ptrdiff_t>(n + 1) * E);
  }
  // BPR rank: score descending, ties keep token order (DESIGN §4).
  std::vector<int> order(N), rank(N);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return value[a] > value[b]; });
  for (int i = 0; i < N; ++i) rank[order[i]] = i + 1;
  const float lo = *std::min_element(value.begin(), value.end()), hi = *std::max_element(value.begin(), value.end());
  auto unit = [&](float v) { return hi > lo ? (v - lo) / (hi - lo) : 1.0; };
  constexpr int kMap = cv::COLORMAP_VIRIDIS;

  const int scale = main_scale(r.config);
  cv::Mat panel = faded(input_bgr(r.pixels, r.config.image, scale), 0.6);
  for (int n = 0; n < N; ++n) {
    if (g.is_cls(n)) continue;
    const cv::Rect cell = g.cell(n, scale);
    tint(panel, cell, colormap_colour(kMap, unit(value[n])), 0.7);
    if (top_k) put_centred(panel, std::to_string(rank[n]), cell, 0.42);
  }
  draw_patch_grid(panel, r.config, scale);

  Legend legend;
  legend.heading(top_k ? fmt::format("BPR priority: {}", to_string(t.priority)) : "router confidence");
  legend.colour_bar(kMap, top_k ? fmt::format("{} score", to_string(t.priority)) : "largest gate", fmt::format("{:.3f}", lo), fmt::format("{:.3f}", hi));
  if (top_k) {
    legend.text("number: BPR rank, 1 = first");
    legend.text(t.batch_priority ? "(this run used BPR)" : "(this run was vanilla: by position)");
    const LayerCounts n = count_layer(t);
    legend.text(fmt::format("capacity {} x {} experts", n.capacity, E));
  }
  if (g.has_cls)
    cls_legend(
        legend, r, [&](cv::Mat& m) { m.setTo(colormap_colour(kMap, unit(value[0]))); },
        top_k ? fmt::format("score {:.3f}, rank {}", value[0], rank[0]) : fmt::format("gate {:.3f}", value[0]));

  const std::string what =
      top_k ? fmt::format("priority ({}) and BPR rank", to_string(t.priority)) : std::string("largest gate per patch");
  const auto title = layer_title(r, t, what, {fmt::format("gates from {:.3f} to {:.3f}; uniform router = {:.3f}", lo, hi, 1.0 / E)});
  cv::Rect at;
  cv::Mat page = compose(title, panel, legend.render(), &at);
  return make_picture(r, t, top_k ? "priority" : "gates", std::move(page), at, scale);
}

}  // namespace vmoe::viz
