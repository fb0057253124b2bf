// Soft-MoE pictures. Dispatch grid: one small map per slot showing which patches feed
// it (dispatch weights, each map scaled to its own maximum), for the busiest slots (by
// total combine weight) or all when there are few. Combine map: per patch the slot it
// draws most from (coloured by that slot's expert) and the entropy of its combine
// weights (0 = one slot, 1 = all slots equally).
#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include "core/error.hpp"
#include "spec/router.hpp"
#include "viz/layer_view.hpp"

namespace vmoe::viz {
namespace {

const MoeLayerTrace& soft_layer(const RouteResult& r, size_t layer, const char* what) {
  const MoeLayerTrace& t = r.main.trace.layers.at(layer);
  if (!t.router->draws(RouteView::soft_dispatch)) fail("{}: layer {} is not a Soft-MoE layer", what, t.layer);
  const size_t want = static_cast<size_t>(t.num_tokens()) * t.num_experts * t.slots_per_expert;
  if (t.dispatch.size() != want || t.combine.size() != want) fail("{}: layer {} trace has no Soft-MoE weights", what, t.layer);
  return t;
}

std::string slot_name(int slot, int P) {
  return P == 1 ? fmt::format("e{}", slot) : fmt::format("e{} s{}", slot / P, slot % P);
}

}  // namespace

Picture soft_dispatch_grid(const RouteResult& r, size_t layer, int max_slots) {
  const MoeLayerTrace& t = soft_layer(r, layer, "dispatch grid");
  const TokenGrid g = token_grid(r);
  const int N = g.tokens(), P = t.slots_per_expert, S = t.num_experts * P;
  std::vector<double> used(S, 0.0);  // total combine weight drawn from each slot
  for (int n = 0; n < N; ++n)
    for (int s = 0; s < S; ++s) used[s] += t.combine[static_cast<size_t>(n) * S + s];
  std::vector<int> slots(S);
  std::iota(slots.begin(), slots.end(), 0);
  const bool subset = S > max_slots;
  if (subset) {
    std::stable_sort(slots.begin(), slots.end(), [&](int a, int b) { return used[a] > used[b]; });
    slots.resize(max_slots);
  }
  const int count = static_cast<int>(slots.size());
  const int grid_cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(count))));
  const int grid_rows = (count + grid_cols - 1) / grid_cols;
  const int scale = min_patch_scale(r.config);
  const cv::Mat background = faded(input_bgr(r.pixels, r.config.image, scale), 0.5);
  const int tile_w = background.cols, tile_h = background.rows;
  constexpr int kHead = 40, kGap = 10;
  const int foot = r.cls ? 18 : 0;
  cv::Mat body(grid_rows * (kHead + tile_h + foot + kGap), grid_cols * (tile_w + kGap), CV_8UC3, cv::Scalar(255, 255, 255));
  constexpr int kMap = cv::COLORMAP_INFERNO;
  cv::Rect first_panel;
  for (int i = 0; i < count; ++i) {
    const int s = slots[i];
    const int x0 = (i % grid_cols) * (tile_w + kGap), y0 = (i / grid_cols) * (kHead + tile_h + foot + kGap);
    float mx = 0;
    for (int n = 0; n < N; ++n) mx = std::max(mx, t.dispatch[static_cast<size_t>(n) * S + s]);
    cv::Mat tile = background.clone();
    for (int n = 0; n < N; ++n) {
      if (g.is_cls(n)) continue;
      const double v = mx > 0 ? t.dispatch[static_cast<size_t>(n) * S + s] / mx : 0.0;
      tint(tile, g.cell(n, scale), colormap_colour(kMap, v), 0.8);
    }
    draw_patch_grid(tile, r.config, scale);
    const cv::Rect at(x0, y0 + kHead, tile_w, tile_h);
    if (i == 0) first_panel = at;
    paste(body, tile, at.tl());
    cv::rectangle(body, cv::Rect(x0, y0 + 4, 12, 12), expert_colour(s / P), cv::FILLED);
    put_text(body, fmt::format("{} (slot {})", slot_name(s, P), s), {x0 + 16, y0 + 15}, 0.45, cv::Scalar(0, 0, 0), 2);
    put_text(body, fmt::format("max {:.3f}, used {:.2f}", mx, used[s]), {x0, y0 + 33}, 0.4);
    if (r.cls) put_text(body, fmt::format("CLS weight {:.3f}", t.dispatch[s]), {x0, y0 + kHead + tile_h + 14}, 0.4);
  }

  Legend legend;
  legend.heading("dispatch weight");
  legend.colour_bar(kMap, "per map, of its maximum", "0", "max");
  legend.text("each map sums to 1 over");
  legend.text(fmt::format("the {} tokens{}", N, r.cls ? " (with CLS)" : ""));
  legend.text(fmt::format("uniform = {:.4f}", 1.0 / N));
  legend.gap();
  legend.text("used: total combine weight");
  legend.text("tokens draw from the slot");
  legend.text(fmt::format("(sums to {} over all slots)", N));
  legend.text("square: the slot's expert");

  const std::string what = subset ? fmt::format("dispatch maps of the {} busiest of {} slots", count, S)
                                  : fmt::format("dispatch maps of all {} slots", S);
  const auto title = layer_title(r, t, what, {"which patches feed each slot: a slot's input is the weighted mix of these patches"});
  cv::Rect at;
  cv::Mat page = compose(title, body, legend.render(), &at);
  first_panel.x += at.x;
  first_panel.y += at.y;
  return make_picture(r, t, "dispatch", std::move(page), first_panel, scale);
}

Picture soft_combine_map(const RouteResult& r, size_t layer) {
  const MoeLayerTrace& t = soft_layer(r, layer, "combine map");
  const TokenGrid g = token_grid(r);
  const int N = g.tokens(), P = t.slots_per_expert, E = t.num_experts, S = E * P;
  std::vector<int> top(N);
  std::vector<float> top_weight(N);
  std::vector<double> entropy(N);  // normalised by log(S)
  for (int n = 0; n < N; ++n) {
    const float* c = t.combine.data() + static_cast<size_t>(n) * S;
    top[n] = static_cast<int>(std::max_element(c, c + S) - c);
    top_weight[n] = c[top[n]];
    double h = 0;
    for (int s = 0; s < S; ++s)
      if (c[s] > 0) h -= c[s] * std::log(static_cast<double>(c[s]));
    entropy[n] = S > 1 ? h / std::log(static_cast<double>(S)) : 0.0;
  }
  const float tw_lo = *std::min_element(top_weight.begin(), top_weight.end());
  const float tw_hi = *std::max_element(top_weight.begin(), top_weight.end());
  auto alpha = [&](float w) { return 0.3 + 0.6 * (tw_hi > tw_lo ? (w - tw_lo) / (tw_hi - tw_lo) : 1.0); };
  constexpr int kMap = cv::COLORMAP_VIRIDIS;

  const int scale = main_scale(r.config);
  const cv::Mat image = input_bgr(r.pixels, r.config.image, scale);
  cv::Mat left = image.clone(), right = faded(image, 0.6);
  for (int n = 0; n < N; ++n) {
    if (g.is_cls(n)) continue;
    const cv::Rect cell = g.cell(n, scale);
    tint(left, cell, expert_colour(top[n] / P), alpha(top_weight[n]));
    put_centred(left, P == 1 ? std::to_string(top[n]) : fmt::format("{}.{}", top[n] / P, top[n] % P), cell, 0.42);
    tint(right, cell, colormap_colour(kMap, entropy[n]), 0.75);
    put_centred(right, fmt::format("{:.0f}", std::exp(entropy[n] * std::log(static_cast<double>(S)))), cell, 0.42);
  }
  draw_patch_grid(left, r.config, scale);
  draw_patch_grid(right, r.config, scale);
  constexpr int kHead = 24, kGap = 16;
  cv::Mat body(kHead + image.rows, 2 * image.cols + kGap, CV_8UC3, cv::Scalar(255, 255, 255));
  put_text(body, P == 1 ? "top slot (= expert)" : "top slot: expert.slot", {0, 16}, 0.5, cv::Scalar(0, 0, 0), 2);
  put_text(body, "combine entropy (eff. slots)", {image.cols + kGap, 16}, 0.5, cv::Scalar(0, 0, 0), 2);
  paste(body, left, {0, kHead});
  paste(body, right, {image.cols + kGap, kHead});

  std::vector<int> tops_of_expert(E, 0);
  for (int n = 0; n < N; ++n) ++tops_of_expert[top[n] / P];
  std::vector<int> experts(E);
  std::iota(experts.begin(), experts.end(), 0);
  std::stable_sort(experts.begin(), experts.end(), [&](int a, int b) { return tops_of_expert[a] > tops_of_expert[b]; });
  Legend legend;
  legend.heading("top-slot expert: patches");
  constexpr int kMaxRows = 16;
  int shown = 0, rest = 0;
  for (int e : experts) {
    if (tops_of_expert[e] == 0) continue;
    if (shown < kMaxRows) legend.swatch(expert_colour(e), fmt::format("e{}: {}", e, tops_of_expert[e])), ++shown;
    else ++rest;
  }
  if (rest) legend.text(fmt::format("... and {} more experts", rest));
  legend.text(fmt::format("opacity: top weight {:.3f}", tw_lo));
  legend.text(fmt::format("         .. {:.3f}", tw_hi));
  legend.gap();
  legend.colour_bar(kMap, "entropy / log(slots)", "0: one slot", "1: all");
  legend.text("number: effective slots exp(H)");
  if (r.cls)
    cls_legend(
        legend, r, [&](cv::Mat& m) { m.setTo(expert_colour(top[0] / P)); },
        fmt::format("top {} ({:.3f}), H {:.2f}", slot_name(top[0], P), top_weight[0], entropy[0]));

  const auto title = layer_title(
      r, t, "combine weights",
      {fmt::format("each token's output mixes all {} slot outputs; top weights {:.3f} .. {:.3f} (uniform {:.4f})", S,
                   tw_lo, tw_hi, 1.0 / S)});
  cv::Rect at;
  cv::Mat page = compose(title, body, legend.render(), &at);
  return make_picture(r, t, "combine", std::move(page), cv::Rect(at.x, at.y + kHead, image.cols, image.rows), scale);
}

}  // namespace vmoe::viz
