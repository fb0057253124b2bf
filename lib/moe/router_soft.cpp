// The Soft-MoE router (Puigcerver et al. 2023): every slot takes a softmax-weighted mix
// of the group's tokens, each expert runs on its slots, and every token gets a
// softmax-weighted mix of the slot outputs; nothing is dropped. The weights
// (soft_dispatch_combine) are declared in routers.hpp, the shared maths in soft_moe.hpp.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/stage_times.hpp"
#include "model/architectures.hpp"
#include "model/cost.hpp"
#include "model/routing_trace.hpp"
#include "moe/moe_layer.hpp"
#include "moe/router.hpp"
#include "moe/routers.hpp"
#include "moe/soft_moe.hpp"
#include "nn/softmax_rows.hpp"

namespace vmoe {

// Both softmaxes run along the slots, which are contiguous: the combine row by row, the
// dispatch as running per-slot maxima and sums down the group's tokens.
void soft_dispatch_combine(float* dispatch, float* combine, const float* logits, int S, int slots) {
  nn::softmax_rows(combine, logits, S, slots);  // combine: softmax over slots, per token (row)
  // dispatch: softmax over tokens, per slot (column).
  std::vector<float> column_max(slots, -INFINITY), column_sum(slots, 0.0f);
  float* m = column_max.data();
  float* total = column_sum.data();
  for (int t = 0; t < S; ++t) {
    const float* l = logits + static_cast<size_t>(t) * slots;
    for (int s = 0; s < slots; ++s) m[s] = std::max(m[s], l[s]);
  }
  for (int t = 0; t < S; ++t) {
    float* d = dispatch + static_cast<size_t>(t) * slots;
    nn::exp_shifted(d, logits + static_cast<size_t>(t) * slots, m, slots);
    for (int s = 0; s < slots; ++s) total[s] += d[s];
  }
  for (int s = 0; s < slots; ++s) total[s] = 1.0f / total[s];
  for (int t = 0; t < S; ++t) {
    float* d = dispatch + static_cast<size_t>(t) * slots;
    for (int s = 0; s < slots; ++s) d[s] *= total[s];
  }
}

namespace {

class SoftRouter final : public Router {
 public:
  const char* name() const override { return "soft"; }
  std::string routing_phrase(const MoeLayerTrace&) const override { return "soft (no drops)"; }
  std::string layer_phrase(const MoeLayerTrace& t) const override {
    return fmt::format("soft-moe, {} x {} slots", t.num_experts, t.slots_per_expert);
  }
  std::string summary(const MoeLayerTrace& t, int, double, int, int, int, int) const override {
    return fmt::format("soft-moe, {} experts x {} slots, nothing dropped", t.num_experts, t.slots_per_expert);
  }

  std::vector<RouterParam> params(const MoeConfig& m, int64_t D) const override {
    return {{"mu", {D, m.num_experts, m.slots_per_expert}, &BlockParams::router_mu},
            {"scale", {}, &BlockParams::router_scale}};
  }
  void init_upcycled(BlockParams& b, const ModelConfig& c, double, std::mt19937_64& rng) const override {
    // A zero mu would send every token's mean to every slot; start as `vmoe train` does.
    std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(c.hidden_size)));
    for (int64_t j = 0; j < b.router_mu.numel(); ++j) b.router_mu[j] = normal(rng);
    b.router_scale.fill(default_soft_scale(c));
  }

  bool drops() const override { return false; }
  int64_t capacity(const MoeConfig&, int64_t) const override { return 0; }  // slots, not capacity
  int64_t max_rows(const MoeConfig& m, int64_t) const override { return int64_t{m.num_experts} * m.slots_per_expert; }

  int trace_slots(const MoeConfig& m) const override { return m.slots_per_expert; }
  int listed_experts(const MoeLayerTrace&) const override { return 0; }
  int all_choices(const MoeLayerTrace&, int) const override { return 0; }
  std::vector<RouteView> pictures() const override { return {RouteView::soft_dispatch, RouteView::soft_combine}; }

  double cost(ModelCost& cost, const MoeConfig& m, double T, double D, int64_t, int64_t) const override {
    const double slots = double{1.0} * m.num_experts * m.slots_per_expert;
    // logits, dispatch (slots x T x D) and combine (T x slots x D)
    cost.flops_router += 2 * T * D * slots + 2 * 2 * T * slots * D;
    return slots / m.group_images;  // each group's slots are shared by its images
  }

  // Per group of S tokens: xn = h / |h|, logits = xn @ mu (mu already normalised and
  // scaled, engine.cpp), dispatch/combine softmaxes, slot_in = dispatch^T h, experts on
  // the slots, x += combine @ slot_out.
  void forward(float* x, const float* h, const MoeShape& sh, const MoeConfig& moe, const MoeWeights& w,
               MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times) const override {
    const int64_t N = sh.tokens;
    const int D = sh.hidden, M = sh.mlp, E = moe.num_experts, P = moe.slots_per_expert;
    const int64_t slots = int64_t{E} * P;
    const auto groups = make_groups(N, int64_t{moe.group_images} * sh.tokens_per_image);
    const int64_t G = static_cast<int64_t>(groups.size());
    float* logits = ws.logits.reserve(N * slots);
    float* dispatch = ws.dispatch.reserve(N * slots);
    float* combine = ws.combine.reserve(N * slots);
    {
      ScopedStage stage(times, &StageTimes::router);
      float* xn = ws.xn.reserve(N * D);
      soft_normalise_tokens(xn, nullptr, h, N, D);
      nn::GemmSpec s;  // logits = xn @ mu (already normalised and scaled)
      s.m = N, s.k = D, s.n = slots;
      cache.gemm(s).run(logits, xn, w.mu);
#pragma omp parallel for schedule(dynamic)
      for (int64_t g = 0; g < G; ++g)
        soft_dispatch_combine(dispatch + groups[g].first * slots, combine + groups[g].first * slots,
                              logits + groups[g].first * slots, static_cast<int>(groups[g].size), static_cast<int>(slots));
    }
    float* slot_in = ws.slot_in.reserve(G * slots * D);
    float* expert_in = ws.expert_in.reserve((G * slots + kExpertRowSlack) * D);
    ws.expert_out.reserve((G * slots + kExpertRowSlack) * D);
    {
      ScopedStage stage(times, &StageTimes::dispatch_combine);
      soft_slot_inputs(slot_in, dispatch, h, groups, slots, D, cache);
      slots_to_expert_major(expert_in, slot_in, G, E, P, D);
    }
    ws.rows_of_expert.assign(E, G * P);
    if (times) times->expert_rows += G * slots;
    ws.first_row.resize(E);
    for (int e = 0; e < E; ++e) ws.first_row[e] = int64_t{e} * G * P;
    {
      ScopedStage stage(times, &StageTimes::experts);
      run_experts(ws, w, E, D, M, cache);
    }
    {
      ScopedStage stage(times, &StageTimes::dispatch_combine);
      float* slot_out = ws.slot_out.reserve(G * slots * D);
      slots_to_group_major(slot_out, ws.expert_out.data(), G, E, P, D);
      soft_combine_slots(x, combine, slot_out, groups, slots, D, cache);
    }
    if (!trace) return;
    trace->times_taken.assign(N, static_cast<int>(slots));
    if (trace->detail) {
      trace->dispatch.assign(dispatch, dispatch + N * slots);
      trace->combine.assign(combine, combine + N * slots);
    }
  }

  bool routes_tokens() const override { return false; }
};

}  // namespace

const Router& soft_router() {
  static const SoftRouter router;
  return router;
}

}  // namespace vmoe
