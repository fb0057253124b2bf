#pragma once
// Internal to viz/: what every picture of one MoE layer needs — titles, the token to
// patch-cell mapping, per-token drop states and the way each state is drawn.
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "tasks/route.hpp"
#include "viz/canvas.hpp"
#include "viz/pictures.hpp"

namespace vmoe::viz {

// Tokens of the (single) image: token t is the CLS token when has_cls and t == 0,
// else patch t - has_cls in row-major grid order.
struct TokenGrid {
  const ModelConfig& config;
  bool has_cls;
  int tokens() const { return config.num_patches() + (has_cls ? 1 : 0); }
  bool is_cls(int t) const { return has_cls && t == 0; }
  // cell of token t in a panel upscaled by `scale` (not valid for the CLS token)
  cv::Rect cell(int t, int scale) const {
    const int p = t - (has_cls ? 1 : 0);
    return cell_rect(config, scale, p / config.grid_w(), p % config.grid_w());
  }
};

inline TokenGrid token_grid(const RouteResult& r) { return {r.config, r.cls}; }

std::string model_name(const RouteResult& r);  // file stem of the model path
std::string image_name(const RouteResult& r);  // file name of the image path
std::string image_stem(const RouteResult& r);  // file stem, made safe for file names
std::string routing_name(const MoeLayerTrace& t);  // bpr | vanilla | experts choose | soft

// Title line 1: model | layer | router | what. Line 2: capacity factor (effective, c) |
// routing | image. Extra lines (statistics) follow.
std::vector<std::string> layer_title(const RouteResult& r, const MoeLayerTrace& t, const std::string& what,
                                     const std::vector<std::string>& extra = {});
// "capacity factor 0.25 (effective 0.32, c = 4)" or the Soft-MoE equivalent
std::string capacity_text(const MoeLayerTrace& t);

// Drop state of token t in a top-k or experts-choice trace.
enum class DropState { kept, partial, dropped };
DropState drop_state(const MoeLayerTrace& t, int token);

// Draws the drop state over a cell: kept = untouched, partial = lower-right half greyed
// behind a red diagonal, dropped = greyed out with a red cross.
void draw_drop_state(cv::Mat& img, const cv::Rect& cell, DropState s);
// The dropped-patch view of a whole layer (input image, states, grid); CLS not drawn.
cv::Mat drop_panel(const RouteResult& r, const MoeLayerTrace& t, int scale);
// Legend entries explaining the three states, with counts when given.
void drop_legend(Legend& legend, const MoeLayerTrace& t, bool with_counts);

// Experts-choice: each patch coloured by how many experts took it (0 = greyed and
// crossed), the count written in the cell; colours run from 1 to max_count.
cv::Scalar taken_colour(int count, int max_count);
cv::Mat taken_panel(const RouteResult& r, const MoeLayerTrace& t, int scale, int max_count);
int max_times_taken(const MoeLayerTrace& t);

// Heatmap panels (priority and importance pictures): each patch tinted by its value on
// the viridis scale from the layer's smallest to its largest value, labelled with its
// rank when `ranks` (1 = largest; ties keep token order, as BPR does). With `drops` a red
// cross marks each token that layer trace dropped entirely.
struct HeatScale {
  float lo = 0, hi = 0;
  double unit(float v) const { return hi > lo ? (v - lo) / (hi - lo) : 1.0; }
};
HeatScale heat_scale(const std::vector<float>& values);
std::vector<int> descending_ranks(const std::vector<float>& values);
cv::Mat heat_panel(const RouteResult& r, const std::vector<float>& values, bool ranks, const MoeLayerTrace* drops,
                   int scale);
// The value the priority heatmap shows per token: BPR's score (top-k) or the largest gate.
std::vector<float> priority_values(const MoeLayerTrace& t);

// Legend icon showing how the CLS token fared (it has no patch): `draw` paints a cell.
void cls_legend(Legend& legend, const RouteResult& r, const std::function<void(cv::Mat&)>& draw,
                const std::string& text);

Picture make_picture(const RouteResult& r, const MoeLayerTrace& t, const std::string& kind, cv::Mat page,
                     cv::Rect panel, int scale);

}  // namespace vmoe::viz
