#include "moe/routers.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"

namespace vmoe {

void priority_scores(float* out, const float* probs, const float* learned, int S, int E, int k, Priority priority) {
  std::vector<float> sorted(E);
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
        if (!learned) fail("priority learned: the model has no learned scorer");
        out[t] = learned[t];
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
  // Experts of each token by probability, descending; stable so ties go to the lower
  // index. Only the first k are needed unless overflow may walk further.
  const int ranked = o.overflow == Overflow::next ? E : k;
  std::vector<int> by_prob(static_cast<size_t>(S) * ranked);
  std::vector<int> idx(E);
  std::vector<float> norm(S, 1.0f);  // topk_softmax: 1 / sum of the token's top-k probabilities
  for (int t = 0; t < S; ++t) {
    const float* p = probs + static_cast<size_t>(t) * E;
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return p[a] > p[b]; });
    std::copy(idx.begin(), idx.begin() + ranked, by_prob.begin() + static_cast<size_t>(t) * ranked);
    double sum = 0;
    for (int r = 0; r < k; ++r) {
      out.choice[t * k + r] = idx[r];
      sum += p[idx[r]];
    }
    if (o.gating == Gating::topk_softmax && sum > 0) norm[t] = static_cast<float>(1.0 / sum);
  }
  out.expert = out.choice;
  out.priority.resize(S);
  priority_scores(out.priority.data(), probs, learned, S, E, k, o.priority);
  out.order.resize(S);
  std::iota(out.order.begin(), out.order.end(), 0);
  if (o.batch_priority)
    std::stable_sort(out.order.begin(), out.order.end(), [&](int a, int b) { return out.priority[a] > out.priority[b]; });
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

void soft_dispatch_combine(float* dispatch, float* combine, const float* logits, int S, int slots) {
  // combine: softmax over slots, per token (row).
  for (int t = 0; t < S; ++t) {
    const float* l = logits + static_cast<size_t>(t) * slots;
    float* c = combine + static_cast<size_t>(t) * slots;
    float mx = *std::max_element(l, l + slots), sum = 0;
    for (int s = 0; s < slots; ++s) sum += c[s] = std::exp(l[s] - mx);
    for (int s = 0; s < slots; ++s) c[s] /= sum;
  }
  // dispatch: softmax over tokens, per slot (column).
  for (int s = 0; s < slots; ++s) {
    float mx = -INFINITY, sum = 0;
    for (int t = 0; t < S; ++t) mx = std::max(mx, logits[static_cast<size_t>(t) * slots + s]);
    for (int t = 0; t < S; ++t) sum += dispatch[static_cast<size_t>(t) * slots + s] = std::exp(logits[static_cast<size_t>(t) * slots + s] - mx);
    for (int t = 0; t < S; ++t) dispatch[static_cast<size_t>(t) * slots + s] /= sum;
  }
}

}  // namespace vmoe
