#include "spec/config.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "spec/router.hpp"

namespace vmoe {

float default_soft_scale(const ModelConfig& config) { return std::sqrt(static_cast<float>(config.hidden_size)); }

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
const char* to_string(Balance b) { return b == Balance::bias ? "bias" : "aux"; }

namespace {
constexpr std::pair<Priority, const char*> kPriorities[] = {{Priority::max_gate, "max_gate"},
                                                            {Priority::sum_gates, "sum_gates"},
                                                            {Priority::entropy, "entropy"},
                                                            {Priority::random, "random"},
                                                            {Priority::learned, "learned"},
                                                            {Priority::oracle, "oracle"},
                                                            {Priority::fitted, "fitted"}};
constexpr std::pair<Gating, const char*> kGatings[] = {{Gating::softmax_topk, "softmax_topk"},
                                                       {Gating::topk_softmax, "topk_softmax"}};
constexpr std::pair<Overflow, const char*> kOverflows[] = {{Overflow::drop, "drop"}, {Overflow::next, "next"}};

template <class Enum, size_t N>
const char* name_of(const std::pair<Enum, const char*> (&table)[N], Enum value) {
  for (const auto& [v, name] : table)
    if (v == value) return name;
  return "?";
}
template <class Enum, size_t N>
Enum parse_name(const std::pair<Enum, const char*> (&table)[N], const std::string& name, const char* what) {
  std::string names;
  for (const auto& [v, n] : table) {
    if (name == n) return v;
    names += names.empty() ? n : std::string(", ") + n;
  }
  fail("{} must be one of {}, got \"{}\"", what, names, printable(name));
}
}  // namespace

const char* to_string(Priority p) { return name_of(kPriorities, p); }
const char* to_string(Gating g) { return name_of(kGatings, g); }
const char* to_string(Overflow o) { return name_of(kOverflows, o); }
Priority parse_priority(const std::string& name) { return parse_name(kPriorities, name, "priority"); }
Gating parse_gating(const std::string& name) { return parse_name(kGatings, name, "gating"); }
Overflow parse_overflow(const std::string& name) { return parse_name(kOverflows, name, "overflow"); }

bool ModelConfig::is_moe_layer(int block) const {
  return moe && std::find(moe->layers.begin(), moe->layers.end(), block) != moe->layers.end();
}

std::string ModelConfig::label(int index) const {
  if (index >= 0 && index < static_cast<int>(labels.size())) return labels[index];
  return "class_" + std::to_string(index);
}

int64_t ModelConfig::param_count() const {
  // Embedding, class token, positions, per block 2 norms + attention + MLP (or experts
  // and router), final norm, pre-logits, head: the shapes of model/params, as int64.
  const int64_t D = hidden_size, M = mlp_dim, T = int64_t{grid_h()} * grid_w() + (classifier == Classifier::token);
  const int64_t R = representation_size.value_or(0), pooled = representation_size.value_or(hidden_size);
  int64_t n = int64_t{patch_h} * patch_w * image.channels * D + D + (classifier == Classifier::token ? D : 0) + T * D;
  for (int b = 0; b < num_layers; ++b) {
    n += 4 * D + 4 * D * D + 4 * D;
    if (is_moe_layer(b)) {
      const int64_t E = moe->num_experts, Me = expert_mlp_dim(), expert = 2 * D * Me + Me + D;
      n += (E + moe->num_shared_experts) * expert;
      for (const RouterParam& r : moe->router->params(*moe, D)) n += shape_numel(r.shape);  // balance_bias too
      if (has_priority_scorer(moe->priority)) n += D + 1;  // the block's priority scorer
    } else {
      n += 2 * D * M + M + D;
    }
  }
  n += 2 * D + (R ? D * R + R : 0) + pooled * num_classes + num_classes;
  return n;
}

void check_routing(const ModelConfig& c, const MoeConfig& m) {
  if (!m.dropless && (!std::isfinite(m.capacity_factor) || !(m.capacity_factor > 0) || m.capacity_factor > kMaxCapacityFactor))
    fail("capacity factor must be a number in (0, {}], got {}", kMaxCapacityFactor, m.capacity_factor);
  if (m.eval_capacity_factor &&
      (!std::isfinite(*m.eval_capacity_factor) || !(*m.eval_capacity_factor > 0) || *m.eval_capacity_factor > kMaxCapacityFactor))
    fail("eval capacity factor must be a number in (0, {}], got {}", kMaxCapacityFactor, *m.eval_capacity_factor);
  if (!m.router) fail("no router set");
  const bool top_k = m.router->top_k_options();
  if (!top_k && (m.priority != Priority::max_gate || m.gating != Gating::softmax_topk || m.overflow != Overflow::drop))
    fail("priority, gating and overflow apply to the top_k router, not {}", m.router->name());
  if (m.dropless && !top_k)
    fail("capacity factor null (dropless) applies to the top_k router, not {}", m.router->name());
  if (m.group_images < 1) fail("group size must be at least one image, got {}", m.group_images);
  const long long tokens = 1LL * m.group_images * c.num_tokens();
  if (tokens > kMaxGroupTokens)
    fail("a group of {} images of {} tokens is {} tokens, more than the limit of {} routed together", m.group_images,
         c.num_tokens(), tokens, kMaxGroupTokens);
}

void ModelConfig::validate() const {
  auto positive = [](const char* name, long v) {
    if (v <= 0) fail("config: {} must be positive, got {}", name, v);
  };
  auto at_most = [](const char* name, long long v, long long limit) {
    if (v > limit) fail("config: {} = {} is more than the limit of {}", name, v, limit);
  };
  positive("image.height", image.height);
  positive("image.width", image.width);
  at_most("image.height", image.height, kMaxImageSide);
  at_most("image.width", image.width, kMaxImageSide);
  if (image.channels != 1 && image.channels != 3) fail("config: image.channels must be 1 or 3, got {}", image.channels);
  positive("image.resize_small", image.resize_small);
  at_most("image.resize_small", image.resize_small, kMaxImageSide);
  if (image.resize == Resize::resize_small_crop && image.resize_small < std::max(image.height, image.width))
    fail("config: image.resize_small {} is smaller than the crop {}x{}", image.resize_small, image.height, image.width);
  for (float v : {image.value_min, image.value_max})
    if (!std::isfinite(v) || std::fabs(v) > kMaxValueRange)
      fail("config: image.value_range [{}, {}] must hold finite numbers within +-{}", image.value_min, image.value_max,
           kMaxValueRange);
  if (!(image.value_max != image.value_min)) fail("config: image.value_range must span a non-empty interval");
  positive("patch[0]", patch_h);
  positive("patch[1]", patch_w);
  if (image.height % patch_h || image.width % patch_w)
    fail("config: image {}x{} is not a whole number of {}x{} patches", image.height, image.width, patch_h, patch_w);
  if (const long long tokens = 1LL * (image.height / patch_h) * (image.width / patch_w) + 1; tokens > kMaxTokens)
    fail("config: {}x{} patches of {}x{} give {} tokens per image, more than the limit of {}", image.height,
         image.width, patch_h, patch_w, tokens, kMaxTokens);
  positive("hidden_size", hidden_size);
  positive("num_layers", num_layers);
  positive("num_heads", num_heads);
  positive("mlp_dim", mlp_dim);
  at_most("hidden_size", hidden_size, 1 << 16);
  at_most("mlp_dim", mlp_dim, 1 << 20);
  at_most("num_layers", num_layers, 1000);
  if (hidden_size % num_heads) fail("config: hidden_size {} is not divisible by num_heads {}", hidden_size, num_heads);
  if (representation_size) positive("representation_size", *representation_size);
  if (!std::isfinite(layer_norm_eps) || !(layer_norm_eps > 0) || layer_norm_eps > 1)
    fail("config: layer_norm_eps must be in (0, 1], got {}", layer_norm_eps);
  positive("num_classes", num_classes);
  if (!labels.empty() && static_cast<int>(labels.size()) != num_classes)
    fail("config: {} labels but num_classes is {}", labels.size(), num_classes);
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i].size() > kMaxLabelBytes) fail("config: labels[{}] is longer than {} bytes", i, kMaxLabelBytes);
    if (printable(labels[i]) != labels[i])
      fail("config: labels[{}] \"{}\" holds control characters or invalid UTF-8", i, labels[i]);
  }
  const long long max_elems = 1LL << 31;  // keeps every index in int range and hostile files out
  if (1LL * hidden_size * mlp_dim >= max_elems || 1LL * num_layers > 1000 || 1LL * num_classes * pooled_size() >= max_elems)
    fail("config: sizes are implausibly large");
  if (moe) {
    if (!moe->router) fail("config: moe.router is not set");
    positive("moe.num_experts", moe->num_experts);
    if (moe->num_experts > 4096) fail("config: moe.num_experts {} is implausibly large", moe->num_experts);
    positive("moe.slots_per_expert", moe->slots_per_expert);
    at_most("moe.slots_per_expert", moe->slots_per_expert, 4096);
    if (moe->num_shared_experts < 0)
      fail("config: moe.num_shared_experts must not be negative, got {}", moe->num_shared_experts);
    at_most("moe.num_shared_experts", moe->num_shared_experts, 4096);
    if (moe->expert_mlp_dim) {
      positive("moe.expert_mlp_dim", *moe->expert_mlp_dim);
      at_most("moe.expert_mlp_dim", *moe->expert_mlp_dim, 1 << 20);
    }
    if (moe->balance == Balance::bias && !moe->router->selection_bias())
      fail("config: moe.balance \"bias\" needs the top_k router, not {}", moe->router->name());
  }
  // The whole model, not only each matrix: 2^30 parameters is 4 GiB of float32 weights
  // (and 16 GiB to train with gradients and AdamW moments).
  if (const int64_t n = param_count(); n > kMaxParams)
    fail("config: {} parameters, more than the limit of {} (2^30)", n, kMaxParams);
  if (!moe) return;
  if (moe->num_experts > 4096) fail("config: moe.num_experts {} is implausibly large", moe->num_experts);
  positive("moe.k", moe->k);
  if (moe->router->top_k_options() && moe->k > moe->num_experts)
    fail("config: moe.k {} exceeds moe.num_experts {}", moe->k, moe->num_experts);
  if (!moe->dropless &&
      (!std::isfinite(moe->capacity_factor) || !(moe->capacity_factor > 0) || moe->capacity_factor > kMaxCapacityFactor))
    fail("config: moe.capacity_factor must be in (0, {}] or null, got {}", kMaxCapacityFactor, moe->capacity_factor);
  if (moe->capacity_multiple_of < 0) fail("config: moe.capacity_multiple_of must not be negative");
  at_most("moe.capacity_multiple_of", moe->capacity_multiple_of, 1 << 16);
  positive("moe.group_images", moe->group_images);
  if (!std::isfinite(moe->noise_std) || moe->noise_std < 0 || moe->noise_std > 1e6)
    fail("config: moe.noise_std must be in [0, 1e6], got {}", moe->noise_std);
  try {
    check_routing(*this, *moe);
  } catch (const Error& e) {
    fail("config: moe: {}", e.what());
  }
  if (1LL * std::max(moe->num_experts, moe->num_shared_experts) * hidden_size * expert_mlp_dim() >= max_elems)
    fail("config: MoE expert weights are implausibly large");
  for (int l : moe->layers)
    if (l < 0 || l >= num_layers) fail("config: moe.layers has block {} but the model has {} blocks", l, num_layers);
}

MoeConfig apply_overrides(const ModelConfig& model, const RoutingOverrides& o) {
  if (!model.moe) fail("the model is dense: it has no routing to override");
  MoeConfig moe = apply_overrides(*model.moe, o);
  check_routing(model, moe);
  return moe;
}

MoeConfig inference_routing(MoeConfig moe) {
  if (moe.eval_capacity_factor) {
    moe.capacity_factor = *moe.eval_capacity_factor;
    moe.dropless = false;
    moe.eval_capacity_factor.reset();
  }
  return moe;
}

MoeConfig apply_overrides(MoeConfig moe, const RoutingOverrides& o) {
  moe = inference_routing(moe);
  if (o.capacity_factor) {
    if (!std::isfinite(*o.capacity_factor) || !(*o.capacity_factor > 0) || *o.capacity_factor > kMaxCapacityFactor)
      fail("capacity factor must be a number in (0, {}], got {}", kMaxCapacityFactor, *o.capacity_factor);
    moe.capacity_factor = *o.capacity_factor;
    moe.dropless = false;
  }
  if (o.priority) {
    if (!moe.router->top_k_options()) fail("--priority applies to the top_k router, not {}", moe.router->name());
    // The learned scorer is a set of weights: only a model trained with one has it.
    if (*o.priority == Priority::learned && moe.priority != Priority::learned)
      fail("--priority learned needs a model trained with a learned scorer (its config says priority {})",
           to_string(moe.priority));
    if (*o.priority == Priority::fitted && moe.priority != Priority::fitted)
      fail("--priority fitted needs a model with a fitted importance head (vmoe fit-priority; its config says priority {})",
           to_string(moe.priority));
    moe.priority = *o.priority;
  }
  if (o.overflow) {
    if (!moe.router->top_k_options()) fail("--overflow applies to the top_k router, not {}", moe.router->name());
    moe.overflow = *o.overflow;
  }
  if (o.batch_priority) moe.batch_priority = *o.batch_priority;
  if (o.group_images) {
    if (*o.group_images < 1 || *o.group_images > kMaxGroupTokens)
      fail("group size must be 1 to {} images, got {}", kMaxGroupTokens, *o.group_images);
    moe.group_images = *o.group_images;
  }
  return moe;
}

}  // namespace vmoe
