// The experts-choice router (Zhou et al. 2022): each expert takes its top-c tokens of
// the group by gate, so a token may be taken by several experts or by none. The routing
// decision (route_experts_choice) is declared in routers.hpp.
#include <algorithm>
#include <numeric>

#include <fmt/format.h>

#include "moe/capacity.hpp"
#include "moe/dense_gate_router.hpp"
#include "moe/moe_layer.hpp"
#include "moe/routers.hpp"
#include "spec/cost.hpp"
#include "spec/router.hpp"
#include "spec/routing_trace.hpp"

namespace vmoe {

void route_experts_choice(ExpertsChoiceRouting& out, const float* gates, int S, int E, int capacity) {
  const int c = std::min(capacity, S);
  out.capacity = c;
  out.token.assign(static_cast<size_t>(E) * c, -1);
  out.gate.assign(static_cast<size_t>(E) * c, 0.0f);
  std::vector<int> idx(S);
  for (int e = 0; e < E; ++e) {
    std::iota(idx.begin(), idx.end(), 0);
    auto by_gate = [&](int a, int b) {
      float ga = gates[static_cast<size_t>(a) * E + e], gb = gates[static_cast<size_t>(b) * E + e];
      return ga > gb || (ga == gb && a < b);
    };
    std::partial_sort(idx.begin(), idx.begin() + c, idx.end(), by_gate);
    for (int j = 0; j < c; ++j) {
      out.token[e * c + j] = idx[j];
      out.gate[e * c + j] = gates[static_cast<size_t>(idx[j]) * E + e];
    }
  }
}

namespace {

class ExpertsChoiceRouter final : public DenseGateRouter {
 public:
  const char* name() const override { return "experts_choice"; }
  std::string routing_phrase(const MoeLayerTrace&) const override { return "experts choose"; }
  std::string layer_phrase(const MoeLayerTrace& t) const override {
    return fmt::format("experts-choice, {} experts", t.num_experts);
  }
  std::string summary(const MoeLayerTrace& t, int capacity, double effective, int dropped_tokens, int tokens, int,
                      int) const override {
    return fmt::format("experts-choice, {} experts take {} tokens each (factor {}, effective {:.3g}): {}/{} tokens taken by none",
                       t.num_experts, capacity, t.capacity_factor, effective, dropped_tokens, tokens);
  }


  // c over the group's S tokens, and no expert takes more than all of them.
  int64_t capacity(const MoeConfig& m, int64_t S) const override {
    return std::min<int64_t>(
        expert_capacity(S, m.num_experts, m.capacity_factor, m.capacity_rounding, m.capacity_multiple_of), S);
  }
  int64_t max_rows(const MoeConfig& m, int64_t S) const override { return int64_t{m.num_experts} * capacity(m, S); }

  int listed_experts(const MoeLayerTrace& t) const override { return t.num_experts; }
  int all_choices(const MoeLayerTrace&, int all_threshold) const override { return std::max(1, all_threshold); }
  std::vector<RouteView> pictures() const override {
    return {RouteView::expert_overlay, RouteView::times_taken, RouteView::priority_heatmap, RouteView::capacity_strip};
  }

  double cost(ModelCost& cost, const MoeConfig& m, double T, double D, int64_t S, int64_t expert_params) const override {
    const double E = m.num_experts;
    const int64_t cap = capacity(m, S);
    const double rows = E * cap / m.group_images;
    cost.flops_router += 2 * T * D * E;
    cost.params_active -= static_cast<int64_t>((E - std::min(E, rows / T)) * expert_params);
    return rows;
  }

  void plan(MoeWorkspace& ws, const float* gates, const float*, const float*, const std::vector<Group>& groups,
            const std::vector<int>& capacity, const MoeConfig& m) const override {
    const int E = m.num_experts;
    const size_t G = groups.size();
    ws.experts_choice.resize(G);
#pragma omp parallel for schedule(dynamic)
    for (size_t g = 0; g < G; ++g)
      route_experts_choice(ws.experts_choice[g], gates + groups[g].first * E, static_cast<int>(groups[g].size), E,
                           capacity[g]);
    std::vector<int64_t> load(G * E);
    for (size_t g = 0; g < G; ++g)
      for (int e = 0; e < E; ++e) load[g * E + e] = ws.experts_choice[g].capacity;
    plan_rows(ws, load, G, E);
    ws.entries.clear();
    for (size_t g = 0; g < G; ++g) {
      const ExpertsChoiceRouting& r = ws.experts_choice[g];
      for (int e = 0; e < E; ++e)
        for (int j = 0; j < r.capacity; ++j)
          ws.entries.push_back({groups[g].first + r.token[e * r.capacity + j], ws.group_expert_base[g * E + e] + j,
                                r.gate[e * r.capacity + j], r.gate[e * r.capacity + j], e});
    }
  }

  void fill_trace(MoeLayerTrace& trace, const MoeWorkspace& ws, const std::vector<Group>& groups,
                  const MoeConfig& m) const override {
    const int E = m.num_experts;
    trace.expert_took.assign(trace.times_taken.size() * E, 0);
    for (size_t g = 0; g < groups.size(); ++g) trace.group_capacity.push_back(ws.experts_choice[g].capacity);
    for (const auto& en : ws.entries) {
      ++trace.times_taken[en.token];
      trace.expert_took[en.token * E + en.expert] = 1;
    }
  }
};

}  // namespace

const Router& experts_choice_router() {
  static const ExpertsChoiceRouter router;
  return router;
}

}  // namespace vmoe
