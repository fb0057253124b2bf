#pragma once
// Evaluating a model on a dataset (`vmoe eval`): top-1/top-5 accuracy and what the MoE
// layers dropped, kept as raw counts so that the results of shards add up exactly to
// the result of one run (EvalCounts::merge).
//
// Sharding (--shard I/N): the images (after --limit) are cut into routing groups of
// group_images consecutive images, exactly as one unsharded run groups them; group g
// belongs to shard g % N. A shard's groups keep their order, every batch holds whole
// groups, and with group_images = 1 (default) image i belongs to shard i % N.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/dataset.hpp"
#include "model/engine.hpp"
#include "spec/routing_trace.hpp"
#include "tasks/routing_agreement.hpp"

namespace vmoe {

struct EvalLayerCounts {
  int layer = 0;  // encoder block index
  int64_t tokens = 0;  // tokens routed
  int64_t dropped_tokens = 0;  // tokens no expert processed
  int64_t choices = 0;  // top-k choices made (tokens * k; 0 for other routers)
  int64_t dropped_choices = 0;  // top-k choices that found their expert full
  int64_t expert_tokens = 0;  // token-expert pairs processed (top-k, experts-choice)
  int capacity = 0;  // slots per expert in a full group (0 for Soft-MoE)
  double effective_capacity_factor = 0;  // capacity * E / (group tokens * k), 0 for Soft-MoE
  // Foreground patches (model/foreground.hpp) routed, and of those kept with all choices /
  // with at least one choice.
  int64_t foreground_tokens = 0, foreground_kept_all = 0, foreground_kept_any = 0;
  // --importance (tasks/importance.hpp): the (image, block) pairs with some positive
  // importance, and the sums over them of the share of it kept (a token reached at least
  // one expert / kept all its choices) under the run's routing and under the oracle order
  // (BPR by importance at the same capacity and grouping; top-k only).
  int64_t importance_pairs = 0;
  double importance_kept_any = 0, importance_kept_all = 0, oracle_kept_any = 0, oracle_kept_all = 0;
  // Spearman correlation of each scorer's priority with importance over an image's tokens,
  // summed over images (EvalCounts::scorers; top-k only).
  int64_t spearman_images = 0;
  std::vector<double> spearman_sum{};
  // --precision bf16 (EvalOptions::reference): routing agreement with the f32 run
  // (tasks/routing_agreement.hpp), summed over batches.
  RoutingAgreement agreement{};
};

struct EvalCounts {
  int64_t images = 0, top1 = 0, top5 = 0;  // top1/top5: correct predictions
  double seconds = 0;  // time spent (summed over shards when merged)
  int shard_count = 1;
  std::vector<int> shards{0};  // shard indices these counts cover
  std::vector<int64_t> class_images, class_top1;  // per dataset class
  std::vector<EvalLayerCounts> layers;  // per MoE layer
  int64_t foreground_patches = 0;  // foreground patches over all images (model/foreground.hpp)
  // False for results read from JSON written before the foreground counts existed (and
  // for merges including one): the foreground figures are then unknown, not 0.
  bool has_foreground = true;
  bool has_importance = false;  // --importance figures are in the layers
  bool has_oracle = false;  // ... with the oracle order's (top-k routers)
  std::vector<std::string> scorers;  // the priority scorers correlated with importance
  // With a reference run (EvalOptions::reference): its correct top-1 predictions, and the
  // images whose top-1 class is the same in both runs.
  bool has_reference = false;
  int64_t reference_top1 = 0, same_prediction = 0;

  // Adds another shard's counts; throws if the layers or classes do not line up or a
  // shard is counted twice.
  void merge(const EvalCounts& other);
};

struct EvalResult {
  std::string model, data;
  std::string router;  // top_k | experts_choice | soft | dense
  std::string routing;  // bpr | vanilla for top-k; the router name otherwise
  std::string priority, overflow;  // top-k: BPR's scorer and the overflow rule; empty otherwise
  std::string precision = "f32";  // the engine's matmul precision (nn/precision.hpp)
  double capacity_factor = 0;  // requested factor (0 when the model has no capacity)
  bool has_capacity = false;  // top-k or experts-choice
  int group_images = 1;
  std::vector<std::string> class_names;  // dataset classes, in the order of the per-class counts
  EvalCounts counts;

  double top1() const;
  double top5() const;
  double images_per_s() const;
  std::vector<double> dropped() const;  // per MoE layer: fraction of tokens no expert processed
  std::vector<double> choices_dropped() const;  // per MoE layer: fraction of top-k choices dropped
  double mean_dropped() const;  // averaged over MoE layers (0 without MoE layers)
  double mean_choices_dropped() const;
  double processed_tokens() const;  // 1 - mean_dropped(): fraction of tokens some expert processed
  // Per MoE layer: share of foreground patches kept with all choices / with at least one
  // (1 when there was no foreground patch: nothing of it was dropped).
  std::vector<double> foreground_kept_all() const;
  std::vector<double> foreground_kept_any() const;
  double foreground_per_image() const;  // mean foreground patches per image
  // --importance, per MoE layer (empty without): mean share of importance kept by tokens
  // that reached an expert / kept all choices, by the run and by the oracle order; and
  // the mean Spearman correlation of scorer s with importance.
  std::vector<double> importance_kept(bool oracle = false, bool all_choices = false) const;
  std::vector<double> importance_spearman(size_t scorer) const;
  // The same averaged over every (image, layer) pair with positive importance.
  double importance_kept_overall(bool oracle = false, bool all_choices = false) const;
  // With a reference run: its top-1, and the shares of images with the same top-1 class,
  // of tokens with the same first expert and of kept/dropped decisions that agree (over
  // all MoE layers; -1 when the routers make no such choice).
  double reference_top1() const;
  double same_prediction() const;
  double same_top1_expert() const;
  double same_kept_decisions() const;
};

// About how many bytes evaluating batches of B images takes beyond the weights: the
// batch's images (B, H, W, C) and the engine's activations (the residual, norms, QKV,
// attention output and MLP hidden per token, the router logits and expert rows of an
// MoE block, the Soft-MoE dispatch and combine weights). An estimate, not a bound.
double batch_memory_bytes(const ModelConfig& c, const MoeConfig* routing, int64_t B);
// Throws a one-line vmoe::Error with the estimate, the memory available now
// (/proc/meminfo's MemAvailable) and the largest batch that fits, when B does not fit:
// better than the kernel's OOM killer an hour later.
void check_batch_memory(const ModelConfig& c, const MoeConfig* routing, int64_t B);

struct EvalOptions {
  int batch = 256;  // images per forward pass (rounded down to whole groups)
  int64_t limit = -1;  // evaluate only the first `limit` images (before sharding); < 0: all
  int shard_index = 0, shard_count = 1;
  // Called after every batch with (images done, images in this shard).
  std::function<void(int64_t, int64_t)> progress;
  // Called after every forward pass with its routing trace and the dataset class of each
  // of its images (tasks/routing_stats). detail_trace also records gates and Soft-MoE weights.
  std::function<void(const RoutingTrace&, const std::vector<int>&)> on_trace;
  bool detail_trace = false;
  // Patch importance (tasks/importance.hpp) of every image: importance kept by the run's
  // routing and by the oracle order, and the scorers' rank correlation with it. Slow:
  // one extra pass per token and MoE block from that block on.
  bool importance = false;
  // An engine on the same model and routing (f32, when `engine` runs bf16): every batch
  // also runs on it, and the result gets its top-1 and the agreement figures.
  Engine* reference = nullptr;
};

// Dataset class -> model class index. Matches by exact name, then by slug (case and
// punctuation folded: a folder "T-shirt_top" is class "T-shirt/top"), then folders named
// by class index ("0", "1", ...), then ImageNet synset folders (n01440764 ...) when there
// are exactly as many as the model's classes (the ILSVRC class order is sorted synsets).
// Throws naming the classes that match nothing.
std::vector<int> map_dataset_classes(const std::vector<std::string>& dataset_classes, const ModelConfig& config);

// Lower case, runs of anything but letters and digits become one '-': "T-shirt/top" -> "t-shirt-top".
std::string label_slug(const std::string& label);

// The images this shard evaluates, in order (see the sharding rule above).
std::vector<int64_t> shard_images(int64_t count, int group_images, int shard_index, int shard_count);

EvalResult evaluate(Engine& engine, const Dataset& data, const EvalOptions& options);

// Merges results of the shards of one evaluation: same model, data, routing, capacity
// factor and group size, each shard once, all N shards present. Throws otherwise.
EvalResult merge_results(const std::vector<EvalResult>& parts);

}  // namespace vmoe
