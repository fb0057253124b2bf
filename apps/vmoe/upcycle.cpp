// vmoe upcycle -m DENSE --moe-layers 1,3,5 [--experts E] [--k K] [--router R] [--mlp-split S] ... -o MOE
#include <fmt/core.h>
#include <fmt/format.h>

#include "commands.hpp"
#include "core/error.hpp"
#include "io/model_file.hpp"
#include "moe/router_registry.hpp"
#include "spec/router.hpp"
#include "tasks/upcycle.hpp"

namespace vmoe::cli {

namespace {
struct UpcycleArgs {
  std::string model, output, router = "top_k";
  UpcycleOptions options;
};
}  // namespace

Run add_upcycle(CLI::App& root) {
  auto a = std::make_shared<UpcycleArgs>();
  UpcycleOptions& o = a->options;
  CLI::App* app = root.add_subcommand("upcycle", "turn a dense model into an MoE whose experts start as copies of its MLPs");
  app->add_option("-m,--model", a->model, "dense model file (.safetensors)")->required();
  app->add_option("-o,--output", a->output, "MoE model file to write")->required();
  app->add_option("--moe-layers", o.layers, "blocks whose MLP becomes an MoE layer, e.g. 1,3,5")->delimiter(',')->required();
  app->add_option("--experts", o.num_experts, "experts per MoE layer")->check(CLI::Range(1, 4096));
  app->add_option("--k", o.k, "experts per token (top-k)")->check(CLI::Range(1, 4096));
  app->add_option("--router", a->router, "top_k, experts_choice or soft")
      ->check(CLI::IsMember(router_list()));
  app->add_option("--slots", o.slots_per_expert, "Soft-MoE slots per expert")->check(CLI::Range(1, 4096));
  app->add_option("--capacity-factor", o.capacity_factor, "capacity factor written to the config")->check(kPositive);
  app->add_option("--noise-std", o.noise_std, "router noise in training (times 1/E), written to the config")
      ->check(kNonNegative);
  app->add_option("--mlp-split", o.mlp_split,
                  "cut each dense MLP into S chunks, expert e = chunk e mod S (S = k keeps the active compute; "
                  "needs every block to be MoE)")
      ->check(CLI::Range(1, 4096));
  app->add_option("--expert-noise", o.expert_noise, "noise on the expert copies, relative to each kernel's rms")
      ->check(kNonNegative);
  app->add_option("--router-std", o.router_std, "router kernel ~ N(0, std^2) (default 0: zero router)")->check(kNonNegative);
  app->add_option("--seed", o.seed, "seed for the noises and Soft-MoE mu");
  return [a] {
    UpcycleOptions o = a->options;
    o.router = &find_router(a->router);
    const Model dense = load_model(a->model);
    Model moe;
    try {
      moe = upcycle_model(dense, o);
    } catch (const Error& e) {
      throw UsageError(e.what());
    }
    save_model(moe, a->output);
    const UpcycleScale s = upcycle_scale(o);
    fmt::print(stderr, "wrote {}: {} with {} experts ({}) in blocks {}, expert MLP {}, Dense_1 x{:g} (bias x{:g}), {} parameters\n",
               a->output, a->model, o.num_experts, o.router->name(), fmt::join(o.layers, ","), moe.config.expert_mlp_dim(), s.kernel,
               s.bias, count_params(moe));
  };
}

}  // namespace vmoe::cli
