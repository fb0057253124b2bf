#pragma once
// The steps of a Soft-MoE layer that inference (moe_layer) and training (moe_train)
// share. Per group of S tokens with slots = E * P:
//   xn = h / |h|,  logits = xn @ (scale * mu / |mu|),
//   dispatch = softmax over the group's tokens, combine = softmax over slots,
//   slot_in = dispatch^T @ h,  slot_out = expert(slot_in),  y = combine @ slot_out.
#include <cstdint>
#include <vector>

#include "moe/moe_layer.hpp"
#include "nn/primitive_cache.hpp"

namespace vmoe {

// Added under the square roots of both normalisations.
inline constexpr float kSoftNormEps = 1e-6f;

// xn (N, D) = h / sqrt(|h|^2 + eps) per token; inv_norm (N), if not null, gets the
// 1 / sqrt(|h|^2 + eps) factors the backward needs.
void soft_normalise_tokens(float* xn, float* inv_norm, const float* h, int64_t N, int64_t D);
// out (D, slots) = scale * mu / sqrt(|mu|^2 + eps) per slot column; inv_norm (slots),
// if not null, gets the 1 / sqrt(|mu|^2 + eps) factors.
void soft_normalised_mu(float* out, float* inv_norm, const float* mu, float scale, int64_t D, int64_t slots);
inline void soft_normalised_mu(float* out, const float* mu, float scale, int64_t D, int64_t slots) {
  soft_normalised_mu(out, nullptr, mu, scale, D, slots);
}

// slot_in (G, slots, D) = dispatch^T @ h per group; equal-size groups run as one
// batched matmul. dispatch (N, slots), h (N, D).
void soft_slot_inputs(float* slot_in, const float* dispatch, const float* h, const std::vector<Group>& groups,
                      int64_t slots, int64_t D, nn::PrimitiveCache& cache);
// x (N, D) += combine @ slot_out per group. combine (N, slots), slot_out (G, slots, D).
void soft_combine_slots(float* x, const float* combine, const float* slot_out, const std::vector<Group>& groups,
                        int64_t slots, int64_t D, nn::PrimitiveCache& cache);

// Slot rows are group-major (G, E, P, D) for the dispatch/combine matmuls and
// expert-major (E, G, P, D) for the expert MLPs, which take all groups' slots at once.
void slots_to_expert_major(float* expert_major, const float* group_major, int64_t G, int64_t E, int64_t P,
                           int64_t D);
void slots_to_group_major(float* group_major, const float* expert_major, int64_t G, int64_t E, int64_t P,
                          int64_t D);

}  // namespace vmoe
