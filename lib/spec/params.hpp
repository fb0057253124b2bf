#pragma once
// The parameters of a ViT / V-MoE / Soft-MoE model as plain tensors, in the layout of
// the official V-MoE Flax tree (DESIGN §2). D = hidden, H = heads, Dh = D/H, M = mlp,
// E = experts, P = slots per expert, C = channels, R = representation size.
#include <string>
#include <vector>

#include "spec/config.hpp"
#include "tensor/tensor.hpp"

namespace vmoe {

struct BlockParams {
  Tensor ln0_scale, ln0_bias;  // (D)
  Tensor query_kernel, key_kernel, value_kernel;  // (D, H, Dh)
  Tensor query_bias, key_bias, value_bias;  // (H, Dh)
  Tensor out_kernel;  // (H, Dh, D)
  Tensor out_bias;  // (D)
  Tensor ln1_scale, ln1_bias;  // (D)
  // Dense block: (D, M), (M), (M, D), (D). MoE block: (E, D, Me), (E, Me), (E, Me, D), (E, D),
  // Me = expert_mlp_dim (mlp_dim unless the config says otherwise).
  Tensor mlp0_kernel, mlp0_bias, mlp1_kernel, mlp1_bias;
  // Shared experts (num_shared_experts Sh > 0): every token, gate 1.
  Tensor shared0_kernel, shared0_bias, shared1_kernel, shared1_bias;  // (Sh, D, Me), (Sh, Me), (Sh, Me, D), (Sh, D)
  Tensor balance_bias;  // (E)  balance "bias": added to the router logits for the top-k choice only
  Tensor router_kernel;  // (D, E)     top_k and experts_choice
  Tensor router_mu;  // (D, E, P)  soft
  Tensor router_scale;  // ()         soft
  Tensor priority_kernel;  // (D)      learned priority scorer (moe.priority "learned")
  Tensor priority_bias;  // ()
};

struct VitParams {
  Tensor embedding_kernel;  // (ph, pw, C, D)
  Tensor embedding_bias;  // (D)
  Tensor cls;  // (1, 1, D)   classifier "token" only
  Tensor pos_embedding;  // (1, T, D)
  std::vector<BlockParams> blocks;
  Tensor encoder_norm_scale, encoder_norm_bias;  // (D)
  Tensor pre_logits_kernel, pre_logits_bias;  // (D, R), (R)  when representation_size is set
  Tensor head_kernel, head_bias;  // (D|R, classes), (classes)
};

template <class TensorT>
struct BasicParamSlot {
  std::string name;  // the Flax path, e.g. "Encoder/encoderblock_3/Moe/Mlp/Dense_0/kernel"
  Shape shape;  // what the config says it must be
  TensorT* tensor;
};
using ParamSlot = BasicParamSlot<Tensor>;
using ConstParamSlot = BasicParamSlot<const Tensor>;

// Every parameter the config implies, with its file name and expected shape, in one
// fixed order. Loading, saving, initialisation and the optimizer all walk this list.
// The mutable form sizes `params.blocks` to the config; the const form requires it.
std::vector<ParamSlot> param_slots(VitParams& params, const ModelConfig& config);
std::vector<ConstParamSlot> param_slots(const VitParams& params, const ModelConfig& config);

struct Model {
  ModelConfig config;
  VitParams params;
  std::string source;  // the path it was loaded from, for messages and JSON
};

// Allocates zero tensors of the right shapes (init and converters fill them).
VitParams allocate_params(const ModelConfig& config);

int64_t count_params(const Model& model);

// The block's query, key and value kernels (D, H, Dh) side by side as one (D, 3D)
// matrix [q | k | v] and their biases as (3D), so one matmul computes all three.
void pack_qkv(float* kernel, float* bias, const BlockParams& block, int64_t D);

}  // namespace vmoe
