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

HeatScale heat_scale(const std::vector<float>& values) {
  HeatScale s;
  if (values.empty()) return s;
  s.lo = *std::min_element(values.begin(), values.end());
  s.hi = *std::max_element(values.begin(), values.end());
  return s;
}

std::vector<int> descending_ranks(const std::vector<float>& values) {
  const int N = static_cast<int>(values.size());
  std::vector<int> order(N), rank(N);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return values[a] > values[b]; });
  for (int i = 0; i < N; ++i) rank[order[i]] = i + 1;
  return rank;
}

cv::Mat heat_panel(const RouteResult& r, const std::vector<float>& values, bool ranks, const MoeLayerTrace* drops,
                   int scale) {
  const TokenGrid g = token_grid(r);
  const HeatScale h = heat_scale(values);
  const std::vector<int> rank = descending_ranks(values);
  cv::Mat panel = faded(input_bgr(r.pixels, r.config.image, scale), 0.6);
  for (int n = 0; n < g.tokens(); ++n) {
    if (g.is_cls(n)) continue;
    const cv::Rect cell = g.cell(n, scale);
    tint(panel, cell, colormap_colour(cv::COLORMAP_VIRIDIS, h.unit(values[n])), 0.7);
    // Only a cross over tokens no expert took: greying would hide the colour.
    if (drops && drop_state(*drops, n) == DropState::dropped)
      draw_cross(panel, cell, cv::Scalar(30, 30, 220), std::max(2, cell.width / 24));
    if (ranks) put_centred(panel, std::to_string(rank[n]), cell, 0.42);
  }
  draw_patch_grid(panel, r.config, scale);
  return panel;
}

std::vector<float> priority_values(const MoeLayerTrace& t) {
  const int N = static_cast<int>(t.num_tokens()), E = t.num_experts;
  std::vector<float> value(N);
  for (int n = 0; n < N; ++n) {
    if (t.k > 0) value[n] = t.priority_score.empty() ? t.choice_gate[static_cast<size_t>(n) * t.k] : t.priority_score[n];
    else value[n] = *std::max_element(t.gates.begin() + static_cast<ptrdiff_t>(n) * E, t.gates.begin() + static_cast<ptrdiff_t>(n + 1) * E);
  }
  return value;
}

Picture priority_heatmap(const RouteResult& r, size_t layer) {
  const MoeLayerTrace& t = r.main.trace.layers.at(layer);
  if (!t.router->draws(RouteView::priority_heatmap)) fail("priority heatmap: layer {} is a Soft-MoE layer", t.layer);
  const bool top_k = t.k > 0;  // per-token choices and BPR scores
  if (!top_k && t.gates.empty()) fail("priority heatmap: layer {} trace has no gates", t.layer);
  const TokenGrid g = token_grid(r);
  const int E = t.num_experts;
  const std::vector<float> value = priority_values(t);
  const std::vector<int> rank = descending_ranks(value);
  const HeatScale h = heat_scale(value);
  constexpr int kMap = cv::COLORMAP_VIRIDIS;
  const int scale = main_scale(r.config);
  cv::Mat panel = heat_panel(r, value, top_k, nullptr, scale);

  Legend legend;
  legend.heading(top_k ? fmt::format("BPR priority: {}", to_string(t.priority)) : "router confidence");
  legend.colour_bar(kMap, top_k ? fmt::format("{} score", to_string(t.priority)) : "largest gate", fmt::format("{:.3f}", h.lo), fmt::format("{:.3f}", h.hi));
  if (top_k) {
    legend.text("number: BPR rank, 1 = first");
    legend.text(t.batch_priority ? "(this run used BPR)" : "(this run was vanilla: by position)");
    const LayerCounts n = count_layer(t);
    legend.text(fmt::format("capacity {} x {} experts", n.capacity, E));
  }
  if (g.has_cls)
    cls_legend(
        legend, r, [&](cv::Mat& m) { m.setTo(colormap_colour(kMap, h.unit(value[0]))); },
        top_k ? fmt::format("score {:.3f}, rank {}", value[0], rank[0]) : fmt::format("gate {:.3f}", value[0]));

  const std::string what =
      top_k ? fmt::format("priority ({}) and BPR rank", to_string(t.priority)) : std::string("largest gate per patch");
  const auto title = layer_title(r, t, what, {fmt::format("gates from {:.3f} to {:.3f}; uniform router = {:.3f}", h.lo, h.hi, 1.0 / E)});
  cv::Rect at;
  cv::Mat page = compose(title, panel, legend.render(), &at);
  return make_picture(r, t, top_k ? "priority" : "gates", std::move(page), at, scale);
}

}  // namespace vmoe::viz
