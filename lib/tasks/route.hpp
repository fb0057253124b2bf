#pragma once
// Routing one image for `vmoe route`: the forward pass at the requested capacity factor
// and routing (with a detailed trace: gates, choices, Soft-MoE weights), plus the same
// image at a list of capacity factors under both BPR and vanilla routing for the
// capacity strip. Pictures are drawn from this by viz/; JSON is printed by the CLI.
#include <optional>
#include <string>
#include <vector>

#include "model/engine.hpp"
#include "spec/routing_trace.hpp"
#include "tasks/classify.hpp"
#include "tasks/importance.hpp"

namespace vmoe {

// The capacity factors of the strip when the user gives a single factor (or none).
const std::vector<double>& default_strip_factors();

struct RouteRequest {
  // Empty: the model's factor for the main run and default_strip_factors() for the strip.
  // One: that factor for the main run, the default strip. Several: the first for the
  // main run and exactly these for the strip.
  std::vector<double> capacity_factors;
  std::optional<bool> batch_priority;  // --routing; empty: the model's
  std::optional<Priority> priority;  // --priority; empty: the model's
  std::optional<Overflow> overflow;  // --overflow; empty: the model's
  std::optional<int> layer;  // encoder block; empty: every MoE block
  bool strip = true;  // also run the strip settings (top-k and experts-choice only)
  // Patch importance of the image at every MoE block (tasks/importance.hpp); always
  // computed when the priority is oracle, which routes by it.
  bool importance = false;
  int top_classes = 5;
};

// One forward pass of the image under one routing setting.
struct RoutedRun {
  double capacity_factor = 0;  // requested
  bool batch_priority = true;
  std::vector<float> logits;
  RoutingTrace trace;  // detailed, restricted to the requested layers, B = 1
  std::string error;  // strip cells only: why this setting could not run (e.g. capacity < 1)
};

struct RouteResult {
  std::string image;  // the path as given
  std::string model;  // the model path as given
  ModelConfig config;
  int grid_h = 0, grid_w = 0;
  bool cls = false;  // token 0 is the CLS token
  std::vector<float> pixels;  // (H, W, C) model input in the config's value range
  std::vector<uint8_t> foreground;  // (grid_h * grid_w) 1 = foreground patch (model/foreground.hpp)
  RoutedRun main;  // first factor, requested routing
  std::vector<ClassScore> top;  // classes of the main run
  // Capacity strip: rows x factors, row-major. Top-k: row 0 BPR, row 1 vanilla.
  // Experts-choice: one row (no priority order). Soft-MoE: empty (nothing is dropped).
  std::vector<double> strip_factors;
  std::vector<bool> strip_rows_bpr;
  std::vector<RoutedRun> strip;
  const RoutedRun& strip_cell(size_t row, size_t col) const { return strip.at(row * strip_factors.size() + col); }
  std::optional<PatchImportance> importance;  // with RouteRequest::importance (or priority oracle)
  // (T) importance of the tokens at encoder block `block`, or empty.
  std::vector<float> importance_at(int block) const;
};

// Throws vmoe::Error when the model has no MoE layer, the layer is not an MoE block, a
// factor is not positive, or the image cannot be read.
RouteResult route_image(Engine& engine, const std::string& model_path, const std::string& image_path,
                        const RouteRequest& request);

// Helpers on one image's layer trace (B = 1), shared by the pictures and the JSON.
struct LayerCounts {
  int tokens = 0;
  int dropped_tokens = 0;  // no expert processed the token (top-k, experts-choice)
  int partial_tokens = 0;  // top-k: some but not all choices dropped
  int64_t expert_tokens = 0;  // sum over tokens of the experts that took them
  int choices = 0, dropped_choices = 0;  // top-k
  int capacity = 0;  // slots per expert (0 for Soft-MoE, as in `vmoe classify`)
  double effective_factor = 0;  // c * E / (S * k), or c * E / S for experts-choice
};
LayerCounts count_layer(const MoeLayerTrace& t);

// Parses "2,1,0.5" into factors; throws vmoe::Error naming the offending item.
std::vector<double> parse_capacity_factors(const std::string& list);

}  // namespace vmoe
