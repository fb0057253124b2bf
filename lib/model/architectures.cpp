#include "model/architectures.hpp"

#include <cmath>
#include <random>

#include "core/error.hpp"
#include "moe/router_registry.hpp"
#include "spec/router.hpp"

namespace vmoe {
namespace {

const std::vector<std::string> kFashionLabels = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

ModelConfig imagenet(int patch, int layers, int D, int heads, int mlp) {
  ModelConfig c;
  c.image = {224, 224, 3, Resize::resize_small_crop, 256, -1.0f, 1.0f};
  c.patch_h = c.patch_w = patch;
  c.hidden_size = D, c.num_layers = layers, c.num_heads = heads, c.mlp_dim = mlp;
  c.num_classes = 1000;
  return c;
}

ModelConfig fashion(int mlp) {
  ModelConfig c;
  c.image = {28, 28, 1, Resize::none, 256, -1.0f, 1.0f};
  c.patch_h = c.patch_w = 4;
  c.hidden_size = 96, c.num_layers = 6, c.num_heads = 3, c.mlp_dim = mlp;
  c.labels = kFashionLabels;
  c.num_classes = 10;
  return c;
}

std::vector<Architecture> make_architectures() {
  std::vector<Architecture> list;
  {
    ModelConfig c = imagenet(32, 8, 512, 8, 2048);
    c.representation_size = 512;
    MoeConfig m;
    m.router = &default_router();
    m.layers = {5, 7};
    c.moe = m;
    list.push_back({"vmoe-s32", "official V-MoE S/32: 224 px, 8 blocks, D 512, 8 experts top-2 in blocks 5 and 7", c});
  }
  {
    ModelConfig c = imagenet(16, 12, 768, 12, 3072);
    MoeConfig m;
    m.router = &default_router();
    m.layers = {1, 3, 5, 7, 9, 11};
    c.moe = m;
    list.push_back({"vmoe-b16", "official V-MoE B/16: 224 px, 12 blocks, D 768, 8 experts top-2 in every odd block", c});
  }
  {
    ModelConfig c = imagenet(16, 12, 384, 6, 1536);
    c.classifier = Classifier::gap;
    MoeConfig m;
    m.router = &default_router();
    m.layers = {6, 7, 8, 9, 10, 11};
    m.router = &find_router("soft");
    m.num_experts = 128;
    m.slots_per_expert = 1;
    c.moe = m;
    list.push_back({"soft-s16", "Soft-MoE S/16: 224 px, 12 blocks, D 384, 128 experts x 1 slot in the last 6 blocks, GAP", c});
  }
  list.push_back({"vit-fmnist", "dense ViT for 28x28 grey: patch 4 + CLS, 6 blocks, D 96, 3 heads, MLP 384", fashion(384)});
  {
    // Equal active compute with vit-fmnist: every block is MoE, and each token's two
    // experts of MLP 192 cost what one dense MLP of 384 does.
    ModelConfig c = fashion(192);
    MoeConfig m;
    m.router = &default_router();
    m.layers = {0, 1, 2, 3, 4, 5};
    c.moe = m;
    list.push_back({"vmoe-fmnist", "V-MoE for 28x28 grey: as vit-fmnist, every block 8 experts top-2 of MLP 192", c});
  }
  {
    ModelConfig c = fashion(384);
    MoeConfig m;
    m.router = &default_router();
    m.layers = {1, 3, 5};
    m.router = &find_router("experts_choice");
    m.capacity_factor = 1.0;
    c.moe = m;
    list.push_back({"ec-fmnist", "experts-choice for 28x28 grey: blocks 1,3,5 with 8 experts of MLP 384, factor 1.0", c});
  }
  {
    // 8 experts x 5 slots = 40 slots for 50 tokens: the slots' MLPs plus the dispatch
    // and combine products cost about one dense MLP of 384 per token.
    ModelConfig c = fashion(384);
    MoeConfig m;
    m.router = &default_router();
    m.layers = {1, 3, 5};
    m.router = &find_router("soft");
    m.num_experts = 8;
    m.slots_per_expert = 5;
    c.moe = m;
    list.push_back({"softmoe-fmnist", "Soft-MoE for 28x28 grey: blocks 1,3,5 with 8 experts x 5 slots of MLP 384", c});
  }
  for (auto& a : list) a.config.validate();
  return list;
}

}  // namespace

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> list = make_architectures();
  return list;
}

const Architecture& find_architecture(const std::string& name) {
  std::string known;
  for (const auto& a : architectures()) {
    if (a.name == name) return a;
    known += (known.empty() ? "" : ", ") + a.name;
  }
  fail("unknown architecture \"{}\" (known: {})", name, known);
}

Model init_model(const ModelConfig& config, uint64_t seed, float soft_scale) {
  config.validate();
  Model model;
  model.config = config;
  model.params = allocate_params(config);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto fill_normal = [&](Tensor& t, float stddev) {
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = stddev * normal(rng);
  };
  for (ParamSlot& slot : param_slots(model.params, config)) {
    Tensor& t = *slot.tensor;
    const std::string& n = slot.name;
    auto ends_with = [&](const std::string& suffix) {
      return n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with("/scale") && n.find("LayerNorm") != std::string::npos) t.fill(1.0f);
    else if (ends_with("encoder_norm/scale")) t.fill(1.0f);
    else if (ends_with("Router/scale")) t.fill(soft_scale);
    else if (ends_with("/bias") || ends_with("balance_bias") || n == "cls") t.fill(0.0f);
    else if (ends_with("Priority/kernel")) t.fill(0.0f);  // output scale 2 sigmoid(0) = 1: starts as without a scorer
    else if (n == "Encoder/posembed_input/pos_embedding") fill_normal(t, 0.02f);
    else if (ends_with("Router/mu")) fill_normal(t, 1.0f / std::sqrt(static_cast<float>(config.hidden_size)));
    else {
      // kernels: fan_in is the product of the input axes (all but the output axis; for
      // the (E, in, out) routed and shared expert kernels, the middle one; for attention (D, H, Dh), D).
      const Shape& s = slot.shape;
      int64_t fan_in = s[0];
      if (n.find("embedding/kernel") != std::string::npos) fan_in = s[0] * s[1] * s[2];
      else if (n.find("SelfAttention/out/kernel") != std::string::npos) fan_in = s[0] * s[1];
      else if (n.find("Moe/Mlp") != std::string::npos || n.find("Moe/Shared") != std::string::npos) fan_in = s[1];
      fill_normal(t, 1.0f / std::sqrt(static_cast<float>(fan_in)));
    }
  }
  return model;
}

}  // namespace vmoe
