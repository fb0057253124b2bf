#include "model/cost.hpp"

#include <algorithm>

#include "moe/capacity.hpp"

namespace vmoe {

ModelCost model_cost(const ModelConfig& c, const MoeConfig* routing) {
  ModelCost cost;
  VitParams p;
  for (const ParamSlot& s : param_slots(p, c)) cost.params_total += shape_numel(s.shape);
  const double T = c.num_tokens(), D = c.hidden_size, M = c.mlp_dim, np = c.num_patches();
  const double patch_len = double{1.0} * c.patch_h * c.patch_w * c.image.channels;
  cost.flops_embedding = 2 * np * patch_len * D;
  const int64_t expert_params = 2LL * c.hidden_size * c.mlp_dim + c.mlp_dim + c.hidden_size;
  cost.params_active = cost.params_total;
  for (int i = 0; i < c.num_layers; ++i) {
    cost.flops_attention += 2 * T * D * 3 * D + 2 * 2 * T * T * D + 2 * T * D * D;
    if (!c.is_moe_layer(i)) {
      cost.flops_dense_mlp += 2 * 2 * T * D * M;
      continue;
    }
    const MoeConfig& m = routing ? *routing : *c.moe;
    const double E = m.num_experts;
    const int64_t S = int64_t{m.group_images} * c.num_tokens();
    double rows = 0;  // expert rows per image
    switch (m.router) {
      case RouterKind::top_k: {
        const int64_t cap = group_capacity(m, S);
        rows = std::min<double>(T * m.k, E * cap / m.group_images);
        cost.flops_router += 2 * T * D * E;
        cost.params_active -= static_cast<int64_t>((E - m.k) * expert_params);
        break;
      }
      case RouterKind::experts_choice: {
        const int64_t cap = group_capacity(m, S);
        rows = E * cap / m.group_images;
        cost.flops_router += 2 * T * D * E;
        cost.params_active -= static_cast<int64_t>((E - std::min(E, rows / T)) * expert_params);
        break;
      }
      case RouterKind::soft: {
        const double slots = E * m.slots_per_expert;
        rows = slots / m.group_images;  // each group's slots are shared by its images
        // logits, dispatch (slots x T x D) and combine (T x slots x D)
        cost.flops_router += 2 * T * D * slots + 2 * 2 * T * slots * D;
        break;
      }
    }
    cost.flops_experts += 2 * 2 * rows * D * M;
  }
  const double pooled = c.pooled_size();
  if (c.representation_size) cost.flops_head += 2 * D * pooled;
  cost.flops_head += 2 * pooled * c.num_classes;
  return cost;
}

}  // namespace vmoe
