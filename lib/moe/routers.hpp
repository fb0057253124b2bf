#pragma once
// The routing decisions of the three routers (DESIGN §4) on one group of S tokens,
// given the router's gates. Pure functions of their inputs: the routers (router.hpp)
// call them per group, tests call them on hand-worked cases. Each is defined in its
// router's file: router_top_k.cpp, router_experts_choice.cpp, router_soft.cpp.
#include <cstdint>
#include <vector>

#include "spec/config.hpp"

namespace vmoe {

// Top-k with capacity. For token t and rank r (0 = first choice):
struct TopKRouting {
  int k = 0, capacity = 0;
  std::vector<int> choice;  // (S, k) the token's top-k experts by probability
  std::vector<int> expert;  // (S, k) the expert that took the choice (its choice, or with
                            // overflow "next" a later one); the choice when dropped
  std::vector<float> gate;  // (S, k) weight of the expert's output: its probability, or with
                            // gating topk_softmax divided by the sum over the token's top-k
  std::vector<int> slot;  // (S, k) position in the expert's buffer, -1 when dropped
  std::vector<float> priority;  // (S) the scorer's value (larger goes first under BPR)
  std::vector<int> order;  // (S) tokens in processing order (position, or BPR priority)
  std::vector<int> expert_load;  // (E) slots used
};

struct TopKOptions {
  int k = 2, capacity = 1;
  bool batch_priority = true;
  Priority priority = Priority::max_gate;
  Gating gating = Gating::softmax_topk;
  Overflow overflow = Overflow::drop;
  // (S, E) when given: ranks each token's experts instead of the probabilities, for the
  // top-k choice and overflow "next" (balance "bias": logits + per-expert bias). Gates,
  // their renormalisation and the priority stay the probabilities'.
  const float* select = nullptr;
  // (S) the scores of priority oracle (the tokens' importance), which must then be given.
  const float* oracle = nullptr;
};

// Per-token BPR score of a group (docs/ROUTING.md), larger first: max_gate = top-1
// probability, sum_gates = sum of the top-k probabilities, entropy = minus the entropy of
// the probabilities, random = a fixed hash of the position in the group, learned = the
// block's scorer output and oracle = the tokens' importance, both given in `given` (S).
void priority_scores(float* out, const float* probs, const float* given, int S, int E, int k, Priority priority);

// probs: (S, E) softmax probabilities. Picks top-k per token (ties to the lower expert),
// orders tokens by position (vanilla) or by priority descending, stable (BPR), then walks
// all first choices, then all second choices, ..., each taking the expert's next free slot;
// when the expert is full the choice is dropped (overflow drop) or goes to the token's
// next expert by probability that has room and does not hold the token yet (overflow next).
void route_top_k(TopKRouting& out, const float* probs, const float* learned, int S, int E, const TopKOptions& options);
// The V-MoE defaults: max_gate priority, softmax_topk gating, overflow drop.
inline void route_top_k(TopKRouting& out, const float* probs, int S, int E, int k, int capacity, bool batch_priority) {
  TopKOptions o;
  o.k = k, o.capacity = capacity, o.batch_priority = batch_priority;
  route_top_k(out, probs, nullptr, S, E, o);
}

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
