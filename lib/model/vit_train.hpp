#pragma once
// One training step of a whole model on a fixed-size batch: forward keeping every
// activation the backward needs, label-smoothed cross-entropy plus the MoE auxiliary
// losses, and the backward into a gradient tree shaped like the parameters.
#include <memory>
#include <random>
#include <vector>

#include "core/stage_times.hpp"
#include "moe/moe_train_layer.hpp"
#include "nn/primitive_cache.hpp"
#include "nn/train_ops.hpp"
#include "spec/params.hpp"

namespace vmoe::train {

struct LossOptions {
  float label_smoothing = 0.1f;
  float importance_weight = 0.005f;
  float load_weight = 0.005f;
  float priority_penalty = 0;  // weight of the learned scorers' mean output scale (summed over MoE layers)
};

struct StepResult {
  double loss = 0;  // mean cross-entropy over the batch (what the gradient is of, without aux)
  double aux_importance = 0, aux_load = 0;  // summed over MoE layers
  double aux_scorer = 0;  // learned priority scorers' mean output scale, summed over MoE layers
  int correct = 0;  // arg-max predictions equal to the label
  std::vector<std::vector<int64_t>> expert_rows;  // per MoE layer, rows each expert processed
  std::vector<std::vector<int64_t>> expert_choices;  // per MoE layer, top-k choices per expert (kept or not)
};

// Balance "bias": after a step, outside the gradient, moves every MoE block's
// balance_bias toward equal load by `rate` (moe/balance). No-op for other configs.
void update_balance_biases(VitParams& params, const ModelConfig& config, const StepResult& step, float rate);

class TrainGraph {
 public:
  TrainGraph(const ModelConfig& config, int batch);
  int batch() const { return B_; }

  // images (B, H, W, C) in the value range, labels (B). grads are overwritten. With a
  // noise generator the top-k routers get training noise; without, the step is
  // deterministic (gradient checks).
  StepResult step(const VitParams& params, VitParams& grads, const float* images, const int* labels,
                  std::mt19937_64* noise, const LossOptions& options);
  // The routing decisions of the last forward, flattened (token, expert, row per entry,
  // per MoE layer): tests use it to tell a routing flip from a wrong gradient.
  std::vector<int64_t> routing_signature() const;
  // Logits (B, classes) of the last forward: equal to the engine's for the same weights
  // without router noise (tests/unit/test_train_grad.cpp).
  const Tensor& logits() const { return logits_; }
  // Forward only, returning the same loss as step() (cross-entropy + weighted aux).
  double loss(const VitParams& params, const float* images, const int* labels, std::mt19937_64* noise,
              const LossOptions& options);
  // Stage times of the following steps (either may be null): forward and backward, each
  // by op kind (StageTimes fields: embedding, norms, attention, dense_mlp; the MoE layers'
  // routed and shared experts in `experts`, the rest of them (router, dispatch/combine,
  // auxiliary losses) in `router`; pooling, head and loss in `head`).
  void set_times(StageTimes* forward, StageTimes* backward) { fwd_times_ = forward, bwd_times_ = backward; }

 public:  // for the timing helper in vit_train.cpp
  struct BlockActs {
    // u: pre-GELU (N, M), overwritten by GELU's slope in the forward (all the backward needs)
    Tensor x_in, mean0, var0, h0, qkv, probs, attn, x_mid, mean1, var1, h1, u, a;
    std::unique_ptr<MoeTrainLayer> moe;
  };

 private:
  StepResult forward(const VitParams& params, const float* images, const int* labels, std::mt19937_64* noise,
                     const LossOptions& options);
  void backward(const VitParams& params, VitParams& grads, const LossOptions& options);
  void block_forward(int l, const BlockParams& p, float* x_out, std::mt19937_64* noise);
  void block_backward(int l, const BlockParams& p, BlockParams& g, float* dx, const LossOptions& options);

  ModelConfig c_;
  int B_;
  int64_t N_, T_, D_, H_, Dh_, M_, NP_, patch_len_, pooled_;
  nn::PrimitiveCache cache_;
  nn::LayerNormTrain norm_;
  std::unique_ptr<nn::TanhTrain> tanh_;
  std::vector<BlockActs> acts_;
  Tensor qkv_kernel_, qkv_bias_, dqkv_kernel_, dqkv_bias_;  // packed (D, 3D), (3D), per step
  Tensor patches_, embedded_;  // (B*NP, ph*pw*C), (B*NP, D)
  Tensor x_final_, meanf_, varf_, hf_, pooled_act_, pre_z_, features_, logits_, probs_;
  const int* labels_ = nullptr;
  StageTimes* fwd_times_ = nullptr;
  StageTimes* bwd_times_ = nullptr;
  // backward scratch
  Tensor dx_, dtmp_, dh_, dqkv_, dattn_, dprobs_, du_, da_, dpooled_, dfeatures_, dpre_z_, dlogits_, ones_;
};

}  // namespace vmoe::train
