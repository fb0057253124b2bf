// vmoe init --arch NAME -o FILE [--seed N] | vmoe init --list
#include <fmt/core.h>

#include "commands.hpp"
#include "core/error.hpp"
#include "io/input_file.hpp"
#include "io/model_file.hpp"
#include "model/architectures.hpp"

namespace vmoe::cli {

namespace {
struct InitArgs {
  std::string arch, output;
  uint64_t seed = 0;
  bool list = false;
};
}  // namespace

Run add_init(CLI::App& root) {
  auto args = std::make_shared<InitArgs>();
  CLI::App* app = root.add_subcommand("init", "write a randomly initialised (untrained) model");
  app->add_option("--arch", args->arch, "architecture name (see --list)");
  app->add_option("-o,--output", args->output, "model file to write");
  app->add_option("--seed", args->seed, "random seed (same seed, same model)");
  app->add_flag("--list", args->list, "list the architectures");
  return [args] {
    if (args->list) {
      for (const Architecture& a : architectures()) fmt::print("{:<16} {}\n", a.name, a.summary);
      return;
    }
    if (args->arch.empty() || args->output.empty()) throw UsageError("init needs --arch NAME and -o FILE (or --list)");
    const Architecture* found = nullptr;
    try {
      found = &find_architecture(args->arch);
    } catch (const Error& e) {
      throw UsageError(e.what());  // a name given on the command line: bad usage
    }
    const Architecture& arch = *found;
    check_output_path(args->output, "model");  // before the work, not after it
    Model model = init_model(arch.config, args->seed);
    save_model(model, args->output);
    fmt::print(stderr, "wrote {} ({}, {} parameters, seed {}, untrained)\n", args->output, arch.name, count_params(model),
               args->seed);
  };
}

}  // namespace vmoe::cli
