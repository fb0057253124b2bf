#pragma once
// Inference: a loaded model plus what is derived from it once (packed QKV weights,
// normalised Soft-MoE slots) and the primitives and buffers of each batch size seen.
#include <vector>

#include "core/stage_times.hpp"
#include "moe/moe_layer.hpp"
#include "nn/precision.hpp"
#include "nn/primitive_cache.hpp"
#include "spec/params.hpp"
#include "spec/routing_trace.hpp"
#include "tensor/tensor.hpp"

namespace vmoe {

// The residual stream around one MoE block's routed experts, for patch importance
// (tasks/importance): x after the block, and x after it with no routed expert output
// (the attention residual plus the shared experts), which is what x is for a token that
// every expert dropped.
struct MoeTap {
  int block = 0;  // encoder block index
  std::vector<float> after;  // (B*T, D)
  std::vector<float> without_routed;  // (B*T, D)
  std::vector<float> normed;  // (B*T, D) h = LN_1(x), what the router and experts read
};

class Engine {
 public:
  // precision bf16 runs the encoder's matmuls on bf16 copies of their kernels
  // (nn/precision.hpp); it throws on a CPU without native bf16.
  explicit Engine(const Model& model, nn::Precision precision = nn::Precision::f32);

  const ModelConfig& config() const { return model_.config; }
  const Model& model() const { return model_; }
  nn::Precision precision() const { return precision_; }
  // Routing used from now on: the config's MoE fields with these overrides applied.
  void set_routing(const RoutingOverrides& overrides);
  // Routing used from now on: exactly `moe` (checked against the model).
  void set_routing(const MoeConfig& moe);
  const MoeConfig* routing() const { return routing_ ? &*routing_ : nullptr; }

  // images: (B, H, W, C) already mapped onto the value range. logits: (B, classes).
  // trace (optional) receives one entry per MoE layer; times (optional) adds stage times.
  // Throws vmoe::Error naming the block and stage where values first went non-finite
  // when a logit or a router gate is NaN or infinite (issue 24, D10).
  // taps (optional) receives one MoeTap per MoE block, in block order.
  void forward(float* logits, const float* images, int B, RoutingTrace* trace = nullptr, StageTimes* times = nullptr,
               std::vector<MoeTap>* taps = nullptr);
  // logits (B, classes) of residual states x (B*T, D) as they were after block
  // first_block - 1: runs blocks first_block.. and the head (first_block = num_layers: the
  // head alone). Throws on non-finite logits.
  void forward_from(float* logits, const float* x, int B, int first_block, RoutingTrace* trace = nullptr);
  // Priority "oracle" reads these: per MoE block in block order, (B*T) scores (the
  // tokens' importance) for the batch of the next passes. Empty: none given.
  void set_oracle_priority(std::vector<std::vector<float>> per_moe_block) { oracle_ = std::move(per_moe_block); }

  size_t primitives_created() const { return cache_.size(); }
  // OpenMP threads a forward pass of B images uses: 1 when its oneDNN calls are too small
  // on average to pay for waking the other threads, else all.
  int threads_for_batch(int B) const;

 private:
  struct PackedBlock {
    Tensor qkv_kernel;  // (D, 3D)   [query | key | value] columns, heads inside each
    Tensor qkv_bias;  // (3D)
    Tensor soft_mu;  // (D, E*P)  scale * mu normalised over D
  };
  // out (m, n) = in (m, k) @ kernel (k, n) + bias under s's post-ops, in the engine's
  // precision (bf16: `in` rounded to bf16 first) with the kernel packed when the engine
  // packs. matmul: the same with `in` already of s's input type.
  void linear(nn::GemmSpec s, void* out, const float* in, const float* kernel, const float* bias);
  void matmul(nn::GemmSpec s, void* out, const void* in, const float* kernel, const float* bias);
  void run_forward(float* logits, const float* images, int B, RoutingTrace* trace, StageTimes* times,
                   std::vector<MoeTap>* taps);
  // Blocks first.. and the head on x_ (B*T, D).
  void run_blocks(float* logits, int first, int B, RoutingTrace* trace, StageTimes* times, std::vector<MoeTap>* taps);
  // While locating: throws if x[0, n) holds a NaN or infinity, naming `where`.
  void check_stage(const float* x, int64_t n, int64_t width, int block, const char* stage) const;
  [[noreturn]] void report_non_finite(int block, const char* stage, int64_t index, float value, int64_t width) const;
  void embed(float* x, const float* images, int B, StageTimes* times);
  void block(float* x, int i, int B, MoeLayerTrace* trace, StageTimes* times, MoeTap* tap);
  void head(float* logits, const float* x, int B, StageTimes* times);

  const Model& model_;
  nn::Precision precision_;
  // Kernels reordered once into the matmuls' preferred layouts (nn/packed_weights.hpp):
  // always with bf16, which needs it to be fast; with f32 too unless the environment
  // sets VMOE_F32_PLAIN (an A/B switch for benchmarks, scripts/bench_precision.sh).
  bool pack_ = false;
  nn::PackedWeights packed_weights_;
  std::optional<MoeConfig> routing_;
  std::vector<PackedBlock> packed_;
  nn::PrimitiveCache cache_;
  Scratch patches_, embedded_, x_, h_, qkv_, attn_, scores_, hidden_, pooled_, pre_logits_;
  Scratch in_bf16_;  // a matmul's input rounded to bf16 (Precision::bf16)
  MoeWorkspace moe_ws_;
  std::vector<std::vector<float>> oracle_;  // set_oracle_priority
  // Non-finite checks: every pass checks its logits and router gates (cheap); only when
  // one is bad, the pass runs again with `locate_` set, checking after every stage.
  bool locate_ = false, gates_bad_ = false;
  int tokens_ = 0;  // T of the pass being located, for the message's (image, token)
};

}  // namespace vmoe
