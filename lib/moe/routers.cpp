#include "moe/routers.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace vmoe {

void route_top_k(TopKRouting& out, const float* gates, int S, int E, int k, int capacity, bool batch_priority) {
  out.k = k;
  out.capacity = capacity;
  out.expert.assign(static_cast<size_t>(S) * k, -1);
  out.gate.assign(static_cast<size_t>(S) * k, 0.0f);
  out.slot.assign(static_cast<size_t>(S) * k, -1);
  out.expert_load.assign(E, 0);
  // Top-k per token by repeated arg-max; strict > keeps the lower index on ties.
  for (int t = 0; t < S; ++t) {
    const float* g = gates + static_cast<size_t>(t) * E;
    for (int r = 0; r < k; ++r) {
      int best = -1;
      for (int e = 0; e < E; ++e) {
        bool taken = false;
        for (int q = 0; q < r; ++q) taken |= out.expert[t * k + q] == e;
        if (!taken && (best < 0 || g[e] > g[best])) best = e;
      }
      out.expert[t * k + r] = best;
      out.gate[t * k + r] = g[best];
    }
  }
  out.order.resize(S);
  std::iota(out.order.begin(), out.order.end(), 0);
  if (batch_priority)
    std::stable_sort(out.order.begin(), out.order.end(),
                     [&](int a, int b) { return out.gate[a * k] > out.gate[b * k]; });
  for (int r = 0; r < k; ++r)
    for (int t : out.order) {
      int e = out.expert[t * k + r];
      if (out.expert_load[e] < capacity) out.slot[t * k + r] = out.expert_load[e]++;
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
