#pragma once
// Every hyper-parameter of a model, in one struct (DESIGN §3). Parsing and writing the
// JSON form lives in io/config_json.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vmoe {

enum class Resize { none, stretch, resize_small_crop };
enum class Classifier { token, gap };
// The router of the MoE blocks (spec/router.hpp): one object per config name, registered
// in moe/router_registry.cpp, above this layer; so whoever builds a MoeConfig sets it
// (config_json, the presets, upcycling, tests) and validate() refuses a config without one.
class Router;
enum class CapacityRounding { ceil, round };
enum class Gelu { tanh, erf };  // GELU form of every MLP (amendment: top-level "gelu")
// Top-k routing variants (docs/ROUTING.md): the order BPR processes tokens in, whether
// the k gates are renormalised, and where a choice goes when its expert is full.
// learned: a trained scorer that also scales the MoE output; fitted: a head fitted to patch
// importance after training (vmoe fit-priority), which only orders tokens. oracle: BPR by
// patch importance (tasks/importance), given to the engine before the pass; an evaluation
// tool (--priority oracle), never a model file's setting.
enum class Priority { max_gate, sum_gates, entropy, random, learned, oracle, fitted };
// Whether an MoE block of a model with this priority holds Moe/Priority/{kernel,bias}.
inline bool has_priority_scorer(Priority p) { return p == Priority::learned || p == Priority::fitted; }
enum class Gating { softmax_topk, topk_softmax };
enum class Overflow { drop, next };
// How top-k experts are kept balanced in training (amendment: moe.balance): the
// importance and load losses, or a per-expert bias on the selection logits that training
// nudges toward balance outside the gradient (DeepSeek-V3's auxiliary-loss-free method).
enum class Balance { aux, bias };

struct ImageConfig {
  int height = 28, width = 28, channels = 1;
  Resize resize = Resize::none;
  int resize_small = 256;
  float value_min = -1.0f, value_max = 1.0f;
};

struct MoeConfig {
  std::vector<int> layers;  // encoder blocks whose MLP is an MoE layer
  const Router* router = nullptr;  // set by whoever builds the config; validate() requires it
  int num_experts = 8;
  int k = 2;
  double capacity_factor = 1.05;
  CapacityRounding capacity_rounding = CapacityRounding::ceil;
  int capacity_multiple_of = 4;
  bool batch_priority = true;
  int group_images = 1;
  double noise_std = 1.0;
  int slots_per_expert = 1;
  bool dropless = false;  // "capacity_factor": null: every expert has room for every token of its group
  std::optional<double> eval_capacity_factor;  // the factor at inference when set (training uses capacity_factor)
  Priority priority = Priority::max_gate;  // BPR's score; `learned` adds a scorer to each MoE block
  Gating gating = Gating::softmax_topk;
  Overflow overflow = Overflow::drop;
  // Amendment keys, each absent from a file means the value below (today's behaviour).
  int num_shared_experts = 0;  // experts every token of the block passes through, gate 1 (DeepSeekMoE)
  std::optional<int> expert_mlp_dim;  // hidden size of routed and shared experts; absent: mlp_dim
  Balance balance = Balance::aux;  // bias: top_k only, adds <block>/Moe/Router/balance_bias (E)
};

// Limits on sizes (docs/RELIABILITY.md). Every size is computed in 64 bits and checked
// against these before anything is allocated, so no product overflows an int later.
inline constexpr long long kMaxImageSide = 16384;  // image.height, image.width, resize_small
inline constexpr long long kMaxTokens = 1 << 16;  // tokens per image (patches + class token)
inline constexpr long long kMaxGroupTokens = 1 << 18;  // tokens routed together (group_images x tokens)
inline constexpr long long kMaxParams = 1LL << 30;  // parameters in a model (4 GiB as float32)
inline constexpr double kMaxValueRange = 1e6;  // |image.value_range| bound
inline constexpr double kMaxCapacityFactor = 4096;  // keeps every capacity below 2^30
inline constexpr size_t kMaxLabelBytes = 256;

struct ModelConfig {
  ImageConfig image;
  int patch_h = 4, patch_w = 4;
  int hidden_size = 96;
  int num_layers = 6;
  int num_heads = 3;
  int mlp_dim = 384;
  Classifier classifier = Classifier::token;
  std::optional<int> representation_size;
  double layer_norm_eps = 1e-6;
  Gelu gelu = Gelu::tanh;  // tanh approximation (V-MoE, DESIGN §4) or exact erf (timm, PyTorch)
  std::vector<std::string> labels;  // empty when only num_classes is known
  int num_classes = 0;
  std::optional<MoeConfig> moe;

  int grid_h() const { return image.height / patch_h; }
  int grid_w() const { return image.width / patch_w; }
  int num_patches() const { return grid_h() * grid_w(); }
  int num_tokens() const { return num_patches() + (classifier == Classifier::token ? 1 : 0); }
  int head_dim() const { return hidden_size / num_heads; }
  int pooled_size() const { return representation_size.value_or(hidden_size); }
  // Hidden size of the MoE blocks' experts (routed and shared); dense blocks use mlp_dim.
  int expert_mlp_dim() const { return moe && moe->expert_mlp_dim ? *moe->expert_mlp_dim : mlp_dim; }
  bool is_moe_layer(int block) const;
  std::string label(int index) const;  // falls back to "class_<i>"
  int64_t param_count() const;  // every weight the config implies, in 64 bits

  void validate() const;  // throws vmoe::Error naming the offending field
};

const char* to_string(Classifier c);
const char* to_string(Resize r);
const char* to_string(Gelu g);
const char* to_string(Priority p);
const char* to_string(Gating g);
const char* to_string(Overflow o);
// Parse the names above; throw vmoe::Error listing the valid names.
Priority parse_priority(const std::string& name);
Gating parse_gating(const std::string& name);
Overflow parse_overflow(const std::string& name);
const char* to_string(Balance b);

// Routing knobs a user may override per run (DESIGN §3: every routing field).
struct RoutingOverrides {
  std::optional<double> capacity_factor;
  std::optional<bool> batch_priority;  // --routing bpr|vanilla
  std::optional<int> group_images;
  std::optional<Priority> priority;  // --priority
  std::optional<Overflow> overflow;  // --overflow
};
// The routing inference runs with: eval_capacity_factor, when the file has one, replaces
// the training factor. Overrides apply on top of this.
MoeConfig inference_routing(MoeConfig moe);
MoeConfig apply_overrides(MoeConfig moe, const RoutingOverrides& o);
// The same for the model's own MoE config, checking the result against the model
// (tokens per group, capacity range): throws vmoe::Error naming the offending value.
MoeConfig apply_overrides(const ModelConfig& model, const RoutingOverrides& o);
// Throws unless `moe` (the model's or an overridden one) fits the limits for `model`.
void check_routing(const ModelConfig& model, const MoeConfig& moe);

// The Soft-MoE scale `vmoe train` starts from: sqrt(D). The cosine of random D-dimensional
// vectors has a spread of about 1/sqrt(D), so the logits then start with a spread near 1
// and the dispatch and combine softmaxes can route; with the reference code's 1 they stay
// almost uniform for small D (data/models/README.md measures both).
float default_soft_scale(const ModelConfig& config);

}  // namespace vmoe
