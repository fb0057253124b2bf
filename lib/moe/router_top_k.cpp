// The top-k router (V-MoE, DESIGN §4): each token picks its k experts by gate; experts
// take them up to their capacity in position order (vanilla) or by a priority score (BPR,
// docs/ROUTING.md). Variants: priority scorers, gating topk_softmax, overflow next,
// dropless. The routing decisions (route_top_k) are declared in routers.hpp; its training
// (router noise, the importance and load losses, the learned scorer, the renormalised
// gates and their backward) is at the end of this file.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include <fmt/format.h>

#include "core/error.hpp"
#include "moe/capacity.hpp"
#include "moe/dense_gate_router.hpp"
#include "moe/moe_layer.hpp"
#include "moe/moe_train_layer.hpp"
#include "moe/routers.hpp"
#include "nn/softmax_rows.hpp"
#include "spec/cost.hpp"
#include "spec/router.hpp"
#include "spec/routing_trace.hpp"

namespace vmoe {

namespace {

// Per-thread scratch of route_top_k, reused from group to group (the routers call it once
// per group from an OpenMP loop, so no allocation per call).
struct TopKScratch {
  std::vector<int> ranked;  // (S, ranked) each token's experts, best first
  std::vector<float> norm;  // (S) topk_softmax: 1 / sum of the token's top-k probabilities
  std::vector<float> sorted;  // (E) priority sum_gates
  std::vector<uint64_t> order_keys;  // (S) BPR sort keys
};
TopKScratch& top_k_scratch() {
  thread_local TopKScratch scratch;
  return scratch;
}

// An unsigned key that sorts floats ascending; floats that compare equal get equal keys
// (-0 is made +0 first).
uint32_t ascending_key(float score) {
  const float v = score + 0.0f;  // -0 + 0 = +0
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}

// The first `count` experts of one token by score, descending, ties to the lower index:
// exactly the prefix a stable sort of 0..E-1 by descending score gives.
void rank_experts(int* top, const float* score, int E, int count) {
  if (count <= 3) {
    // A few choices (k, overflow drop): each expert gets one integer key, its score's bits
    // above its inverted index, so that larger keys are better experts and no two are
    // equal. One pass keeps the `count` largest, best first, each key passing down the
    // list by max/min: conditional moves, not the hard-to-predict branches of comparing
    // floats.
    uint64_t best[3] = {0, 0, 0};  // below every key
    for (int e = 0; e < E; ++e) {
      uint64_t key = uint64_t{ascending_key(score[e])} << 32 | (0xffffffffu - static_cast<uint32_t>(e));
      for (int q = 0; q < 3; ++q) {  // always 3: the list stays in registers
        const bool above = key > best[q];
        const uint64_t larger = above ? key : best[q];
        key = above ? best[q] : key;
        best[q] = larger;
      }
    }
    for (int q = 0; q < count; ++q) top[q] = static_cast<int>(0xffffffffu - static_cast<uint32_t>(best[q]));
    return;
  }
  // Insertion into a list of at most `count`: an expert moves ahead only of strictly
  // lower scores, and experts come in index order, so among equals the lower index stays first.
  int n = 0;
  for (int e = 0; e < E; ++e) {
    const float v = score[e];
    if (n == count) {
      if (!(v > score[top[n - 1]])) continue;  // not better than the last kept: out
      --n;  // the last kept one falls out
    }
    int pos = n++;
    for (; pos > 0 && v > score[top[pos - 1]]; --pos) top[pos] = top[pos - 1];
    top[pos] = e;
  }
}

// An unsigned key that sorts floats descending: larger scores get smaller keys.
uint32_t descending_key(float score) { return ~ascending_key(score); }

}  // namespace

void priority_scores(float* out, const float* probs, const float* given, int S, int E, int k, Priority priority) {
  std::vector<float>& sorted = top_k_scratch().sorted;
  sorted.resize(E);
  for (int t = 0; t < S; ++t) {
    const float* p = probs + static_cast<size_t>(t) * E;
    switch (priority) {
      case Priority::max_gate: out[t] = *std::max_element(p, p + E); break;
      case Priority::sum_gates: {
        std::copy(p, p + E, sorted.begin());
        std::partial_sort(sorted.begin(), sorted.begin() + k, sorted.end(), std::greater<>());
        out[t] = std::accumulate(sorted.begin(), sorted.begin() + k, 0.0f);
        break;
      }
      case Priority::entropy: {
        double h = 0;
        for (int e = 0; e < E; ++e)
          if (p[e] > 0) h -= double{p[e]} * std::log(double{p[e]});
        out[t] = static_cast<float>(-h);
        break;
      }
      case Priority::random: {
        // splitmix64 of the position: content-blind, the same for every run and batch size.
        uint64_t z = static_cast<uint64_t>(t) + 0x9e3779b97f4a7c15ULL;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        out[t] = static_cast<float>((z ^ (z >> 31)) >> 40) / static_cast<float>(1 << 24);
        break;
      }
      case Priority::learned:
        if (!given) fail("priority learned: the model has no learned scorer");
        out[t] = given[t];
        break;
      case Priority::oracle:
        if (!given) fail("priority oracle: no importance was computed for this pass");
        out[t] = given[t];
        break;
      case Priority::fitted:
        if (!given) fail("priority fitted: the model has no fitted importance head");
        out[t] = given[t];
        break;
    }
  }
}

void route_top_k(TopKRouting& out, const float* probs, const float* learned, int S, int E, const TopKOptions& o) {
  const int k = o.k;
  out.k = k;
  out.capacity = o.capacity;
  out.choice.assign(static_cast<size_t>(S) * k, -1);
  out.gate.assign(static_cast<size_t>(S) * k, 0.0f);
  out.slot.assign(static_cast<size_t>(S) * k, -1);
  out.expert_load.assign(E, 0);
  // Experts of each token by probability, descending, ties to the lower index. Only the
  // first k are needed unless overflow may walk further.
  const int ranked = o.overflow == Overflow::next ? E : k;
  TopKScratch& scratch = top_k_scratch();
  std::vector<int>& by_prob = scratch.ranked;
  by_prob.resize(static_cast<size_t>(S) * ranked);
  std::vector<float>& norm = scratch.norm;
  norm.assign(S, 1.0f);
  for (int t = 0; t < S; ++t) {
    const float* p = probs + static_cast<size_t>(t) * E;
    const float* rank = o.select ? o.select + static_cast<size_t>(t) * E : p;  // balance "bias": logits + bias
    int* top = by_prob.data() + static_cast<size_t>(t) * ranked;
    rank_experts(top, rank, E, ranked);
    double sum = 0;
    for (int r = 0; r < k; ++r) {
      out.choice[t * k + r] = top[r];
      sum += p[top[r]];
    }
    if (o.gating == Gating::topk_softmax && sum > 0) norm[t] = static_cast<float>(1.0 / sum);
  }
  out.expert = out.choice;
  out.priority.resize(S);
  priority_scores(out.priority.data(), probs, o.priority == Priority::oracle ? o.oracle : learned, S, E, k, o.priority);
  out.order.resize(S);
  std::iota(out.order.begin(), out.order.end(), 0);
  if (o.batch_priority) {
    // Stable sort by priority, descending: one integer key per token, (score descending,
    // position ascending), so a plain sort gives the stable order without a merge buffer.
    std::vector<uint64_t>& keys = scratch.order_keys;
    keys.resize(S);
    for (int t = 0; t < S; ++t) keys[t] = uint64_t{descending_key(out.priority[t])} << 32 | static_cast<uint32_t>(t);
    std::sort(keys.begin(), keys.end());
    for (int t = 0; t < S; ++t) out.order[t] = static_cast<int>(keys[t] & 0xffffffffu);
  }
  auto holds = [&](int t, int e, int upto) {
    for (int q = 0; q < upto; ++q)
      if (out.slot[t * k + q] >= 0 && out.expert[t * k + q] == e) return true;
    return false;
  };
  for (int r = 0; r < k; ++r)
    for (int t : out.order) {
      int e = out.choice[t * k + r];
      bool room = out.expert_load[e] < o.capacity && !holds(t, e, r);
      if (!room && o.overflow == Overflow::next) {
        // On from this choice's rank to the first expert with room the token is not in yet.
        const int* ranks = by_prob.data() + static_cast<size_t>(t) * ranked;
        for (int q = r + 1; q < E && !room; ++q)
          if (out.expert_load[ranks[q]] < o.capacity && !holds(t, ranks[q], r)) e = ranks[q], room = true;
      }
      out.gate[t * k + r] = probs[static_cast<size_t>(t) * E + e] * norm[t];
      if (!room) continue;  // dropped: expert and gate stay those of the choice
      out.expert[t * k + r] = e;
      out.slot[t * k + r] = out.expert_load[e]++;
    }
}

namespace {


// (std / mean)^2 of v (population std) and its gradient wrt each v[e].
double cv_squared(const std::vector<double>& v, std::vector<double>* grad) {
  const double E = static_cast<double>(v.size());
  double mean = 0, var = 0;
  for (double x : v) mean += x / E;
  for (double x : v) var += (x - mean) * (x - mean) / E;
  if (mean <= 0) {
    if (grad) grad->assign(v.size(), 0.0);
    return 0.0;
  }
  if (grad) {
    grad->resize(v.size());
    for (size_t e = 0; e < v.size(); ++e) (*grad)[e] = 2.0 / (E * mean * mean) * (v[e] - mean - var / mean);
  }
  return var / (mean * mean);
}

// Index of the k-th largest value of row (ties to the lower index, as top-k picks).
// Its place in a stable descending sort is the count of values above it plus the count
// of equal ones before it: E^2 comparisons and no allocation, for one call per token (a
// sort with its buffers took ~2% of a V-MoE training step). A NaN has no such place; then
// the sort decides, as it always did, and so it does above 32 experts, where E^2 grows.
int kth_largest(const float* row, int E, int k) {
  for (int i = 0; i < (E <= 32 ? E : 0); ++i) {
    int place = 0;
    for (int j = 0; j < E; ++j) place += row[j] > row[i] || (j < i && row[j] == row[i]);
    if (place == k - 1) return i;
  }
  std::vector<int> idx(E);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return row[a] > row[b]; });
  return idx[k - 1];
}

double normal_pdf(double z) { return std::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI); }

// Top-k's training state: the dense gates' plus the learned scorer and the biased selection.
struct TopKTrainState : GateTrainState {
  TopKTrainState(int64_t N, int64_t E, bool biased) : GateTrainState(N, E), scores({N}), dscores({N}) {
    if (biased) select = Tensor({N, E});
  }
  Tensor scores, dscores;  // (N) learned priority scorer output s and dL/ds
  Tensor select;  // (N, E) noisy logits + balance bias (balance "bias" only)
  // The load loss's forward terms, which its backward reads (with noise only):
  std::vector<double> load_z;  // (N, E) z = (k-th best noisy logit - clean logit) / sigma
  std::vector<int> kth;  // (N) index of each token's k-th best noisy logit
  std::vector<double> group_load;  // (G, E) per group, per expert: mean P(selected)
};

class TopKRouter final : public DenseGateRouter {
 public:
  const char* name() const override { return "top_k"; }
  std::string routing(bool batch_priority) const override { return batch_priority ? "bpr" : "vanilla"; }
  std::string routing_phrase(const MoeLayerTrace& t) const override {
    return t.batch_priority ? "bpr by " + std::string(to_string(t.priority)) : "vanilla";
  }
  std::string layer_phrase(const MoeLayerTrace& t) const override {
    return fmt::format("top-{} of {}", t.k, t.num_experts);
  }
  std::string summary(const MoeLayerTrace& t, int capacity, double effective, int dropped_tokens, int tokens,
                      int dropped_choices, int choices) const override {
    return fmt::format("top-{} of {}, {}, capacity {} per expert (factor {}, effective {:.3g}): dropped {}/{} tokens, {}/{} choices",
                       t.k, t.num_experts, routing_phrase(t), capacity, t.capacity_factor, effective, dropped_tokens,
                       tokens, dropped_choices, choices);
  }

  bool top_k_options() const override { return true; }
  bool selection_bias() const override { return true; }
  std::vector<RouterParam> params(const MoeConfig& m, int64_t D) const override {
    std::vector<RouterParam> p = DenseGateRouter::params(m, D);
    if (m.balance == Balance::bias) p.push_back({"balance_bias", {m.num_experts}, &BlockParams::balance_bias});
    return p;
  }
  int upcycle_experts_per_token(const MoeConfig& m) const override { return m.k; }

  // c over the group's S*k choices; dropless: S, as a token takes an expert at most once.
  int64_t capacity(const MoeConfig& m, int64_t S) const override {
    if (m.dropless) return S;
    return expert_capacity(S * m.k, m.num_experts, m.capacity_factor, m.capacity_rounding, m.capacity_multiple_of);
  }
  int64_t max_rows(const MoeConfig& m, int64_t S) const override {
    return std::min<int64_t>(S * m.k, int64_t{m.num_experts} * capacity(m, S));
  }

  int trace_k(const MoeConfig& m) const override { return m.k; }
  int listed_experts(const MoeLayerTrace& t) const override { return t.k; }
  int all_choices(const MoeLayerTrace& t, int) const override { return t.k; }
  std::vector<RouteView> pictures() const override {
    return {RouteView::expert_overlay, RouteView::dropped_overlay, RouteView::priority_heatmap, RouteView::capacity_strip};
  }

  double cost(ModelCost& cost, const MoeConfig& m, double T, double D, int64_t S, int64_t expert_params) const override {
    const double E = m.num_experts;
    const int64_t cap = capacity(m, S);
    cost.flops_router += 2 * T * D * E;
    cost.params_active -= static_cast<int64_t>((E - m.k) * expert_params);
    return std::min<double>(T * m.k, E * cap / m.group_images);
  }

  void plan(MoeWorkspace& ws, const float* gates, const float* learned, const float* select,
            const std::vector<Group>& groups, const std::vector<int>& capacity, const MoeConfig& m) const override {
    const int E = m.num_experts, k = m.k;
    const size_t G = groups.size();
    ws.top_k.resize(G);
#pragma omp parallel for schedule(dynamic)
    for (size_t g = 0; g < G; ++g) {
      TopKOptions o;
      o.k = k, o.capacity = capacity[g], o.batch_priority = m.batch_priority;
      o.priority = m.priority, o.gating = m.gating, o.overflow = m.overflow;
      o.select = select ? select + groups[g].first * E : nullptr;
      o.oracle = ws.oracle_priority ? ws.oracle_priority + groups[g].first : nullptr;
      route_top_k(ws.top_k[g], gates + groups[g].first * E, learned ? learned + groups[g].first : nullptr,
                  static_cast<int>(groups[g].size), E, o);
    }
    std::vector<int64_t> load(G * E);
    std::vector<int64_t> group_entries(G + 1, 0);  // entries of groups before g (prefix sums)
    for (size_t g = 0; g < G; ++g) {
      int64_t kept = 0;
      for (int e = 0; e < E; ++e) kept += load[g * E + e] = ws.top_k[g].expert_load[e];
      group_entries[g + 1] = group_entries[g] + kept;
    }
    plan_rows(ws, load, G, E);
    // The entries in (group, token, rank) order, each group filling its own range (every
    // one is written: no clearing).
    ws.entries.resize(group_entries[G]);
#pragma omp parallel for schedule(static)
    for (size_t g = 0; g < G; ++g) {
      const TopKRouting& r = ws.top_k[g];
      MoeWorkspace::Entry* out = ws.entries.data() + group_entries[g];
      const int64_t* base = ws.group_expert_base.data() + g * E;
      for (int64_t t = 0; t < groups[g].size; ++t) {
        const int64_t n = groups[g].first + t;
        const float scale = learned && ws.scorer_scales_output ? learned_output_scale(learned[n]) : 1.0f;
        for (int q = 0; q < k; ++q) {
          const int slot = r.slot[t * k + q];
          if (slot < 0) continue;
          const int e = r.expert[t * k + q];
          const float gate = r.gate[t * k + q];
          *out++ = {n, base[e] + slot, gate * scale, gate, e};
        }
      }
    }
  }

  void fill_trace(MoeLayerTrace& trace, const MoeWorkspace& ws, const std::vector<Group>& groups,
                  const MoeConfig& m) const override {
    const int64_t N = static_cast<int64_t>(trace.times_taken.size());
    const int k = m.k;
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
  }

  // --- training

  std::unique_ptr<RouterTrainState> train_state(const MoeTrainLayer& L) const override {
    return std::make_unique<TopKTrainState>(L.shape.tokens, L.moe.num_experts, L.moe.balance == Balance::bias);
  }

  // noisy logits = h @ kernel + N(0, (noise_std/E)^2) with a noise generator; gates =
  // softmax(noisy); the learned scores s = h . kernel + bias; the plan (by logits + bias
  // under balance "bias"); x += combine; then the auxiliary losses.
  void train_forward(MoeTrainLayer& L, float* x, const float* h, const BlockParams& p, std::mt19937_64* noise,
                     nn::PrimitiveCache& cache) const override {
    auto& s = static_cast<TopKTrainState&>(*L.router_state);
    const MoeConfig& m = L.moe;
    const int64_t N = L.shape.tokens, D = L.shape.hidden, E = m.num_experts;
    train_logits(s, L, h, p, cache);
    const double sigma = m.noise_std / E;
    if (noise && sigma > 0) {
      std::normal_distribution<float> normal(0.0f, static_cast<float>(sigma));
      for (int64_t i = 0; i < N * E; ++i) s.noisy_logits[i] += normal(*noise);
    }
    nn::softmax_rows(s.gates.data(), s.noisy_logits.data(), N, E);
    const bool learned = m.priority == Priority::learned;
    if (learned) learned_priority(s.scores.data(), h, p.priority_kernel.data(), p.priority_bias[0], N, static_cast<int>(D));
    // Balance "bias": the experts are chosen by logits + bias, the gates stay unbiased.
    const bool biased = m.balance == Balance::bias;
    if (biased)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t e = 0; e < E; ++e) s.select[n * E + e] = s.noisy_logits[n * E + e] + p.balance_bias[e];
    train_route_and_run(L, s, x, h, p, learned ? s.scores.data() : nullptr, biased ? s.select.data() : nullptr, cache);
    aux_losses(L, s);
  }

  void train_backward(MoeTrainLayer& L, float* dh, const float* dy, const float* h, const BlockParams& p,
                      BlockParams& g, const AuxWeights& weights, nn::PrimitiveCache& cache) const override {
    auto& s = static_cast<TopKTrainState&>(*L.router_state);
    const MoeConfig& m = L.moe;
    const int64_t N = L.shape.tokens, D = L.shape.hidden, E = m.num_experts;
    const bool learned = m.priority == Priority::learned;
    train_entry_grads(L, s, dy, learned ? s.scores.data() : nullptr);
    if (learned) scorer_scale_backward(L, s);
    if (m.gating == Gating::topk_softmax) renormalised_gate_backward(L, s);
    L.experts_backward(p, g, cache);
    train_gather_input_grads(L, dh);
    const double sigma = m.noise_std / E;
    const double G = static_cast<double>(L.groups.size());
    if (weights.importance != 0) {
#pragma omp parallel for schedule(static)  // each group writes only its own tokens' rows
      for (size_t gi = 0; gi < L.groups.size(); ++gi) {
        const Group& grp = L.groups[gi];
        std::vector<double> importance(E, 0.0), grad;
        for (int64_t n = grp.first; n < grp.first + grp.size; ++n)
          for (int e = 0; e < E; ++e) importance[e] += s.gates[n * E + e];
        cv_squared(importance, &grad);
        for (int64_t n = grp.first; n < grp.first + grp.size; ++n)
          for (int e = 0; e < E; ++e) s.dgates[n * E + e] += static_cast<float>(weights.importance / G * grad[e]);
      }
    }
    // dlogits = softmax backward of the gates (noise is additive, so clean and noisy
    // logits share this gradient); then the load loss, which reads the clean logits and
    // the noisy k-th best as threshold.
    s.softmax_backward.run(s.dlogits.data(), s.dgates.data(), s.gates.data());
    if (weights.load != 0 && sigma > 0) load_backward(L, s, weights.load / G, sigma);
    train_kernel_backward(L, s, dh, h, p, g, cache);
    L.shared_backward(dh, dy, h, p, g, cache);
    if (!learned) return;
    // s[n] = h[n] . kernel + bias
    double dbias = 0;
    for (int64_t n = 0; n < N; ++n) {
      const float ds = s.dscores[n];
      dbias += ds;
      for (int64_t d = 0; d < D; ++d) {
        g.priority_kernel[d] += ds * h[n * D + d];
        dh[n * D + d] += ds * p.priority_kernel[d];
      }
    }
    g.priority_bias[0] += static_cast<float>(dbias);
  }

 private:
  // importance = cv^2 of per-expert gate sums; load = cv^2 of per-expert mean probability
  // of being selected under re-sampled noise, P(noisy logit beats the k-th best) =
  // 1 - Phi((threshold - clean logit) / sigma); per group, averaged over groups. The
  // learned scorer's penalty term is its mean output scale.
  static void aux_losses(MoeTrainLayer& L, TopKTrainState& s) {
    const MoeConfig& m = L.moe;
    L.aux = {};
    if (m.priority == Priority::learned) {
      double sum = 0;
      for (int64_t n = 0; n < L.shape.tokens; ++n) sum += learned_output_scale(s.scores[n]);
      L.aux.scorer = sum / static_cast<double>(L.shape.tokens);
    }
    const int E = m.num_experts;
    const double sigma = m.noise_std / E;
    // Groups in parallel, each one's two terms kept and then summed in group order (the
    // same bits whatever the thread count).
    const int64_t G = static_cast<int64_t>(L.groups.size());
    std::vector<double> importance_terms(G), load_terms(G);
    if (sigma > 0) {
      s.load_z.resize(L.shape.tokens * E);
      s.kth.resize(L.shape.tokens);
      s.group_load.assign(G * E, 0.0);
    }
#pragma omp parallel for schedule(static)
    for (int64_t gi = 0; gi < G; ++gi) {
      const Group& g = L.groups[gi];
      std::vector<double> importance(E, 0.0);
      double* load = sigma > 0 ? s.group_load.data() + gi * E : nullptr;
      for (int64_t n = g.first; n < g.first + g.size; ++n) {
        const float* gate = s.gates.data() + n * E;
        for (int e = 0; e < E; ++e) importance[e] += gate[e];
        if (sigma > 0) {
          const float* noisy = s.noisy_logits.data() + n * E;
          s.kth[n] = kth_largest(noisy, E, m.k);
          const double threshold = noisy[s.kth[n]];
          for (int e = 0; e < E; ++e) {
            const double z = s.load_z[n * E + e] = (threshold - s.clean_logits[n * E + e]) / sigma;
            load[e] += 0.5 * std::erfc(z / std::sqrt(2.0)) / g.size;
          }
        }
      }
      importance_terms[gi] = cv_squared(importance, nullptr);
      load_terms[gi] = sigma > 0 ? cv_squared(std::vector<double>(load, load + E), nullptr) : 0.0;
    }
    for (int64_t gi = 0; gi < G; ++gi) {
      L.aux.importance += importance_terms[gi] / G;
      if (sigma > 0) L.aux.load += load_terms[gi] / G;
    }
  }

  // The learned scorer scales token n's output by scale = 2 sigmoid(s[n]): d scale[n] =
  // sum over its entries of gate * dy[n] . out[row] (+ the penalty's weight / N), and
  // d scale / d s = scale (1 - scale / 2).
  static void scorer_scale_backward(const MoeTrainLayer& L, TopKTrainState& s) {
    const int64_t N = L.shape.tokens;
    const auto& plan = L.routing;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      double dscale = 0;
      for (int64_t j = plan.token_begin[n]; j < plan.token_begin[n + 1]; ++j)
        dscale += double{plan.entries[plan.by_token[j]].gate} * s.entry_dot[plan.by_token[j]];
      dscale += L.scorer_penalty / static_cast<double>(N);  // penalty: weight * mean scale
      const float scale = learned_output_scale(s.scores[n]);
      s.dscores[n] = static_cast<float>(dscale * scale * (1.0f - 0.5f * scale));
    }
  }

  // Gating topk_softmax: the weight of expert e for a token is w_e = p_e / Z with Z the sum
  // of p over the token's top-k choices K (e may lie outside K after overflow "next"). With
  // dG = dL/dw from the combine, dL/dp_e = dG_e / Z, and every m in K also gets
  // -sum_e dG_e w_e / Z. Turns dgates from d weight into d probability, row by row.
  static void renormalised_gate_backward(const MoeTrainLayer& L, TopKTrainState& s) {
    const int E = L.moe.num_experts, k = L.moe.k;
#pragma omp parallel for schedule(dynamic)
    for (size_t gi = 0; gi < L.groups.size(); ++gi) {
      const TopKRouting& r = L.routing.top_k[gi];
      for (int64_t t = 0; t < L.groups[gi].size; ++t) {
        const int64_t n = L.groups[gi].first + t;
        const float* prob = s.gates.data() + n * E;
        float* dg = s.dgates.data() + n * E;
        double Z = 0;
        for (int q = 0; q < k; ++q) Z += prob[r.choice[t * k + q]];
        if (!(Z > 0)) continue;
        double sum = 0;
        for (int e = 0; e < E; ++e) sum += double{dg[e]} * prob[e] / Z;
        for (int e = 0; e < E; ++e) dg[e] = static_cast<float>(dg[e] / Z);
        for (int q = 0; q < k; ++q) dg[r.choice[t * k + q]] -= static_cast<float>(sum / Z);
      }
    }
  }

  // The load loss's gradient on the logits: d load_e / d clean logit_e = -pdf(z) / (sigma S),
  // and the k-th best noisy logit (the threshold) gets the opposite. `weight` is the
  // loss weight over the number of groups. z, the k-th index and the group's load are the
  // forward's (aux_losses).
  static void load_backward(const MoeTrainLayer& L, TopKTrainState& s, double weight, double sigma) {
    const int E = L.moe.num_experts;
    const int64_t G = static_cast<int64_t>(L.groups.size());
    // Groups in parallel: each writes only its own tokens' rows of dlogits.
#pragma omp parallel for schedule(static)
    for (int64_t gi = 0; gi < G; ++gi) {
      const Group& grp = L.groups[gi];
      const int64_t S = grp.size;
      std::vector<double> grad;
      cv_squared(std::vector<double>(s.group_load.begin() + gi * E, s.group_load.begin() + (gi + 1) * E), &grad);
      for (int64_t n = grp.first; n < grp.first + S; ++n)
        for (int e = 0; e < E; ++e) {
          const double c = weight * grad[e] / S * normal_pdf(s.load_z[n * E + e]) / sigma;
          s.dlogits[n * E + e] += static_cast<float>(c);
          s.dlogits[n * E + s.kth[n]] -= static_cast<float>(c);
        }
    }
  }
};

}  // namespace

const Router& top_k_router() {
  static const TopKRouter router;
  return router;
}

}  // namespace vmoe
