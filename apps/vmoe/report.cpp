// vmoe report IMAGE... [-m MODEL] [-o report.html] [--capacity-factor C[,C...]] [--routing bpr,vanilla]
//                      [--priority P] [--overflow O] [--resize R] [--top N] [--importance]
// Routes every image at every factor under every routing and writes one self-contained
// HTML page (docs/ROUTE.md, "vmoe report"). Images that cannot be used are left out,
// one line each on stderr, and the exit code is then 1 (the page still covers the rest).
#include <algorithm>
#include <filesystem>

#include <fmt/core.h>

#include "commands.hpp"
#include "core/error.hpp"
#include "io/input_file.hpp"
#include "io/model_file.hpp"
#include "tasks/report.hpp"
#include "viz/report_html.hpp"

namespace vmoe::cli {

namespace {

struct ReportArgs {
  std::vector<std::string> images;
  std::string model;
  std::string output = "report.html";
  std::string capacity_factors;
  std::string routings;
  std::string priority, overflow;
  std::string resize;
  int top = 5;
  bool importance = false;
};

// "bpr", "vanilla", "bpr,vanilla" or "vanilla,bpr": the columns, in that order.
std::vector<bool> parse_routings(const std::string& list) {
  std::vector<bool> out;
  size_t begin = 0;
  while (true) {
    const size_t end = list.find(',', begin);
    const std::string item = list.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    if (item != "bpr" && item != "vanilla")
      throw UsageError(fmt::format("--routing {}: \"{}\" is not bpr or vanilla", list, item));
    const bool bpr = item == "bpr";
    if (std::find(out.begin(), out.end(), bpr) != out.end())
      throw UsageError(fmt::format("--routing {}: {} is given twice", list, item));
    out.push_back(bpr);
    if (end == std::string::npos) return out;
    begin = end + 1;
  }
}

// The page is written after the work: check its path first (not a directory, FIFO or
// device; its directory exists) so that a bad -o costs nothing.
void check_report_path(const std::string& path) {
  namespace fs = std::filesystem;
  check_output_path(path, "report");
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !fs::is_directory(parent, ec))
    fail("{}: cannot write the report: {} is not a directory", path, parent.string());
}

}  // namespace

Run add_report(CLI::App& root) {
  auto args = std::make_shared<ReportArgs>();
  CLI::App* app = root.add_subcommand("report", "one self-contained HTML page of the routing of images (docs/ROUTE.md)");
  app->add_option("images", args->images, "image files (any format OpenCV reads)")->required();
  add_model_option(*app, args->model);
  app->add_option("-o,--output", args->output, "the HTML file to write")->capture_default_str();
  app->add_option("--capacity-factor", args->capacity_factors,
                  "comma list of capacity factors, the positions of the page's slider (default 2,1,0.5,0.25,0.1)");
  app->add_option("--routing", args->routings, "routing orders side by side: bpr, vanilla or bpr,vanilla (default)");
  add_priority_options(*app, args->priority, args->overflow);
  add_resize_option(*app, args->resize);
  app->add_option("--top", args->top, "how many classes to show per run")->check(kPositive);
  app->add_flag("--importance", args->importance, "patch importance (not available yet: issue 22)");
  return [args] {
    if (args->importance)
      throw UsageError("--importance: patch importance is not available yet (issue 22); run without it");
    ReportRequest request;
    if (!args->capacity_factors.empty()) {
      try {
        request.capacity_factors = parse_capacity_factors(args->capacity_factors);
      } catch (const Error& e) {
        throw UsageError(fmt::format("--capacity-factor: {}", e.what()));
      }
    }
    if (!args->routings.empty()) request.routings = parse_routings(args->routings);
    if (!args->priority.empty()) request.priority = parse_priority(args->priority);
    if (!args->overflow.empty()) request.overflow = parse_overflow(args->overflow);
    request.top_classes = args->top;

    const std::string path = resolve_model_path(args->model);
    Model model = load_model(path);
    apply_resize_override(model, args->resize);
    const ModelConfig& c = model.config;
    if (!c.moe || c.moe->layers.empty())
      throw UsageError(fmt::format("{}: the model has no MoE layer, there is no routing to show", path));
    RoutingFlags flags;  // every factor checked against the model: a mismatch is bad usage
    flags.priority = args->priority, flags.overflow = args->overflow;
    checked_routing(c, flags);
    for (double f : request.capacity_factors) {
      flags.capacity_factor = f;
      checked_routing(c, flags);
    }
    check_report_path(args->output);

    Engine engine(model);
    const Report report = build_report(engine, path, args->images, request);
    for (const ReportFailure& f : report.failures)
      fmt::print(stderr, "vmoe: error: {} (left out of the report)\n", printable(f.error, 4 * kMaxEchoBytes));
    if (report.images.empty()) throw ExitStatus{1};  // each image has had its line
    viz::write_report_html(report, args->output);
    std::error_code ec;
    const auto bytes = std::filesystem::file_size(args->output, ec);
    fmt::print("wrote {}: {} image(s), {} capacity factor(s) x {} routing(s), {} MoE layer(s), {:.0f} KB\n", args->output,
               report.images.size(), report.factors.size(), report.routings_bpr.size(), c.moe->layers.size(),
               ec ? 0.0 : bytes / 1024.0);
    if (!report.failures.empty()) throw ExitStatus{1};
  };
}

}  // namespace vmoe::cli
