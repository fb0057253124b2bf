#pragma once
// The routing pictures of `vmoe route` (DESIGN §6, docs/ROUTE.md). Every picture is an
// 8-bit BGR page: title lines (model, layer, router, capacity factor, routing), the
// image upscaled so that a patch is at least 32 px with the patch grid drawn, and a
// legend. Pictures are pure functions of a RouteResult; writing is separate.
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "tasks/route.hpp"

namespace vmoe::viz {

struct Picture {
  std::string file;  // file name without directory: <image stem>-L<layer>-<kind>.png
  std::string kind;  // experts | dropped | priority | gates | importance | strip | taken | dispatch | combine
  int layer = 0;  // encoder block
  cv::Mat image;  // the page, CV_8UC3
  cv::Rect panel;  // where the (first) upscaled image panel sits on the page
  int scale = 1;  // upscale of that panel: a patch is patch_h*scale x patch_w*scale px
  std::string left_out;  // what the picture does not draw (also in its title); empty when complete
};

// `layer` indexes result.main.trace.layers (and the strip runs' layers).
Picture expert_overlay(const RouteResult& r, size_t layer);  // top-k, experts-choice
Picture dropped_overlay(const RouteResult& r, size_t layer);  // top-k
Picture priority_heatmap(const RouteResult& r, size_t layer);  // top-k: top-1 gate and BPR rank; EC: max gate
Picture capacity_strip(const RouteResult& r, size_t layer);
// top-k, experts-choice with r.importance: the priority heatmap beside patch importance.
Picture importance_heatmap(const RouteResult& r, size_t layer);  // top-k, experts-choice; needs r.strip
Picture times_taken_map(const RouteResult& r, size_t layer);  // experts-choice
Picture soft_dispatch_grid(const RouteResult& r, size_t layer, int max_slots = 16);  // soft
Picture soft_combine_map(const RouteResult& r, size_t layer);  // soft

// Every picture that applies to the result's router, for every traced layer.
std::vector<Picture> route_pictures(const RouteResult& r);

// Encodes every picture to PNG in memory first, then writes each into `dir` (created if
// missing) under a temporary name and renames it. On any failure the files already
// written by this call are removed and the error is thrown. Returns the paths.
std::vector<std::string> write_pictures(const std::vector<Picture>& pictures, const std::string& dir);

// Creates `dir` if needed and checks that a file can be created in it; throws otherwise.
void prepare_output_dir(const std::string& dir);

}  // namespace vmoe::viz
