#pragma once
// A router decides which expert sees which token of an MoE block (DESIGN §4). This is its
// interface; each router is one plug-in file in lib/moe (router_top_k.cpp,
// router_experts_choice.cpp, router_soft.cpp) holding its description, its forward and its
// training forward and backward side by side, registered by its config name in
// moe/router_registry.cpp. The rest of the program asks the router (MoeConfig::router,
// MoeLayerTrace::router) and never which one it is. The interface sits in the model's
// description because the description needs it (a config names its router, the router
// names its tensors and its cost); the types its forward and backward take belong to the
// MoE layer above and are only declared here. Adding a router: docs/ARCHITECTURE.md.
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "spec/config.hpp"
#include "spec/params.hpp"

namespace vmoe {

struct MoeLayerTrace;
class MoeTrainLayer;
struct MoeWorkspace;
struct MoeShape;
struct MoeWeights;
struct Group;
struct ModelCost;
struct StageTimes;
namespace nn {
class PrimitiveCache;
}

// The route pictures (lib/viz) a router's layers can be drawn as.
enum class RouteView { expert_overlay, dropped_overlay, times_taken, priority_heatmap, capacity_strip, soft_dispatch, soft_combine };

// What a router keeps between its training forward and backward (its own subclass).
struct RouterTrainState {
  virtual ~RouterTrainState() = default;
};

// Weights of the auxiliary losses in the training loss (top-k: importance and load).
struct AuxWeights {
  float importance = 0, load = 0;
};

// One tensor of the router in an MoE block: "<block>/Moe/Router/<name>".
struct RouterParam {
  std::string name;
  Shape shape;
  Tensor BlockParams::*tensor;
};

class Router {
 public:
  virtual ~Router() = default;

  // --- names and labels
  virtual const char* name() const = 0;  // the config's "moe.router"
  // "routing" in route/eval/info JSON: "bpr" or "vanilla" where batch priority applies, else the name.
  virtual std::string routing(bool batch_priority) const { return name(); }
  // Pictures' and text's words: "bpr by max_gate" / "experts choose" / "soft (no drops)",
  // "top-2 of 8" / "experts-choice, 8 experts" / "soft-moe, 8 x 5 slots".
  virtual std::string routing_phrase(const MoeLayerTrace& t) const = 0;
  virtual std::string layer_phrase(const MoeLayerTrace& t) const = 0;
  // `vmoe route`'s line for the layer; counts are route.hpp's LayerCounts.
  virtual std::string summary(const MoeLayerTrace& t, int capacity, double effective_factor, int dropped_tokens,
                              int tokens, int dropped_choices, int choices) const = 0;

  // --- config
  // Whether the top-k knobs (k, priority, gating, overflow, dropless, router noise and
  // the importance/load losses) mean anything for this router.
  virtual bool top_k_options() const { return false; }
  // Whether moe.balance "bias" applies: the router picks experts by logits + a
  // per-expert bias (<block>/Moe/Router/balance_bias, in params()), gates stay unbiased.
  virtual bool selection_bias() const { return false; }
  // Its tensors in a block with D = hidden size (params.cpp and param_count walk this).
  virtual std::vector<RouterParam> params(const MoeConfig& m, int64_t D) const = 0;
  // Initialises the router tensors of an upcycled block (`vmoe upcycle`).
  virtual void init_upcycled(BlockParams& b, const ModelConfig& c, double router_std, std::mt19937_64& rng) const = 0;
  // Experts a token meets at the start of upcycling, at equal gates (for the output scale).
  virtual int upcycle_experts_per_token(const MoeConfig& m) const { return m.num_experts; }

  // --- capacity
  // False when nothing is ever dropped (no capacity, no drop counts, no capacity strip).
  virtual bool drops() const { return true; }
  // Slots per expert for a group of S tokens (0 without capacity); written with
  // expert_capacity (capacity.hpp), the one rounding rule.
  virtual int64_t capacity(const MoeConfig& m, int64_t S) const = 0;
  // Rows the experts receive at most for a group of S tokens.
  virtual int64_t max_rows(const MoeConfig& m, int64_t S) const = 0;

  // --- traces
  virtual int trace_k(const MoeConfig& m) const { return 0; }  // per-token choices recorded (N, k)
  virtual int trace_slots(const MoeConfig& m) const { return 0; }  // Soft-MoE slots per expert
  // Experts listed per token in route JSON "k" (and "choices").
  virtual int listed_experts(const MoeLayerTrace& t) const = 0;
  // Experts a token must get to count as kept with all its choices (foreground metric);
  // `all_threshold` is the model's k.
  virtual int all_choices(const MoeLayerTrace& t, int all_threshold) const = 0;
  // The pictures `vmoe route` draws for the layer (the capacity strip when asked).
  virtual std::vector<RouteView> pictures() const = 0;
  bool draws(RouteView v) const {
    for (RouteView p : pictures())
      if (p == v) return true;
    return false;
  }

  // --- cost per image: adds router FLOPs to cost.flops_router and removes inactive
  // experts from cost.params_active; returns the expert rows per image.
  virtual double cost(ModelCost& cost, const MoeConfig& m, double T, double D, int64_t S,
                      int64_t expert_params) const = 0;

  // --- forward (engine)
  // x (N, D) += MoE(h) without the shared experts (the MoE layer adds those); the token
  // routers route by gates = softmax(h @ router) and run plan() (moe/dense_gate_router).
  virtual void forward(float* x, const float* h, const MoeShape& shape, const MoeConfig& m, const MoeWeights& w,
                       MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times) const = 0;
  // Token routers: routes each group on gates (N, E) (`learned` (N) the learned scorer
  // or null) and replaces ws.entries and the expert-major rows (plan_rows). `select` (N, E)
  // or null: the scores the experts are chosen by instead of the gates (balance "bias":
  // logits + bias, noisy logits in training); only routers with selection_bias() get one.
  // Routers that do not route tokens (Soft-MoE) keep this default, which throws.
  virtual void plan(MoeWorkspace& ws, const float* gates, const float* learned, const float* select,
                    const std::vector<Group>& groups, const std::vector<int>& capacity, const MoeConfig& m) const;
  // The router's part of the trace after plan(): choices or expert_took, group_capacity.
  virtual void fill_trace(MoeLayerTrace& trace, const MoeWorkspace& ws, const std::vector<Group>& groups,
                          const MoeConfig& m) const {}

  // --- training (moe/moe_train_layer.hpp): the router's share of one MoE block in a
  // training step. The layer owns what every router shares (the experts' activations and
  // their backward, the shared experts, the routing plan); the router owns the rest, in the
  // state it creates here, and its forward and backward sit side by side in its file.
  virtual std::unique_ptr<RouterTrainState> train_state(const MoeTrainLayer& layer) const = 0;
  // x (N, D) += the routed experts' output for h (N, D); with a noise generator the router
  // adds its training noise. Records its auxiliary losses in layer.aux.
  virtual void train_forward(MoeTrainLayer& layer, float* x, const float* h, const BlockParams& p,
                             std::mt19937_64* noise, nn::PrimitiveCache& cache) const = 0;
  // dh (N, D) = d/dh of (the routed output with upstream gradient dy, plus the weighted
  // auxiliary losses, plus the shared experts' output); parameter gradients accumulate
  // into g. The router calls layer.shared_backward itself, where its sums into dh need it.
  virtual void train_backward(MoeTrainLayer& layer, float* dh, const float* dy, const float* h, const BlockParams& p,
                              BlockParams& g, const AuxWeights& weights, nn::PrimitiveCache& cache) const = 0;
};

}  // namespace vmoe
