// Capacity strip: one column per capacity factor, one row per routing (BPR, vanilla),
// each cell the dropped-patch view of that run. Experts-choice has one row of
// times-taken maps instead (experts pick tokens, there is no processing order).
#include <algorithm>

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include "core/error.hpp"
#include "spec/router.hpp"
#include "viz/layer_view.hpp"

namespace vmoe::viz {

Picture capacity_strip(const RouteResult& r, size_t layer) {
  const MoeLayerTrace& main = r.main.trace.layers.at(layer);
  if (!main.router->draws(RouteView::capacity_strip)) fail("capacity strip: layer {} is a Soft-MoE layer (nothing is dropped)", main.layer);
  if (r.strip.empty() || r.strip_factors.empty()) fail("capacity strip: the route result has no strip runs");
  const bool top_k = main.k > 0;  // per-token choices
  const int scale = min_patch_scale(r.config);
  const int cell_w = r.config.grid_w() * r.config.patch_w * scale, cell_h = r.config.grid_h() * r.config.patch_h * scale;
  const size_t rows = r.strip_rows_bpr.size(), cols = r.strip_factors.size();
  constexpr int kLabelW = 104, kHeadH = 40, kFootH = 40, kGap = 10;
  const int width = kLabelW + static_cast<int>(cols) * (cell_w + kGap);
  const int row_h = kHeadH + cell_h + kFootH + kGap;
  cv::Mat body(static_cast<int>(rows) * row_h, width, CV_8UC3, cv::Scalar(255, 255, 255));

  int max_count = 1;
  if (!top_k)
    for (const RoutedRun& run : r.strip)
      if (run.error.empty()) max_count = std::max(max_count, max_times_taken(run.trace.layers.at(layer)));

  cv::Rect first_panel;
  for (size_t row = 0; row < rows; ++row) {
    const int y0 = static_cast<int>(row) * row_h;
    const std::string label = top_k ? (r.strip_rows_bpr[row] ? "BPR" : "vanilla") : "experts";
    put_text(body, label, {4, y0 + kHeadH + cell_h / 2 + 6}, 0.6, cv::Scalar(0, 0, 0), 2);
    if (top_k)
      put_text(body, r.strip_rows_bpr[row] ? std::string("by ") + to_string(r.main.trace.layers.at(layer).priority)
                                             : std::string("by position"),
               {4, y0 + kHeadH + cell_h / 2 + 26}, 0.4);
    for (size_t col = 0; col < cols; ++col) {
      const RoutedRun& run = r.strip_cell(row, col);
      const int x0 = kLabelW + static_cast<int>(col) * (cell_w + kGap);
      const cv::Rect cell(x0, y0 + kHeadH, cell_w, cell_h);
      if (row == 0 && col == 0) first_panel = cell;
      if (!run.error.empty()) {
        body(cell).setTo(cv::Scalar(225, 225, 225));
        put_text(body, fmt::format("cf {}", short_number(r.strip_factors[col])), {x0, y0 + 16}, 0.5, cv::Scalar(0, 0, 0), 2);
        put_centred(body, "cannot run", cell, 0.5);
        put_text(body, "capacity < 1", {x0, y0 + kHeadH + cell_h + 16}, 0.42);
        continue;
      }
      const MoeLayerTrace& t = run.trace.layers.at(layer);
      const LayerCounts n = count_layer(t);
      put_text(body, fmt::format("cf {}", short_number(r.strip_factors[col])), {x0, y0 + 16}, 0.5, cv::Scalar(0, 0, 0), 2);
      put_text(body, fmt::format("c = {}, effective {:.3g}", n.capacity, n.effective_factor), {x0, y0 + 34}, 0.4);
      cv::Mat panel = top_k ? drop_panel(r, t, scale) : taken_panel(r, t, scale, max_count);
      paste(body, panel, cell.tl());
      const std::string foot = top_k ? fmt::format("dropped {}/{} tokens", n.dropped_tokens, n.tokens)
                                     : fmt::format("taken by none: {}/{} tokens", n.dropped_tokens, n.tokens);
      put_text(body, foot, {x0, y0 + kHeadH + cell_h + 16}, 0.42);
      if (top_k)
        put_text(body, fmt::format("{} choices dropped{}", n.dropped_choices,
                                   !r.cls ? "" : t.times_taken.at(0) == 0 ? ", CLS too" : ", CLS kept"),
                 {x0, y0 + kHeadH + cell_h + 34}, 0.42);
      else if (r.cls)
        put_text(body, t.times_taken.at(0) == 0 ? "CLS taken by none" : "CLS taken", {x0, y0 + kHeadH + cell_h + 34}, 0.42);
    }
  }

  Legend legend;
  legend.heading("each cell");
  if (top_k) {
    drop_legend(legend, main, false);
  } else {
    legend.icon(
        [](cv::Mat& m) {
          icon_background(m);
          draw_drop_state(m, cv::Rect(0, 0, m.cols, m.rows), DropState::dropped);
        },
        "taken by no expert");
    for (int c = 1; c <= max_count; ++c) legend.swatch(taken_colour(c, max_count), fmt::format("taken by {}", c));
  }
  legend.gap();
  legend.text("cf: requested capacity factor");
  legend.text("c: slots per expert after");
  legend.text("   rounding up to a multiple");
  legend.text(fmt::format("   of {}", r.config.moe ? r.config.moe->capacity_multiple_of : 4));

  std::string factor_list;
  for (double f : r.strip_factors) factor_list += (factor_list.empty() ? "" : ", ") + short_number(f);
  std::string router = top_k ? fmt::format("top-{} of {}", main.k, main.num_experts)
                             : fmt::format("experts-choice, {} experts", main.num_experts);
  std::vector<std::string> title = {
      fmt::format("{}  |  layer {}  |  {}  |  capacity strip", model_name(r), main.layer, router),
      fmt::format("capacity factors {}  |  routing: {}  |  {}",
                  factor_list,
                  top_k ? "BPR (top row) vs vanilla (bottom row)" : "experts choose", image_name(r))};
  cv::Rect at;
  cv::Mat page = compose(title, body, legend.render(), &at);
  first_panel.x += at.x;
  first_panel.y += at.y;
  return make_picture(r, main, "strip", std::move(page), first_panel, scale);
}

}  // namespace vmoe::viz
