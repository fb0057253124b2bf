#include "tasks/report.hpp"

#include <cmath>

#include "core/error.hpp"
#include "io/image.hpp"
#include "tasks/foreground.hpp"
#include "spec/router.hpp"

namespace vmoe {
namespace {

// One image alone in its group, as `vmoe route` routes it, so every number on the page
// is the one `vmoe route --json` prints for the same image, factor and routing.
ReportRun run_setting(Engine& engine, const float* pixels, double factor, bool bpr, const ReportRequest& request) {
  RoutingOverrides o;
  o.capacity_factor = factor;
  o.batch_priority = bpr;
  o.priority = request.priority;
  o.overflow = request.overflow;
  o.group_images = 1;
  ReportRun run;
  run.routed.capacity_factor = factor;
  run.routed.batch_priority = bpr;
  try {
    engine.set_routing(o);
    run.routed.capacity_factor = engine.routing()->capacity_factor;
    run.routed.logits.resize(engine.config().num_classes);
    run.routed.trace.detail = true;
    engine.forward(run.routed.logits.data(), pixels, 1, &run.routed.trace);
    run.top = top_classes(run.routed.logits.data(), engine.config(), request.top_classes);
  } catch (const Error& e) {  // e.g. a factor too small for "round" capacity rounding
    run.routed.logits.clear();
    run.routed.trace.layers.clear();
    run.routed.error = e.what();
  }
  return run;
}

}  // namespace

Report build_report(Engine& engine, const std::string& model_path, const std::vector<std::string>& image_paths,
                    const ReportRequest& request) {
  const ModelConfig& c = engine.config();
  if (!c.moe || c.moe->layers.empty()) fail("{}: the model has no MoE layer, there is no routing to show", model_path);
  for (double f : request.capacity_factors)
    if (!(f > 0) || !std::isfinite(f)) fail("capacity factor {} is not a positive number", f);

  Report r;
  r.model = model_path;
  r.config = c;
  r.grid_h = c.grid_h();
  r.grid_w = c.grid_w();
  r.cls = c.num_tokens() > c.num_patches();
  const Router& router = *c.moe->router;
  if (!router.drops()) r.factors = {inference_routing(*c.moe).capacity_factor};
  else if (!request.capacity_factors.empty()) r.factors = request.capacity_factors;
  else r.factors = default_strip_factors();
  if (!router.top_k_options()) r.routings_bpr = {c.moe->batch_priority};
  else if (!request.routings.empty()) r.routings_bpr = request.routings;
  else r.routings_bpr = {true, false};

  const size_t image_size = static_cast<size_t>(c.image.height) * c.image.width * c.image.channels;
  for (const std::string& path : image_paths) {
    ReportImage im;
    im.path = path;
    im.pixels.resize(image_size);
    try {
      load_image(im.pixels.data(), path, c.image);
    } catch (const Error& e) {
      r.failures.push_back({path, e.what()});
      continue;
    }
    im.foreground = foreground_patches(im.pixels.data(), c);
    for (double f : r.factors)
      for (bool bpr : r.routings_bpr) im.runs.push_back(run_setting(engine, im.pixels.data(), f, bpr, request));
    r.images.push_back(std::move(im));
  }
  return r;
}

}  // namespace vmoe
