#pragma once
// One MoE block's MLP in training: forward keeping what the backward needs, the
// auxiliary losses, and the backward. Semantics are those of inference (DESIGN §4)
// plus router noise N(0, (noise_std/E)^2) on the top-k logits. Shared experts and the
// balance bias's selection work as in inference; the bias itself gets no gradient (it is
// updated after the step, moe/balance).
#include <random>
#include <vector>

#include "model/params.hpp"
#include "moe/moe_layer.hpp"
#include "nn/primitive_cache.hpp"
#include "nn/train_ops.hpp"
#include "tensor/tensor.hpp"

namespace vmoe::train {

struct AuxLosses {
  double importance = 0, load = 0;  // averaged over the layer's groups
  double scorer = 0;  // learned priority scorer: mean output scale 2 sigmoid(s) over the tokens
};

class MoeTrainLayer {
 public:
  // B images of T tokens each; buffers are sized here once.
  MoeTrainLayer(const ModelConfig& config, int B);

  // x (N, D) += MoE(h). With a noise generator the top-k logits get router noise.
  void forward(float* x, const float* h, const BlockParams& p, std::mt19937_64* noise, nn::PrimitiveCache& cache);
  // Losses of the last forward (top-k only; zero otherwise).
  AuxLosses aux_losses() const { return aux_; }
  // dh (N, D) = gradient wrt h of (the MoE output with upstream gradient dy, plus the
  // weighted auxiliary losses); parameter gradients accumulate into g.
  void backward(float* dh, const float* dy, const float* h, const BlockParams& p, BlockParams& g,
                float importance_weight, float load_weight, nn::PrimitiveCache& cache);
  // Weight of the scorer penalty (the mean output scale) in the loss the backward is of.
  void set_scorer_penalty(float weight) { scorer_penalty_ = weight; }
  const MoeWorkspace& plan() const { return plan_; }
  // Rows each expert processed in the last forward.
  const std::vector<int64_t>& expert_rows() const { return plan_.rows_of_expert; }
  // Top-k choices of each expert in the last forward, kept or dropped (empty for other
  // routers): the load the balance bias is updated with (moe/balance).
  std::vector<int64_t> expert_choices() const;

 private:
  void experts_forward(const BlockParams& p, nn::PrimitiveCache& cache);
  void experts_backward(const BlockParams& p, BlockParams& g, nn::PrimitiveCache& cache);
  void compute_aux_losses();
  void renormalised_gate_backward();
  // Shared experts: x += sum_s shared_s(h), and its backward into dh (accumulating).
  void shared_forward(float* x, const float* h, const BlockParams& p, nn::PrimitiveCache& cache);
  void shared_backward(float* dh, const float* dy, const float* h, const BlockParams& p, BlockParams& g,
                       nn::PrimitiveCache& cache);
  int64_t used_rows() const;
  void soft_forward(float* x, const float* h, const BlockParams& p, nn::PrimitiveCache& cache);
  void soft_backward(float* dh, const float* dy, const float* h, const BlockParams& p, BlockParams& g,
                     nn::PrimitiveCache& cache);

  MoeConfig moe_;
  float scorer_penalty_ = 0;
  MoeShape shape_;
  int64_t max_rows_ = 0;
  std::vector<Group> groups_;
  MoeWorkspace plan_;  // routing plan of the last forward (entries, rows per expert)
  AuxLosses aux_;
  Tensor clean_logits_, noisy_logits_, gates_, dgates_;  // (N, E)
  Tensor scores_, dscores_;  // (N) learned priority scorer output s and dL/ds
  std::vector<float> entry_dot_;  // per routing entry: dy[token] . expert_out[row]
  Tensor select_;  // (N, E) noisy logits + balance bias (balance "bias" only)
  // Shared experts, per expert s: pre-GELU then GELU's slope, post-GELU; and a gradient buffer
  Tensor shared_u_, shared_a_;  // (Sh, N, M)
  Tensor d_shared_;  // (N, M)
  Tensor expert_in_, expert_out_, d_expert_out_, d_expert_in_;  // (max_rows, D)
  // (max_rows, M): pre-GELU then, after the forward, GELU's slope; post-GELU; their grads
  Tensor expert_u_, expert_a_, d_expert_a_, d_expert_u_;
  Tensor ones_;  // (max(N, max_rows)) for bias gradients
  nn::SoftmaxBackward router_softmax_backward_;
  // Soft-MoE
  Tensor inv_norm_, xn_, dxn_;  // (N), (N, D), (N, D)
  Tensor mun_, mu_inv_;  // (D, E*P) scale * mu / |mu|, (E*P) 1/|mu|
  Tensor logits_, dispatch_, combine_, dlogits_, dcombine_, ddispatch_;  // (N, E*P)
  Tensor dmun_;  // (D, E*P)
  Tensor slot_in_, slot_out_, d_slot_;  // (G*E*P, D) group-major
};

}  // namespace vmoe::train
