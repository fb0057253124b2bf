// vmoe route IMAGE [-m MODEL] [-o DIR] [--capacity-factor C[,C...]] [--routing bpr|vanilla]
//                  [--priority P|oracle] [--importance] [--layer L|all] [--json] [--no-pictures]
// Routes one image, writes the routing pictures (docs/ROUTE.md) into DIR and prints a
// summary, or with --json the trace of DESIGN §5.
#include <charconv>
#include <filesystem>
#include <optional>

#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "core/error.hpp"
#include "io/model_file.hpp"
#include "spec/router.hpp"
#include "tasks/foreground.hpp"
#include "tasks/route.hpp"
#include "viz/pictures.hpp"

namespace vmoe::cli {

namespace {

struct RouteArgs {
  std::string image;
  std::string model;
  std::string out_dir = "route-out";
  std::string capacity_factors;
  std::string routing;
  std::string priority, overflow;
  std::string layer = "all";
  std::string resize;
  std::string precision = "f32";
  bool json = false;
  bool no_pictures = false;
  bool importance = false;
};

using nlohmann::json;

double share(int64_t part, int64_t whole) { return whole > 0 ? static_cast<double>(part) / whole : 1.0; }

// Per-layer foreground keys (issue 11): how many foreground patches, and the share kept
// with all choices / with at least one (1 when the image has no foreground patch).
void add_foreground(json& j, const MoeLayerTrace& t, const RouteResult& r) {
  const ForegroundKept fg = count_foreground_kept(t, r.foreground, r.grid_h * r.grid_w, r.config.moe->k);
  j["foreground_tokens"] = fg.foreground;
  j["foreground_kept_all"] = share(fg.kept_all, fg.foreground);
  j["foreground_kept_any"] = share(fg.kept_any, fg.foreground);
}

json layer_json(const MoeLayerTrace& t, const RouteResult& r) {
  const LayerCounts n = count_layer(t);
  const int N = static_cast<int>(t.num_tokens()), E = t.num_experts;
  json j = {{"layer", t.layer},
            {"router", t.router->name()},
            {"num_experts", E},
            {"k", t.router->listed_experts(t)},
            {"capacity", n.capacity},
            {"capacity_factor", t.capacity_factor},
            {"effective_capacity_factor", n.effective_factor},
            {"routing", t.router->routing(t.batch_priority)},  // the scorer is "priority"
            {"slots_per_expert", t.slots_per_expert},
            {"tokens", N},
            {"dropped", N ? static_cast<double>(n.dropped_tokens) / N : 0.0},
            {"dropped_tokens", n.dropped_tokens},
            {"dropped_choices", n.dropped_choices}};
  if (t.router->top_k_options()) {
    j["priority"] = to_string(t.priority);  // BPR's scorer (used when routing is bpr)
    j["gating"] = to_string(t.gating);
    j["overflow"] = to_string(t.overflow);
    if (t.dropless) j["capacity_factor"] = nullptr;
  }
  json gates = json::array(), choices = json::array(), dispatch = json::array(), combine = json::array();
  if (!t.router->drops()) {  // Soft-MoE: the slot weights
    const int S = E * t.slots_per_expert;
    for (int i = 0; i < N; ++i) {
      dispatch.push_back(std::vector<float>(t.dispatch.begin() + static_cast<ptrdiff_t>(i) * S,
                                            t.dispatch.begin() + static_cast<ptrdiff_t>(i + 1) * S));
      combine.push_back(std::vector<float>(t.combine.begin() + static_cast<ptrdiff_t>(i) * S,
                                           t.combine.begin() + static_cast<ptrdiff_t>(i + 1) * S));
    }
  } else {
    for (int i = 0; i < N; ++i)
      gates.push_back(std::vector<float>(t.gates.begin() + static_cast<ptrdiff_t>(i) * E,
                                         t.gates.begin() + static_cast<ptrdiff_t>(i + 1) * E));
    for (int i = 0; i < N; ++i) {
      json row = json::array();
      if (t.k > 0) {  // per-token choices
        for (int q = 0; q < t.k; ++q) {
          const size_t c = static_cast<size_t>(i) * t.k + q;
          row.push_back({{"expert", t.choice_expert[c]}, {"gate", t.choice_gate[c]}, {"kept", t.choice_kept[c] != 0}});
        }
      } else {  // experts-choice: every expert, kept = it took the token
        for (int e = 0; e < E; ++e) {
          const size_t c = static_cast<size_t>(i) * E + e;
          row.push_back({{"expert", e}, {"gate", t.gates[c]}, {"kept", t.expert_took[c] != 0}});
        }
      }
      choices.push_back(std::move(row));
    }
    j["times_taken"] = t.times_taken;
    if (t.k > 0) {
      j["priority_rank"] = t.priority_rank;
      j["priority_score"] = t.priority_score;
    }
  }
  j["gates"] = std::move(gates);
  j["choices"] = std::move(choices);
  j["dispatch"] = std::move(dispatch);
  j["combine"] = std::move(combine);
  add_foreground(j, t, r);
  // Added by issue 22: patch importance per token (null without --importance).
  const std::vector<float> importance = r.importance_at(t.layer);
  j["importance"] = importance.empty() ? json(nullptr) : json(importance);
  if (!importance.empty()) {
    double positive = 0, kept = 0;
    for (int i = 0; i < N; ++i)
      if (importance[i] > 0) positive += importance[i], kept += t.times_taken[i] > 0 ? importance[i] : 0.0f;
    j["importance_kept"] = positive > 0 ? json(kept / positive) : json(nullptr);
  }
  return j;
}

json route_json(const RouteResult& r, const std::vector<std::string>& files) {
  json layers = json::array();
  for (const MoeLayerTrace& t : r.main.trace.layers) layers.push_back(layer_json(t, r));
  json top = json::array();
  for (const ClassScore& s : r.top) top.push_back({{"label", s.label}, {"index", s.index}, {"prob", s.prob}});
  json strip = json::array();
  for (const RoutedRun& run : r.strip) {
    json cell = {{"capacity_factor", run.capacity_factor},
                 {"routing", r.config.moe->router->routing(run.batch_priority)}};
    if (!run.error.empty()) {
      cell["error"] = run.error;
    } else {
      json ls = json::array();
      for (const MoeLayerTrace& t : run.trace.layers) {
        const LayerCounts n = count_layer(t);
        ls.push_back({{"layer", t.layer},
                      {"capacity", n.capacity},
                      {"effective_capacity_factor", n.effective_factor},
                      {"dropped_tokens", n.dropped_tokens},
                      {"dropped_choices", n.dropped_choices},
                      {"times_taken", t.times_taken}});
        add_foreground(ls.back(), t, r);
      }
      cell["layers"] = std::move(ls);
    }
    strip.push_back(std::move(cell));
  }
  const MoeConfig& moe = *r.config.moe;
  // Per token (CLS first when there is one, never foreground), as times_taken is indexed.
  std::vector<bool> foreground(r.cls ? 1 : 0, false);
  for (uint8_t f : r.foreground) foreground.push_back(f != 0);
  return json{{"image", r.image},
              {"model", r.model},
              {"grid", {r.grid_h, r.grid_w}},
              {"cls", r.cls},
              {"router", moe.router->name()},
              {"capacity_factor", r.main.capacity_factor},
              {"routing", moe.router->routing(r.main.batch_priority)},
              {"priority", r.main.trace.layers.empty() || !moe.router->top_k_options()
                               ? nlohmann::json(nullptr) : nlohmann::json(to_string(r.main.trace.layers.front().priority))},
              {"top", top},
              {"logits", r.main.logits},
              {"layers", layers},
              {"strip", strip},
              {"files", files},
              {"foreground", foreground},
              {"importance_class", r.importance ? json(r.importance->predicted.at(0)) : json(nullptr)}};
}

void print_text(const RouteResult& r, const std::vector<std::string>& files, const std::string& dir) {
  fmt::print("{}  (model {}, {}x{} patches{})\n", r.image, r.model, r.grid_h, r.grid_w, r.cls ? " + CLS" : "");
  if (!r.top.empty())
    fmt::print("  top class: {} ({:.1f}%)\n", r.top.front().label, 100.0 * r.top.front().prob);
  int foreground = 0;
  for (uint8_t f : r.foreground) foreground += f;
  fmt::print("  foreground: {} of {} patches (some pixel above 10% of the value range)\n", foreground, r.foreground.size());
  for (const MoeLayerTrace& t : r.main.trace.layers) {
    const LayerCounts n = count_layer(t);
    const ForegroundKept fg = count_foreground_kept(t, r.foreground, r.grid_h * r.grid_w, r.config.moe->k);
    fmt::print("  layer {}: {}\n", t.layer,
               t.router->summary(t, n.capacity, n.effective_factor, n.dropped_tokens, n.tokens, n.dropped_choices, n.choices));
    if (t.router->drops())
      fmt::print("    foreground kept: {}/{} with all choices, {}/{} with at least one\n", fg.kept_all, fg.foreground,
                 fg.kept_any, fg.foreground);
  }
  if (files.empty()) return;
  fmt::print("wrote {} pictures to {}:\n", files.size(), dir);
  for (const std::string& f : files) fmt::print("  {}\n", f);
}

std::optional<int> parse_layer(const std::string& text) {
  if (text == "all") return std::nullopt;
  int v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || p != end || v < 0)
    throw UsageError(fmt::format("--layer {}: expected an encoder block index (0, 1, ...) or \"all\"", text));
  return v;
}

}  // namespace

Run add_route(CLI::App& root) {
  auto args = std::make_shared<RouteArgs>();
  CLI::App* app = root.add_subcommand("route", "route one image and draw what the routers did (docs/ROUTE.md)");
  app->add_option("image", args->image, "image file (any format OpenCV reads)")->required();
  add_model_option(*app, args->model);
  app->add_option("-o,--out-dir", args->out_dir, "directory for the pictures (created if missing)")
      ->capture_default_str();
  app->add_option("--capacity-factor", args->capacity_factors,
                  "capacity factor, or a comma list: the first is used for the per-layer pictures and the JSON, "
                  "the list for the capacity strip (default strip: 2,1,0.5,0.25,0.1)");
  app->add_option("--routing", args->routing, "bpr (batch priority) or vanilla (token order)")
      ->check(CLI::IsMember({"bpr", "vanilla"}));
  add_priority_options(*app, args->priority, args->overflow, /*with_oracle=*/true);
  add_resize_option(*app, args->resize);
  add_precision_option(*app, args->precision);
  app->add_flag("--importance", args->importance,
                "also compute patch importance: an importance heatmap beside each priority heatmap, \"importance\" "
                "per layer in --json (docs/ROUTING.md)");
  app->add_option("--layer", args->layer, "MoE encoder block to show, or all")->capture_default_str();
  app->add_flag("--json", args->json, "print the routing trace as JSON (DESIGN §5)");
  app->add_flag("--no-pictures", args->no_pictures, "write no pictures (files: [])");
  return [args] {
    RouteRequest request;
    if (!args->capacity_factors.empty()) {
      try {
        request.capacity_factors = parse_capacity_factors(args->capacity_factors);
      } catch (const Error& e) {
        throw UsageError(fmt::format("--capacity-factor: {}", e.what()));
      }
    }
    if (args->routing == "bpr") request.batch_priority = true;
    else if (args->routing == "vanilla") request.batch_priority = false;
    request.layer = parse_layer(args->layer);
    request.strip = !args->no_pictures;
    request.importance = args->importance;
    if (!args->priority.empty()) request.priority = parse_priority(args->priority);
    if (!args->overflow.empty()) request.overflow = parse_overflow(args->overflow);

    const std::string path = resolve_model_path(args->model);
    Model model = load_model(path);
    apply_resize_override(model, args->resize);
    const ModelConfig& c = model.config;
    if (!c.moe || c.moe->layers.empty())
      throw UsageError(fmt::format("{}: the model has no MoE layer, there is no routing to show", path));
    if (request.layer && !c.is_moe_layer(*request.layer)) {
      std::string blocks;
      for (int l : c.moe->layers) blocks += (blocks.empty() ? "" : ", ") + std::to_string(l);
      throw UsageError(fmt::format("--layer {}: not an MoE block of {} (its MoE blocks are {}; {} blocks in all)",
                                   *request.layer, path, blocks, c.num_layers));
    }
    if ((args->importance || args->priority == "oracle") && !c.moe->router->drops())
      throw UsageError(fmt::format("--importance / --priority oracle: the {} router of {} drops nothing, so there is "
                                   "no kept importance to show (docs/ROUTING.md)", c.moe->router->name(), path));
    RoutingFlags flags;  // the main run's flags, checked against the model: a mismatch is bad usage
    flags.priority = args->priority, flags.overflow = args->overflow;
    if (!request.capacity_factors.empty()) flags.capacity_factor = request.capacity_factors.front();
    checked_routing(c, flags);
    // Fail on an unusable output directory before the work; if this run created it and
    // then fails, take it away again.
    namespace fs = std::filesystem;
    std::error_code ec;
    const bool created = !args->no_pictures && !fs::exists(args->out_dir, ec);
    std::vector<std::string> files;
    std::optional<RouteResult> result;
    try {
      if (!args->no_pictures) viz::prepare_output_dir(args->out_dir);
      Engine engine(model, nn::parse_precision(args->precision));
      result = route_image(engine, path, args->image, request);
      if (!args->no_pictures) files = viz::write_pictures(viz::route_pictures(*result), args->out_dir);
    } catch (...) {
      if (created && fs::is_directory(args->out_dir, ec) && fs::is_empty(args->out_dir, ec)) fs::remove(args->out_dir, ec);
      throw;
    }
    if (args->json) fmt::print("{}\n", route_json(*result, files).dump());
    else print_text(*result, files, args->out_dir);
  };
}

}  // namespace vmoe::cli
