// Experts-choice times-taken map: per patch, how many experts took it (0 included).
#include <algorithm>

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include "core/error.hpp"
#include "spec/router.hpp"
#include "viz/layer_view.hpp"

namespace vmoe::viz {

namespace {
constexpr int kMap = cv::COLORMAP_PLASMA;
}

int max_times_taken(const MoeLayerTrace& t) {
  return t.times_taken.empty() ? 0 : *std::max_element(t.times_taken.begin(), t.times_taken.end());
}

cv::Scalar taken_colour(int count, int max_count) {
  if (max_count <= 1) return colormap_colour(kMap, 0.55);
  // 1 -> dark purple ... max -> yellow; leave the darkest end out so numbers stay legible
  return colormap_colour(kMap, 0.15 + 0.85 * (count - 1) / (max_count - 1.0));
}

cv::Mat taken_panel(const RouteResult& r, const MoeLayerTrace& t, int scale, int max_count) {
  cv::Mat panel = input_bgr(r.pixels, r.config.image, scale);
  const TokenGrid g = token_grid(r);
  for (int n = 0; n < g.tokens(); ++n) {
    if (g.is_cls(n)) continue;
    const cv::Rect cell = g.cell(n, scale);
    const int count = t.times_taken.at(n);
    if (count == 0) draw_drop_state(panel, cell, DropState::dropped);
    else tint(panel, cell, taken_colour(count, max_count), 0.6);
    if (count > 0) put_centred(panel, std::to_string(count), cell, 0.5);
  }
  draw_patch_grid(panel, r.config, scale);
  return panel;
}

Picture times_taken_map(const RouteResult& r, size_t layer) {
  const MoeLayerTrace& t = r.main.trace.layers.at(layer);
  if (!t.router->draws(RouteView::times_taken)) fail("times-taken map: layer {} is not an experts-choice layer", t.layer);
  const int scale = main_scale(r.config);
  const int max_count = std::max(1, max_times_taken(t));
  cv::Mat panel = taken_panel(r, t, scale, max_count);

  const int N = static_cast<int>(t.num_tokens());
  std::vector<int> histogram(max_count + 1, 0);
  for (int n = 0; n < N; ++n) ++histogram[t.times_taken[n]];
  Legend legend;
  legend.heading("taken by n experts: patches");
  legend.icon(
      [](cv::Mat& m) {
        icon_background(m);
        draw_drop_state(m, cv::Rect(0, 0, m.cols, m.rows), DropState::dropped);
      },
      fmt::format("n = 0: {}", histogram[0]));
  for (int c = 1; c <= max_count; ++c)
    legend.swatch(taken_colour(c, max_count), fmt::format("n = {}: {}", c, histogram[c]));
  legend.gap();
  const LayerCounts counts = count_layer(t);
  legend.text(fmt::format("each expert takes c = {} tokens", counts.capacity));
  legend.text(fmt::format("{} x {} = {} picks for {} tokens", t.num_experts, counts.capacity,
                          t.num_experts * counts.capacity, N));
  if (r.cls)
    cls_legend(
        legend, r,
        [&](cv::Mat& m) {
          const int count = t.times_taken.at(0);
          if (count == 0) {
            icon_background(m);
            draw_drop_state(m, cv::Rect(0, 0, m.cols, m.rows), DropState::dropped);
          } else {
            m.setTo(taken_colour(count, max_count));
          }
        },
        fmt::format("taken by {}", t.times_taken.at(0)));

  const auto title = layer_title(
      r, t, "how many experts took each patch",
      {fmt::format("{} of {} tokens taken by no expert; most-taken patch: {} experts", counts.dropped_tokens, N,
                   max_times_taken(t))});
  cv::Rect at;
  cv::Mat page = compose(title, panel, legend.render(), &at);
  return make_picture(r, t, "taken", std::move(page), at, scale);
}

}  // namespace vmoe::viz
