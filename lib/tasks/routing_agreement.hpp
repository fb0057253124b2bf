#pragma once
// How closely one run's routing follows a reference run's on the same images with the
// same routing settings: `vmoe eval --precision bf16` against the f32 run. Routing is
// discontinuous (a top-k choice or a capacity cut-off flips on a tiny change of a gate),
// so logits that agree closely can still hide different routing.
#include <cstdint>

#include "spec/routing_trace.hpp"

namespace vmoe {

struct RoutingAgreement {
  // Tokens compared and those whose first choice (the highest gate) is the same expert.
  // Top-k only: experts-choice and Soft-MoE have no per-token choice (tokens stays 0).
  int64_t tokens = 0, top1_same = 0;
  // Kept/dropped decisions compared and those that agree: top-k, one per (token, choice
  // j), kept or dropped; experts-choice, one per (token, expert), taken or not. Soft-MoE
  // drops nothing (decisions stays 0).
  int64_t decisions = 0, decisions_same = 0;

  void add(const RoutingAgreement& o) {
    tokens += o.tokens, top1_same += o.top1_same, decisions += o.decisions, decisions_same += o.decisions_same;
  }
};

// Throws when the traces do not describe the same tokens, router and k.
RoutingAgreement routing_agreement(const MoeLayerTrace& reference, const MoeLayerTrace& run);

}  // namespace vmoe
