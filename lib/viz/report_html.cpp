#include "viz/report_html.hpp"

#include <cmath>
#include <string_view>
#include <vector>

#include <fmt/core.h>
#include <opencv2/imgcodecs.hpp>

#include "core/error.hpp"
#include "io/atomic_file.hpp"
#include "spec/router.hpp"
#include "viz/canvas.hpp"
#include "viz/report_page_assets.hpp"

namespace vmoe::viz {
namespace {

using nlohmann::json;

std::string_view asset(const unsigned char* bytes, size_t size_with_nul) {
  return {reinterpret_cast<const char*>(bytes), size_with_nul - 1};
}

// Numbers are rounded so that 8 images stay well under a megabyte: gates and priority
// scores to 1e-4 (the page prints 3 decimals), Soft-MoE weights to 1e-6 (a column of
// 50 dispatch weights then still sums to 1 within 5e-5).
// Dividing by the power of ten (not multiplying by its inverse) gives the double nearest
// to the decimal, which the JSON then prints in its few digits.
double round_to(double v, double scale) { return std::round(v * scale) / scale; }
json rounded(const float* v, size_t n, double scale) {
  json a = json::array();
  for (size_t i = 0; i < n; ++i) a.push_back(round_to(v[i], scale));
  return a;
}

std::string base64(const std::vector<uchar>& bytes) {
  static const char* digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const uint32_t b0 = bytes[i], b1 = i + 1 < bytes.size() ? bytes[i + 1] : 0, b2 = i + 2 < bytes.size() ? bytes[i + 2] : 0;
    const uint32_t w = b0 << 16 | b1 << 8 | b2;
    out += digits[w >> 18 & 63];
    out += digits[w >> 12 & 63];
    out += i + 1 < bytes.size() ? digits[w >> 6 & 63] : '=';
    out += i + 2 < bytes.size() ? digits[w & 63] : '=';
  }
  return out;
}

// The model input as a PNG data URL, at its own size: the page scales it up with
// nearest-neighbour (CSS image-rendering: pixelated).
std::string input_data_url(const std::vector<float>& pixels, const ImageConfig& image) {
  std::vector<uchar> png;
  if (!cv::imencode(".png", input_bgr(pixels, image, 1), png)) fail("cannot encode the report's image as PNG");
  return "data:image/png;base64," + base64(png);
}

std::string css_colour(const cv::Scalar& bgr) {
  return fmt::format("#{:02x}{:02x}{:02x}", static_cast<int>(bgr[2]), static_cast<int>(bgr[1]), static_cast<int>(bgr[0]));
}

// One MoE layer of one run. Arrays are flat and indexed by token (CLS first when there
// is one, then the patches row-major), as the rows of `vmoe route --json`:
//   top-k           expert, gate (N*k: choice q of token i at i*k+q), kept ("0"/"1" per
//                   choice), rank (N: position in the routing order, 0 first), score (N:
//                   the BPR scorer's value), demand and load (E: choices per expert,
//                   kept choices per expert)
//   experts-choice  expert, gate, kept as top-k with every expert listed (k = E), load (E)
//   Soft-MoE        dispatch, combine (N*S, S = E * slots per expert), load (E: combine
//                   weight drawn from each expert's slots, summed over tokens)
json layer_data(const MoeLayerTrace& t) {
  const LayerCounts n = count_layer(t);
  const size_t N = static_cast<size_t>(t.num_tokens()), E = static_cast<size_t>(t.num_experts);
  json j = {{"layer", t.layer},
            {"tokens", N},
            {"capacity", n.capacity},
            {"effective_capacity_factor", round_to(n.effective_factor, 1e4)},
            {"dropped_tokens", n.dropped_tokens},
            {"dropped_choices", n.dropped_choices},
            {"partial_tokens", n.partial_tokens}};
  std::vector<int> load(E, 0), demand(E, 0);
  if (!t.router->drops()) {
    const size_t S = E * t.slots_per_expert;
    std::vector<double> used(E, 0.0);
    for (size_t i = 0; i < N; ++i)
      for (size_t s = 0; s < S; ++s) used[s / t.slots_per_expert] += t.combine[i * S + s];
    j["slots"] = S;
    j["dispatch"] = rounded(t.dispatch.data(), N * S, 1e6);
    j["combine"] = rounded(t.combine.data(), N * S, 1e6);
    json l = json::array();
    for (double u : used) l.push_back(round_to(u, 1e4));
    j["load"] = std::move(l);
    return j;
  }
  std::string kept;
  json expert = json::array(), gate = json::array();
  if (t.k > 0) {
    for (size_t c = 0; c < N * t.k; ++c) {
      expert.push_back(t.choice_expert[c]);
      gate.push_back(round_to(t.choice_gate[c], 1e4));
      kept += t.choice_kept[c] ? '1' : '0';
      demand.at(t.choice_expert[c]) += 1;
      load.at(t.choice_expert[c]) += t.choice_kept[c] != 0;
    }
    j["k"] = t.k;
    j["rank"] = t.priority_rank;
    j["score"] = rounded(t.priority_score.data(), t.priority_score.size(), 1e4);
    j["demand"] = demand;
  } else {  // experts-choice: every expert per token, kept = it took the token
    for (size_t i = 0; i < N; ++i)
      for (size_t e = 0; e < E; ++e) {
        expert.push_back(e);
        gate.push_back(round_to(t.gates[i * E + e], 1e4));
        kept += t.expert_took[i * E + e] ? '1' : '0';
        load[e] += t.expert_took[i * E + e] != 0;
      }
    j["k"] = E;
  }
  j["expert"] = std::move(expert);
  j["gate"] = std::move(gate);
  j["kept"] = std::move(kept);
  j["load"] = load;
  return j;
}

json run_data(const ReportRun& run, const Router& router) {
  json j = {{"capacity_factor", run.routed.capacity_factor}, {"routing", router.routing(run.routed.batch_priority)}};
  if (!run.routed.error.empty()) {
    j["error"] = run.routed.error;
    return j;
  }
  json top = json::array();
  for (const ClassScore& s : run.top) top.push_back({{"label", s.label}, {"index", s.index}, {"prob", round_to(s.prob, 1e4)}});
  json layers = json::array();
  for (const MoeLayerTrace& t : run.routed.trace.layers) layers.push_back(layer_data(t));
  j["top"] = std::move(top);
  j["layers"] = std::move(layers);
  return j;
}

}  // namespace

// Top level: what the page needs to lay itself out, then one entry per image with its
// runs (factors x routings, row-major: run f * routings.size() + r), then the images
// that could not be used.
json report_data(const Report& r) {
  const ModelConfig& c = r.config;
  const MoeConfig& moe = *c.moe;
  const Router& router = *moe.router;
  const char* mode = !router.drops() ? "soft" : router.top_k_options() ? "top_k" : "experts_choice";
  json palette = json::array(), routings = json::array();
  for (int e = 0; e < moe.num_experts; ++e) palette.push_back(css_colour(expert_colour(e)));
  for (bool bpr : r.routings_bpr) routings.push_back(router.routing(bpr));
  json images = json::array();
  for (const ReportImage& im : r.images) {
    json runs = json::array();
    for (const ReportRun& run : im.runs) runs.push_back(run_data(run, router));
    std::vector<int> foreground(im.foreground.begin(), im.foreground.end());
    images.push_back({{"path", im.path}, {"src", input_data_url(im.pixels, c.image)}, {"foreground", foreground},
                      {"runs", std::move(runs)}});
  }
  json failures = json::array();
  for (const ReportFailure& f : r.failures) failures.push_back({{"image", f.image}, {"error", f.error}});
  // Words from the first layer that ran ("top-2 of 8"; the BPR scorer, --priority included).
  std::string phrase;
  json priority = nullptr;
  for (const ReportImage& im : r.images)
    for (const ReportRun& run : im.runs)
      if (phrase.empty() && !run.routed.trace.layers.empty()) {
        const MoeLayerTrace& t = run.routed.trace.layers.front();
        phrase = router.layer_phrase(t);
        if (router.top_k_options()) priority = to_string(t.priority);
      }
  return json{{"format", "vmoe-report"},
              {"version", 1},
              {"model", r.model},
              {"router", router.name()},
              {"router_phrase", phrase},
              {"mode", mode},
              {"priority", priority},
              {"grid", {r.grid_h, r.grid_w}},
              {"cls", r.cls},
              {"patch", {c.patch_h, c.patch_w}},
              {"input", {c.image.height, c.image.width, c.image.channels}},
              {"num_experts", moe.num_experts},
              {"k", moe.k},
              {"slots_per_expert", router.drops() ? 0 : moe.slots_per_expert},
              {"layers", moe.layers},
              {"factors", r.factors},
              {"routings", routings},
              {"palette", palette},
              {"images", std::move(images)},
              {"failures", std::move(failures)}};
}

std::string report_html(const Report& r) {
  // ASCII only, and no "<" at all inside the script element (so neither "</script>"
  // nor "<!--" in an image path can end or change it): JSON strings may say \u003c.
  const std::string dumped = report_data(r).dump(-1, ' ', true, json::error_handler_t::replace);
  std::string data;
  data.reserve(dumped.size());
  for (char ch : dumped) {
    if (ch == '<') data += "\\u003c";
    else data += ch;
  }
  std::string page(asset(kReportPageHTML, sizeof kReportPageHTML));
  auto put = [&](std::string_view marker, std::string_view text) {
    const size_t at = page.find(marker);
    if (at == std::string::npos) fail("report page template has no {}", marker);  // a build defect
    page.replace(at, marker.size(), text);
  };
  // Data last: the markers cannot then be found inside what was already put in.
  put("/*@VMOE_CSS@*/", asset(kReportPageCSS, sizeof kReportPageCSS));
  put("/*@VMOE_JS@*/", asset(kReportPageJS, sizeof kReportPageJS));
  put("@VMOE_DATA@", data);
  return page;
}

void write_report_html(const Report& r, const std::string& path) {
  const std::string page = report_html(r);
  write_file_atomically(path, [&](std::ostream& out) { out.write(page.data(), static_cast<std::streamsize>(page.size())); });
}

}  // namespace vmoe::viz
