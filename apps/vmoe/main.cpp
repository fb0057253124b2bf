// vmoe: see and measure what Mixture-of-Experts routers do to images.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include <fmt/core.h>

#include "commands.hpp"
#include "core/error.hpp"

// OpenMP threads that spin while waiting make a 2-core run ~10x slower as soon as any
// other process wants a core (measured: 141 vs 1311 images/s for `vmoe bench --batch
// 256` with a training run beside it). libgomp reads OMP_WAIT_POLICY before main runs,
// so when the user has not chosen a policy we choose "passive" and re-execute once.
void prefer_passive_openmp_waits(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  ::setenv("OMP_WAIT_POLICY", "passive", 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then carry on as we are
}

int main(int argc, char** argv) {
  prefer_passive_openmp_waits(argv);
  CLI::App app{"vmoe: Vision Mixture-of-Experts on CPU (V-MoE, experts-choice, Soft-MoE)"};
  app.require_subcommand(1);
  app.failure_message([](const CLI::App*, const CLI::Error& e) {  // one line: what was wrong
    return fmt::format("vmoe: error: {} (see --help)\n", e.what());
  });
  app.set_version_flag("--version", "vmoe 0.1");
  const std::pair<std::string, vmoe::cli::Run> commands[] = {
      {"classify", vmoe::cli::add_classify(app)},
      {"info", vmoe::cli::add_info(app)},
      {"init", vmoe::cli::add_init(app)},
      {"bench", vmoe::cli::add_bench(app)},
      {"route", vmoe::cli::add_route(app)},
      {"eval", vmoe::cli::add_eval(app)},
      {"train", vmoe::cli::add_train(app)},
      {"upcycle", vmoe::cli::add_upcycle(app)},
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    for (const auto& [name, run] : commands)
      if (app.got_subcommand(name)) run();
  } catch (const vmoe::cli::UsageError& e) {
    fmt::print(stderr, "vmoe: error: {}\n", e.what());
    return 2;
  } catch (const vmoe::Error& e) {
    fmt::print(stderr, "vmoe: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "vmoe: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
