#pragma once
// The numbers of `vmoe report` (docs/ROUTE.md, "vmoe report"): each image routed on its
// own at every requested capacity factor under each requested routing order, with the
// detailed trace of `vmoe route` (choices, gates, kept flags, BPR priority, Soft-MoE
// dispatch and combine) and the predicted classes of every run. The page itself is
// written by viz/report_html.hpp; nothing here knows about HTML.
#include <optional>
#include <string>
#include <vector>

#include "tasks/classify.hpp"
#include "model/engine.hpp"
#include "tasks/route.hpp"

namespace vmoe {

struct ReportRequest {
  std::vector<double> capacity_factors;  // slider positions in this order; empty: default_strip_factors()
  std::vector<bool> routings;  // batch_priority per column; empty: BPR then vanilla
  std::optional<Priority> priority;  // --priority; empty: the model's
  std::optional<Overflow> overflow;  // --overflow; empty: the model's
  int top_classes = 5;
};

// One forward pass of one image at one setting (RoutedRun: factor, routing, logits,
// detailed trace with B = 1, or `error` when the setting cannot run).
struct ReportRun {
  RoutedRun routed;
  std::vector<ClassScore> top;
};

struct ReportImage {
  std::string path;  // as given
  std::vector<float> pixels;  // (H, W, C) model input in the config's value range
  std::vector<uint8_t> foreground;  // (grid_h * grid_w) model/foreground.hpp
  std::vector<ReportRun> runs;  // (factors, routings) row-major
};

// An image that could not be used (unreadable, wrong size for the model, ...).
struct ReportFailure {
  std::string image;
  std::string error;  // one line
};

struct Report {
  std::string model;  // the model path as given
  ModelConfig config;
  int grid_h = 0, grid_w = 0;
  bool cls = false;  // token 0 is the CLS token
  // Slider positions and columns. Routers without drops (Soft-MoE) get one factor (the
  // model's: it changes nothing) and routers without a routing order (experts-choice,
  // Soft-MoE) one column, whatever was asked.
  std::vector<double> factors;
  std::vector<bool> routings_bpr;
  std::vector<ReportImage> images;  // the readable ones, in the order given
  std::vector<ReportFailure> failures;  // the others, in the order given
  const ReportRun& run(size_t image, size_t factor, size_t routing) const {
    return images.at(image).runs.at(factor * routings_bpr.size() + routing);
  }
};

// Throws vmoe::Error when the model has no MoE layer or a factor is not positive; an
// image that cannot be read or used goes to `failures` and the others are still routed.
Report build_report(Engine& engine, const std::string& model_path, const std::vector<std::string>& image_paths,
                    const ReportRequest& request);

}  // namespace vmoe
