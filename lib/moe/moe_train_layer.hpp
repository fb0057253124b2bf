#pragma once
// One MoE block's MLP in training: forward keeping what the backward needs, the
// auxiliary losses, and the backward. Semantics are those of inference (DESIGN §4)
// plus the router's training noise (top-k: N(0, (noise_std/E)^2) on the logits). This
// layer owns what every router shares: the routing plan, the experts' activations and
// their backward, and the shared experts. Each router's own part (its gates, noise, losses
// and their backward) is in its plug-in file (spec/router.hpp: train_forward,
// train_backward), in the state it creates (router_state).
#include <memory>
#include <random>
#include <vector>

#include "core/stage_times.hpp"
#include "moe/moe_layer.hpp"
#include "nn/primitive_cache.hpp"
#include "spec/params.hpp"
#include "spec/router.hpp"
#include "tensor/tensor.hpp"

namespace vmoe {

struct AuxLosses {
  double importance = 0, load = 0;  // averaged over the layer's groups
  double scorer = 0;  // learned priority scorer: mean output scale 2 sigmoid(s) over the tokens
};

class MoeTrainLayer {
 public:
  // B images of T tokens each; buffers are sized here once.
  MoeTrainLayer(const ModelConfig& config, int B);

  // x (N, D) += MoE(h). With a noise generator the router adds its training noise.
  void forward(float* x, const float* h, const BlockParams& p, std::mt19937_64* noise, nn::PrimitiveCache& cache);
  // Losses of the last forward (top-k only; zero otherwise).
  AuxLosses aux_losses() const { return aux; }
  // dh (N, D) = gradient wrt h of (the MoE output with upstream gradient dy, plus the
  // weighted auxiliary losses); parameter gradients accumulate into g.
  void backward(float* dh, const float* dy, const float* h, const BlockParams& p, BlockParams& g,
                float importance_weight, float load_weight, nn::PrimitiveCache& cache);
  // Weight of the scorer penalty (the mean output scale) in the loss the backward is of.
  void set_scorer_penalty(float weight) { scorer_penalty = weight; }
  const MoeWorkspace& plan() const { return routing; }
  // Rows each expert processed in the last forward.
  const std::vector<int64_t>& expert_rows() const { return routing.rows_of_expert; }
  // Top-k choices of each expert in the last forward, kept or dropped (empty for other
  // routers): the load the balance bias is updated with (moe/balance).
  std::vector<int64_t> expert_choices() const;

  // --- what the routers' training forward and backward use

  // u = in @ W0[e] + b0[e]; a = GELU(u); out = a @ W1[e] + b1[e], expert by expert, over
  // the rows routing.first_row / rows_of_expert give each expert.
  void experts_forward(const BlockParams& p, nn::PrimitiveCache& cache);
  // From d_expert_out to d_expert_in, accumulating the experts' parameter gradients.
  void experts_backward(const BlockParams& p, BlockParams& g, nn::PrimitiveCache& cache);
  // The shared experts' backward: dy reaches each one with weight 1; dh accumulates.
  void shared_backward(float* dh, const float* dy, const float* h, const BlockParams& p, BlockParams& g,
                       nn::PrimitiveCache& cache);
  // The experts' rows are packed one after another: the rows of this step's plan.
  int64_t used_rows() const { return routing.first_row.back() + routing.rows_of_expert.back(); }

  MoeConfig moe;
  MoeShape shape;
  std::vector<Group> groups;
  int64_t max_rows = 0;  // rows the experts can receive at most in one forward, over all groups
  MoeWorkspace routing;  // routing plan of the last forward (entries, rows per expert)
  AuxLosses aux;
  float scorer_penalty = 0;
  Tensor expert_in, expert_out, d_expert_out, d_expert_in;  // (max_rows, D)
  // (max_rows, M): pre-GELU then, after the forward, GELU's slope; post-GELU; their grads
  Tensor expert_u, expert_a, d_expert_a, d_expert_u;
  Tensor ones;  // (max(N, max_rows)) for bias gradients
  std::unique_ptr<RouterTrainState> router_state;  // the router's own (its train_state)
  StageTimes* times = nullptr;  // when set, the routed and shared experts' time adds to times->experts

 private:
  // Shared experts: x += sum_s shared_s(h) for every token.
  void shared_forward(float* x, const float* h, const BlockParams& p, nn::PrimitiveCache& cache);

  // Shared experts, per expert s: pre-GELU then GELU's slope, post-GELU; and a gradient buffer
  Tensor shared_u_, shared_a_;  // (Sh, N, M)
  Tensor d_shared_;  // (N, M)
};

}  // namespace vmoe
