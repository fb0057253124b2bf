// vmoe fit-priority [-m MODEL] [--data SPEC] [--images N] [--seed S] [--ridge L] [--threads T] -o OUT
// Fits a priority head to patch importance on training images (tasks/fit_priority.hpp) and
// writes the model with priority "fitted": `vmoe eval -m OUT` then routes BPR by it.
#include <omp.h>
#include <unistd.h>

#include <cstdio>
#include <ranges>

#include <fmt/format.h>

#include "commands.hpp"
#include "core/error.hpp"
#include "io/model_file.hpp"
#include "tasks/fit_priority.hpp"

namespace vmoe::cli {

namespace {
struct FitArgs {
  std::string model, output, data = "fashion-mnist:train", data_dir;
  FitPriorityOptions options;
  int threads = 0;
  std::string target = "nats";
};
}  // namespace

Run add_fit_priority(CLI::App& root) {
  auto a = std::make_shared<FitArgs>();
  CLI::App* app = root.add_subcommand(
      "fit-priority", "fit a BPR priority head to patch importance on training images (docs/ROUTING.md §10)");
  add_model_option(*app, a->model);
  app->add_option("-o,--output", a->output, "model file to write (the input with priority \"fitted\")")->required();
  app->add_option("--data", a->data, "training images: fashion-mnist:train (default) or a folder per class");
  app->add_option("--data-dir", a->data_dir, "where the Fashion-MNIST IDX files are");
  app->add_option("--images", a->options.images, "images to fit on, drawn at random (default 1024)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  app->add_option("--seed", a->options.seed, "which images (default 1)");
  app->add_option("--ridge", a->options.ridge, "L2 penalty on the head, relative to the inputs' mean square (default 1e-3)")
      ->check(CLI::Range(0.0, 1e6));
  app->add_option("--target", a->target, "what the head predicts: nats (importance), share (of the image's "
                  "positive importance) or rank (within the image) (default nats)")
      ->check(CLI::IsMember({"nats", "share", "rank"}));
  app->add_option("--threads", a->threads, "OpenMP threads (default: all cores)")->check(CLI::Range(1, 1024));
  return [a] {
    if (a->threads > 0) omp_set_num_threads(a->threads);
    const std::string path = resolve_model_path(a->model);
    const Model model = load_model(path);
    if (!model.config.moe || model.config.moe->layers.empty())
      throw UsageError(fmt::format("{}: the model is dense, there is no routing to order", path));
    const Dataset data = load_dataset(a->data, a->data_dir);
    Engine engine(model);
    FitPriorityOptions o = a->options;
    using Target = FitPriorityOptions::Target;
    o.target = a->target == "share" ? Target::share : a->target == "rank" ? Target::rank : Target::nats;
    if (isatty(STDERR_FILENO))
      o.progress = [](int64_t done, int64_t total) {
        fmt::print(stderr, "\rfitting: importance of {}/{} images", done, total);
        if (done >= total) fmt::print(stderr, "\n");
        std::fflush(stderr);
      };
    const FitPriorityResult r = fit_priority(engine, data, o);
    save_model(r.model, a->output);
    fmt::print("wrote {}: {} with a fitted priority head in blocks {} ({} images, {} tokens; R^2 on them {})\n",
               a->output, path, fmt::join(r.blocks, ","), r.images, r.tokens,
               fmt::join(r.r2 | std::views::transform([](double v) { return fmt::format("{:.3f}", v); }), " "));
  };
}

}  // namespace vmoe::cli
