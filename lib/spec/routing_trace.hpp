#pragma once
// What the routers did in one forward pass, per MoE layer, for every token of the
// batch (token n = image * T + position). The cheap parts (choices, kept flags,
// priority) are always filled; gates and Soft-MoE weights only when `detail` is set.
#include <cstdint>
#include <vector>

#include "spec/config.hpp"

namespace vmoe {

struct MoeLayerTrace {
  int layer = 0;  // encoder block index
  bool detail = false;  // also record gates / Soft-MoE weights
  const Router* router = nullptr;  // spec/router.hpp, set by the MoE layer that fills the trace
  int num_experts = 0;
  int k = 0;  // per-token choices recorded in choice_* (top-k), 0 for other routers
  int slots_per_expert = 0;  // Soft-MoE
  int tokens_per_image = 0, group_images = 1;
  double capacity_factor = 0;
  bool dropless = false;
  bool batch_priority = true;
  Priority priority = Priority::max_gate;  // BPR's scorer
  Gating gating = Gating::softmax_topk;
  Overflow overflow = Overflow::drop;
  std::vector<int> group_capacity;  // per group: slots per expert (top-k, experts-choice)
  // top-k: (N, k)
  std::vector<int> choice_expert;
  std::vector<float> choice_gate;
  std::vector<uint8_t> choice_kept;
  std::vector<int> priority_rank;  // (N) position of the token in its group's processing order
  std::vector<float> priority_score;  // (N) the scorer's value (larger first under BPR)
  // how many experts took the token (top-k: its kept choices; Soft-MoE: every slot)
  std::vector<int> times_taken;
  // experts-choice: (N, E) 1 when expert e took token n
  std::vector<uint8_t> expert_took;
  // detail only
  std::vector<float> gates;  // (N, E) router softmax (top-k, experts-choice)
  std::vector<float> dispatch, combine;  // (N, E*P) Soft-MoE, dispatch normalised within the group

  int64_t num_tokens() const { return static_cast<int64_t>(times_taken.size()); }
  // What capacity is measured against for `tokens` routed tokens: their choices (S*k)
  // with per-token choices, else the tokens (experts-choice).
  int64_t demand(int64_t tokens) const { return k > 0 ? tokens * k : tokens; }
  int capacity_of_image(int image) const { return group_capacity.empty() ? 0 : group_capacity.at(image / group_images); }
  // Fraction of the image's tokens that no expert processed (0 for Soft-MoE).
  double dropped_fraction(int image) const;
  // Fraction of the image's top-k choices that were dropped (0 for other routers).
  double dropped_choice_fraction(int image) const;
};

struct RoutingTrace {
  bool detail = false;
  std::vector<MoeLayerTrace> layers;
};

}  // namespace vmoe
