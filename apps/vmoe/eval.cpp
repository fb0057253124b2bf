// vmoe eval [-m MODEL] --data SPEC [--data-dir DIR] [--capacity-factor C] [--routing R] [--batch B]
//           [--group-images G] [--limit N] [--shard I/N] [--threads T] [--format text|csv|json]
// vmoe eval --merge A.json B.json ... [--format text|csv|json]
#include <omp.h>
#include <unistd.h>

#include <cstdio>

#include <fmt/core.h>

#include "commands.hpp"
#include "io/dataset.hpp"
#include "io/model_file.hpp"
#include "tasks/eval_report.hpp"
#include "tasks/evaluate.hpp"

namespace vmoe::cli {

namespace {
struct EvalArgs {
  std::string model, data, data_dir, format = "text", shard;
  std::vector<std::string> merge;
  int batch = 256;
  int threads = 0;
  int64_t limit = -1;
  RoutingFlags routing;
  std::string resize;
};

std::pair<int, int> parse_shard(const std::string& s) {
  const size_t slash = s.find('/');
  int i = -1, n = -1;
  try {
    size_t used_i = 0, used_n = 0;
    if (slash != std::string::npos) {
      i = std::stoi(s.substr(0, slash), &used_i);
      n = std::stoi(s.substr(slash + 1), &used_n);
      if (used_i != slash || used_n != s.size() - slash - 1) i = -1;
    }
  } catch (const std::exception&) {
    i = -1;
  }
  if (i < 0 || n < 1 || i >= n)
    throw UsageError(fmt::format("--shard {}: expected I/N with 0 <= I < N, e.g. --shard 0/4", s));
  return {i, n};
}

// "\r[#####.....] 1234/10000 images" on stderr, only when it is a terminal.
void progress_bar(int64_t done, int64_t total) {
  const int width = 40;
  const int filled = total > 0 ? static_cast<int>(width * done / total) : width;
  fmt::print(stderr, "\r[{}{}] {}/{} images", std::string(filled, '#'), std::string(width - filled, '.'), done, total);
  if (done >= total) fmt::print(stderr, "\r{}\r", std::string(width + 40, ' '));
  std::fflush(stderr);
}

void print_result(const EvalResult& r, const std::string& format) {
  if (format == "json") fmt::print("{}\n", eval_to_json(r).dump());
  else if (format == "csv") fmt::print("{}\n{}\n", eval_csv_header(), eval_csv_row(r));
  else fmt::print("{}", eval_text(r));
}
}  // namespace

Run add_eval(CLI::App& root) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* app = root.add_subcommand("eval", "accuracy and MoE drops of a model on a dataset (sharded runs merge exactly)");
  add_model_option(*app, args->model);
  auto* data = app->add_option("--data", args->data,
                               "fashion-mnist:test, fashion-mnist:train, or a folder with one sub-folder of images per class");
  app->add_option("--data-dir", args->data_dir, "where the Fashion-MNIST IDX files are (default /usr/share/datasets/fashion-mnist)");
  add_routing_options(*app, args->routing);
  add_resize_option(*app, args->resize);
  app->add_option("--batch", args->batch, "images per forward pass (default 256; rounded down to whole groups)")
      ->check(CLI::Range(1, 65536));
  app->add_option("--limit", args->limit, "evaluate only the first N images")->check(kNonNegative);
  app->add_option("--shard", args->shard,
                  "evaluate shard I of N (0-based): routing group g goes to shard g % N; merge the JSON with --merge");
  app->add_option("--threads", args->threads, "OpenMP threads (default: all cores)")->check(CLI::Range(1, 1024));
  app->add_option("--format", args->format, "text, csv (one header line + one row) or json")
      ->check(CLI::IsMember({"text", "csv", "json"}));
  // No CLI::ExistingFile: it opens the file to check it, which blocks on a FIFO;
  // read_eval_json checks the type first and names a missing file itself.
  auto* merge = app->add_option("--merge", args->merge, "merge the JSON results of shards (vmoe eval --shard ... --format json)");
  merge->excludes(data);
  return [args] {
    if (!args->merge.empty()) {
      if (!args->model.empty() || !args->shard.empty() || args->limit >= 0 || args->routing.capacity_factor ||
          !args->routing.routing.empty() || args->routing.group_images || !args->resize.empty())
        throw UsageError("--merge takes only result files and --format; the runs' settings are in the files");
      std::vector<EvalResult> parts;
      for (const std::string& f : args->merge) parts.push_back(read_eval_json(f));
      print_result(merge_results(parts), args->format);
      return;
    }
    if (args->data.empty()) throw UsageError("eval needs --data SPEC (fashion-mnist:test, fashion-mnist:train or a folder)");
    EvalOptions options;
    options.batch = args->batch;
    options.limit = args->limit;
    if (!args->shard.empty()) std::tie(options.shard_index, options.shard_count) = parse_shard(args->shard);
    if (args->threads > 0) omp_set_num_threads(args->threads);
    const std::string path = resolve_model_path(args->model);
    Model model = load_model(path);
    apply_resize_override(model, args->resize);
    Engine engine(model);
    if (model.config.moe) checked_routing(model.config, args->routing);
    engine.set_routing(args->routing.overrides());
    const Dataset dataset = load_dataset(args->data, args->data_dir);
    // Before any image is decoded or evaluated: a batch that cannot fit fails now, with
    // the estimate (evaluate() checks the same, for library callers).
    const int64_t group = engine.routing() ? engine.routing()->group_images : 1;
    const int64_t images = args->limit >= 0 ? std::min<int64_t>(args->limit, dataset.size()) : dataset.size();
    const int64_t batch = std::min(std::max<int64_t>(group, args->batch / group * group), (images + group - 1) / group * group);
    check_batch_memory(model.config, engine.routing(), std::max<int64_t>(batch, 1));
    if (isatty(STDERR_FILENO)) options.progress = progress_bar;
    print_result(evaluate(engine, dataset, options), args->format);
  };
}

}  // namespace vmoe::cli
