#include "tasks/route.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "core/error.hpp"
#include "io/image.hpp"
#include "moe/capacity.hpp"
#include "spec/router.hpp"
#include "tasks/foreground.hpp"

namespace vmoe {
namespace {

std::string moe_blocks(const ModelConfig& c) {
  std::string s;
  for (int l : c.moe->layers) s += (s.empty() ? "" : ", ") + std::to_string(l);
  return s;
}

RoutedRun run_once(Engine& engine, const float* pixels, std::optional<double> factor, std::optional<bool> bpr,
                   const RouteRequest& request, bool detail) {
  RoutingOverrides o;
  o.capacity_factor = factor;
  o.batch_priority = bpr;
  o.priority = request.priority;
  o.overflow = request.overflow;
  o.group_images = 1;  // one image: every group is this image alone
  engine.set_routing(o);
  RoutedRun run;
  run.capacity_factor = engine.routing()->capacity_factor;
  run.batch_priority = engine.routing()->batch_priority;
  run.logits.resize(engine.config().num_classes);
  run.trace.detail = detail;
  engine.forward(run.logits.data(), pixels, 1, &run.trace);
  if (request.layer)
    std::erase_if(run.trace.layers, [&](const MoeLayerTrace& t) { return t.layer != *request.layer; });
  return run;
}

}  // namespace

const std::vector<double>& default_strip_factors() {
  static const std::vector<double> factors = {2.0, 1.0, 0.5, 0.25, 0.1};
  return factors;
}

std::vector<double> parse_capacity_factors(const std::string& list) {
  std::vector<double> out;
  size_t begin = 0;
  while (true) {
    const size_t end = list.find(',', begin);
    const std::string item = list.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    const char* s = item.c_str();
    char* stop = nullptr;
    errno = 0;
    const double v = item.empty() ? 0.0 : std::strtod(s, &stop);
    if (item.empty() || stop != s + item.size() || errno == ERANGE || !std::isfinite(v))
      fail("capacity factor list \"{}\": \"{}\" is not a number", list, item);
    if (!(v > 0)) fail("capacity factor list \"{}\": {} is not positive", list, item);
    out.push_back(v);
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return out;
}

RouteResult route_image(Engine& engine, const std::string& model_path, const std::string& image_path,
                        const RouteRequest& request) {
  const ModelConfig& c = engine.config();
  if (!c.moe || c.moe->layers.empty()) fail("{}: the model has no MoE layer, there is no routing to show", model_path);
  if (request.layer && !c.is_moe_layer(*request.layer))
    fail("layer {} is not an MoE block of {} (its MoE blocks are {})", *request.layer, model_path, moe_blocks(c));
  for (double f : request.capacity_factors)
    if (!(f > 0) || !std::isfinite(f)) fail("capacity factor {} is not a positive number", f);

  RouteResult r;
  r.image = image_path;
  r.model = model_path;
  r.config = c;
  r.grid_h = c.grid_h();
  r.grid_w = c.grid_w();
  r.cls = c.num_tokens() > c.num_patches();
  r.pixels.resize(static_cast<size_t>(c.image.height) * c.image.width * c.image.channels);
  load_image(r.pixels.data(), image_path, c.image);
  r.foreground = foreground_patches(r.pixels.data(), c);

  if (request.importance || (request.priority && *request.priority == Priority::oracle)) {
    r.importance = patch_importance(engine, r.pixels.data(), 1);
    std::vector<std::vector<float>> scores;
    for (size_t j = 0; j < r.importance->blocks.size(); ++j) scores.push_back(r.importance->block_scores(static_cast<int>(j)));
    engine.set_oracle_priority(std::move(scores));  // used only under priority oracle
  }
  std::optional<double> main_factor;
  if (!request.capacity_factors.empty()) main_factor = request.capacity_factors.front();
  r.main = run_once(engine, r.pixels.data(), main_factor, request.batch_priority, request, true);
  r.top = top_classes(r.main.logits.data(), c, request.top_classes);

  if (request.strip && c.moe->router->draws(RouteView::capacity_strip)) {
    r.strip_factors = request.capacity_factors.size() > 1 ? request.capacity_factors : default_strip_factors();
    // Rows bpr and vanilla where batch priority applies.
    r.strip_rows_bpr = c.moe->router->top_k_options() ? std::vector<bool>{true, false} : std::vector<bool>{true};
    for (bool bpr : r.strip_rows_bpr)
      for (double f : r.strip_factors) {
        try {
          r.strip.push_back(run_once(engine, r.pixels.data(), f, bpr, request, false));
        } catch (const Error& e) {  // e.g. a factor too small for "round" capacity rounding
          RoutedRun failed;
          failed.capacity_factor = f;
          failed.batch_priority = bpr;
          failed.error = e.what();
          r.strip.push_back(std::move(failed));
        }
      }
  }
  // Leave the engine as the main run had it.
  RoutingOverrides o;
  o.capacity_factor = main_factor;
  o.batch_priority = request.batch_priority;
  o.priority = request.priority;
  o.overflow = request.overflow;
  o.group_images = 1;
  engine.set_routing(o);
  return r;
}

std::vector<float> RouteResult::importance_at(int block) const {
  if (!importance) return {};
  for (size_t j = 0; j < importance->blocks.size(); ++j)
    if (importance->blocks[j] == block) return importance->block_scores(static_cast<int>(j));
  return {};
}

// The one place drops are counted (route, eval, classify's capacity read it).
LayerCounts count_layer(const MoeLayerTrace& t) {
  LayerCounts n;
  n.tokens = static_cast<int>(t.num_tokens());
  if (!t.router->drops()) return n;  // capacity 0, as in `vmoe classify`
  n.capacity = t.group_capacity.empty() ? 0 : t.group_capacity.front();
  for (int i = 0; i < n.tokens; ++i) {
    n.dropped_tokens += t.times_taken[i] == 0;
    n.expert_tokens += t.times_taken[i];
  }
  if (t.k > 0) {  // per-token choices (top-k)
    n.choices = n.tokens * t.k;
    for (int i = 0; i < n.tokens; ++i) {
      int kept = 0;
      for (int q = 0; q < t.k; ++q) kept += t.choice_kept[static_cast<size_t>(i) * t.k + q] != 0;
      n.dropped_choices += t.k - kept;
      n.partial_tokens += kept > 0 && kept < t.k;
    }
  }
  n.effective_factor = n.tokens ? effective_capacity_factor(n.capacity, t.num_experts, t.demand(n.tokens)) : 0.0;
  return n;
}

}  // namespace vmoe
