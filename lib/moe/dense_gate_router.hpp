#pragma once
// The part top-k and experts-choice share: one dense (D, E) router kernel scoring every
// token for every expert, and its start when a dense model is upcycled (zero, so the
// router is uniform, unless a standard deviation is asked for).
#include <random>
#include <vector>

#include "moe/router.hpp"

namespace vmoe {

class DenseGateRouter : public Router {
 public:
  std::vector<RouterParam> params(const MoeConfig& m, int64_t D) const override {
    return {{"dense/kernel", {D, m.num_experts}, &BlockParams::router_kernel}};
  }
  void init_upcycled(BlockParams& b, const ModelConfig&, double router_std, std::mt19937_64& rng) const override {
    if (router_std <= 0) return;
    std::normal_distribution<float> normal(0.0f, static_cast<float>(router_std));
    for (int64_t j = 0; j < b.router_kernel.numel(); ++j) b.router_kernel[j] = normal(rng);
  }
};

}  // namespace vmoe
