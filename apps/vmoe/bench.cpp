// vmoe bench [-m MODEL] [--batch B] [--threads T] [--seconds S] [--json] [--train]
#include <omp.h>

#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "io/model_file.hpp"
#include "tasks/benchmark.hpp"
#include "train/train_benchmark.hpp"

namespace vmoe::cli {

namespace {
struct BenchArgs {
  std::string model;
  int batch = 64;
  int threads = 0;
  double seconds = 3.0;
  bool json = false;
  bool no_ceiling = false;
  bool train = false;
  std::string precision = "f32";
  RoutingFlags routing;
};
struct TrainStage {
  const char* key;  // JSON
  const char* label;  // text
  double seconds;
};
std::vector<TrainStage> stage_list(const StageTimes& s) {
  return {{"embedding", "embedding", s.embedding},
          {"attention", "attention", s.attention},
          {"norms", "layer norms", s.norms},
          {"router_dispatch", "MoE router, dispatch/combine", s.router},
          {"experts", "MoE experts", s.experts},
          {"dense_mlp", "dense MLPs", s.dense_mlp},
          {"head_loss", "pool, head, loss", s.head}};
}

void print_train_bench(const BenchArgs& args, const std::string& path, const Model& model, bool batch_given) {
  const int batch = batch_given ? args.batch : 128;
  const train::TrainBenchResult r = train::benchmark_training(model, batch, args.seconds);
  std::optional<MatmulCeiling> ceiling;
  if (!args.no_ceiling) ceiling = measure_matmul_ceiling();
  const int threads = omp_get_max_threads();
  const std::vector<TrainStage> fwd = stage_list(r.forward), bwd = stage_list(r.backward);
  const double per_step = 1e3 / r.steps;
  if (args.json) {
    nlohmann::json f, b;
    for (const TrainStage& st : fwd) f[st.key] = st.seconds * per_step;
    for (const TrainStage& st : bwd) b[st.key] = st.seconds * per_step;
    nlohmann::json j{{"model", path}, {"mode", "train"}, {"batch", r.batch}, {"threads", threads}, {"steps", r.steps},
                     {"images_per_s", r.images_per_s}, {"gflops_per_image", r.gflops_per_image},
                     {"gflops_per_s", r.gflops_per_s},
                     {"stage_ms_per_step", {{"data", r.data * per_step}, {"forward", f}, {"backward", b},
                                             {"optimizer", r.optimizer * per_step}}}};
    if (ceiling) j["matmul_ceiling"] = {{"m", ceiling->m}, {"k", ceiling->k}, {"n", ceiling->n},
                                        {"gflops_per_s", ceiling->gflops_per_s}, {"impl", ceiling->impl},
                                        {"percent", 100.0 * r.gflops_per_s / ceiling->gflops_per_s}};
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("model        {} (training)\n", path);
  fmt::print("batch        {} images, {} threads, {} timed steps in {:.2f} s\n", r.batch, threads, r.steps, r.seconds);
  fmt::print("throughput   {:.1f} images/s, {:.1f} GFLOP/s (3 x {:.4f} forward GFLOPs per image)\n", r.images_per_s,
             r.gflops_per_s, r.gflops_per_image / 3);
  if (ceiling)
    fmt::print("ceiling      {:.1f} GFLOP/s on one {}x{}x{} matmul ({}): training reaches {:.0f}%\n", ceiling->gflops_per_s,
               ceiling->m, ceiling->k, ceiling->n, ceiling->impl, 100.0 * r.gflops_per_s / ceiling->gflops_per_s);
  double total = r.data + r.optimizer;
  for (const TrainStage& st : fwd) total += st.seconds;
  for (const TrainStage& st : bwd) total += st.seconds;
  fmt::print("stages       (ms per step, share of timed stages)\n");
  auto line = [&](const std::string& name, double secs) {
    if (secs > 0) fmt::print("  {:<40} {:9.3f} ms  {:5.1f}%\n", name, secs * per_step, 100.0 * secs / total);
  };
  line("data (augmentation)", r.data);
  for (const TrainStage& st : fwd) line(fmt::format("forward  {}", st.label), st.seconds);
  for (const TrainStage& st : bwd) line(fmt::format("backward {}", st.label), st.seconds);
  line("optimizer (clip + AdamW)", r.optimizer);
}

}  // namespace

Run add_bench(CLI::App& root) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* app = root.add_subcommand("bench", "images/s, GFLOP/s and a per-stage breakdown on random images");
  add_model_option(*app, args->model);
  CLI::Option* batch = app->add_option("--batch", args->batch, "images per forward pass (default 64; 128 with --train)")
                           ->check(CLI::Range(1, 4096));
  app->add_option("--threads", args->threads, "OpenMP threads (default: all cores)")->check(CLI::Range(1, 1024));
  app->add_option("--seconds", args->seconds, "minimum timed duration")->check(number_in(0.0, 3600.0));
  add_routing_options(*app, args->routing);
  add_precision_option(*app, args->precision);
  app->add_flag("--no-ceiling", args->no_ceiling, "skip the large-matmul ceiling measurement");
  app->add_flag("--json", args->json, "print JSON");
  app->add_flag("--train", args->train,
                "time training steps instead (augmentation, forward, backward, AdamW; default batch 128): images/s, "
                "GFLOP/s (3 x forward), % of the ceiling and per-stage times");
  return [args, batch] {
    const bool app_batch_given = batch->count() > 0;
    if (args->threads > 0) omp_set_num_threads(args->threads);
    const std::string path = resolve_model_path(args->model);
    Model model = load_model(path);
    if (args->train) {
      print_train_bench(*args, path, model, app_batch_given);
      return;
    }
    Engine engine(model, nn::parse_precision(args->precision));
    if (model.config.moe) checked_routing(model.config, args->routing);
    engine.set_routing(args->routing.overrides());
    BenchResult r = benchmark_engine(engine, args->batch, args->seconds);
    // bf16 runs are measured against the bf16 matmul's ceiling, with the f32 one beside it.
    const nn::Precision precision = engine.precision();
    std::optional<MatmulCeiling> ceiling, f32_ceiling;
    if (!args->no_ceiling) {
      ceiling = measure_matmul_ceiling(3136, 768, 3072, precision);
      if (precision != nn::Precision::f32) f32_ceiling = measure_matmul_ceiling();
    }
    const StageTimes& s = r.stages;
    const std::pair<const char*, double> stages[] = {
        {"embedding", s.embedding}, {"attention", s.attention},        {"layer norms", s.norms},
        {"router", s.router},       {"dispatch/combine", s.dispatch_combine}, {"expert MLPs", s.experts},
        {"dense MLPs", s.dense_mlp}, {"head", s.head}};
    const int threads = omp_get_max_threads();
    if (args->json) {
      nlohmann::json stage_ms;
      for (auto& [name, secs] : stages) stage_ms[name] = 1e3 * secs / r.iterations;
      nlohmann::json j{{"model", path},         {"batch", r.batch}, {"precision", nn::to_string(precision)},
                       {"threads", threads},    {"iterations", r.iterations},
                       {"images_per_s", r.images_per_s}, {"gflops_per_image", r.gflops_per_image},
                       {"gflops_per_s", r.gflops_per_s}, {"gflops_per_image_capacity", r.gflops_per_image_capacity},
                       {"gflops_per_s_capacity", r.gflops_per_s_capacity},
                       {"expert_rows_per_image", r.expert_rows_per_image},
                       {"expert_rows_per_image_capacity", r.expert_rows_per_image_capacity},
                       {"stage_ms_per_batch", stage_ms}};
      if (ceiling) j["matmul_ceiling"] = {{"m", ceiling->m}, {"k", ceiling->k}, {"n", ceiling->n},
                                          {"gflops_per_s", ceiling->gflops_per_s}, {"impl", ceiling->impl},
                                          {"precision", nn::to_string(ceiling->precision)}};
      if (f32_ceiling) j["matmul_ceiling_f32"] = {{"gflops_per_s", f32_ceiling->gflops_per_s}, {"impl", f32_ceiling->impl}};
      fmt::print("{}\n", j.dump());
      return;
    }
    fmt::print("model        {}\n", path);
    fmt::print("batch        {} images, {} threads, {} timed passes in {:.2f} s, {} matmuls\n", r.batch, threads,
               r.iterations, r.seconds, nn::to_string(precision));
    fmt::print("throughput   {:.1f} images/s, {:.1f} GFLOP/s ({:.4f} GFLOPs per image)\n", r.images_per_s,
               r.gflops_per_s, r.gflops_per_image);
    if (r.expert_rows_per_image_capacity > 0)
      fmt::print("experts      {:.1f} routed rows per image processed of {:.1f} the capacity allows ({:.1f}%); "
                 "with every slot used: {:.1f} GFLOP/s ({:.4f} GFLOPs per image)\n",
                 r.expert_rows_per_image, r.expert_rows_per_image_capacity,
                 100.0 * r.expert_rows_per_image / r.expert_rows_per_image_capacity, r.gflops_per_s_capacity,
                 r.gflops_per_image_capacity);
    if (ceiling)
      fmt::print("ceiling      {:.1f} GFLOP/s on one {} {}x{}x{} matmul ({}): engine reaches {:.0f}%\n",
                 ceiling->gflops_per_s, nn::to_string(ceiling->precision), ceiling->m, ceiling->k, ceiling->n,
                 ceiling->impl, 100.0 * r.gflops_per_s / ceiling->gflops_per_s);
    if (f32_ceiling)
      fmt::print("             f32 ceiling {:.1f} GFLOP/s ({}): engine at {:.0f}% of it\n", f32_ceiling->gflops_per_s,
                 f32_ceiling->impl, 100.0 * r.gflops_per_s / f32_ceiling->gflops_per_s);
    const double total = s.total();
    fmt::print("stages       (ms per batch, share of timed stages)\n");
    for (auto& [name, secs] : stages)
      if (secs > 0) fmt::print("  {:<18} {:9.3f} ms  {:5.1f}%\n", name, 1e3 * secs / r.iterations, 100.0 * secs / total);
    fmt::print("kernels      (oneDNN implementation of each primitive created)\n");
    for (const std::string& p : r.primitives) fmt::print("  {}\n", p);
  };
}

}  // namespace vmoe::cli
