#pragma once
// Dataset-level routing statistics (`vmoe eval --routing-stats DIR`, docs/EVAL.md):
// per MoE layer, which expert takes which classes and which token positions, and how
// much a layer specialises (normalised mutual information). Everything is an integer
// count so that shards add up bit for bit (RoutingStats::merge):
//
// - top-k, experts-choice: token counts; gate sums in fixed point (units of 2^-24).
// - Soft-MoE: the columns are the E*P slots and every count is dispatch weight mass in
//   fixed point (each token's weight rounded to a multiple of 2^-24, then added as
//   integers), so merges are exact too.
//
// A token's "first choice": top-k its rank-0 expert; experts-choice its argmax gate (ties
// to the lower expert), whether or not that expert took it. The pipeline is a pure
// function of RoutingTrace + labels (accumulate_routing_stats) so that it is unit-testable.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "spec/config.hpp"
#include "tasks/evaluate.hpp"
#include "spec/routing_trace.hpp"

namespace vmoe {

// Fixed-point scale of gates and Soft-MoE dispatch/combine mass.
inline constexpr int64_t kMassScale = int64_t{1} << 24;

enum class StatsKind { top_k, experts_choice, soft };
const char* to_string(StatsKind k);

struct RoutingStatsLayer {
  int layer = 0;  // encoder block
  int columns = 0;  // X: experts (top-k, experts-choice) or slots E*P (Soft-MoE)
  std::vector<int64_t> class_expert;  // (C, X) first choices (Soft: dispatch mass) by true class
  std::vector<int64_t> class_expert_kept;  // (C, X) tokens expert x processed (any choice rank)
  std::vector<int64_t> position_expert;  // (T, X) first choices by token position (CLS first)
  std::vector<int64_t> load;  // (X) top-k: choices naming x (all ranks); EC: first choices; Soft: dispatch mass
  std::vector<int64_t> kept;  // (X) tokens x processed (column sums of class_expert_kept)
  std::vector<int64_t> drops;  // (X) top-k: choices naming x that found it full; EC: first choices x did not take
  std::vector<int64_t> gate_sum;  // (X) gates of the `load` choices (Soft: combine mass), units 2^-24

  std::vector<double> mean_gate() const;  // gate_sum / load (Soft: combine mass per token), 0 when empty
  double class_nmi() const;  // NMI(class; first choice), see normalised_mutual_information
  double position_nmi() const;  // NMI(position; first choice)
};

struct RoutingStats {
  // Identity (checked equal by merge; copied from the EvalResult of the run).
  std::string model, data, router, routing;
  double capacity_factor = 0;
  bool has_capacity = false;
  int group_images = 1;
  std::vector<std::string> classes;  // dataset classes: the rows of class_expert
  StatsKind kind = StatsKind::top_k;
  int num_experts = 0, slots_per_expert = 0;  // slots_per_expert: Soft-MoE only
  int tokens_per_image = 0;  // T: rows of position_expert
  bool cls = false;  // token 0 is the CLS token
  int grid_h = 0, grid_w = 0;  // patch grid (row-major after the CLS token)
  int64_t images = 0;
  int shard_count = 1;
  std::vector<int> shards{0};
  std::vector<RoutingStatsLayer> layers;

  // Adds another shard's statistics; throws if they are not parts of the same evaluation
  // or a shard is counted twice. Merging all shards normalises the bookkeeping to one
  // whole run (shard_count 1), so the merged files equal a single run's byte for byte.
  void merge(const RoutingStats& other);
};

// Empty statistics for a model with MoE layers: shapes from the config, `classes` rows.
RoutingStats make_routing_stats(const ModelConfig& c, const std::vector<std::string>& classes);
// One MoE block's zero counts: `columns` experts (Soft-MoE: slots), `classes` x columns and
// `tokens` x columns matrices.
RoutingStatsLayer empty_stats_layer(int block, int columns, size_t classes, size_t tokens);

// Adds one forward pass. labels: (B) dataset class of each image; the trace holds B images.
// Top-k needs the cheap trace; experts-choice needs gates and Soft-MoE dispatch/combine
// (trace.detail). Throws when the trace does not fit the statistics' shapes.
void accumulate_routing_stats(RoutingStats& s, const RoutingTrace& trace, const std::vector<int>& labels);

// Copies model, data, routing, classes and shard bookkeeping from the evaluation.
void set_identity(RoutingStats& s, const EvalResult& r);

// NMI of the joint distribution given by a non-negative (R, X) matrix of counts/masses:
//   I = sum_rx p(r,x) log(p(r,x) / (p(r) p(x))),  NMI = I / min(H(R), H(X)),  0/0 = 0.
// 1 exactly when one variable is a function of the other; 0 for independence.
double normalised_mutual_information(const std::vector<int64_t>& joint, int rows, int cols);

// JSON (docs/EVAL.md) and its reader; `what` prefixes errors.
nlohmann::json routing_stats_to_json(const RoutingStats& s);
RoutingStats routing_stats_from_json(const nlohmann::json& j, const std::string& what);
// `path` is a routing_stats.json or a directory holding one.
RoutingStats read_routing_stats(const std::string& path);
// True when the JSON is routing statistics (not an eval result).
bool is_routing_stats_json(const nlohmann::json& j);

// Writes DIR/routing_stats.json, DIR/L<block>-{class_expert,class_expert_kept,
// position_expert,experts}.csv and DIR/specialisation.csv, each atomically. Returns the paths.
std::vector<std::string> write_routing_stats(const RoutingStats& s, const std::string& dir);

// Text lines, one per MoE layer: class and position NMI.
std::string routing_stats_text(const RoutingStats& s);

}  // namespace vmoe
