#include "spec/params.hpp"

#include <cstring>
#include <type_traits>

#include "core/error.hpp"
#include "spec/router.hpp"

namespace vmoe {

namespace {

// One walk for both constness: Params is VitParams or const VitParams.
template <class Params, class Slot = BasicParamSlot<std::conditional_t<std::is_const_v<Params>, const Tensor, Tensor>>>
std::vector<Slot> collect_slots(Params& p, const ModelConfig& c) {
  const int64_t D = c.hidden_size, H = c.num_heads, Dh = c.head_dim(), M = c.mlp_dim;
  const int64_t C = c.image.channels, T = c.num_tokens();
  std::vector<Slot> s;
  s.push_back({"embedding/kernel", {c.patch_h, c.patch_w, C, D}, &p.embedding_kernel});
  s.push_back({"embedding/bias", {D}, &p.embedding_bias});
  if (c.classifier == Classifier::token) s.push_back({"cls", {1, 1, D}, &p.cls});
  s.push_back({"Encoder/posembed_input/pos_embedding", {1, T, D}, &p.pos_embedding});
  if (static_cast<int>(p.blocks.size()) != c.num_layers) {
    if constexpr (std::is_const_v<Params>)
      fail("parameters hold {} blocks, the config has {}", p.blocks.size(), c.num_layers);
    else
      p.blocks.resize(c.num_layers);
  }
  for (int i = 0; i < c.num_layers; ++i) {
    auto& b = p.blocks[i];
    const std::string pre = "Encoder/encoderblock_" + std::to_string(i) + "/";
    s.push_back({pre + "LayerNorm_0/scale", {D}, &b.ln0_scale});
    s.push_back({pre + "LayerNorm_0/bias", {D}, &b.ln0_bias});
    s.push_back({pre + "SelfAttention/query/kernel", {D, H, Dh}, &b.query_kernel});
    s.push_back({pre + "SelfAttention/query/bias", {H, Dh}, &b.query_bias});
    s.push_back({pre + "SelfAttention/key/kernel", {D, H, Dh}, &b.key_kernel});
    s.push_back({pre + "SelfAttention/key/bias", {H, Dh}, &b.key_bias});
    s.push_back({pre + "SelfAttention/value/kernel", {D, H, Dh}, &b.value_kernel});
    s.push_back({pre + "SelfAttention/value/bias", {H, Dh}, &b.value_bias});
    s.push_back({pre + "SelfAttention/out/kernel", {H, Dh, D}, &b.out_kernel});
    s.push_back({pre + "SelfAttention/out/bias", {D}, &b.out_bias});
    s.push_back({pre + "LayerNorm_1/scale", {D}, &b.ln1_scale});
    s.push_back({pre + "LayerNorm_1/bias", {D}, &b.ln1_bias});
    if (c.is_moe_layer(i)) {
      const MoeConfig& m = *c.moe;
      const int64_t E = m.num_experts, Me = c.expert_mlp_dim(), Sh = m.num_shared_experts;
      s.push_back({pre + "Moe/Mlp/Dense_0/kernel", {E, D, Me}, &b.mlp0_kernel});
      s.push_back({pre + "Moe/Mlp/Dense_0/bias", {E, Me}, &b.mlp0_bias});
      s.push_back({pre + "Moe/Mlp/Dense_1/kernel", {E, Me, D}, &b.mlp1_kernel});
      s.push_back({pre + "Moe/Mlp/Dense_1/bias", {E, D}, &b.mlp1_bias});
      if (Sh > 0) {
        s.push_back({pre + "Moe/Shared/Dense_0/kernel", {Sh, D, Me}, &b.shared0_kernel});
        s.push_back({pre + "Moe/Shared/Dense_0/bias", {Sh, Me}, &b.shared0_bias});
        s.push_back({pre + "Moe/Shared/Dense_1/kernel", {Sh, Me, D}, &b.shared1_kernel});
        s.push_back({pre + "Moe/Shared/Dense_1/bias", {Sh, D}, &b.shared1_bias});
      }
      for (const RouterParam& r : m.router->params(m, D)) s.push_back({pre + "Moe/Router/" + r.name, r.shape, &(b.*r.tensor)});
      if (has_priority_scorer(m.priority)) {
        s.push_back({pre + "Moe/Priority/kernel", {D}, &b.priority_kernel});
        s.push_back({pre + "Moe/Priority/bias", {}, &b.priority_bias});
      }
    } else {
      s.push_back({pre + "Mlp/Dense_0/kernel", {D, M}, &b.mlp0_kernel});
      s.push_back({pre + "Mlp/Dense_0/bias", {M}, &b.mlp0_bias});
      s.push_back({pre + "Mlp/Dense_1/kernel", {M, D}, &b.mlp1_kernel});
      s.push_back({pre + "Mlp/Dense_1/bias", {D}, &b.mlp1_bias});
    }
  }
  s.push_back({"Encoder/encoder_norm/scale", {D}, &p.encoder_norm_scale});
  s.push_back({"Encoder/encoder_norm/bias", {D}, &p.encoder_norm_bias});
  int64_t pooled = D;
  if (c.representation_size) {
    pooled = *c.representation_size;
    s.push_back({"pre_logits/kernel", {D, pooled}, &p.pre_logits_kernel});
    s.push_back({"pre_logits/bias", {pooled}, &p.pre_logits_bias});
  }
  s.push_back({"head/kernel", {pooled, c.num_classes}, &p.head_kernel});
  s.push_back({"head/bias", {c.num_classes}, &p.head_bias});
  return s;
}

}  // namespace

std::vector<ParamSlot> param_slots(VitParams& params, const ModelConfig& config) {
  return collect_slots(params, config);
}

std::vector<ConstParamSlot> param_slots(const VitParams& params, const ModelConfig& config) {
  return collect_slots(params, config);
}

VitParams allocate_params(const ModelConfig& config) {
  VitParams p;
  for (ParamSlot& slot : param_slots(p, config)) *slot.tensor = Tensor(slot.shape);
  return p;
}

int64_t count_params(const Model& model) {
  int64_t n = 0;
  for (const ConstParamSlot& slot : param_slots(model.params, model.config)) n += shape_numel(slot.shape);
  return n;
}

void pack_qkv(float* kernel, float* bias, const BlockParams& block, int64_t D) {
  const Tensor* kernels[3] = {&block.query_kernel, &block.key_kernel, &block.value_kernel};
  const Tensor* biases[3] = {&block.query_bias, &block.key_bias, &block.value_bias};
  for (int j = 0; j < 3; ++j) {
    for (int64_t r = 0; r < D; ++r) std::memcpy(kernel + r * 3 * D + j * D, kernels[j]->data() + r * D, sizeof(float) * D);
    std::memcpy(bias + j * D, biases[j]->data(), sizeof(float) * D);
  }
}

}  // namespace vmoe
