#pragma once
// Forward of one MoE block's MLP: route the (N, D) tokens in groups, run each expert's
// MLP on the tokens it received from every group at once, and add the weighted expert
// outputs to the residual stream.
#include <cstdint>
#include <vector>

#include "core/stage_times.hpp"
#include "model/config.hpp"
#include "model/routing_trace.hpp"
#include "moe/routers.hpp"
#include "nn/primitive_cache.hpp"
#include "tensor/tensor.hpp"

namespace vmoe {

struct MoeWeights {
  const float* w0;  // (E, D, M)
  const float* b0;  // (E, M)
  const float* w1;  // (E, M, D)
  const float* b1;  // (E, D)
  const float* router;  // (D, E)      top_k, experts_choice
  const float* mu;  // (D, E*P)    soft: mu normalised over D per slot, times scale
};

// Buffers reused across calls; they only ever grow.
struct MoeWorkspace {
  Scratch logits, gates, expert_in, expert_hidden, expert_out, xn, dispatch, combine, slot_in, slot_out;
  std::vector<TopKRouting> top_k;  // per group
  std::vector<ExpertsChoiceRouting> experts_choice;  // per group
  std::vector<int64_t> rows_of_expert, first_row, group_expert_base;
  struct Entry {
    int64_t token, row;
    float weight;
  };
  std::vector<Entry> entries;
  std::vector<int64_t> token_begin;
};

struct MoeShape {
  int64_t tokens;  // N = B * T
  int tokens_per_image;  // T
  int hidden, mlp;  // D, M
};

// x (N, D) += MoE(h) with h = LN_1(x). `trace` may be null.
void moe_forward(float* x, const float* h, const MoeShape& shape, const MoeConfig& moe, const MoeWeights& w,
                 MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times);

// The scaled, normalised Soft-MoE slot parameters: out (D, E*P) = scale * mu / ||mu||.
void soft_normalised_mu(float* out, const float* mu, float scale, int64_t D, int64_t slots);

}  // namespace vmoe
