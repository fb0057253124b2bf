#include "model/config.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace vmoe {

const char* to_string(RouterKind r) {
  switch (r) {
    case RouterKind::top_k: return "top_k";
    case RouterKind::experts_choice: return "experts_choice";
    case RouterKind::soft: return "soft";
  }
  return "?";
}
const char* to_string(Classifier c) { return c == Classifier::token ? "token" : "gap"; }
const char* to_string(Resize r) {
  switch (r) {
    case Resize::none: return "none";
    case Resize::stretch: return "stretch";
    case Resize::resize_small_crop: return "resize_small_crop";
  }
  return "?";
}

const char* to_string(Gelu g) { return g == Gelu::erf ? "erf" : "tanh"; }

bool ModelConfig::is_moe_layer(int block) const {
  return moe && std::find(moe->layers.begin(), moe->layers.end(), block) != moe->layers.end();
}

std::string ModelConfig::label(int index) const {
  if (index >= 0 && index < static_cast<int>(labels.size())) return labels[index];
  return "class_" + std::to_string(index);
}

void ModelConfig::validate() const {
  auto positive = [](const char* name, long v) {
    if (v <= 0) fail("config: {} must be positive, got {}", name, v);
  };
  positive("image.height", image.height);
  positive("image.width", image.width);
  if (image.channels != 1 && image.channels != 3) fail("config: image.channels must be 1 or 3, got {}", image.channels);
  positive("image.resize_small", image.resize_small);
  if (image.resize == Resize::resize_small_crop && image.resize_small < std::max(image.height, image.width))
    fail("config: image.resize_small {} is smaller than the crop {}x{}", image.resize_small, image.height, image.width);
  if (!(image.value_max != image.value_min)) fail("config: image.value_range must span a non-empty interval");
  positive("patch[0]", patch_h);
  positive("patch[1]", patch_w);
  if (image.height % patch_h || image.width % patch_w)
    fail("config: image {}x{} is not a whole number of {}x{} patches", image.height, image.width, patch_h, patch_w);
  positive("hidden_size", hidden_size);
  positive("num_layers", num_layers);
  positive("num_heads", num_heads);
  positive("mlp_dim", mlp_dim);
  if (hidden_size % num_heads) fail("config: hidden_size {} is not divisible by num_heads {}", hidden_size, num_heads);
  if (representation_size) positive("representation_size", *representation_size);
  if (!(layer_norm_eps > 0)) fail("config: layer_norm_eps must be positive");
  positive("num_classes", num_classes);
  if (!labels.empty() && static_cast<int>(labels.size()) != num_classes)
    fail("config: {} labels but num_classes is {}", labels.size(), num_classes);
  const long long max_elems = 1LL << 31;  // keeps every index in int range and hostile files out
  if (1LL * hidden_size * mlp_dim >= max_elems || 1LL * num_layers > 1000 || 1LL * num_classes * pooled_size() >= max_elems)
    fail("config: sizes are implausibly large");
  if (!moe) return;
  positive("moe.num_experts", moe->num_experts);
  if (moe->num_experts > 4096) fail("config: moe.num_experts {} is implausibly large", moe->num_experts);
  positive("moe.k", moe->k);
  if (moe->router == RouterKind::top_k && moe->k > moe->num_experts)
    fail("config: moe.k {} exceeds moe.num_experts {}", moe->k, moe->num_experts);
  if (!(moe->capacity_factor > 0)) fail("config: moe.capacity_factor must be positive, got {}", moe->capacity_factor);
  if (moe->capacity_multiple_of < 0) fail("config: moe.capacity_multiple_of must not be negative");
  positive("moe.group_images", moe->group_images);
  positive("moe.slots_per_expert", moe->slots_per_expert);
  if (moe->noise_std < 0) fail("config: moe.noise_std must not be negative");
  if (1LL * moe->num_experts * hidden_size * mlp_dim >= max_elems) fail("config: MoE expert weights are implausibly large");
  for (int l : moe->layers)
    if (l < 0 || l >= num_layers) fail("config: moe.layers has block {} but the model has {} blocks", l, num_layers);
}

MoeConfig apply_overrides(MoeConfig moe, const RoutingOverrides& o) {
  if (o.capacity_factor) {
    if (!(*o.capacity_factor > 0)) fail("capacity factor must be positive, got {}", *o.capacity_factor);
    moe.capacity_factor = *o.capacity_factor;
  }
  if (o.batch_priority) moe.batch_priority = *o.batch_priority;
  if (o.group_images) {
    if (*o.group_images < 1) fail("group size must be at least one image, got {}", *o.group_images);
    moe.group_images = *o.group_images;
  }
  return moe;
}

}  // namespace vmoe
