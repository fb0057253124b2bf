// The Soft-MoE router (Puigcerver et al. 2023): every slot takes a softmax-weighted mix
// of the group's tokens, each expert runs on its slots, and every token gets a
// softmax-weighted mix of the slot outputs; nothing is dropped. The weights
// (soft_dispatch_combine) are declared in routers.hpp, the shared maths in soft_moe.hpp.
// Its training forward and backward follow its inference forward.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/stage_times.hpp"
#include "moe/moe_layer.hpp"
#include "moe/moe_train_layer.hpp"
#include "moe/routers.hpp"
#include "moe/soft_moe.hpp"
#include "nn/grad_ops.hpp"
#include "nn/softmax_rows.hpp"
#include "spec/cost.hpp"
#include "spec/router.hpp"
#include "spec/routing_trace.hpp"

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

// What Soft-MoE keeps between its training forward and backward; G groups, slots = E*P.
struct SoftTrainState : RouterTrainState {
  SoftTrainState(int64_t N, int64_t D, int64_t slots, int64_t G)
      : inv_norm({N}), xn({N, D}), dxn({N, D}), mun({D, slots}), mu_inv({slots}), logits({N, slots}),
        dispatch({N, slots}), combine({N, slots}), dlogits({N, slots}), dcombine({N, slots}), ddispatch({N, slots}),
        dmun({D, slots}), slot_in({G * slots, D}), slot_out({G * slots, D}), d_slot({G * slots, D}) {}
  Tensor inv_norm, xn, dxn;  // (N), (N, D), (N, D)
  Tensor mun, mu_inv;  // (D, E*P) scale * mu / |mu|, (E*P) 1/|mu|
  Tensor logits, dispatch, combine, dlogits, dcombine, ddispatch;  // (N, E*P)
  Tensor dmun;  // (D, E*P)
  Tensor slot_in, slot_out, d_slot;  // (G*E*P, D) group-major
};

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

  // --- training

  std::unique_ptr<RouterTrainState> train_state(const MoeTrainLayer& L) const override {
    const int64_t slots = int64_t{L.moe.num_experts} * L.moe.slots_per_expert;
    return std::make_unique<SoftTrainState>(L.shape.tokens, L.shape.hidden, slots, static_cast<int64_t>(L.groups.size()));
  }

  // Per group of S tokens: xn = h / |h|, logits = xn @ (scale * mu / |mu|), dispatch =
  // softmax over tokens, combine = softmax over slots, slot_in = dispatch^T h, slot_out =
  // expert(slot_in), x += combine @ slot_out. No noise, no auxiliary loss.
  void train_forward(MoeTrainLayer& L, float* x, const float* h, const BlockParams& p, std::mt19937_64*,
                     nn::PrimitiveCache& cache) const override {
    auto& s = static_cast<SoftTrainState&>(*L.router_state);
    const auto& groups = L.groups;
    const int64_t N = L.shape.tokens, D = L.shape.hidden, E = L.moe.num_experts, P = L.moe.slots_per_expert;
    const int64_t slots = E * P, G = static_cast<int64_t>(groups.size());
    soft_normalise_tokens(s.xn.data(), s.inv_norm.data(), h, N, D);
    soft_normalised_mu(s.mun.data(), s.mu_inv.data(), p.router_mu.data(), p.router_scale[0], D, slots);
    nn::linear(s.logits.data(), s.xn.data(), s.mun.data(), nullptr, N, D, slots, cache);
#pragma omp parallel for schedule(dynamic)
    for (int64_t g = 0; g < G; ++g)
      soft_dispatch_combine(s.dispatch.data() + groups[g].first * slots, s.combine.data() + groups[g].first * slots,
                            s.logits.data() + groups[g].first * slots, static_cast<int>(groups[g].size),
                            static_cast<int>(slots));
    soft_slot_inputs(s.slot_in.data(), s.dispatch.data(), h, groups, slots, D, cache);
    L.routing.rows_of_expert.assign(E, G * P);
    L.routing.first_row.resize(E);
    for (int64_t e = 0; e < E; ++e) L.routing.first_row[e] = e * G * P;
    slots_to_expert_major(L.expert_in.data(), s.slot_in.data(), G, E, P, D);
    L.experts_forward(p, cache);
    slots_to_group_major(s.slot_out.data(), L.expert_out.data(), G, E, P, D);
    soft_combine_slots(x, s.combine.data(), s.slot_out.data(), groups, slots, D, cache);
    L.aux = {};
  }

  void train_backward(MoeTrainLayer& L, float* dh, const float* dy, const float* h, const BlockParams& p,
                      BlockParams& g, const AuxWeights&, nn::PrimitiveCache& cache) const override {
    using nn::GemmSpec;
    auto& s = static_cast<SoftTrainState&>(*L.router_state);
    const auto& groups = L.groups;
    const int64_t N = L.shape.tokens, D = L.shape.hidden, E = L.moe.num_experts, P = L.moe.slots_per_expert;
    const int64_t slots = E * P, G = static_cast<int64_t>(groups.size());
    const auto runs = equal_size_runs(groups);  // equal-size groups run as one batched matmul
    for (const auto& [g0, count] : runs) {
      const int64_t first = groups[g0].first, S = groups[g0].size;
      GemmSpec dc;  // dcombine (S, slots) = dy (S, D) @ slot_out^T
      dc.m = S, dc.k = D, dc.n = slots, dc.trans_b = true, dc.ldb = D;
      dc.batch = count, dc.batch_stride_a = S * D, dc.batch_stride_b = slots * D, dc.batch_stride_c = S * slots;
      cache.gemm(dc).run(s.dcombine.data() + first * slots, dy + first * D, s.slot_out.data() + g0 * slots * D);
      GemmSpec ds;  // dslot_out (slots, D) = combine^T @ dy
      ds.m = slots, ds.k = S, ds.n = D, ds.trans_a = true, ds.lda = slots;
      ds.batch = count, ds.batch_stride_a = S * slots, ds.batch_stride_b = S * D, ds.batch_stride_c = slots * D;
      cache.gemm(ds).run(s.d_slot.data() + g0 * slots * D, s.combine.data() + first * slots, dy + first * D);
    }
    slots_to_expert_major(L.d_expert_out.data(), s.d_slot.data(), G, E, P, D);
    L.experts_backward(p, g, cache);
    slots_to_group_major(s.d_slot.data(), L.d_expert_in.data(), G, E, P, D);
    for (const auto& [g0, count] : runs) {
      const int64_t first = groups[g0].first, S = groups[g0].size;
      GemmSpec dd;  // ddispatch (S, slots) = h (S, D) @ dslot_in^T
      dd.m = S, dd.k = D, dd.n = slots, dd.trans_b = true, dd.ldb = D;
      dd.batch = count, dd.batch_stride_a = S * D, dd.batch_stride_b = slots * D, dd.batch_stride_c = S * slots;
      cache.gemm(dd).run(s.ddispatch.data() + first * slots, h + first * D, s.d_slot.data() + g0 * slots * D);
      GemmSpec dx;  // dh (S, D) = dispatch (S, slots) @ dslot_in
      dx.m = S, dx.k = slots, dx.n = D;
      dx.batch = count, dx.batch_stride_a = S * slots, dx.batch_stride_b = slots * D, dx.batch_stride_c = S * D;
      cache.gemm(dx).run(dh + first * D, s.dispatch.data() + first * slots, s.d_slot.data() + g0 * slots * D);
    }
    // Softmax backwards: combine over slots (rows), dispatch over the group's tokens (columns).
#pragma omp parallel for schedule(dynamic)
    for (int64_t gi = 0; gi < G; ++gi) {
      const int64_t first = groups[gi].first, S = groups[gi].size;
      std::vector<double> column(slots, 0.0);
      for (int64_t n = first; n < first + S; ++n)
        for (int64_t j = 0; j < slots; ++j) column[j] += double{s.ddispatch[n * slots + j]} * s.dispatch[n * slots + j];
      for (int64_t n = first; n < first + S; ++n) {
        double row = 0;
        for (int64_t j = 0; j < slots; ++j) row += double{s.dcombine[n * slots + j]} * s.combine[n * slots + j];
        for (int64_t j = 0; j < slots; ++j) {
          const int64_t i = n * slots + j;
          s.dlogits[i] = static_cast<float>(s.combine[i] * (s.dcombine[i] - row) +
                                            s.dispatch[i] * (s.ddispatch[i] - column[j]));
        }
      }
    }
    nn::input_grad(s.dxn.data(), s.dlogits.data(), s.mun.data(), N, D, slots, 0.0f, cache);
    s.dmun.fill(0.0f);
    nn::accumulate_weight_grad(s.dmun.data(), s.xn.data(), s.dlogits.data(), N, D, slots, cache);
    // xn = h * r with r = (|h|^2 + eps)^-1/2:  dh += r dxn - h r^3 (h . dxn)
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += double{h[n * D + d]} * s.dxn[n * D + d];
      const float r = s.inv_norm[n], r3dot = static_cast<float>(r * r * r * dot);
      for (int64_t d = 0; d < D; ++d) dh[n * D + d] += r * s.dxn[n * D + d] - h[n * D + d] * r3dot;
    }
    // mun = scale * mu * q with q = (|mu_s|^2 + eps)^-1/2 per slot.
    const float scale = p.router_scale[0];
    double dscale = 0;
    for (int64_t j = 0; j < slots; ++j) {
      double dot = 0;
      const double q = s.mu_inv[j];
      for (int64_t d = 0; d < D; ++d) dot += double{p.router_mu[d * slots + j]} * s.dmun[d * slots + j];
      dscale += dot * q;
      for (int64_t d = 0; d < D; ++d)
        g.router_mu[d * slots + j] +=
            static_cast<float>(scale * (q * s.dmun[d * slots + j] - p.router_mu[d * slots + j] * q * q * q * dot));
    }
    g.router_scale[0] += static_cast<float>(dscale);
    L.shared_backward(dh, dy, h, p, g, cache);
  }
};

}  // namespace

const Router& soft_router() {
  static const SoftRouter router;
  return router;
}

}  // namespace vmoe
