// The three routers and the MoE layer against the naive loops of tests/naive, plus the
// invariants DESIGN §4 promises (capacity, BPR drops the lowest-priority tokens first).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>

#include "core/error.hpp"
#include "moe/balance.hpp"
#include "moe/capacity.hpp"
#include "moe/moe_layer.hpp"
#include "moe/router_registry.hpp"
#include "moe/routers.hpp"
#include "moe/soft_moe.hpp"
#include "naive/naive_ops.hpp"
#include "naive/test_util.hpp"
#include "spec/router.hpp"

using namespace vmoe;

namespace {

// (S, E) router gates: softmax of N(0, 2^2) logits, or (ties) random multiples of 1/8 so
// that equal gates within a token and between tokens are common.
std::vector<float> make_gates(int S, int E, uint64_t seed, bool ties) {
  std::vector<float> g(static_cast<size_t>(S) * E);
  std::mt19937_64 rng(seed);
  if (ties) {
    std::uniform_int_distribution<int> level(0, 4);
    for (float& v : g) v = level(rng) / 8.0f;
    return g;
  }
  auto logits = testutil::random_normal(g.size(), seed, 2.0f);
  naive::softmax_rows(g.data(), logits.data(), S, E);
  return g;
}

int top_k_capacity(int S, int E, int k, double factor) {
  return static_cast<int>(expert_capacity(int64_t{S} * k, E, factor));
}

// Elements where the layer's result `got` differs from x + y (the naive MoE output y
// added to the residual x) by more than 1e-4 relative.
int residual_mismatches(const std::vector<float>& got, const std::vector<float>& x, const std::vector<float>& y) {
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double want_x = double{x[i]} + y[i];
    bad += !(std::fabs(got[i] - want_x) <= 1e-4 * (1 + std::fabs(want_x)));
  }
  return bad;
}

// A random MoE layer's tensors, the same draws for every layer test (seeds seed+1..seed+6).
struct RandomMoeLayer {
  std::vector<float> w0, b0, w1, b1, router, mu;  // (E, D, M) (E, M) (E, M, D) (E, D) (D, E) (D, E*P)
};
RandomMoeLayer random_moe_layer(int E, int D, int M, int P, uint64_t seed) {
  return {testutil::random_normal(E * D * M, seed + 1, 1.0f / std::sqrt(float(D))),
          testutil::random_normal(E * M, seed + 2, 0.1f),
          testutil::random_normal(E * M * D, seed + 3, 1.0f / std::sqrt(float(M))),
          testutil::random_normal(E * D, seed + 4, 0.1f),
          testutil::random_normal(D * E, seed + 5, 1.0f),
          testutil::random_normal(D * E * P, seed + 6, 1.0f / std::sqrt(float(D)))};
}

}  // namespace

TEST_CASE("expert_capacity matches the naive rule", "[moe][capacity]") {
  const int64_t tokens = GENERATE(1, 3, 50, 100, 197, 400, 800, 1576);
  const int E = GENERATE(1, 3, 8, 32, 128);
  const double factor = GENERATE(0.25, 0.5, 1.0, 1.05, 1.25, 2.0);
  const int multiple = GENERATE(0, 1, 4);
  for (auto rounding : {CapacityRounding::ceil, CapacityRounding::round}) {
    int64_t want = -1;
    try {
      want = naive::capacity(tokens, E, factor, rounding, multiple);
    } catch (const std::exception&) {
    }
    INFO("tokens " << tokens << " E " << E << " factor " << factor << " multiple " << multiple);
    if (want < 1) {
      CHECK_THROWS_AS(expert_capacity(tokens, E, factor, rounding, multiple), Error);
    } else {
      CHECK(expert_capacity(tokens, E, factor, rounding, multiple) == want);
    }
  }
}

TEST_CASE("route_top_k matches the naive router", "[moe][top_k]") {
  const int S = GENERATE(1, 3, 16, 50, 101);
  const int E = GENERATE(1, 2, 8, 32);
  const int k = GENERATE(1, 2, 3);
  const double factor = GENERATE(0.25, 1.0, 1.05, 2.0);
  const bool bpr = GENERATE(false, true);
  const bool ties = GENERATE(false, true);
  if (k > E) return;
  const uint64_t seed = 1000 + S * 31 + E * 7 + k;
  auto gates = make_gates(S, E, seed, ties);
  const int c = top_k_capacity(S, E, k, factor);
  TopKRouting r;
  route_top_k(r, gates.data(), S, E, k, c, bpr);
  naive::TopK want = naive::top_k(gates.data(), S, E, k, c, bpr);
  INFO("S " << S << " E " << E << " k " << k << " capacity " << c << " bpr " << bpr << " ties " << ties);
  CHECK(r.k == k);
  CHECK(r.capacity == c);
  CHECK(r.expert == want.expert);
  CHECK(r.gate == want.gate);
  CHECK(r.order == want.order);
  CHECK(r.slot == want.slot);
  CHECK(r.expert_load == want.load);
}

// route_top_k ranks experts by insertion into per-thread scratch; the twin ranks every
// expert by repeated argmax. Every option of ROUTING.md section 4, with ties in the gates,
// the selection scores and the priorities.
TEST_CASE("route_top_k matches the naive twin under every option", "[moe][top_k]") {
  const int S = GENERATE(1, 7, 50, 101);
  const int E = GENERATE(1, 3, 8, 32, 65);  // 65: past the keyed selection's 64 experts
  const int k = GENERATE(1, 2, 3);
  const bool ties = GENERATE(false, true);
  const bool biased = GENERATE(false, true);
  if (k > E || (E == 65 && S > 50)) return;
  const uint64_t seed = 7000 + S * 31 + E * 7 + k + 2 * ties + biased;
  auto probs = make_gates(S, E, seed, ties);
  // Learned scores and balance-bias selection scores, coarse under `ties` so that equal
  // values are common.
  auto learned = testutil::random_normal(S, seed + 1);
  auto select = testutil::random_normal(static_cast<size_t>(S) * E, seed + 2);
  if (ties) {
    for (float& v : learned) v = std::round(v * 2) / 2;
    for (float& v : select) v = std::round(v * 2) / 2;
  }
  for (double factor : {0.25, 1.05, 0.0}) {  // 0: dropless (c = S)
    const int c = factor > 0 ? top_k_capacity(S, E, k, factor) : S;
    for (bool bpr : {false, true})
      for (Priority priority : {Priority::max_gate, Priority::sum_gates, Priority::entropy, Priority::random,
                                Priority::learned})
        for (Gating gating : {Gating::softmax_topk, Gating::topk_softmax})
          for (Overflow overflow : {Overflow::drop, Overflow::next}) {
            TopKOptions o;
            o.k = k, o.capacity = c, o.batch_priority = bpr, o.priority = priority, o.gating = gating;
            o.overflow = overflow, o.select = biased ? select.data() : nullptr;
            TopKRouting r;
            route_top_k(r, probs.data(), learned.data(), S, E, o);
            naive::TopKRules rules;
            rules.k = k, rules.capacity = c, rules.bpr = bpr, rules.priority = priority;
            rules.topk_softmax = gating == Gating::topk_softmax, rules.overflow_next = overflow == Overflow::next;
            rules.select = o.select;
            const naive::TopKFull want = naive::top_k_full(probs.data(), learned.data(), S, E, rules);
            INFO("S " << S << " E " << E << " k " << k << " c " << c << " bpr " << bpr << " priority "
                      << to_string(priority) << " gating " << to_string(gating) << " overflow "
                      << to_string(overflow) << " ties " << ties << " biased " << biased);
            CHECK(r.choice == want.choice);
            CHECK(r.expert == want.expert);
            CHECK(r.gate == want.gate);
            CHECK(r.slot == want.slot);
            CHECK(r.priority == want.priority);
            CHECK(r.order == want.order);
            CHECK(r.expert_load == want.load);
          }
  }
}

TEST_CASE("top-k routing invariants", "[moe][top_k]") {
  const int S = GENERATE(7, 50, 200);
  const int E = GENERATE(2, 8, 16);
  const int k = GENERATE(1, 2);
  const bool ties = GENERATE(false, true);
  const uint64_t seed = GENERATE(1, 2, 3);
  auto gates = make_gates(S, E, seed * 100 + S + E, ties);
  INFO("S " << S << " E " << E << " k " << k << " ties " << ties << " seed " << seed);

  SECTION("a large enough factor drops nothing") {
    // Each expert gets at most one choice per token, so capacity >= S is enough: E / k.
    const double factor = static_cast<double>(E) / k;
    for (bool bpr : {false, true}) {
      TopKRouting r;
      route_top_k(r, gates.data(), S, E, k, top_k_capacity(S, E, k, factor), bpr);
      CHECK(std::count(r.slot.begin(), r.slot.end(), -1) == 0);
    }
  }

  SECTION("capacity is never exceeded and slots are 0..load-1 per expert") {
    for (double factor : {0.25, 0.5, 1.0, 1.05}) {
      for (bool bpr : {false, true}) {
        const int c = top_k_capacity(S, E, k, factor);
        TopKRouting r;
        route_top_k(r, gates.data(), S, E, k, c, bpr);
        std::vector<std::set<int>> slots(E);
        for (int i = 0; i < S * k; ++i)
          if (r.slot[i] >= 0) CHECK(slots[r.expert[i]].insert(r.slot[i]).second);
        for (int e = 0; e < E; ++e) {
          CHECK(r.expert_load[e] <= c);
          CHECK(static_cast<int>(slots[e].size()) == r.expert_load[e]);
          if (!slots[e].empty()) CHECK(*slots[e].rbegin() == r.expert_load[e] - 1);
        }
        // Every token's choices are distinct experts, in descending gate order.
        for (int t = 0; t < S; ++t)
          for (int q = 1; q < k; ++q) {
            CHECK(r.expert[t * k + q] != r.expert[t * k + q - 1]);
            CHECK(r.gate[t * k + q] <= r.gate[t * k + q - 1]);
          }
      }
    }
  }

  SECTION("with BPR an expert drops exactly its lowest-priority first choices") {
    for (double factor : {0.25, 0.5, 1.0}) {
      const int c = top_k_capacity(S, E, k, factor);
      TopKRouting r;
      route_top_k(r, gates.data(), S, E, k, c, true);
      // order is by top-1 gate, descending, stable.
      for (int i = 1; i < S; ++i) {
        const float prev = r.gate[r.order[i - 1] * k], cur = r.gate[r.order[i] * k];
        CHECK(prev >= cur);
        if (prev == cur) CHECK(r.order[i - 1] < r.order[i]);
      }
      std::vector<int> rank(S);
      for (int i = 0; i < S; ++i) rank[r.order[i]] = i;
      for (int e = 0; e < E; ++e) {
        std::vector<int> firsts;  // tokens whose first choice is e, by priority
        for (int t : r.order)
          if (r.expert[t * k] == e) firsts.push_back(t);
        const size_t keep = std::min<size_t>(firsts.size(), static_cast<size_t>(c));
        for (size_t j = 0; j < firsts.size(); ++j) {
          INFO("expert " << e << " first-choice token " << firsts[j] << " priority " << j);
          CHECK((r.slot[firsts[j] * k] >= 0) == (j < keep));
        }
        // ...so no kept first choice has a lower top-1 gate than a dropped one.
        float min_kept = 2, max_dropped = -1;
        for (int t : firsts) (r.slot[t * k] >= 0 ? min_kept = std::min(min_kept, r.gate[t * k])
                                                 : max_dropped = std::max(max_dropped, r.gate[t * k]));
        CHECK(max_dropped <= min_kept);
      }
    }
  }

  SECTION("vanilla drops the last positions first") {
    const int c = top_k_capacity(S, E, k, 0.25);
    TopKRouting r;
    route_top_k(r, gates.data(), S, E, k, c, false);
    for (int e = 0; e < E; ++e) {
      bool dropped_before = false;
      for (int t = 0; t < S; ++t) {
        if (r.expert[t * k] != e) continue;
        if (r.slot[t * k] < 0) dropped_before = true;
        else CHECK_FALSE(dropped_before);
      }
    }
  }
}

// plan_routing fills the entries group by group in parallel and bucket_by_token skips its
// sort when the entries are already in token order: both against the serial walk.
TEST_CASE("plan_routing entries and bucket_by_token match the serial walk", "[moe][plan]") {
  const Router* router = GENERATE(&vmoe::find_router("top_k"), &vmoe::find_router("experts_choice"));
  const auto [B, T] = GENERATE(std::pair{1, 17}, std::pair{5, 7}, std::pair{9, 50});
  const int group_images = GENERATE(1, 2);
  const double factor = GENERATE(0.5, 1.05);
  const bool learned = GENERATE(false, true);
  const Overflow overflow = GENERATE(Overflow::drop, Overflow::next);
  if (router != &vmoe::find_router("top_k") && (learned || overflow == Overflow::next)) return;
  MoeConfig moe;
  moe.router = router;
  moe.num_experts = 8, moe.k = 2, moe.capacity_factor = factor, moe.group_images = group_images;
  moe.overflow = overflow;
  if (learned) moe.priority = Priority::learned;
  const int E = moe.num_experts, k = moe.k;
  const int64_t N = int64_t{B} * T;
  const uint64_t seed = 9000 + B * 100 + T + group_images;
  auto gates = make_gates(static_cast<int>(N), E, seed, false);
  auto scores = testutil::random_normal(N, seed + 1);
  MoeWorkspace ws;
  for (int pass = 0; pass < 2; ++pass) {  // the second reuses the workspace
    plan_routing(ws, gates.data(), learned ? scores.data() : nullptr, MoeShape{N, T, 16, 16}, moe);
    bucket_by_token(ws, N);
    const auto groups = make_groups(N, int64_t{group_images} * T);
    INFO("router " << router->name() << " B " << B << " T " << T << " group " << group_images << " factor "
                   << factor << " learned " << learned << " overflow " << to_string(overflow) << " pass " << pass);
    if (router == &vmoe::find_router("top_k")) {
      // Rows expert-major: expert e's rows of group g follow those of groups before g.
      std::vector<int64_t> rows_before(groups.size() * E, 0), total(E, 0);
      for (int e = 0; e < E; ++e)
        for (size_t g = 0; g < groups.size(); ++g) {
          rows_before[g * E + e] = total[e];
          total[e] += ws.top_k[g].expert_load[e];
        }
      int64_t first = 0;
      std::vector<int64_t> first_row(E);
      for (int e = 0; e < E; ++e) first_row[e] = first, first += total[e];
      std::vector<MoeWorkspace::Entry> want;
      for (size_t g = 0; g < groups.size(); ++g) {
        const TopKRouting& r = ws.top_k[g];
        for (int64_t t = 0; t < groups[g].size; ++t)
          for (int q = 0; q < k; ++q) {
            if (r.slot[t * k + q] < 0) continue;
            const int64_t n = groups[g].first + t;
            const int e = r.expert[t * k + q];
            const float gate = r.gate[t * k + q];
            const float scale = learned ? 2.0f / (1.0f + std::exp(-scores[n])) : 1.0f;
            want.push_back({n, first_row[e] + rows_before[g * E + e] + r.slot[t * k + q], gate * scale, gate, e});
          }
      }
      REQUIRE(ws.entries.size() == want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        INFO("entry " << i);
        CHECK(ws.entries[i].token == want[i].token);
        CHECK(ws.entries[i].row == want[i].row);
        CHECK(ws.entries[i].weight == want[i].weight);
        CHECK(ws.entries[i].gate == want[i].gate);
        CHECK(ws.entries[i].expert == want[i].expert);
      }
    }
    // The entries of each token, in plan order.
    std::vector<int64_t> begin{0}, by_token;
    for (int64_t n = 0; n < N; ++n) {
      for (size_t i = 0; i < ws.entries.size(); ++i)
        if (ws.entries[i].token == n) by_token.push_back(static_cast<int64_t>(i));
      begin.push_back(static_cast<int64_t>(by_token.size()));
    }
    CHECK(ws.token_begin == begin);
    CHECK(ws.by_token == by_token);
  }
}

TEST_CASE("route_experts_choice matches the naive router", "[moe][experts_choice]") {
  const int S = GENERATE(1, 4, 50, 101);
  const int E = GENERATE(1, 3, 8);
  const double factor = GENERATE(0.25, 1.0, 2.0, 100.0);
  const bool ties = GENERATE(false, true);
  auto gates = make_gates(S, E, 2000 + S * 13 + E, ties);
  const int c = static_cast<int>(expert_capacity(S, E, factor));
  ExpertsChoiceRouting r;
  route_experts_choice(r, gates.data(), S, E, c);
  naive::ExpertsChoice want = naive::experts_choice(gates.data(), S, E, c);
  INFO("S " << S << " E " << E << " capacity " << c << " ties " << ties);
  CHECK(r.capacity == std::min(c, S));
  CHECK(r.capacity == want.capacity);
  CHECK(r.token == want.token);
  CHECK(r.gate == want.gate);
  for (int e = 0; e < E; ++e) {  // distinct tokens per expert
    std::set<int> tokens(r.token.begin() + e * r.capacity, r.token.begin() + (e + 1) * r.capacity);
    CHECK(static_cast<int>(tokens.size()) == r.capacity);
  }
}

TEST_CASE("soft_dispatch_combine matches naive and normalises", "[moe][soft]") {
  const int S = GENERATE(1, 2, 50, 100);
  const int slots = GENERATE(1, 3, 48, 128);
  const float spread = GENERATE(1.0f, 20.0f);
  auto logits = testutil::random_normal(static_cast<size_t>(S) * slots, 3000 + S + slots, spread);
  std::vector<float> dispatch(logits.size()), combine(logits.size()), want_d(logits.size()), want_c(logits.size());
  soft_dispatch_combine(dispatch.data(), combine.data(), logits.data(), S, slots);
  naive::soft_weights(want_d.data(), want_c.data(), logits.data(), S, slots);
  INFO("S " << S << " slots " << slots << " spread " << spread);
  // exp in float: a few ulp per term, the sum over <= 128 terms adds 128 u relative.
  const double rel = 200.0 / (1 << 24);
  for (size_t i = 0; i < logits.size(); ++i) {
    CHECK(std::fabs(double{dispatch[i]} - want_d[i]) <= rel * want_d[i] + 1e-7);
    CHECK(std::fabs(double{combine[i]} - want_c[i]) <= rel * want_c[i] + 1e-7);
  }
  for (int s = 0; s < slots; ++s) {
    double sum = 0;
    for (int m = 0; m < S; ++m) sum += dispatch[static_cast<size_t>(m) * slots + s];
    CHECK(sum == Approx(1.0).margin(1e-5));
  }
  for (int m = 0; m < S; ++m) {
    double sum = 0;
    for (int s = 0; s < slots; ++s) sum += combine[static_cast<size_t>(m) * slots + s];
    CHECK(sum == Approx(1.0).margin(1e-5));
  }
}

TEST_CASE("soft_normalised_mu is scale * mu / ||mu|| per slot", "[moe][soft]") {
  const int D = 24, slots = 10;
  auto mu = testutil::random_normal(D * slots, 77, 0.3f);
  std::vector<float> out(D * slots);
  soft_normalised_mu(out.data(), mu.data(), 2.5f, D, slots);
  for (int s = 0; s < slots; ++s) {
    double ss = 0, out_ss = 0;
    for (int d = 0; d < D; ++d) ss += double{mu[d * slots + s]} * mu[d * slots + s], out_ss += double{out[d * slots + s]} * out[d * slots + s];
    CHECK(std::sqrt(out_ss) == Approx(2.5 * std::sqrt(ss / (ss + 1e-6))).epsilon(1e-5));
    for (int d = 0; d < D; ++d) CHECK(out[d * slots + s] == Approx(2.5 * mu[d * slots + s] / std::sqrt(ss + 1e-6)).epsilon(1e-5));
  }
}

// The whole layer: x += MoE(h). Values are O(1); the engine runs float32 GEMMs with
// k <= 64, so 1e-4 relative is generous for matching arithmetic and far below what a
// single mis-routed token would change (O(0.1) on that token).
TEST_CASE("moe_forward matches the naive MoE layer for each router", "[moe][layer]") {
  const Router* router = GENERATE(&vmoe::find_router("top_k"), &vmoe::find_router("experts_choice"), &vmoe::find_router("soft"));
  // 100 x 16 gives every router's experts >= kExpertRowsFixedFrom rows, not multiples of
  // kExpertRowQuantum (fixed-shape padded matmuls); the small shapes use runtime rows.
  const auto [B, T] = GENERATE(std::pair{1, 17}, std::pair{3, 5}, std::pair{100, 16});
  const int group_images = GENERATE(1, 2);
  const double factor = GENERATE(0.25, 1.05);
  const bool bpr = GENERATE(false, true);
  if (router != &vmoe::find_router("top_k") && !bpr) return;  // routing order only matters for top-k
  if (router == &vmoe::find_router("soft") && factor != 1.05) return;  // no capacity in Soft-MoE
  const int D = 16, M = 24;
  MoeConfig moe;
  moe.layers = {0};
  moe.router = router;
  moe.num_experts = router == &vmoe::find_router("soft") ? 5 : 8;
  moe.k = 2;
  moe.capacity_factor = factor;
  moe.batch_priority = bpr;
  moe.group_images = group_images;
  moe.slots_per_expert = router == &vmoe::find_router("soft") ? 3 : 1;
  const int E = moe.num_experts, P = moe.slots_per_expert;
  const int64_t N = int64_t{B} * T;
  const uint64_t seed = 5000 + B * 100 + T * 10 + group_images;
  auto [w0, b0, w1, b1, router_w, mu] = random_moe_layer(E, D, M, P, seed);
  const float scale = 3.0f;
  std::vector<float> mu_ready(mu.size());
  soft_normalised_mu(mu_ready.data(), mu.data(), scale, D, E * P);
  auto h = testutil::random_normal(N * D, seed + 7);
  auto x = testutil::random_normal(N * D, seed + 8);

  std::vector<float> y(N * D);
  naive::MoeParams p{w0.data(), b0.data(), w1.data(), b1.data(), router_w.data(), mu.data(), scale};
  naive::LayerRouting want;
  naive::moe_layer(y.data(), h.data(), N, group_images * T, D, M, moe, p, &want);

  MoeWeights w{w0.data(), b0.data(), w1.data(), b1.data(), router_w.data(), mu_ready.data()};
  MoeWorkspace ws;
  nn::PrimitiveCache cache;
  MoeLayerTrace trace;
  std::vector<float> got = x;
  moe_forward(got.data(), h.data(), MoeShape{N, T, D, M}, moe, w, ws, cache, &trace, nullptr);
  INFO("router " << router->name() << " B " << B << " T " << T << " group " << group_images << " factor "
                 << factor << " bpr " << bpr);
  CHECK(residual_mismatches(got, x, y) == 0);
  CHECK(trace.times_taken == want.times_taken);
  if (router == &vmoe::find_router("top_k")) {
    CHECK(trace.choice_expert == want.expert);
    std::vector<uint8_t> kept(trace.choice_kept.begin(), trace.choice_kept.end());
    CHECK(kept == want.kept);
  }
  if (router != &vmoe::find_router("soft")) CHECK(trace.group_capacity == want.group_capacity);

  SECTION("a second call with the same workspace gives the same result") {
    std::vector<float> again = x;
    moe_forward(again.data(), h.data(), MoeShape{N, T, D, M}, moe, w, ws, cache, nullptr, nullptr);
    CHECK(testutil::max_abs_diff(again.data(), got.data(), got.size()) == 0.0);
  }
}

// ---- issue 11 variants: shared experts, expert_mlp_dim, balance bias -------------------

// Shared experts (every token, weight 1), a routed/shared hidden size of its own, and the
// balance bias on the top-k choice, against the naive layer (same tolerance as above).
TEST_CASE("moe_forward with shared experts, expert_mlp_dim and a balance bias matches naive", "[moe][layer]") {
  const Router* router = GENERATE(&vmoe::find_router("top_k"), &vmoe::find_router("soft"));
  const int shared = GENERATE(0, 2);
  const bool bias = GENERATE(false, true);
  const double factor = GENERATE(0.5, 1.05);
  if (router == &vmoe::find_router("soft") && (bias || factor != 1.05)) return;  // balance bias is top-k only
  const int B = 3, T = 5, D = 16, M = 8;  // M: expert_mlp_dim, unlike any mlp_dim
  MoeConfig moe;
  moe.layers = {0};
  moe.router = router;
  moe.num_experts = 4, moe.k = 2, moe.capacity_factor = factor, moe.group_images = 1, moe.slots_per_expert = 2;
  moe.num_shared_experts = shared;
  moe.expert_mlp_dim = M;
  moe.balance = bias ? Balance::bias : Balance::aux;
  const int E = moe.num_experts, P = moe.slots_per_expert;
  const int64_t N = int64_t{B} * T;
  const uint64_t seed = 7000 + shared * 10 + bias * 2 + (router == &vmoe::find_router("soft"));
  auto [w0, b0, w1, b1, router_w, mu] = random_moe_layer(E, D, M, P, seed);
  auto balance = testutil::random_normal(E, seed + 7, 2.0f);  // large enough to change choices
  auto s0 = testutil::random_normal(std::max(shared, 1) * D * M, seed + 8, 1.0f / std::sqrt(float(D)));
  auto sb0 = testutil::random_normal(std::max(shared, 1) * M, seed + 9, 0.1f);
  auto s1 = testutil::random_normal(std::max(shared, 1) * M * D, seed + 10, 1.0f / std::sqrt(float(M)));
  auto sb1 = testutil::random_normal(std::max(shared, 1) * D, seed + 11, 0.1f);
  const float scale = 3.0f;
  std::vector<float> mu_ready(mu.size());
  soft_normalised_mu(mu_ready.data(), mu.data(), scale, D, E * P);
  auto h = testutil::random_normal(N * D, seed + 12);
  auto x = testutil::random_normal(N * D, seed + 13);

  naive::MoeParams p{w0.data(), b0.data(), w1.data(), b1.data(), router_w.data(), mu.data(), scale};
  p.balance_bias = balance.data();
  p.shared_w0 = s0.data(), p.shared_b0 = sb0.data(), p.shared_w1 = s1.data(), p.shared_b1 = sb1.data();
  std::vector<float> y(N * D);
  naive::LayerRouting want;
  naive::moe_layer(y.data(), h.data(), N, T, D, M, moe, p, &want);

  MoeWeights w{w0.data(), b0.data(), w1.data(), b1.data(), router_w.data(), mu_ready.data()};
  w.balance_bias = balance.data();
  w.shared_w0 = s0.data(), w.shared_b0 = sb0.data(), w.shared_w1 = s1.data(), w.shared_b1 = sb1.data();
  MoeWorkspace ws;
  nn::PrimitiveCache cache;
  MoeLayerTrace trace;
  std::vector<float> got = x;
  moe_forward(got.data(), h.data(), MoeShape{N, T, D, M}, moe, w, ws, cache, &trace, nullptr);
  INFO("router " << router->name() << " shared " << shared << " bias " << bias << " factor " << factor);
  CHECK(residual_mismatches(got, x, y) == 0);
  CHECK(trace.times_taken == want.times_taken);
  if (router == &vmoe::find_router("top_k")) CHECK(trace.choice_expert == want.expert);

  SECTION("the shared experts' part is exactly what they add on top of the routed output") {
    if (shared == 0) return;
    MoeConfig routed_only = moe;
    routed_only.num_shared_experts = 0;
    std::vector<float> routed = x;
    moe_forward(routed.data(), h.data(), MoeShape{N, T, D, M}, routed_only, w, ws, cache, nullptr, nullptr);
    std::vector<float> out(D);
    double worst = 0;
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> sum(D, 0.0);
      for (int s = 0; s < shared; ++s) {
        naive::expert_mlp(out.data(), h.data() + n * D, s0.data() + s * D * M, sb0.data() + s * M, s1.data() + s * M * D,
                          sb1.data() + s * D, D, M);
        for (int d = 0; d < D; ++d) sum[d] += out[d];
      }
      for (int d = 0; d < D; ++d) worst = std::max(worst, std::fabs(got[n * D + d] - routed[n * D + d] - sum[d]));
    }
    CHECK(worst <= 1e-4);
  }
}

// Hand-worked: router = identity (D = E = 3), so the logits are h itself.
// Token 0: logits (2, 1, 0), bias (0, 1.5, 0) -> selection (2, 2.5, 0) picks expert 1,
// whose gate is softmax(2, 1, 0)[1] = e / (e^2 + e + 1) = 0.2447, not a biased softmax.
// Token 1: logits (0, 0, 3) -> selection (0, 1.5, 3) keeps expert 2 at e^3 / (e^3 + 2).
TEST_CASE("balance bias: the choice uses biased logits, the gates stay unbiased", "[moe][balance]") {
  const int D = 3, E = 3, M = 2;
  MoeConfig moe;
  moe.layers = {0};
  moe.router = &vmoe::find_router("top_k");
  moe.num_experts = E, moe.k = 1, moe.capacity_factor = 4.0, moe.capacity_multiple_of = 1;
  moe.balance = Balance::bias;
  const std::vector<float> router = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  const std::vector<float> bias = {0.0f, 1.5f, 0.0f};
  const std::vector<float> h = {2, 1, 0, 0, 0, 3};
  std::vector<float> w0(E * D * M, 0.1f), b0(E * M, 0.0f), w1(E * M * D, 0.1f), b1(E * D, 0.0f);
  MoeWeights w{w0.data(), b0.data(), w1.data(), b1.data(), router.data(), nullptr};
  w.balance_bias = bias.data();
  MoeWorkspace ws;
  nn::PrimitiveCache cache;
  MoeLayerTrace trace;
  std::vector<float> x(2 * D, 0.0f);
  moe_forward(x.data(), h.data(), MoeShape{2, 2, D, M}, moe, w, ws, cache, &trace, nullptr);
  const double e = std::exp(1.0);
  CHECK(trace.choice_expert == std::vector<int>{1, 2});
  CHECK(trace.choice_gate[0] == Approx(e / (e * e + e + 1)).epsilon(1e-5));
  CHECK(trace.choice_gate[1] == Approx(e * e * e / (e * e * e + 2)).epsilon(1e-5));
  SECTION("without the bias token 0 goes to expert 0") {
    moe.balance = Balance::aux;
    moe_forward(x.data(), h.data(), MoeShape{2, 2, D, M}, moe, w, ws, cache, &trace, nullptr);
    CHECK(trace.choice_expert == std::vector<int>{0, 2});
  }
}

TEST_CASE("balance bias update: each expert moves toward the mean load", "[moe][balance]") {
  std::vector<float> bias = {0.0f, 0.5f, -0.5f, 0.0f};
  update_balance_bias(bias.data(), {6, 2, 3, 1}, 0.25f);  // mean 3: over, under, at, under
  CHECK(bias == std::vector<float>{-0.25f, 0.75f, -0.5f, 0.25f});

  SECTION("repeated updates spread a skewed router over the experts") {
    // 64 tokens whose logits favour expert 0 by 2; top-1 by logits + bias.
    const int S = 64, E = 4;
    auto logits = testutil::random_normal(S * E, 99, 0.5f);
    for (int t = 0; t < S; ++t) logits[t * E] += 2.0f;
    std::vector<float> gates(logits.size()), select(logits.size());
    naive::softmax_rows(gates.data(), logits.data(), S, E);
    std::vector<float> b(E, 0.0f);
    auto max_load = [&] {
      for (int i = 0; i < S * E; ++i) select[i] = logits[i] + b[i % E];
      TopKRouting r;
      TopKOptions o;
      o.k = 1, o.capacity = S, o.select = select.data();
      route_top_k(r, gates.data(), nullptr, S, E, o);
      std::vector<int64_t> load(E, 0);
      for (int e : r.expert) ++load[e];
      return load;
    };
    const auto before = max_load();
    for (int step = 0; step < 400; ++step) update_balance_bias(b.data(), max_load(), 0.02f);
    const auto after = max_load();
    INFO("load before " << before[0] << " " << before[1] << " " << before[2] << " " << before[3] << ", after "
                        << after[0] << " " << after[1] << " " << after[2] << " " << after[3]);
    CHECK(*std::max_element(before.begin(), before.end()) >= 40);
    CHECK(*std::max_element(after.begin(), after.end()) <= 24);  // mean 16
    CHECK(*std::min_element(after.begin(), after.end()) >= 8);
  }
}
