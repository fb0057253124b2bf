#pragma once
// The part top-k and experts-choice share: one dense (D, E) router kernel scoring every
// token for every expert, gates = softmax(h @ kernel), and the token routing that follows
// (plan(), then the engine's gather, experts and combine). Also its start when a dense
// model is upcycled (zero, so the router is uniform, unless a standard deviation is asked
// for), and the steps of its training forward and backward that both routers take.
#include <random>
#include <vector>

#include "moe/moe_train_layer.hpp"
#include "nn/train_ops.hpp"
#include "spec/router.hpp"
#include "tensor/tensor.hpp"

namespace vmoe {

// What a dense-gate router keeps between its training forward and backward.
struct GateTrainState : RouterTrainState {
  GateTrainState(int64_t N, int64_t E);
  Tensor clean_logits, noisy_logits, gates, dgates, dlogits;  // (N, E); noisy = clean without noise
  std::vector<float> entry_dot;  // per routing entry: dy[token] . expert_out[row]
  nn::SoftmaxBackward softmax_backward;
};

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

  // gates (N, E) = softmax(h @ router), then the routing plan, experts, combine.
  void forward(float* x, const float* h, const MoeShape& shape, const MoeConfig& m, const MoeWeights& w,
               MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times) const override;

  // Training without noise, losses or scorer (experts-choice; top-k adds its own).
  std::unique_ptr<RouterTrainState> train_state(const MoeTrainLayer& L) const override;
  void train_forward(MoeTrainLayer& L, float* x, const float* h, const BlockParams& p, std::mt19937_64* noise,
                     nn::PrimitiveCache& cache) const override;
  void train_backward(MoeTrainLayer& L, float* dh, const float* dy, const float* h, const BlockParams& p,
                      BlockParams& g, const AuxWeights& weights, nn::PrimitiveCache& cache) const override;

 protected:
  // clean_logits (N, E) = h @ router kernel, copied to noisy_logits.
  static void train_logits(GateTrainState& s, const MoeTrainLayer& L, const float* h, const BlockParams& p,
                           nn::PrimitiveCache& cache);
  // The plan from s.gates (learned (N) scores and select (N, E) optional), then x (N, D) +=
  // combine of the experts' outputs on the gathered rows.
  static void train_route_and_run(MoeTrainLayer& L, GateTrainState& s, float* x, const float* h, const BlockParams& p,
                                  const float* learned, const float* select, nn::PrimitiveCache& cache);
  // y[n] = scale[n] sum gate * out[row] (scale 1 without a learned scorer, else 2 sigmoid(s)):
  // d out[row] = weight * dy[n] with weight = scale * gate, d gate = scale * dy[n] . out[row],
  // and entry_dot = dy[n] . out[row] for the scorer. Overwrites s.dgates.
  static void train_entry_grads(MoeTrainLayer& L, GateTrainState& s, const float* dy, const float* scores);
  // dh (N, D) = the sum of each token's rows of d_expert_in (overwrites dh).
  static void train_gather_input_grads(const MoeTrainLayer& L, float* dh);
  // Router kernel: g += h^T dlogits; dh += dlogits kernel^T.
  static void train_kernel_backward(const MoeTrainLayer& L, const GateTrainState& s, float* dh, const float* h,
                                    const BlockParams& p, BlockParams& g, nn::PrimitiveCache& cache);
};

}  // namespace vmoe
