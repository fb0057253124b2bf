// Dropped-patch overlay: patches whose every choice was dropped greyed and crossed,
// partly dropped ones half greyed behind a red diagonal, kept ones clear.
#include <fmt/format.h>

#include "core/error.hpp"
#include "spec/router.hpp"
#include "viz/layer_view.hpp"

namespace vmoe::viz {

Picture dropped_overlay(const RouteResult& r, size_t layer) {
  const MoeLayerTrace& t = r.main.trace.layers.at(layer);
  if (!t.router->draws(RouteView::dropped_overlay)) fail("dropped-patch overlay: layer {} is not a top-k layer", t.layer);
  const int scale = main_scale(r.config);
  cv::Mat panel = drop_panel(r, t, scale);
  const LayerCounts n = count_layer(t);

  Legend legend;
  legend.heading("tokens");
  drop_legend(legend, t, true);
  if (r.cls)
    cls_legend(
        legend, r,
        [&](cv::Mat& m) {
          icon_background(m);
          draw_drop_state(m, cv::Rect(0, 0, m.cols, m.rows), drop_state(t, 0));
        },
        fmt::format("{} of {} choices kept", t.times_taken.at(0), t.k));
  legend.gap();
  legend.text(fmt::format("capacity: {} slots per expert", n.capacity));
  legend.text(fmt::format("= {} x {} experts for {} x {} choices", n.capacity, t.num_experts, n.tokens, t.k));

  const auto title = layer_title(
      r, t, "dropped patches",
      {fmt::format("dropped {} of {} tokens ({:.0f}%), {} of {} choices; {} partly dropped", n.dropped_tokens, n.tokens,
                   n.tokens ? 100.0 * n.dropped_tokens / n.tokens : 0.0, n.dropped_choices, n.choices,
                   n.partial_tokens)});
  cv::Rect at;
  cv::Mat page = compose(title, panel, legend.render(), &at);
  return make_picture(r, t, "dropped", std::move(page), at, scale);
}

}  // namespace vmoe::viz
