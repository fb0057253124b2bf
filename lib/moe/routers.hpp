#pragma once
// The routing decisions of the three routers (DESIGN §4) on one group of S tokens,
// given the router's gates. Pure functions of their inputs: the engine calls them per
// group, tests call them on hand-worked cases.
#include <cstdint>
#include <vector>

namespace vmoe {

// Top-k with capacity. For token t and rank r (0 = first choice):
struct TopKRouting {
  int k = 0, capacity = 0;
  std::vector<int> expert;  // (S, k) chosen expert
  std::vector<float> gate;  // (S, k) its softmax gate (no renormalisation)
  std::vector<int> slot;  // (S, k) position in the expert's buffer, -1 when dropped
  std::vector<int> order;  // (S) tokens in processing order (position, or BPR priority)
  std::vector<int> expert_load;  // (E) slots used
};

// gates: (S, E) softmax probabilities. Picks top-k per token (ties to the lower
// expert), orders tokens by position (vanilla) or by top-1 gate descending, stable
// (batch priority), then walks all first choices, then all second choices, ..., each
// taking the expert's next free slot or being dropped when the expert is full.
void route_top_k(TopKRouting& out, const float* gates, int S, int E, int k, int capacity, bool batch_priority);

// Experts-choice: each expert takes its top-c tokens by gate (ties to the lower token).
struct ExpertsChoiceRouting {
  int capacity = 0;
  std::vector<int> token;  // (E, c) chosen tokens in gate order
  std::vector<float> gate;  // (E, c)
};
void route_experts_choice(ExpertsChoiceRouting& out, const float* gates, int S, int E, int capacity);

// Soft-MoE weights from the logits (S, E*P): dispatch = softmax over tokens per slot,
// combine = softmax over slots per token.
void soft_dispatch_combine(float* dispatch, float* combine, const float* logits, int S, int slots);

}  // namespace vmoe
