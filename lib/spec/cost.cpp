#include "spec/cost.hpp"

#include <algorithm>

#include "spec/router.hpp"

namespace vmoe {

ModelCost model_cost(const ModelConfig& c, const MoeConfig* routing) {
  ModelCost cost;
  VitParams p;
  for (const ParamSlot& s : param_slots(p, c)) cost.params_total += shape_numel(s.shape);
  const double T = c.num_tokens(), D = c.hidden_size, M = c.mlp_dim, np = c.num_patches();
  const double patch_len = double{1.0} * c.patch_h * c.patch_w * c.image.channels;
  cost.flops_embedding = 2 * np * patch_len * D;
  const double Me = c.expert_mlp_dim();
  const int64_t expert_params = 2LL * c.hidden_size * c.expert_mlp_dim() + c.expert_mlp_dim() + c.hidden_size;
  cost.params_active = cost.params_total;
  for (int i = 0; i < c.num_layers; ++i) {
    cost.flops_attention += 2 * T * D * 3 * D + 2 * 2 * T * T * D + 2 * T * D * D;
    if (!c.is_moe_layer(i)) {
      cost.flops_dense_mlp += 2 * 2 * T * D * M;
      continue;
    }
    const MoeConfig& m = routing ? *routing : *c.moe;
    const int64_t S = int64_t{m.group_images} * c.num_tokens();
    const double rows = m.router->cost(cost, m, T, D, S, expert_params);  // expert rows per image
    cost.expert_rows += rows;
    // Routed expert rows, plus every token through each shared expert.
    cost.flops_experts += 2 * 2 * (rows + T * m.num_shared_experts) * D * Me;
  }
  const double pooled = c.pooled_size();
  if (c.representation_size) cost.flops_head += 2 * D * pooled;
  cost.flops_head += 2 * pooled * c.num_classes;
  return cost;
}

}  // namespace vmoe
