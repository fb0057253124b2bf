#include "moe/moe_layer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.hpp"
#include "moe/capacity.hpp"
#include "moe/soft_moe.hpp"

namespace vmoe {

std::vector<Group> make_groups(int64_t N, int64_t group_tokens) {
  std::vector<Group> groups;
  for (int64_t first = 0; first < N; first += group_tokens) groups.push_back({first, std::min(group_tokens, N - first)});
  return groups;
}

std::vector<std::pair<int64_t, int64_t>> equal_size_runs(const std::vector<Group>& groups) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (int64_t g = 0; g < static_cast<int64_t>(groups.size()); ++g) {
    if (!runs.empty() && groups[runs.back().first].size == groups[g].size) ++runs.back().second;
    else runs.emplace_back(g, 1);
  }
  return runs;
}

namespace {

using nn::Activation;
using nn::GemmSpec;

// gates (N, E) = softmax(h @ router)
void router_gates(float* gates, const float* h, const float* router, int64_t N, int D, int E, nn::PrimitiveCache& cache) {
  GemmSpec s;
  s.m = N, s.k = D, s.n = E;
  cache.gemm(s).run(gates, h, router);
  cache.softmax(N, E).run(gates, gates);
}

// Runs expert e's MLP on its rows: out = GELU(in @ w0[e] + b0[e]) @ w1[e] + b1[e].
void run_experts(MoeWorkspace& ws, const MoeWeights& w, int E, int D, int M, nn::PrimitiveCache& cache) {
  GemmSpec s0;
  s0.runtime_m = true, s0.k = D, s0.n = M, s0.bias = true, s0.activation = w.gelu;
  GemmSpec s1;
  s1.runtime_m = true, s1.k = M, s1.n = D, s1.bias = true;
  const nn::Gemm& up = cache.gemm(s0);
  const nn::Gemm& down = cache.gemm(s1);
  int64_t max_rows = 0;
  for (int e = 0; e < E; ++e) max_rows = std::max(max_rows, ws.rows_of_expert[e]);
  float* hidden = ws.expert_hidden.reserve(max_rows * M);
  for (int e = 0; e < E; ++e) {
    const int64_t rows = ws.rows_of_expert[e];
    if (rows == 0) continue;
    const int64_t first = ws.first_row[e];
    up.run(hidden, ws.expert_in.data() + first * D, w.w0 + int64_t{e} * D * M, w.b0 + int64_t{e} * M, rows);
    down.run(ws.expert_out.data() + first * D, hidden, w.w1 + int64_t{e} * M * D, w.b1 + int64_t{e} * D, rows);
  }
}

// Lays out expert rows expert-major (all groups' tokens of expert 0, then expert 1...):
// group_expert_base[g*E + e] is the first row of group g's tokens at expert e.
void plan_rows(MoeWorkspace& ws, const std::vector<int64_t>& load /* (G, E) */, size_t G, int E) {
  ws.rows_of_expert.assign(E, 0);
  ws.first_row.assign(E, 0);
  ws.group_expert_base.assign(G * E, 0);
  for (size_t g = 0; g < G; ++g)
    for (int e = 0; e < E; ++e) ws.rows_of_expert[e] += load[g * E + e];
  for (int e = 1; e < E; ++e) ws.first_row[e] = ws.first_row[e - 1] + ws.rows_of_expert[e - 1];
  for (int e = 0; e < E; ++e) {
    int64_t row = ws.first_row[e];
    for (size_t g = 0; g < G; ++g) {
      ws.group_expert_base[g * E + e] = row;
      row += load[g * E + e];
    }
  }
}

// Gathers each entry's token into its expert row, runs the experts, then
// x[token] += sum over the token's entries of weight * expert_out[row], token-parallel.
void dispatch_run_combine(float* x, const float* h, int64_t N, int D, int M, int E, const MoeWeights& w,
                          MoeWorkspace& ws, nn::PrimitiveCache& cache, StageTimes* times) {
  int64_t total_rows = 0;
  for (int e = 0; e < E; ++e) total_rows += ws.rows_of_expert[e];
  {
    ScopedStage stage(times, &StageTimes::dispatch_combine);
    float* in = ws.expert_in.reserve(std::max<int64_t>(total_rows, 1) * D);
    ws.expert_out.reserve(std::max<int64_t>(total_rows, 1) * D);
    const int64_t count = static_cast<int64_t>(ws.entries.size());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i)
      std::memcpy(in + ws.entries[i].row * D, h + ws.entries[i].token * D, sizeof(float) * D);
    // Bucket entries by token (counting sort, stable) so the combine can run per token.
    ws.token_begin.assign(N + 1, 0);
    for (const auto& en : ws.entries) ++ws.token_begin[en.token + 1];
    for (int64_t n = 0; n < N; ++n) ws.token_begin[n + 1] += ws.token_begin[n];
  }
  {
    ScopedStage stage(times, &StageTimes::experts);
    run_experts(ws, w, E, D, M, cache);
  }
  ScopedStage stage(times, &StageTimes::dispatch_combine);
  ws.by_token.resize(ws.entries.size());
  ws.cursor.assign(ws.token_begin.begin(), ws.token_begin.end() - 1);
  for (const auto& en : ws.entries) ws.by_token[ws.cursor[en.token]++] = en;
  const auto& by_token = ws.by_token;
  const float* out = ws.expert_out.data();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* xr = x + n * D;
    for (int64_t i = ws.token_begin[n]; i < ws.token_begin[n + 1]; ++i) {
      const float* y = out + by_token[i].row * D;
      const float g = by_token[i].weight;
      for (int d = 0; d < D; ++d) xr[d] += g * y[d];
    }
  }
}

// gates (N, E) = softmax(h @ router), then the routing plan, experts, combine.
void token_choice_forward(float* x, const float* h, const MoeShape& sh, const MoeConfig& moe, const MoeWeights& w,
                          MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times) {
  const int64_t N = sh.tokens;
  const int D = sh.hidden, E = moe.num_experts;
  float* gates = ws.gates.reserve(N * E);
  float* scores = nullptr;
  {
    ScopedStage stage(times, &StageTimes::router);
    router_gates(gates, h, w.router, N, D, E, cache);
    if (w.priority_kernel) {
      scores = ws.scores.reserve(N);
      learned_priority(scores, h, w.priority_kernel, *w.priority_bias, N, D);
    }
    plan_routing(ws, gates, scores, sh, moe);
  }
  dispatch_run_combine(x, h, N, D, sh.mlp, E, w, ws, cache, times);
  if (trace) fill_trace(*trace, ws, gates, sh, moe);
}

void soft_forward(float* x, const float* h, const MoeShape& sh, const MoeConfig& moe, const MoeWeights& w,
                  MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times) {
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
    GemmSpec s;  // logits = xn @ mu (already normalised and scaled)
    s.m = N, s.k = D, s.n = slots;
    cache.gemm(s).run(logits, xn, w.mu);
#pragma omp parallel for schedule(dynamic)
    for (int64_t g = 0; g < G; ++g)
      soft_dispatch_combine(dispatch + groups[g].first * slots, combine + groups[g].first * slots,
                            logits + groups[g].first * slots, static_cast<int>(groups[g].size), static_cast<int>(slots));
  }
  float* slot_in = ws.slot_in.reserve(G * slots * D);
  float* expert_in = ws.expert_in.reserve(G * slots * D);
  ws.expert_out.reserve(G * slots * D);
  {
    ScopedStage stage(times, &StageTimes::dispatch_combine);
    soft_slot_inputs(slot_in, dispatch, h, groups, slots, D, cache);
    slots_to_expert_major(expert_in, slot_in, G, E, P, D);
  }
  ws.rows_of_expert.assign(E, G * P);
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

}  // namespace

void moe_forward(float* x, const float* h, const MoeShape& shape, const MoeConfig& moe, const MoeWeights& w,
                 MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times) {
  if (trace) {
    trace->router = moe.router;
    trace->num_experts = moe.num_experts;
    trace->k = moe.router == RouterKind::top_k ? moe.k : 0;
    trace->slots_per_expert = moe.router == RouterKind::soft ? moe.slots_per_expert : 0;
    trace->tokens_per_image = shape.tokens_per_image;
    trace->group_images = moe.group_images;
    trace->capacity_factor = moe.capacity_factor;
    trace->dropless = moe.dropless;
    trace->batch_priority = moe.batch_priority;
    trace->priority = moe.priority;
    trace->gating = moe.gating;
    trace->overflow = moe.overflow;
    trace->group_capacity.clear();
  }
  switch (moe.router) {
    case RouterKind::top_k:
    case RouterKind::experts_choice: token_choice_forward(x, h, shape, moe, w, ws, cache, trace, times); break;
    case RouterKind::soft: soft_forward(x, h, shape, moe, w, ws, cache, trace, times); break;
  }
}

void learned_priority(float* s, const float* h, const float* kernel, float bias, int64_t N, int D) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float acc = bias;
    for (int d = 0; d < D; ++d) acc += h[n * D + d] * kernel[d];
    s[n] = acc;
  }
}

void plan_routing(MoeWorkspace& ws, const float* gates, const float* learned, const MoeShape& sh, const MoeConfig& moe) {
  const int E = moe.num_experts, k = moe.k;
  const auto groups = make_groups(sh.tokens, int64_t{moe.group_images} * sh.tokens_per_image);
  const size_t G = groups.size();
  std::vector<int> capacity(G);
  std::vector<int64_t> load(G * E);
  for (size_t g = 0; g < G; ++g) capacity[g] = static_cast<int>(group_capacity(moe, groups[g].size));
  ws.entries.clear();
  if (moe.router == RouterKind::top_k) {
    ws.top_k.resize(G);
#pragma omp parallel for schedule(dynamic)
    for (size_t g = 0; g < G; ++g) {
      TopKOptions o;
      o.k = k, o.capacity = capacity[g], o.batch_priority = moe.batch_priority;
      o.priority = moe.priority, o.gating = moe.gating, o.overflow = moe.overflow;
      route_top_k(ws.top_k[g], gates + groups[g].first * E, learned ? learned + groups[g].first : nullptr,
                  static_cast<int>(groups[g].size), E, o);
    }
    for (size_t g = 0; g < G; ++g)
      for (int e = 0; e < E; ++e) load[g * E + e] = ws.top_k[g].expert_load[e];
    plan_rows(ws, load, G, E);
    for (size_t g = 0; g < G; ++g) {
      const TopKRouting& r = ws.top_k[g];
      for (int64_t t = 0; t < groups[g].size; ++t) {
        const int64_t n = groups[g].first + t;
        const float scale = learned ? learned_output_scale(learned[n]) : 1.0f;
        for (int q = 0; q < k; ++q) {
          const int slot = r.slot[t * k + q];
          if (slot < 0) continue;
          const int e = r.expert[t * k + q];
          const float gate = r.gate[t * k + q];
          ws.entries.push_back({n, ws.group_expert_base[g * E + e] + slot, gate * scale, gate, e});
        }
      }
    }
    return;
  }
  if (moe.router != RouterKind::experts_choice) fail("plan_routing: Soft-MoE has no token routing");
  ws.experts_choice.resize(G);
#pragma omp parallel for schedule(dynamic)
  for (size_t g = 0; g < G; ++g)
    route_experts_choice(ws.experts_choice[g], gates + groups[g].first * E, static_cast<int>(groups[g].size), E,
                         capacity[g]);
  for (size_t g = 0; g < G; ++g)
    for (int e = 0; e < E; ++e) load[g * E + e] = ws.experts_choice[g].capacity;
  plan_rows(ws, load, G, E);
  for (size_t g = 0; g < G; ++g) {
    const ExpertsChoiceRouting& r = ws.experts_choice[g];
    for (int e = 0; e < E; ++e)
      for (int j = 0; j < r.capacity; ++j)
        ws.entries.push_back({groups[g].first + r.token[e * r.capacity + j], ws.group_expert_base[g * E + e] + j,
                              r.gate[e * r.capacity + j], r.gate[e * r.capacity + j], e});
  }
}

void fill_trace(MoeLayerTrace& trace, const MoeWorkspace& ws, const float* gates, const MoeShape& sh,
                const MoeConfig& moe) {
  const int64_t N = sh.tokens;
  const int E = moe.num_experts, k = moe.k;
  const auto groups = make_groups(N, int64_t{moe.group_images} * sh.tokens_per_image);
  trace.times_taken.assign(N, 0);
  if (moe.router == RouterKind::top_k) {
    trace.choice_expert.resize(N * k);
    trace.choice_gate.resize(N * k);
    trace.choice_kept.resize(N * k);
    trace.priority_rank.resize(N);
    trace.priority_score.resize(N);
    for (size_t g = 0; g < groups.size(); ++g) {
      const TopKRouting& r = ws.top_k[g];
      const int64_t first = groups[g].first;
      trace.group_capacity.push_back(r.capacity);
      for (int64_t t = 0; t < groups[g].size; ++t)
        for (int q = 0; q < k; ++q) {
          const int64_t i = (first + t) * k + q;
          trace.choice_expert[i] = r.expert[t * k + q];
          trace.choice_gate[i] = r.gate[t * k + q];
          trace.choice_kept[i] = r.slot[t * k + q] >= 0;
          trace.times_taken[first + t] += r.slot[t * k + q] >= 0;
        }
      std::copy(r.priority.begin(), r.priority.end(), trace.priority_score.begin() + first);
      for (size_t rank = 0; rank < r.order.size(); ++rank)
        trace.priority_rank[first + r.order[rank]] = static_cast<int>(rank);
    }
  } else {
    trace.expert_took.assign(N * E, 0);
    for (size_t g = 0; g < groups.size(); ++g) trace.group_capacity.push_back(ws.experts_choice[g].capacity);
    for (const auto& en : ws.entries) {
      ++trace.times_taken[en.token];
      trace.expert_took[en.token * E + en.expert] = 1;
    }
  }
  if (trace.detail) trace.gates.assign(gates, gates + N * E);
}

}  // namespace vmoe
