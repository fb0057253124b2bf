// Expert overlay: each patch tinted with its expert's colour, opacity by gate.
// Top-k: the first-choice expert, with the second choice as a corner triangle.
// Experts-choice: the expert with the largest gate among those that took the patch.
#include <algorithm>

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include "core/error.hpp"
#include "spec/router.hpp"
#include "viz/layer_view.hpp"

namespace vmoe::viz {
namespace {

struct TokenExpert {
  int expert = -1;  // -1: none (experts-choice: no expert took it)
  float gate = 0;
  int second = -1;  // top-k: second choice
};

std::vector<TokenExpert> token_experts(const MoeLayerTrace& t) {
  const int N = static_cast<int>(t.num_tokens()), E = t.num_experts;
  std::vector<TokenExpert> out(N);
  for (int n = 0; n < N; ++n) {
    if (t.k > 0) {  // per-token choices
      out[n].expert = t.choice_expert[static_cast<size_t>(n) * t.k];
      out[n].gate = t.choice_gate[static_cast<size_t>(n) * t.k];
      if (t.k > 1) out[n].second = t.choice_expert[static_cast<size_t>(n) * t.k + 1];
    } else {
      for (int e = 0; e < E; ++e) {
        const size_t i = static_cast<size_t>(n) * E + e;
        if (t.expert_took[i] && (out[n].expert < 0 || t.gates[i] > out[n].gate)) out[n].expert = e, out[n].gate = t.gates[i];
      }
    }
  }
  return out;
}

// Opacity from the gate: lo (1/E, a uniform router) is faint, hi (the largest gate
// shown) is nearly solid.
double opacity(float gate, double lo, double hi) {
  const double u = hi > lo ? (gate - lo) / (hi - lo) : 1.0;
  return 0.2 + 0.65 * std::clamp(u, 0.0, 1.0);
}

void draw_cell(cv::Mat& img, const cv::Rect& cell, const TokenExpert& te, double lo, double hi, bool label) {
  if (te.expert < 0) {
    grey_out(img, cell);
    draw_cross(img, cell, cv::Scalar(30, 30, 220), std::max(2, cell.width / 16));
    return;
  }
  tint(img, cell, expert_colour(te.expert), opacity(te.gate, lo, hi));
  if (te.second >= 0) {
    const int s = std::max(6, cell.width / 3);
    const cv::Point tri[3] = {{cell.x + cell.width - 1, cell.y + cell.height - 1 - s},
                              {cell.x + cell.width - 1, cell.y + cell.height - 1},
                              {cell.x + cell.width - 1 - s, cell.y + cell.height - 1}};
    cv::fillConvexPoly(img, tri, 3, expert_colour(te.second), cv::LINE_AA);
  }
  if (label) put_outlined(img, std::to_string(te.expert), {cell.x + 3, cell.y + 14}, 0.42);
}

}  // namespace

Picture expert_overlay(const RouteResult& r, size_t layer) {
  const MoeLayerTrace& t = r.main.trace.layers.at(layer);
  if (!t.router->draws(RouteView::expert_overlay)) fail("expert overlay: layer {} is a Soft-MoE layer", t.layer);
  if (t.k == 0 && t.gates.empty())
    fail("expert overlay: layer {} trace has no gates", t.layer);
  const int scale = main_scale(r.config);
  const TokenGrid g = token_grid(r);
  const auto te = token_experts(t);
  const double lo = 1.0 / t.num_experts;
  double hi = lo;
  for (const auto& x : te) hi = std::max<double>(hi, x.gate);

  cv::Mat panel = input_bgr(r.pixels, r.config.image, scale);
  for (int n = 0; n < g.tokens(); ++n)
    if (!g.is_cls(n)) draw_cell(panel, g.cell(n, scale), te[n], lo, hi, true);
  draw_patch_grid(panel, r.config, scale);

  // Legend: experts with their counts.
  const int E = t.num_experts, N = g.tokens();
  std::vector<int> first(E, 0), load(E, 0);
  for (int n = 0; n < N; ++n)
    if (te[n].expert >= 0) ++first[te[n].expert];
  if (t.k > 0) {
    for (size_t i = 0; i < t.choice_kept.size(); ++i)
      if (t.choice_kept[i]) ++load[t.choice_expert[i]];
  } else {
    for (size_t i = 0; i < t.expert_took.size(); ++i)
      if (t.expert_took[i]) ++load[i % E];
  }
  Legend legend;
  const bool top_k = t.k > 0;
  legend.heading(top_k ? "expert: 1st choices / kept" : "expert: top taker / took");
  constexpr int kMaxRows = 24;
  int shown = 0, hidden = 0;
  for (int e = 0; e < E; ++e) {
    if (first[e] == 0 && load[e] == 0 && E > kMaxRows) continue;
    if (shown == kMaxRows) {
      ++hidden;
      continue;
    }
    legend.swatch(expert_colour(e), fmt::format("e{}: {} / {}", e, first[e], load[e]));
    ++shown;
  }
  if (hidden) legend.text(fmt::format("... and {} more experts", hidden));
  legend.gap();
  legend.text(fmt::format("opacity: gate {:.2f} faint", lo));
  legend.text(fmt::format("         .. {:.2f} solid", hi));
  if (top_k && t.k > 1) legend.text("corner triangle: 2nd choice");
  if (!top_k) legend.icon([](cv::Mat& m) { draw_cell(m, cv::Rect(0, 0, m.cols, m.rows), {}, 0, 1, false); },
                          "taken by no expert");
  if (g.has_cls)
    cls_legend(
        legend, r, [&](cv::Mat& m) { draw_cell(m, cv::Rect(0, 0, m.cols, m.rows), te[0], lo, hi, false); },
        te[0].expert >= 0 ? fmt::format("e{} (gate {:.2f})", te[0].expert, te[0].gate) : "no expert");

  const LayerCounts counts = count_layer(t);
  const std::string what = top_k ? "expert of each patch (1st choice)" : "expert of each patch (largest gate among takers)";
  const std::string stats =
      top_k ? fmt::format("{} tokens; 1st choices shown kept or not: {} tokens lost every choice", N,
                          counts.dropped_tokens)
            : fmt::format("{} tokens; {} taken by no expert", N, counts.dropped_tokens);
  const auto title = layer_title(r, t, what, {stats});
  cv::Rect at;
  cv::Mat page = compose(title, panel, legend.render(), &at);
  return make_picture(r, t, "experts", std::move(page), at, scale);
}

}  // namespace vmoe::viz
