// Routing statistics pictures (viz/stats_pictures.hpp). Shares are drawn on a fixed 0..1
// viridis scale so that maps of different experts and layers compare directly; Soft-MoE
// slot maps use inferno scaled per map, as the route command's dispatch grid does.
#include "viz/stats_pictures.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include "core/error.hpp"
#include "viz/canvas.hpp"

namespace vmoe::viz {
namespace {

const cv::Scalar kWhite(255, 255, 255), kFrame(90, 90, 90), kInk(20, 20, 20);

std::string stem(const std::string& path) { return std::filesystem::path(path).stem().string(); }

std::string column_name(const RoutingStats& s, int x) {
  if (s.kind != StatsKind::soft) return fmt::format("e{}", x);
  return s.slots_per_expert == 1 ? fmt::format("e{}", x) : fmt::format("e{}s{}", x / s.slots_per_expert, x % s.slots_per_expert);
}

cv::Scalar column_colour(const RoutingStats& s, int x) {
  return expert_colour(s.kind == StatsKind::soft ? x / s.slots_per_expert : x);
}

// Shortens a label to at most `chars` characters ("..." at the end).
std::string clip(const std::string& s, size_t chars) { return s.size() <= chars ? s : s.substr(0, chars - 3) + "..."; }

std::string routing_line(const RoutingStats& s) {
  std::string out = s.router == "soft" ? "soft routing" : s.routing == s.router ? s.router : s.routing + " (" + s.router + ")";
  if (s.has_capacity) out += fmt::format(", capacity factor {}", short_number(s.capacity_factor));
  return out + fmt::format(", {} image{} per group | {} | {} images", s.group_images, s.group_images == 1 ? "" : "s", s.data,
                           s.images);
}

Picture make(const std::string& file, const std::string& kind, int layer, cv::Mat page, cv::Rect panel) {
  Picture p;
  p.file = file;
  p.kind = kind;
  p.layer = layer;
  p.image = std::move(page);
  p.panel = panel;
  return p;
}

const RoutingStatsLayer& layer_at(const RoutingStats& s, size_t layer) {
  if (layer >= s.layers.size()) fail("routing stats picture: layer index {} of {}", layer, s.layers.size());
  return s.layers[layer];
}

}  // namespace

Picture class_expert_heatmap(const RoutingStats& s, size_t layer, int max_rows, int max_cols) {
  const RoutingStatsLayer& l = layer_at(s, layer);
  const int C = static_cast<int>(s.classes.size()), X = l.columns;
  const int rows = std::min(C, max_rows), cols = std::min(X, max_cols);
  const int cw = std::clamp(720 / std::max(cols, 1), 10, 44), ch = std::clamp(720 / std::max(rows, 1), 12, 24);
  const bool numbers = cw >= 36 && ch >= 18;
  const int col_label_every = std::max(1, (34 + cw - 1) / cw);  // a label needs ~34 px
  int label_w = 0;
  for (int r = 0; r < rows; ++r) label_w = std::max(label_w, text_size(clip(s.classes[r], 24), 0.4).width);
  const int left = label_w + 8, top = 34;
  cv::Mat body(top + rows * ch + 2, left + cols * cw + 2, CV_8UC3, kWhite);
  constexpr int kMap = cv::COLORMAP_VIRIDIS;
  for (int x = 0; x < cols; ++x) {
    cv::rectangle(body, cv::Rect(left + x * cw + 1, top - 8, cw - 2, 6), column_colour(s, x), cv::FILLED);
    if (x % col_label_every == 0) put_text(body, column_name(s, x), {left + x * cw + 2, top - 14}, 0.38);
  }
  for (int r = 0; r < rows; ++r) {
    const int64_t* row = l.class_expert.data() + static_cast<size_t>(r) * X;
    double total = 0;
    for (int x = 0; x < X; ++x) total += static_cast<double>(row[x]);  // the whole row, drawn or not
    const std::string name = clip(s.classes[r], 24);
    put_text(body, name, {left - 6 - text_size(name, 0.4).width, top + r * ch + ch / 2 + 5}, 0.4);
    for (int x = 0; x < cols; ++x) {
      const cv::Rect cell(left + x * cw, top + r * ch, cw, ch);
      if (total <= 0) {
        cv::rectangle(body, cell, cv::Scalar(235, 235, 235), cv::FILLED);
        continue;
      }
      const double v = static_cast<double>(row[x]) / total;
      cv::rectangle(body, cell, colormap_colour(kMap, v), cv::FILLED);
      if (numbers) put_centred(body, fmt::format("{:.0f}", 100 * v), cell, 0.38);
    }
  }
  cv::rectangle(body, cv::Rect(left, top, cols * cw, rows * ch), kFrame, 1);

  const bool soft = s.kind == StatsKind::soft;
  Legend legend;
  legend.heading(soft ? "dispatch mass" : "first choice");
  legend.colour_bar(kMap, soft ? "share of the class's mass" : "share of the class's tokens", "0", "1");
  if (numbers) legend.text("numbers: percent of the row");
  legend.text(fmt::format("class NMI {:.4f}", l.class_nmi()));
  legend.text("light grey row: no image of the class");
  std::vector<std::string> title{
      fmt::format("{} | block {} | class x {} ({})", stem(s.model), l.layer, soft ? "slot" : "expert",
                  soft ? "dispatch mass" : s.kind == StatsKind::experts_choice ? "first choice = argmax gate" : "first choice"),
      routing_line(s)};
  std::string left_out;
  if (rows < C || cols < X)
    left_out = fmt::format("showing the first {} of {} classes and the first {} of {} {}; the CSV has all", rows, C, cols, X,
                           soft ? "slots" : "experts");
  if (!left_out.empty()) title.push_back(left_out);
  cv::Rect at;
  cv::Mat page = compose(title, body, legend.render(), &at);
  Picture p = make(fmt::format("L{}-class-expert.png", l.layer), "class-expert", l.layer, std::move(page), at);
  p.left_out = left_out;
  return p;
}

Picture position_maps(const RoutingStats& s, size_t layer, int max_maps) {
  const RoutingStatsLayer& l = layer_at(s, layer);
  const int X = l.columns, T = s.tokens_per_image, gh = s.grid_h, gw = s.grid_w;
  const bool soft = s.kind == StatsKind::soft;
  const int count = std::min(X, max_maps);
  const int cell = std::clamp(140 / std::max(gh, gw), 1, 16);
  const int map_w = gw * cell, map_h = gh * cell;
  const int tile_w = std::max(map_w, 64), head = 20, foot = s.cls ? 16 : 0, gap = 10;
  const int grid_cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(count))));
  const int grid_rows = (count + grid_cols - 1) / grid_cols;
  cv::Mat body(grid_rows * (head + map_h + foot + gap), grid_cols * (tile_w + gap), CV_8UC3, kWhite);
  const int kMap = soft ? cv::COLORMAP_INFERNO : cv::COLORMAP_VIRIDIS;
  // Row sums (tokens at each position) for the first-choice share.
  std::vector<double> position_total(T, 0.0);
  for (int p = 0; p < T; ++p)
    for (int x = 0; x < X; ++x) position_total[p] += static_cast<double>(l.position_expert[static_cast<size_t>(p) * X + x]);
  for (int i = 0; i < count; ++i) {
    const int ox = (i % grid_cols) * (tile_w + gap), oy = (i / grid_cols) * (head + map_h + foot + gap);
    cv::rectangle(body, cv::Rect(ox, oy + 4, 12, 12), column_colour(s, i), cv::FILLED);
    put_text(body, column_name(s, i), {ox + 16, oy + 15}, 0.4);
    // Soft-MoE: this slot's mass at each position over its largest (own scale).
    double slot_max = 0;
    if (soft)
      for (int p = 0; p < T; ++p) slot_max = std::max(slot_max, static_cast<double>(l.position_expert[static_cast<size_t>(p) * X + i]));
    auto value = [&](int p) {
      const double v = static_cast<double>(l.position_expert[static_cast<size_t>(p) * X + i]);
      if (soft) return slot_max > 0 ? v / slot_max : 0.0;
      return position_total[p] > 0 ? v / position_total[p] : 0.0;
    };
    const int first_patch = s.cls ? 1 : 0;
    for (int q = 0; q < gh * gw; ++q) {
      const cv::Rect r(ox + (q % gw) * cell, oy + head + (q / gw) * cell, cell, cell);
      cv::rectangle(body, r, colormap_colour(kMap, value(first_patch + q)), cv::FILLED);
    }
    cv::rectangle(body, cv::Rect(ox, oy + head, map_w, map_h), kFrame, 1);
    if (s.cls) put_text(body, fmt::format("CLS {:.0f}%", 100 * value(0)), {ox, oy + head + map_h + 13}, 0.36, kInk);
  }
  Legend legend;
  if (soft) {
    legend.heading("dispatch mass per slot");
    legend.colour_bar(kMap, "of the slot's largest", "0", "max");
  } else {
    legend.heading("first choice by position");
    legend.colour_bar(kMap, "share of the patch's tokens", "0", "1");
  }
  legend.text(fmt::format("position NMI {:.4f}", l.position_nmi()));
  if (s.cls) legend.text(soft ? "CLS: the CLS token, % of the max" : "CLS: share of CLS tokens");
  std::vector<std::string> title{
      fmt::format("{} | block {} | {} over the {}x{} patch grid", stem(s.model), l.layer,
                  soft ? "where each slot reads from" : "which patches choose each expert first", gh, gw),
      routing_line(s)};
  const std::string left_out =
      count < X ? fmt::format("showing the first {} of {} {}; the CSV has all", count, X, soft ? "slots" : "experts") : "";
  if (!left_out.empty()) title.push_back(left_out);
  cv::Rect at;
  cv::Mat page = compose(title, body, legend.render(), &at);
  Picture p = make(fmt::format("L{}-positions.png", l.layer), "positions", l.layer, std::move(page), at);
  p.left_out = left_out;
  return p;
}

Picture specialisation_plot(const RoutingStats& s) {
  const int L = static_cast<int>(s.layers.size());
  constexpr int kW = 440, kH = 260, kLeft = 44, kBottom = 36, kTop = 10, kRight = 16;
  cv::Mat body(kTop + kH + kBottom, kLeft + kW + kRight, CV_8UC3, kWhite);
  auto px = [&](int i) { return kLeft + (L == 1 ? kW / 2 : i * kW / (L - 1)); };
  auto py = [&](double v) { return kTop + static_cast<int>(std::lround((1.0 - std::clamp(v, 0.0, 1.0)) * kH)); };
  for (int t = 0; t <= 4; ++t) {
    const double v = t / 4.0;
    cv::line(body, {kLeft, py(v)}, {kLeft + kW, py(v)}, cv::Scalar(225, 225, 225), 1);
    const std::string label = short_number(v);
    put_text(body, label, {kLeft - 6 - text_size(label, 0.4).width, py(v) + 5}, 0.4);
  }
  cv::rectangle(body, cv::Rect(kLeft, kTop, kW, kH), kFrame, 1);
  for (int i = 0; i < L; ++i) {
    const std::string label = std::to_string(s.layers[i].layer);
    put_text(body, label, {px(i) - text_size(label, 0.4).width / 2, kTop + kH + 18}, 0.4);
  }
  put_text(body, "encoder block", {kLeft + kW / 2 - text_size("encoder block", 0.4).width / 2, kTop + kH + 33}, 0.4);
  const cv::Scalar class_colour = expert_colour(0), position_colour = expert_colour(1);
  auto series = [&](auto nmi, const cv::Scalar& colour) {
    for (int i = 0; i < L; ++i) {
      const cv::Point p(px(i), py(nmi(s.layers[i])));
      if (i > 0) cv::line(body, {px(i - 1), py(nmi(s.layers[i - 1]))}, p, colour, 2, cv::LINE_AA);
      cv::circle(body, p, 4, colour, cv::FILLED, cv::LINE_AA);
    }
  };
  series([](const RoutingStatsLayer& l) { return l.class_nmi(); }, class_colour);
  series([](const RoutingStatsLayer& l) { return l.position_nmi(); }, position_colour);
  Legend legend;
  legend.heading("normalised MI");
  legend.swatch(class_colour, "class : expert");
  legend.swatch(position_colour, "position : expert");
  legend.text("NMI = I / min(H(X), H(E))");
  legend.text("1: one is a function of the other");
  legend.text("0: independent");
  for (const RoutingStatsLayer& l : s.layers)
    legend.text(fmt::format("block {}: {:.3f} / {:.3f}", l.layer, l.class_nmi(), l.position_nmi()));
  const bool soft = s.kind == StatsKind::soft;
  const std::vector<std::string> title{
      fmt::format("{} | specialisation against depth ({})", stem(s.model),
                  soft ? "slots weighted by dispatch mass" : s.kind == StatsKind::experts_choice ? "argmax-gate expert" : "first-choice expert"),
      routing_line(s)};
  cv::Rect at;
  cv::Mat page = compose(title, body, legend.render(), &at);
  return make("specialisation.png", "specialisation", -1, std::move(page), at);
}

std::vector<Picture> routing_stats_pictures(const RoutingStats& s) {
  std::vector<Picture> out;
  for (size_t i = 0; i < s.layers.size(); ++i) {
    out.push_back(class_expert_heatmap(s, i));
    out.push_back(position_maps(s, i));
  }
  out.push_back(specialisation_plot(s));
  return out;
}

}  // namespace vmoe::viz
