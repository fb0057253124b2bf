// vmoe info [MODEL] [--json]
#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "io/model_file.hpp"
#include "moe/capacity.hpp"
#include "spec/cost.hpp"
#include "spec/params.hpp"
#include "spec/router.hpp"

namespace vmoe::cli {

namespace {
struct InfoArgs {
  std::string model;
  bool json = false;
  RoutingFlags routing;
};
}  // namespace

Run add_info(CLI::App& root) {
  auto args = std::make_shared<InfoArgs>();
  CLI::App* app = root.add_subcommand("info", "architecture, parameters, compute and MoE layers of a model");
  app->add_option("model", args->model, "model file (default: the bundled model)");
  add_model_option(*app, args->model);
  add_routing_options(*app, args->routing);
  app->add_flag("--json", args->json, "print JSON");
  return [args] {
    const std::string path = resolve_model_path(args->model);
    Model model = load_model(path);
    const ModelConfig& c = model.config;
    std::optional<MoeConfig> routing;
    if (c.moe) routing = checked_routing(c, args->routing);
    const ModelCost cost = model_cost(c, routing ? &*routing : nullptr);
    const int64_t S = int64_t{c.num_tokens()} * (routing ? routing->group_images : 1);  // <= kMaxGroupTokens
    nlohmann::json layers = nlohmann::json::array();
    if (routing) {
      const MoeConfig& m = *routing;
      for (int layer : m.layers) {
        nlohmann::json l{{"layer", layer},
                         {"router", m.router->name()},
                         {"num_experts", m.num_experts},
                         {"num_shared_experts", m.num_shared_experts},
                         {"expert_mlp_dim", c.expert_mlp_dim()}};
        if (m.router->selection_bias()) l["balance"] = to_string(m.balance);
        if (m.router->drops()) {
          const int64_t cap = group_capacity(m, S);
          const int k = m.router->trace_k(m);  // per-token choices: capacity is over S * k
          if (k > 0) l["k"] = k;
          l["capacity"] = cap;
          l["effective_capacity_factor"] = effective_capacity_factor(cap, m.num_experts, k > 0 ? int64_t{S} * k : S);
        } else {
          l["slots_per_expert"] = m.slots_per_expert;
        }
        layers.push_back(l);
      }
    }
    nlohmann::json j{{"model", path},
                     {"image", {c.image.height, c.image.width, c.image.channels}},
                     {"patch", {c.patch_h, c.patch_w}},
                     {"tokens", c.num_tokens()},
                     {"hidden_size", c.hidden_size},
                     {"num_layers", c.num_layers},
                     {"num_heads", c.num_heads},
                     {"mlp_dim", c.mlp_dim},
                     {"gelu", to_string(c.gelu)},
                     {"classifier", to_string(c.classifier)},
                     {"num_classes", c.num_classes},
                     {"params_total", cost.params_total},
                     {"params_active", cost.params_active},
                     {"gflops_per_image", cost.flops_total() / 1e9},
                     {"moe_layers", layers}};
    if (routing) {
      j["capacity_factor"] = routing->dropless ? nlohmann::json(nullptr) : nlohmann::json(routing->capacity_factor);
      j["routing"] = routing->batch_priority ? "bpr" : "vanilla";
      if (routing->router->top_k_options()) {
        j["priority"] = to_string(routing->priority);
        j["gating"] = to_string(routing->gating);
        j["overflow"] = to_string(routing->overflow);
      }
      j["group_images"] = routing->group_images;
    }
    if (args->json) {
      fmt::print("{}\n", j.dump());
      return;
    }
    fmt::print("model        {}\n", path);
    fmt::print("image        {}x{}x{}, resize {}, patch {}x{} -> {} tokens ({} classifier)\n", c.image.height,
               c.image.width, c.image.channels, to_string(c.image.resize), c.patch_h, c.patch_w, c.num_tokens(),
               to_string(c.classifier));
    fmt::print("encoder      {} blocks, D {}, {} heads, MLP {}{}{}{}\n", c.num_layers, c.hidden_size, c.num_heads, c.mlp_dim,
               c.expert_mlp_dim() != c.mlp_dim ? fmt::format(" (experts {})", c.expert_mlp_dim()) : "",
               c.representation_size ? fmt::format(", pre-logits {}", *c.representation_size) : "",
               c.gelu == Gelu::erf ? ", GELU erf (exact)" : "");
    fmt::print("classes      {}\n", c.num_classes);
    fmt::print("parameters   {:.3f} M total, {:.3f} M active per token\n", cost.params_total / 1e6, cost.params_active / 1e6);
    fmt::print("compute      {:.4f} GFLOPs per image (embedding {:.4f}, attention {:.4f}, router {:.4f}, experts {:.4f}, dense MLP {:.4f}, head {:.4f})\n",
               cost.flops_total() / 1e9, cost.flops_embedding / 1e9, cost.flops_attention / 1e9, cost.flops_router / 1e9,
               cost.flops_experts / 1e9, cost.flops_dense_mlp / 1e9, cost.flops_head / 1e9);
    if (!routing) {
      fmt::print("moe          none (dense)\n");
      return;
    }
    fmt::print("routing      {}, capacity factor {}, groups of {} image(s) = {} tokens\n",
               routing->batch_priority ? fmt::format("bpr by {}", to_string(routing->priority)) : std::string("vanilla"),
               routing->dropless ? std::string("none (dropless)") : fmt::format("{}", routing->capacity_factor),
               routing->group_images, S);
    if (routing->router->top_k_options() && (routing->gating != Gating::softmax_topk || routing->overflow != Overflow::drop))
      fmt::print("variants     gating {}, overflow {}\n", to_string(routing->gating), to_string(routing->overflow));
    for (const auto& l : layers) {
      std::string detail;
      if (l.contains("capacity"))
        detail = fmt::format("capacity {} per expert per group (effective factor {:.3f})", l["capacity"].get<int64_t>(),
                             l["effective_capacity_factor"].get<double>());
      else
        detail = fmt::format("{} slot(s) per expert", l["slots_per_expert"].get<int>());
      const int shared = l["num_shared_experts"].get<int>();
      const bool bias = l.value("balance", "") == "bias";
      fmt::print("moe block {:<3} {} router, {} experts{}{}, {}{}\n", l["layer"].get<int>(), l["router"].get<std::string>(),
                 l["num_experts"].get<int>(), shared ? fmt::format(" + {} shared", shared) : "",
                 l.contains("k") ? fmt::format(", k {}", l["k"].get<int>()) : "", detail,
                 bias ? ", balance bias" : "");
    }
  };
}

}  // namespace vmoe::cli
