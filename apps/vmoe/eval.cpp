// vmoe eval [-m MODEL] --data SPEC [--data-dir DIR] [--capacity-factor C] [--routing R] [--priority P] [--importance] [--batch B]
//           [--group-images G] [--limit N] [--shard I/N] [--threads T] [--format text|csv|json]
//           [--routing-stats DIR]
// vmoe eval --merge A.json B.json ... [STATS_DIR_OR_JSON ... --routing-stats DIR] [--format text|csv|json]
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>

#include <fmt/format.h>

#include "commands.hpp"
#include "core/error.hpp"
#include "io/dataset.hpp"
#include "io/input_file.hpp"
#include "io/model_file.hpp"
#include "tasks/eval_report.hpp"
#include "tasks/evaluate.hpp"
#include "tasks/routing_stats.hpp"
#include "viz/stats_pictures.hpp"

namespace vmoe::cli {

namespace {
struct EvalArgs {
  std::string model, data, data_dir, format = "text", shard, routing_stats;
  std::vector<std::string> merge;
  int batch = 256;
  int threads = 0;
  int64_t limit = -1;
  bool importance = false;
  RoutingFlags routing;
  std::string resize;
  std::string precision = "f32";
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

// The statistics' text lines follow the text summary; csv and json keep their shapes
// (the numbers are in DIR/routing_stats.json).
void print_result(const EvalResult& r, const std::string& format, const RoutingStats* stats = nullptr) {
  if (format == "json") fmt::print("{}\n", eval_to_json(r).dump());
  else if (format == "csv") fmt::print("{}\n{}\n", eval_csv_header(), eval_csv_row(r));
  else fmt::print("{}{}", eval_text(r), stats ? routing_stats_text(*stats) : "");
}

// routing_stats.json, the CSVs and the pictures into dir.
void write_stats(const RoutingStats& stats, const std::string& dir) {
  viz::prepare_output_dir(dir);
  write_routing_stats(stats, dir);
  viz::write_pictures(viz::routing_stats_pictures(stats), dir);
}

// --merge: eval result files, routing statistics (routing_stats.json or its directory) or both.
void merge_files(const EvalArgs& a) {
  std::vector<EvalResult> parts;
  std::vector<RoutingStats> stats;
  for (const std::string& f : a.merge) {
    std::error_code ec;
    if (std::filesystem::is_directory(f, ec)) {
      stats.push_back(read_routing_stats(f));
      continue;
    }
    const std::string text = read_input_file(f, "result file", uint64_t{1} << 32);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON ({})", f, e.what());
    }
    if (is_routing_stats_json(j)) stats.push_back(routing_stats_from_json(j, f));
    else parts.push_back(eval_from_json(j, f));
  }
  if (!stats.empty() && a.routing_stats.empty())
    throw UsageError("--merge of routing statistics needs --routing-stats DIR for the merged files");
  if (stats.empty() && !a.routing_stats.empty())
    throw UsageError("--merge --routing-stats DIR needs the shards' routing_stats.json files (or their directories)");
  std::optional<RoutingStats> merged;
  if (!stats.empty()) {
    merged = stats.front();
    for (size_t i = 1; i < stats.size(); ++i) merged->merge(stats[i]);
    if (merged->shard_count != 1) {
      std::vector<std::string> missing;
      for (int s = 0; s < merged->shard_count; ++s)
        if (!std::binary_search(merged->shards.begin(), merged->shards.end(), s))
          missing.push_back(fmt::format("{}/{}", s, merged->shard_count));
      fail("cannot merge routing statistics: shard{} {} missing", missing.size() > 1 ? "s" : "", fmt::join(missing, ", "));
    }
    write_stats(*merged, a.routing_stats);
  }
  if (!parts.empty()) print_result(merge_results(parts), a.format, merged ? &*merged : nullptr);
  else fmt::print("{}", routing_stats_text(*merged));
}
}  // namespace

Run add_eval(CLI::App& root) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* app = root.add_subcommand("eval", "accuracy and MoE drops of a model on a dataset (sharded runs merge exactly)");
  add_model_option(*app, args->model);
  auto* data = app->add_option("--data", args->data,
                               "fashion-mnist:test, fashion-mnist:train, or a folder with one sub-folder of images per class");
  app->add_option("--data-dir", args->data_dir, "where the Fashion-MNIST IDX files are (default /usr/share/datasets/fashion-mnist)");
  add_routing_options(*app, args->routing, true, /*with_oracle=*/true);
  add_resize_option(*app, args->resize);
  add_precision_option(*app, args->precision);
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
  app->add_flag("--importance", args->importance,
                "patch importance: share of it kept by the routing and by the oracle order, scorers' rank correlation "
                "with it (docs/EVAL.md; slow: use --limit)");
  app->add_option("--routing-stats", args->routing_stats,
                  "also write dataset-level routing statistics (JSON, CSV, pictures) into DIR; with --merge: the merged ones");
  return [args] {
    if (!args->merge.empty()) {
      if (!args->model.empty() || !args->shard.empty() || args->limit >= 0 || args->routing.capacity_factor ||
          !args->routing.routing.empty() || args->routing.group_images || !args->resize.empty() || args->importance ||
          args->precision != "f32")
        throw UsageError("--merge takes only result files and --format; the runs' settings are in the files");
      merge_files(*args);
      return;
    }
    if (args->data.empty()) throw UsageError("eval needs --data SPEC (fashion-mnist:test, fashion-mnist:train or a folder)");
    EvalOptions options;
    options.batch = args->batch;
    options.limit = args->limit;
    options.importance = args->importance;
    if (!args->shard.empty()) std::tie(options.shard_index, options.shard_count) = parse_shard(args->shard);
    if (args->threads > 0) omp_set_num_threads(args->threads);
    const std::string path = resolve_model_path(args->model);
    Model model = load_model(path);
    apply_resize_override(model, args->resize);
    Engine engine(model, nn::parse_precision(args->precision));
    if (model.config.moe) checked_routing(model.config, args->routing);
    engine.set_routing(args->routing.overrides());
    // bf16 runs every batch in f32 too, for the agreement figures (docs/EVAL.md).
    std::optional<Engine> reference;
    if (engine.precision() != nn::Precision::f32) {
      reference.emplace(model);
      reference->set_routing(args->routing.overrides());
      options.reference = &*reference;
    }
    const Dataset dataset = load_dataset(args->data, args->data_dir);
    // Before any image is decoded or evaluated: a batch that cannot fit fails now, with
    // the estimate (evaluate() checks the same, for library callers).
    const int64_t group = engine.routing() ? engine.routing()->group_images : 1;
    const int64_t images = args->limit >= 0 ? std::min<int64_t>(args->limit, dataset.size()) : dataset.size();
    const int64_t batch = std::min(std::max<int64_t>(group, args->batch / group * group), (images + group - 1) / group * group);
    check_batch_memory(model.config, engine.routing(), std::max<int64_t>(batch, 1));
    if (isatty(STDERR_FILENO)) options.progress = progress_bar;
    if (args->routing_stats.empty()) {
      print_result(evaluate(engine, dataset, options), args->format);
      return;
    }
    // Fail on the directory and a dense model before the evaluation, not after it.
    viz::prepare_output_dir(args->routing_stats);
    RoutingStats stats = make_routing_stats(model.config, dataset.class_names);
    // Top-k needs only the cheap trace (choices, kept flags, their gates).
    options.detail_trace = stats.kind != StatsKind::top_k;
    options.on_trace = [&stats](const RoutingTrace& trace, const std::vector<int>& labels) {
      accumulate_routing_stats(stats, trace, labels);
    };
    const EvalResult result = evaluate(engine, dataset, options);
    set_identity(stats, result);
    write_stats(stats, args->routing_stats);
    print_result(result, args->format, &stats);
  };
}

}  // namespace vmoe::cli
