// vmoe classify IMAGE... [-m MODEL] [--top N] [--capacity-factor C] [--routing R] [--group-images G] [--json]
#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "io/model_file.hpp"
#include "tasks/classify.hpp"

namespace vmoe::cli {

namespace {
struct ClassifyArgs {
  std::vector<std::string> images;
  std::string model;
  int top = 5;
  bool json = false;
  RoutingFlags routing;
  std::string resize;
  std::string precision = "f32";
};

void print_text(const std::string& model, const std::vector<Prediction>& predictions) {
  for (const Prediction& p : predictions) {
    fmt::print("{}\n", p.image);
    for (size_t i = 0; i < p.top.size(); ++i)
      fmt::print("  {}. {:<24} {:6.2f}%  (class {})\n", i + 1, p.top[i].label, 100.0 * p.top[i].prob, p.top[i].index);
    for (const MoeLayerSummary& m : p.moe)
      fmt::print("  moe block {}: capacity {}, {:.1f}% of tokens dropped ({:.1f}% of choices)\n", m.layer, m.capacity,
                 100.0 * m.dropped, 100.0 * m.choices_dropped);
  }
}

void print_json(const std::string& model, const std::vector<Prediction>& predictions) {
  nlohmann::json results = nlohmann::json::array();
  for (const Prediction& p : predictions) {
    nlohmann::json top = nlohmann::json::array(), moe = nlohmann::json::array();
    for (const ClassScore& s : p.top) top.push_back({{"label", s.label}, {"index", s.index}, {"prob", s.prob}});
    for (const MoeLayerSummary& m : p.moe)
      moe.push_back({{"layer", m.layer}, {"capacity", m.capacity}, {"dropped", m.dropped},
                     {"choices_dropped", m.choices_dropped}});
    results.push_back({{"image", p.image}, {"top", top}, {"logits", p.logits}, {"moe", moe}});
  }
  fmt::print("{}\n", nlohmann::json{{"model", model}, {"results", results}}.dump());
}
}  // namespace

Run add_classify(CLI::App& root) {
  auto args = std::make_shared<ClassifyArgs>();
  CLI::App* app = root.add_subcommand("classify", "classify images: top classes, probabilities, MoE drops");
  app->add_option("images", args->images, "image files (any format OpenCV reads)")->required();
  add_model_option(*app, args->model);
  app->add_option("--top", args->top, "how many classes to show")->check(kPositive);
  add_routing_options(*app, args->routing);
  add_resize_option(*app, args->resize);
  add_precision_option(*app, args->precision);
  app->add_flag("--json", args->json, "print JSON (DESIGN §5) instead of text");
  return [args] {
    const std::string path = resolve_model_path(args->model);
    Model model = load_model(path);
    apply_resize_override(model, args->resize);
    Engine engine(model, nn::parse_precision(args->precision));
    if (model.config.moe) checked_routing(model.config, args->routing);
    engine.set_routing(args->routing.overrides());
    std::vector<Prediction> predictions = classify_files(engine, args->images, args->top);
    if (args->json) print_json(path, predictions);
    else print_text(path, predictions);
  };
}

}  // namespace vmoe::cli
