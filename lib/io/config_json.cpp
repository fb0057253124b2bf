#include "io/config_json.hpp"

#include <cmath>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "moe/router_registry.hpp"
#include "spec/router.hpp"

namespace vmoe {
namespace {

using json = nlohmann::json;

void reject_unknown_keys(const json& object, const std::set<std::string>& known, const std::string& where) {
  if (!object.is_object()) fail("config: {} must be a JSON object", where);
  for (auto it = object.begin(); it != object.end(); ++it)
    if (!known.count(it.key())) fail("config: unknown key \"{}{}\"", where.empty() ? "" : where + ".", it.key());
}

template <typename T>
T get_or(const json& object, const char* key, T fallback, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail("config: \"{}{}\" has the wrong type", where.empty() ? "" : where + ".", key);
  }
}

template <typename T>
T get_required(const json& object, const char* key, const std::string& where) {
  if (!object.contains(key) || object[key].is_null())
    fail("config: missing required key \"{}{}\"", where.empty() ? "" : where + ".", key);
  return get_or<T>(object, key, T{}, where);
}

int get_int(const json& object, const char* key, int fallback, const std::string& where, bool required = false) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    if (required) fail("config: missing required key \"{}{}\"", where.empty() ? "" : where + ".", key);
    return fallback;
  }
  if (!it->is_number_integer()) fail("config: \"{}{}\" must be an integer", where.empty() ? "" : where + ".", key);
  long long v = it->get<long long>();
  if (v < -(1LL << 30) || v > (1LL << 30)) fail("config: \"{}{}\" = {} is out of range", where.empty() ? "" : where + ".", key, v);
  return static_cast<int>(v);
}

// An integer array, each element range-checked like get_int (no silent truncation).
std::vector<int> get_int_array(const json& object, const char* key, const std::string& where, bool required) {
  const std::string name = (where.empty() ? "" : where + ".") + key;
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    if (required) fail("config: missing required key \"{}\"", name);
    return {};
  }
  if (!it->is_array()) fail("config: \"{}\" must be an array of integers", name);
  if (it->size() > 4096) fail("config: \"{}\" has {} elements, more than 4096", name, it->size());
  std::vector<int> out;
  for (const json& v : *it) {
    if (!v.is_number_integer()) fail("config: \"{}\" must be an array of integers", name);
    const long long x = v.get<long long>();
    if (x < -(1LL << 30) || x > (1LL << 30)) fail("config: \"{}\" holds {}, which is out of range", name, x);
    out.push_back(static_cast<int>(x));
  }
  return out;
}

template <typename Enum>
Enum get_enum(const json& object, const char* key, Enum fallback, const std::string& where,
              std::initializer_list<std::pair<const char*, Enum>> names) {
  std::string value = get_or<std::string>(object, key, "", where);
  if (value.empty()) return fallback;
  std::string allowed;
  for (auto& [name, e] : names) {
    if (value == name) return e;
    allowed += (allowed.empty() ? "" : "|") + std::string(name);
  }
  fail("config: \"{}{}\" is \"{}\", expected {}", where.empty() ? "" : where + ".", key, value, allowed);
}

}  // namespace

ModelConfig parse_config_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("config: not valid JSON ({})", e.what());
  }
  reject_unknown_keys(j, {"format", "version", "image", "patch", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                          "classifier", "representation_size", "layer_norm_eps", "labels", "num_classes", "moe", "gelu"},
                      "");
  if (get_required<std::string>(j, "format", "") != "vmoe") fail("config: \"format\" must be \"vmoe\"");
  if (int v = get_int(j, "version", 0, "", true); v != 1) fail("config: unsupported version {}", v);

  ModelConfig c;
  if (!j.contains("image")) fail("config: missing required key \"image\"");
  const json& im = j["image"];
  reject_unknown_keys(im, {"height", "width", "channels", "resize", "resize_small", "value_range"}, "image");
  c.image.height = get_int(im, "height", 0, "image", true);
  c.image.width = get_int(im, "width", 0, "image", true);
  c.image.channels = get_int(im, "channels", 0, "image", true);
  c.image.resize = get_enum(im, "resize", Resize::none, "image",
                            {{"none", Resize::none}, {"stretch", Resize::stretch}, {"resize_small_crop", Resize::resize_small_crop}});
  c.image.resize_small = get_int(im, "resize_small", 256, "image");
  auto range = get_or<std::vector<double>>(im, "value_range", {-1.0, 1.0}, "image");
  if (range.size() != 2) fail("config: image.value_range must have two numbers");
  for (double v : range)  // checked before narrowing to float, where 1e300 would not fit
    if (!std::isfinite(v) || std::fabs(v) > kMaxValueRange)
      fail("config: image.value_range [{}, {}] must hold finite numbers within +-{}", range[0], range[1], kMaxValueRange);
  c.image.value_min = static_cast<float>(range[0]);
  c.image.value_max = static_cast<float>(range[1]);

  const std::vector<int> patch = get_int_array(j, "patch", "", true);
  if (patch.size() != 2) fail("config: \"patch\" must be [height, width]");
  c.patch_h = patch[0];
  c.patch_w = patch[1];
  c.hidden_size = get_int(j, "hidden_size", 0, "", true);
  c.num_layers = get_int(j, "num_layers", 0, "", true);
  c.num_heads = get_int(j, "num_heads", 0, "", true);
  c.mlp_dim = get_int(j, "mlp_dim", 0, "", true);
  c.classifier = get_enum(j, "classifier", Classifier::token, "", {{"token", Classifier::token}, {"gap", Classifier::gap}});
  if (j.contains("representation_size") && !j["representation_size"].is_null())
    c.representation_size = get_int(j, "representation_size", 0, "");
  c.layer_norm_eps = get_or<double>(j, "layer_norm_eps", 1e-6, "");
  c.gelu = get_enum(j, "gelu", Gelu::tanh, "", {{"tanh", Gelu::tanh}, {"erf", Gelu::erf}});
  c.labels = get_or<std::vector<std::string>>(j, "labels", {}, "");
  c.num_classes = get_int(j, "num_classes", static_cast<int>(c.labels.size()), "");
  if (c.num_classes == 0) fail("config: needs \"labels\" or \"num_classes\"");

  if (j.contains("moe") && !j["moe"].is_null()) {
    const json& m = j["moe"];
    reject_unknown_keys(m, {"layers", "router", "num_experts", "k", "capacity_factor", "capacity_rounding",
                            "capacity_multiple_of", "batch_priority", "group_images", "noise_std", "slots_per_expert",
                            "eval_capacity_factor", "priority", "gating", "overflow", "num_shared_experts",
                            "expert_mlp_dim", "balance"},
                        "moe");
    MoeConfig moe;
    moe.router = &default_router();  // a config that names no router means top_k
    moe.layers = get_int_array(m, "layers", "moe", true);
    if (const std::string name = get_or<std::string>(m, "router", "", "moe"); !name.empty()) {
      bool known = false;
      for (const Router* r : routers()) known = known || name == r->name();
      if (!known) fail("config: \"moe.router\" is \"{}\", expected {}", name, router_names("|"));
      moe.router = &find_router(name);
    }
    moe.num_experts = get_int(m, "num_experts", moe.num_experts, "moe");
    moe.k = get_int(m, "k", moe.k, "moe");
    if (m.contains("capacity_factor") && m["capacity_factor"].is_null()) moe.dropless = true;  // amendment: null = dropless
    else moe.capacity_factor = get_or<double>(m, "capacity_factor", moe.capacity_factor, "moe");
    if (m.contains("eval_capacity_factor") && !m["eval_capacity_factor"].is_null())
      moe.eval_capacity_factor = get_or<double>(m, "eval_capacity_factor", 0.0, "moe");
    moe.priority = get_enum(m, "priority", Priority::max_gate, "moe",
                            {{"max_gate", Priority::max_gate}, {"sum_gates", Priority::sum_gates},
                             {"entropy", Priority::entropy}, {"random", Priority::random}, {"learned", Priority::learned},
                             {"fitted", Priority::fitted}});
    moe.gating = get_enum(m, "gating", Gating::softmax_topk, "moe",
                          {{"softmax_topk", Gating::softmax_topk}, {"topk_softmax", Gating::topk_softmax}});
    moe.overflow = get_enum(m, "overflow", Overflow::drop, "moe", {{"drop", Overflow::drop}, {"next", Overflow::next}});
    moe.capacity_rounding = get_enum(m, "capacity_rounding", CapacityRounding::ceil, "moe",
                                     {{"ceil", CapacityRounding::ceil}, {"round", CapacityRounding::round}});
    moe.capacity_multiple_of = get_int(m, "capacity_multiple_of", moe.capacity_multiple_of, "moe");
    moe.batch_priority = get_or<bool>(m, "batch_priority", moe.batch_priority, "moe");
    moe.group_images = get_int(m, "group_images", moe.group_images, "moe");
    moe.noise_std = get_or<double>(m, "noise_std", moe.noise_std, "moe");
    moe.slots_per_expert = get_int(m, "slots_per_expert", moe.slots_per_expert, "moe");
    moe.num_shared_experts = get_int(m, "num_shared_experts", moe.num_shared_experts, "moe");
    if (m.contains("expert_mlp_dim") && !m["expert_mlp_dim"].is_null())
      moe.expert_mlp_dim = get_int(m, "expert_mlp_dim", 0, "moe");
    moe.balance = get_enum(m, "balance", Balance::aux, "moe", {{"aux", Balance::aux}, {"bias", Balance::bias}});
    if (!moe.layers.empty()) c.moe = moe;
  }
  c.validate();
  return c;
}

std::string config_to_json(const ModelConfig& c) {
  json j;
  j["format"] = "vmoe";
  j["version"] = 1;
  j["image"] = {{"height", c.image.height},
                {"width", c.image.width},
                {"channels", c.image.channels},
                {"resize", to_string(c.image.resize)},
                {"resize_small", c.image.resize_small},
                {"value_range", {c.image.value_min, c.image.value_max}}};
  j["patch"] = {c.patch_h, c.patch_w};
  j["hidden_size"] = c.hidden_size;
  j["num_layers"] = c.num_layers;
  j["num_heads"] = c.num_heads;
  j["mlp_dim"] = c.mlp_dim;
  j["classifier"] = to_string(c.classifier);
  j["representation_size"] = c.representation_size ? json(*c.representation_size) : json(nullptr);
  j["layer_norm_eps"] = c.layer_norm_eps;
  // Written only when not the default, so every tanh model's file stays as it was.
  if (c.gelu != Gelu::tanh) j["gelu"] = to_string(c.gelu);
  if (!c.labels.empty()) j["labels"] = c.labels;
  j["num_classes"] = c.num_classes;
  if (c.moe) {
    const MoeConfig& m = *c.moe;
    j["moe"] = {{"layers", m.layers},
                {"router", m.router->name()},
                {"num_experts", m.num_experts},
                {"k", m.k},
                {"capacity_factor", m.capacity_factor},
                {"capacity_rounding", m.capacity_rounding == CapacityRounding::ceil ? "ceil" : "round"},
                {"capacity_multiple_of", m.capacity_multiple_of},
                {"batch_priority", m.batch_priority},
                {"group_images", m.group_images},
                {"noise_std", m.noise_std},
                {"slots_per_expert", m.slots_per_expert}};
    // The routing variants are written only when not the default, so older files and
    // the files of older runs stay byte for byte as they were.
    if (m.dropless) j["moe"]["capacity_factor"] = nullptr;
    if (m.eval_capacity_factor) j["moe"]["eval_capacity_factor"] = *m.eval_capacity_factor;
    if (m.priority != Priority::max_gate) j["moe"]["priority"] = to_string(m.priority);
    if (m.gating != Gating::softmax_topk) j["moe"]["gating"] = to_string(m.gating);
    if (m.overflow != Overflow::drop) j["moe"]["overflow"] = to_string(m.overflow);
    // Amendment keys only when they differ from "absent", so older models' files stay as they were.
    if (m.num_shared_experts) j["moe"]["num_shared_experts"] = m.num_shared_experts;
    if (m.expert_mlp_dim) j["moe"]["expert_mlp_dim"] = *m.expert_mlp_dim;
    if (m.balance != Balance::aux) j["moe"]["balance"] = to_string(m.balance);
  } else {
    j["moe"] = nullptr;
  }
  return j.dump();
}

}  // namespace vmoe
