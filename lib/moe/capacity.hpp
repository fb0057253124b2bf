#pragma once
#include <cstdint>

#include "spec/config.hpp"

namespace vmoe {

// Slots per expert per group (DESIGN §4): c = ceil(tokens * factor / E) computed in
// double, then rounded up to a multiple of `multiple_of`. `tokens` is S*k for top-k and
// S for experts-choice. Throws when c < 1.
int64_t expert_capacity(int64_t tokens, int num_experts, double capacity_factor,
                        CapacityRounding rounding = CapacityRounding::ceil, int multiple_of = 4);

// Slots per expert for a group of S tokens under `moe`: the router's rule (Router::
// capacity): top-k over S*k choices (S when dropless: a token takes an expert at most
// once), experts-choice over S tokens and at most S. Soft-MoE has slots, not capacity: 0.
int64_t group_capacity(const MoeConfig& moe, int64_t S);

// c * E / tokens: the factor the rounding actually gives.
double effective_capacity_factor(int64_t capacity, int num_experts, int64_t tokens);

}  // namespace vmoe
