#pragma once
// Sparse upcycling: turn a trained dense ViT into an MoE model whose experts start as
// copies of the dense MLPs, so further training starts from what the dense model knew.
//
// Which gate a token's experts get at the start decides how the copies are scaled. With
// a zero router every top-k gate is exactly 1/E (raw softmax, no renormalisation over the
// k, DESIGN §4), so a token's MoE output is (1/E) * sum of its k experts' outputs. We
// multiply each expert's Dense_1 kernel and bias by E/k, which makes that sum equal the
// dense MLP whenever none of the token's k choices is dropped (capacity factor >= E/k with
// the zero router, since every token then picks experts 0..k-1). Experts-choice with
// c = S gives every token all E experts at 1/E each: scale 1. Soft-MoE combines slot
// outputs with weights summing to 1 but mixes tokens into slots, so it is never exact.
//
// mlp_split S cuts each dense MLP's M hidden units into S consecutive chunks of M/S and
// gives expert e chunk e mod S (Dense_1 kernel additionally times S). A dense MLP is the
// sum of its chunks' MLPs (plus one bias), so with k a multiple of S the zero-router model
// is still exact, and every expert then costs 1/S of the dense MLP: S = k keeps the active
// compute per token equal to the dense model's.
#include <cstdint>
#include <optional>
#include <vector>

#include "moe/router_registry.hpp"
#include "spec/params.hpp"

namespace vmoe {

struct UpcycleOptions {
  std::vector<int> layers;  // encoder blocks whose MLP becomes an MoE layer
  const Router* router = &default_router();
  int num_experts = 8;
  int k = 2;
  int slots_per_expert = 1;  // soft
  std::optional<double> capacity_factor;  // config default when not given
  std::optional<double> noise_std;  // router noise in training (times 1/E)
  int mlp_split = 1;  // S: experts of M/S hidden units (every block must then be MoE)
  double expert_noise = 0.0;  // adds N(0, (expert_noise * rms(tensor))^2) to each expert copy
  double router_std = 0.0;  // top-k / EC router kernel ~ N(0, router_std^2); 0 = zero router
  uint64_t seed = 0;  // for the two noises and the Soft-MoE mu
};

// The (Dense_1 kernel, Dense_1 bias) multipliers described above.
struct UpcycleScale {
  float kernel = 1.0f, bias = 1.0f;
};
UpcycleScale upcycle_scale(const UpcycleOptions& o);

// Throws vmoe::Error when `dense` already has MoE layers or the options do not fit it.
Model upcycle_model(const Model& dense, const UpcycleOptions& options);

}  // namespace vmoe
