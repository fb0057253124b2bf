#pragma once
// What a model costs per image: parameters in total and active for one token, and the
// floating-point operations of one forward pass (a multiply-add counts as 2).
#include <cstdint>

#include "spec/params.hpp"

namespace vmoe {

struct ModelCost {
  int64_t params_total = 0;
  int64_t params_active = 0;  // what one token passes through (top-k: k experts per MoE layer)
  // Routed expert rows per image summed over MoE layers, every slot used (the rows
  // flops_experts counts besides the shared experts').
  double expert_rows = 0;
  double flops_embedding = 0, flops_attention = 0, flops_router = 0, flops_experts = 0, flops_dense_mlp = 0,
         flops_head = 0;
  double flops_total() const {
    return flops_embedding + flops_attention + flops_router + flops_experts + flops_dense_mlp + flops_head;
  }
};

// Expert work assumes every slot is used: top-k processes T*k tokens per MoE layer
// (capacity permitting: min(T*k, E*c)), experts-choice E*c, Soft-MoE E*P slots; shared
// experts process all T tokens each (counted in flops_experts and in params_active).
ModelCost model_cost(const ModelConfig& config, const MoeConfig* routing);

}  // namespace vmoe
