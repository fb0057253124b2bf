#include "tasks/upcycle.hpp"

#include <cmath>
#include <cstring>
#include <random>

#include "core/error.hpp"
#include "model/architectures.hpp"
#include "spec/router.hpp"

namespace vmoe {
namespace {

// N(0, (relative * rms(t))^2) added to every element: noise proportional to the tensor's
// own scale, so one number suits kernels of any fan-in.
void add_relative_noise(Tensor& t, double relative, std::mt19937_64& rng) {
  if (relative <= 0 || t.numel() == 0) return;
  double sum_sq = 0;
  for (int64_t i = 0; i < t.numel(); ++i) sum_sq += double(t[i]) * t[i];
  const float stddev = static_cast<float>(relative * std::sqrt(sum_sq / t.numel()));
  std::normal_distribution<float> normal(0.0f, stddev);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] += normal(rng);
}

}  // namespace

UpcycleScale upcycle_scale(const UpcycleOptions& o) {
  // Experts a token meets at the start, each at gate 1/E: k for top-k, all E for
  // experts-choice at c = S; Soft-MoE's combine weights already sum to 1.
  MoeConfig m;
  m.router = o.router, m.num_experts = o.num_experts, m.k = o.k;
  const float per_token = static_cast<float>(o.router->upcycle_experts_per_token(m));
  const float w = static_cast<float>(o.num_experts) / per_token;
  return {w * static_cast<float>(o.mlp_split), w};
}

Model upcycle_model(const Model& dense, const UpcycleOptions& o) {
  const ModelConfig& dc = dense.config;
  if (dc.moe) fail("{}: already has MoE layers ({}); upcycle starts from a dense model", dense.source, dc.moe->router->name());
  if (o.layers.empty()) fail("upcycle: no MoE layers given");
  const int S = o.mlp_split, M = dc.mlp_dim;
  if (S < 1) fail("upcycle: mlp split must be at least 1, got {}", S);
  if (M % S) fail("upcycle: mlp split {} does not divide the dense MLP size {}", S, M);
  if (o.num_experts % S) fail("upcycle: mlp split {} does not divide the {} experts", S, o.num_experts);
  if (S > 1 && static_cast<int>(o.layers.size()) != dc.num_layers)
    fail("upcycle: mlp split {} makes every MLP {} wide, so every one of the {} blocks must be an MoE layer", S, M / S,
         dc.num_layers);
  if (!(o.expert_noise >= 0) || !(o.router_std >= 0)) fail("upcycle: noise levels must not be negative");

  ModelConfig c = dc;
  MoeConfig m;
  m.layers = o.layers;
  m.router = o.router;
  m.num_experts = o.num_experts;
  m.k = o.k;
  m.slots_per_expert = o.slots_per_expert;
  if (o.capacity_factor) m.capacity_factor = *o.capacity_factor;
  if (o.noise_std) m.noise_std = *o.noise_std;
  c.moe = m;
  c.mlp_dim = M / S;
  c.validate();

  Model out;
  out.config = c;
  out.params = allocate_params(c);
  const VitParams& d = dense.params;
  VitParams& p = out.params;
  p.embedding_kernel = d.embedding_kernel.clone();
  p.embedding_bias = d.embedding_bias.clone();
  p.cls = d.cls.clone();
  p.pos_embedding = d.pos_embedding.clone();
  p.encoder_norm_scale = d.encoder_norm_scale.clone();
  p.encoder_norm_bias = d.encoder_norm_bias.clone();
  p.pre_logits_kernel = d.pre_logits_kernel.clone();
  p.pre_logits_bias = d.pre_logits_bias.clone();
  p.head_kernel = d.head_kernel.clone();
  p.head_bias = d.head_bias.clone();

  std::mt19937_64 rng(o.seed);
  const UpcycleScale scale = upcycle_scale(o);
  const int E = o.num_experts, D = dc.hidden_size, Mc = M / S;
  for (int i = 0; i < dc.num_layers; ++i) {
    const BlockParams& db = d.blocks[i];
    BlockParams& b = p.blocks[i];
    for (auto [to, from] : {std::pair{&b.ln0_scale, &db.ln0_scale}, {&b.ln0_bias, &db.ln0_bias},
                            {&b.query_kernel, &db.query_kernel}, {&b.key_kernel, &db.key_kernel},
                            {&b.value_kernel, &db.value_kernel}, {&b.query_bias, &db.query_bias},
                            {&b.key_bias, &db.key_bias}, {&b.value_bias, &db.value_bias},
                            {&b.out_kernel, &db.out_kernel}, {&b.out_bias, &db.out_bias},
                            {&b.ln1_scale, &db.ln1_scale}, {&b.ln1_bias, &db.ln1_bias}})
      *to = from->clone();
    if (!c.is_moe_layer(i)) {
      b.mlp0_kernel = db.mlp0_kernel.clone(), b.mlp0_bias = db.mlp0_bias.clone();
      b.mlp1_kernel = db.mlp1_kernel.clone(), b.mlp1_bias = db.mlp1_bias.clone();
      continue;
    }
    // Expert e holds hidden units [c*Mc, (c+1)*Mc) of the dense MLP, c = e mod S.
    for (int e = 0; e < E; ++e) {
      const int chunk = e % S;
      float* k0 = b.mlp0_kernel.data() + int64_t(e) * D * Mc;  // (D, Mc) of (E, D, Mc)
      float* b0 = b.mlp0_bias.data() + int64_t(e) * Mc;  // (Mc)
      float* k1 = b.mlp1_kernel.data() + int64_t(e) * Mc * D;  // (Mc, D)
      float* b1 = b.mlp1_bias.data() + int64_t(e) * D;  // (D)
      for (int r = 0; r < D; ++r)
        std::memcpy(k0 + int64_t(r) * Mc, db.mlp0_kernel.data() + int64_t(r) * M + chunk * Mc, sizeof(float) * Mc);
      std::memcpy(b0, db.mlp0_bias.data() + chunk * Mc, sizeof(float) * Mc);
      const float* src1 = db.mlp1_kernel.data() + int64_t(chunk) * Mc * D;
      for (int64_t j = 0; j < int64_t(Mc) * D; ++j) k1[j] = scale.kernel * src1[j];
      for (int j = 0; j < D; ++j) b1[j] = scale.bias * db.mlp1_bias[j];
    }
    add_relative_noise(b.mlp0_kernel, o.expert_noise, rng);
    add_relative_noise(b.mlp1_kernel, o.expert_noise, rng);
    o.router->init_upcycled(b, c, o.router_std, rng);
  }
  // The shapes are the config's by construction; param_slots checks that on save.
  return out;
}

}  // namespace vmoe
