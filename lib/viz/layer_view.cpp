#include "viz/layer_view.hpp"
#include "spec/router.hpp"

#include <cctype>
#include <filesystem>

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

namespace vmoe::viz {

namespace fs = std::filesystem;

const cv::Scalar kDropColour(30, 30, 220);  // red

std::string model_name(const RouteResult& r) { return fs::path(r.model).stem().string(); }
std::string image_name(const RouteResult& r) { return fs::path(r.image).filename().string(); }

std::string image_stem(const RouteResult& r) {
  std::string s = fs::path(r.image).stem().string();
  for (char& ch : s)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.')) ch = '_';
  return s.empty() ? "image" : s;
}

std::string routing_name(const MoeLayerTrace& t) { return t.router->routing_phrase(t); }

std::string capacity_text(const MoeLayerTrace& t) {
  const LayerCounts n = count_layer(t);
  if (!t.router->drops())
    return fmt::format("{} experts x {} slots, capacity factor n/a", t.num_experts, t.slots_per_expert);
  return fmt::format("capacity factor {} (effective {:.3g}, c = {} per expert)", short_number(t.capacity_factor),
                     n.effective_factor, n.capacity);
}

std::vector<std::string> layer_title(const RouteResult& r, const MoeLayerTrace& t, const std::string& what,
                                     const std::vector<std::string>& extra) {
  const std::string router = t.router->layer_phrase(t);
  std::vector<std::string> lines = {
      fmt::format("{}  |  layer {}  |  {}  |  {}", model_name(r), t.layer, router, what),
      fmt::format("{}  |  routing: {}  |  {}", capacity_text(t), routing_name(t), image_name(r))};
  lines.insert(lines.end(), extra.begin(), extra.end());
  return lines;
}

DropState drop_state(const MoeLayerTrace& t, int token) {
  if (!t.router->drops()) return DropState::kept;
  if (t.times_taken.at(token) == 0) return DropState::dropped;
  if (t.k > 0 && t.times_taken.at(token) < t.k) return DropState::partial;
  return DropState::kept;
}

void draw_drop_state(cv::Mat& img, const cv::Rect& cell, DropState s) {
  switch (s) {
    case DropState::kept: break;
    case DropState::partial: {
      // half dropped: the lower-right half greyed, cut off by a red diagonal
      const cv::Rect r = cell & cv::Rect(0, 0, img.cols, img.rows);
      cv::Mat roi = img(r), greyed = roi.clone();
      grey_out(greyed, cv::Rect(0, 0, r.width, r.height));
      cv::Mat mask = cv::Mat::zeros(r.size(), CV_8UC1);
      const cv::Point tri[3] = {{r.width - 1, 0}, {r.width - 1, r.height - 1}, {0, r.height - 1}};
      cv::fillConvexPoly(mask, tri, 3, cv::Scalar(255));
      greyed.copyTo(roi, mask);
      cv::line(img, {r.x, r.y + r.height - 1}, {r.x + r.width - 1, r.y}, kDropColour, std::max(2, r.width / 20),
               cv::LINE_AA);
      break;
    }
    case DropState::dropped:
      grey_out(img, cell);
      draw_cross(img, cell, kDropColour, std::max(2, cell.width / 16));
      break;
  }
}

cv::Mat drop_panel(const RouteResult& r, const MoeLayerTrace& t, int scale) {
  cv::Mat panel = input_bgr(r.pixels, r.config.image, scale);
  const TokenGrid g = token_grid(r);
  for (int tok = 0; tok < g.tokens(); ++tok)
    if (!g.is_cls(tok)) draw_drop_state(panel, g.cell(tok, scale), drop_state(t, tok));
  draw_patch_grid(panel, r.config, scale);
  return panel;
}

void drop_legend(Legend& legend, const MoeLayerTrace& t, bool with_counts) {
  int counts[3] = {0, 0, 0};
  for (int tok = 0; tok < static_cast<int>(t.num_tokens()); ++tok) ++counts[static_cast<int>(drop_state(t, tok))];
  auto suffix = [&](DropState s) { return with_counts ? fmt::format(": {}", counts[static_cast<int>(s)]) : ""; };
  const bool top_k = t.k > 0;  // per-token choices
  legend.icon([](cv::Mat& m) { icon_background(m); },
              (top_k ? "kept (every choice)" : "taken by >= 1 expert") + suffix(DropState::kept));
  if (top_k && t.k > 1)
    legend.icon(
        [](cv::Mat& m) {
          icon_background(m);
          draw_drop_state(m, cv::Rect(0, 0, m.cols, m.rows), DropState::partial);
        },
        "partly dropped (some choices)" + suffix(DropState::partial));
  legend.icon(
      [](cv::Mat& m) {
        icon_background(m);
        draw_drop_state(m, cv::Rect(0, 0, m.cols, m.rows), DropState::dropped);
      },
      (top_k ? "dropped (no choice kept)" : "taken by no expert") + suffix(DropState::dropped));
}

void cls_legend(Legend& legend, const RouteResult& r, const std::function<void(cv::Mat&)>& draw,
                const std::string& text) {
  if (!r.cls) return;
  legend.icon(draw, "CLS token: " + text);
}

Picture make_picture(const RouteResult& r, const MoeLayerTrace& t, const std::string& kind, cv::Mat page,
                     cv::Rect panel, int scale) {
  Picture p;
  p.file = fmt::format("{}-L{}-{}.png", image_stem(r), t.layer, kind);
  p.kind = kind;
  p.layer = t.layer;
  p.image = std::move(page);
  p.panel = panel;
  p.scale = scale;
  return p;
}

}  // namespace vmoe::viz
