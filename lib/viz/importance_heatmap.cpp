// Importance beside priority: the layer's priority heatmap (as priority_heatmap draws it)
// and, to its right, each patch coloured by its patch importance at this block
// (tasks/importance.hpp) with its importance rank, and a red cross on each patch that no
// expert took in this run. Both panels follow the same colour rule: viridis from the layer's
// smallest to its largest value.
#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include "core/error.hpp"
#include "spec/router.hpp"
#include "tasks/importance.hpp"
#include "viz/layer_view.hpp"

namespace vmoe::viz {

Picture importance_heatmap(const RouteResult& r, size_t layer) {
  const MoeLayerTrace& t = r.main.trace.layers.at(layer);
  const std::vector<float> importance = r.importance_at(t.layer);
  if (importance.empty()) fail("importance heatmap: no importance computed for block {}", t.layer);
  if (!t.router->draws(RouteView::priority_heatmap)) fail("importance heatmap: layer {} is a Soft-MoE layer", t.layer);
  const bool top_k = t.k > 0;
  const int scale = main_scale(r.config);
  const std::vector<float> priority = priority_values(t);
  const cv::Mat left = heat_panel(r, priority, top_k, nullptr, scale);
  const cv::Mat right = heat_panel(r, importance, true, &t, scale);
  constexpr int kGap = 16;
  cv::Mat body(left.rows, left.cols + kGap + right.cols, CV_8UC3, cv::Scalar(255, 255, 255));
  paste(body, left, {0, 0});
  paste(body, right, {left.cols + kGap, 0});

  const HeatScale hp = heat_scale(priority), hi = heat_scale(importance);
  const std::vector<int> rank = descending_ranks(importance);
  const TokenGrid g = token_grid(r);
  double positive = 0, kept = 0;
  for (int n = 0; n < g.tokens(); ++n)
    if (importance[n] > 0) {
      positive += importance[n];
      if (t.times_taken[n] > 0) kept += importance[n];
    }
  Legend legend;
  legend.heading(top_k ? fmt::format("left: priority ({})", to_string(t.priority)) : "left: largest gate");
  legend.colour_bar(cv::COLORMAP_VIRIDIS, top_k ? "score" : "gate", fmt::format("{:.3f}", hp.lo), fmt::format("{:.3f}", hp.hi));
  legend.heading("right: patch importance");
  legend.colour_bar(cv::COLORMAP_VIRIDIS, "nats", fmt::format("{:.3g}", hi.lo), fmt::format("{:.3g}", hi.hi));
  legend.text("number: rank, 1 = largest");
  legend.text("log p(class) lost without");
  legend.text("the patch's MoE output here");
  const LayerCounts counts = count_layer(t);
  legend.text("red cross: no expert took it");
  legend.text(fmt::format("({} tokens at this factor)", counts.dropped_tokens));
  if (positive > 0) legend.text(fmt::format("importance kept: {:.1f}%", 100.0 * kept / positive));
  if (g.has_cls)
    cls_legend(
        legend, r, [&](cv::Mat& m) { m.setTo(colormap_colour(cv::COLORMAP_VIRIDIS, hi.unit(importance[0]))); },
        fmt::format("importance {:.3g}, rank {}", importance[0], rank[0]));
  const int y = r.importance->predicted.at(0);
  const std::string predicted = y < static_cast<int>(r.config.labels.size()) ? r.config.labels[y] : fmt::format("class {}", y);
  const auto title = layer_title(
      r, t, "priority beside patch importance",
      {fmt::format("importance of \"{}\" (full-capacity prediction), from {:.3g} to {:.3g} nats; crosses: dropped at "
                   "this capacity factor",
                   predicted, hi.lo, hi.hi)});
  cv::Rect at;
  cv::Mat page = compose(title, body, legend.render(), &at);
  at.width = left.cols;
  return make_picture(r, t, "importance", std::move(page), at, scale);
}

}  // namespace vmoe::viz
