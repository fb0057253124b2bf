// Dataset-level routing statistics (tasks/routing_stats): hand-built traces whose expert
// is a function of the token position give exact matrices and position NMI 1, a constant
// router gives 0, merges of parts equal one pass, and the JSON round trip is lossless.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/error.hpp"
#include "tasks/routing_stats.hpp"
#include "viz/stats_pictures.hpp"

using namespace vmoe;

namespace {

// A 2x2 patch grid with a CLS token: T = 5 tokens per image.
constexpr int kGrid = 2, kT = kGrid * kGrid + 1, kE = 4;

RoutingStats empty_stats(StatsKind kind, int classes, int P = 1) {
  RoutingStats s;
  for (int c = 0; c < classes; ++c) s.classes.push_back("class" + std::to_string(c));
  s.kind = kind;
  s.num_experts = kE;
  s.slots_per_expert = kind == StatsKind::soft ? P : 0;
  s.tokens_per_image = kT;
  s.cls = true;
  s.grid_h = s.grid_w = kGrid;
  s.model = "m.safetensors";
  s.data = "d";
  s.router = s.routing = to_string(kind);
  const int X = kind == StatsKind::soft ? kE * P : kE;
  for (int block : {1, 3}) s.layers.push_back(vmoe::empty_stats_layer(block, X, classes, kT));
  return s;
}

int position_expert(int p) { return p % kE; }  // CLS -> e0, patches 1..4 -> e1, e2, e3, e0

// Top-k (k = 2) trace of B images: first choice f(position) (or `constant`), second
// f + 1; the second choice of every even token is dropped. Gates 0.75 / 0.25.
RoutingTrace top_k_trace(int B, int constant = -1) {
  RoutingTrace tr;
  for (int block : {1, 3}) {
    MoeLayerTrace t;
    t.layer = block;
    t.num_experts = kE;
    t.k = 2;
    t.tokens_per_image = kT;
    for (int n = 0; n < B * kT; ++n) {
      const int e = constant >= 0 ? constant : position_expert(n % kT);
      t.choice_expert.insert(t.choice_expert.end(), {e, (e + 1) % kE});
      t.choice_gate.insert(t.choice_gate.end(), {0.75f, 0.25f});
      t.choice_kept.insert(t.choice_kept.end(), {1, static_cast<uint8_t>(n % 2)});
      t.times_taken.push_back(1 + n % 2);
    }
    tr.layers.push_back(t);
  }
  return tr;
}

}  // namespace

TEST_CASE("routing stats: expert a function of position gives exact matrices, position NMI 1, class NMI 0") {
  RoutingStats s = empty_stats(StatsKind::top_k, 3);
  const std::vector<int> labels{0, 1, 2, 0, 0, 1};  // class 0: 3 images, class 1: 2, class 2: 1
  const int B = static_cast<int>(labels.size());
  accumulate_routing_stats(s, top_k_trace(B), labels);
  REQUIRE(s.images == B);
  const std::vector<int> per_class{3, 2, 1};
  for (const RoutingStatsLayer& l : s.layers) {
    for (int c = 0; c < 3; ++c)
      for (int e = 0; e < kE; ++e) {
        int positions = 0;  // positions whose first choice is e
        for (int p = 0; p < kT; ++p) positions += position_expert(p) == e;
        CHECK(l.class_expert[c * kE + e] == per_class[c] * positions);
      }
    for (int p = 0; p < kT; ++p)
      for (int e = 0; e < kE; ++e) CHECK(l.position_expert[p * kE + e] == (position_expert(p) == e ? B : 0));
    // Per expert, from the rules above: every choice naming e counts in load; kept unless a
    // second choice of an even token.
    std::vector<int64_t> load(kE, 0), kept(kE, 0), drops(kE, 0), gate(kE, 0);
    std::vector<int64_t> kept_by_class(3 * kE, 0);
    for (int n = 0; n < B * kT; ++n) {
      const int e0 = position_expert(n % kT), e1 = (e0 + 1) % kE;
      ++load[e0], ++load[e1], ++kept[e0];
      ++kept_by_class[labels[n / kT] * kE + e0];
      gate[e0] += kMassScale * 3 / 4, gate[e1] += kMassScale / 4;
      if (n % 2) ++kept[e1], ++kept_by_class[labels[n / kT] * kE + e1];
      else ++drops[e1];
    }
    CHECK(l.load == load);
    CHECK(l.kept == kept);
    CHECK(l.drops == drops);
    CHECK(l.gate_sum == gate);
    CHECK(l.class_expert_kept == kept_by_class);
    for (int e = 0; e < kE; ++e) CHECK(l.mean_gate()[e] == Approx(double(gate[e]) / kMassScale / load[e]));
    CHECK(l.position_nmi() == Approx(1.0).epsilon(1e-12));
    CHECK(l.class_nmi() == Approx(0.0).margin(1e-12));  // every image has the same positions
  }
}

TEST_CASE("routing stats: a constant router gives NMI 0 for class and position") {
  RoutingStats s = empty_stats(StatsKind::top_k, 2);
  accumulate_routing_stats(s, top_k_trace(4, 2), {0, 1, 1, 0});
  for (const RoutingStatsLayer& l : s.layers) {
    CHECK(l.position_nmi() == 0.0);
    CHECK(l.class_nmi() == 0.0);
    CHECK(l.position_expert[3 * kE + 2] == 4);
  }
}

TEST_CASE("routing stats: NMI normalisation") {
  // expert = class: 1; independent: 0; empty: 0; a function that is not a bijection: 1.
  CHECK(normalised_mutual_information({5, 0, 0, 0, 7, 0, 0, 0, 2}, 3, 3) == Approx(1.0).epsilon(1e-12));
  CHECK(normalised_mutual_information({2, 4, 6, 3, 6, 9}, 2, 3) == Approx(0.0).margin(1e-12));
  CHECK(normalised_mutual_information({0, 0, 0, 0}, 2, 2) == 0.0);
  CHECK(normalised_mutual_information({3, 0, 4, 0, 0, 5}, 3, 2) == Approx(1.0).epsilon(1e-12));
  // [[2,1],[1,2]]: I = 2/3 log(4/3) + 1/3 log(2/3), H = log 2 on both sides.
  const double I = 2.0 / 3 * std::log(4.0 / 3) + 1.0 / 3 * std::log(2.0 / 3);
  CHECK(normalised_mutual_information({2, 1, 1, 2}, 2, 2) == Approx(I / std::log(2.0)).epsilon(1e-12));
  CHECK_THROWS_AS(normalised_mutual_information({1, 2, 3}, 2, 2), Error);
}

TEST_CASE("routing stats: experts-choice first choice is the argmax gate; kept counts every expert that took it") {
  RoutingStats s = empty_stats(StatsKind::experts_choice, 2);
  RoutingTrace tr;
  const int B = 2;
  for (int block : {1, 3}) {
    MoeLayerTrace t;
    t.layer = block;
    t.num_experts = kE;
    t.tokens_per_image = kT;
    for (int n = 0; n < B * kT; ++n) {
      const int e = position_expert(n % kT);
      for (int x = 0; x < kE; ++x) {
        t.gates.push_back(x == e ? 0.5f : 0.5f / 3);
        // Expert e takes the token when n is odd; expert (e + 2) % E always takes it.
        t.expert_took.push_back((x == e && n % 2) || x == (e + 2) % kE);
      }
      t.times_taken.push_back(1 + n % 2);
    }
    tr.layers.push_back(t);
  }
  accumulate_routing_stats(s, tr, {1, 0});
  for (const RoutingStatsLayer& l : s.layers) {
    for (int p = 0; p < kT; ++p) CHECK(l.position_expert[p * kE + position_expert(p)] == B);
    std::vector<int64_t> load(kE, 0), kept(kE, 0), drops(kE, 0);
    for (int n = 0; n < B * kT; ++n) {
      const int e = position_expert(n % kT);
      ++load[e];
      ++kept[(e + 2) % kE];
      if (n % 2) ++kept[e];
      else ++drops[e];
    }
    CHECK(l.load == load);
    CHECK(l.kept == kept);
    CHECK(l.drops == drops);
    CHECK(l.position_nmi() == Approx(1.0).epsilon(1e-12));
  }
  // Without gates (cheap trace) experts-choice statistics cannot be made.
  for (auto& t : tr.layers) t.gates.clear();
  CHECK_THROWS_AS(accumulate_routing_stats(s, tr, {1, 0}), Error);
}

TEST_CASE("routing stats: Soft-MoE counts dispatch mass per slot in fixed point") {
  const int P = 2, X = kE * P;
  RoutingStats s = empty_stats(StatsKind::soft, 2, P);
  RoutingTrace tr;
  for (int block : {1, 3}) {
    MoeLayerTrace t;
    t.layer = block;
    t.num_experts = kE;
    t.slots_per_expert = P;
    t.tokens_per_image = kT;
    // One image: slot x reads only token x % T (weight 1), combine spreads 1/8 over slots.
    for (int n = 0; n < kT; ++n)
      for (int x = 0; x < X; ++x) {
        t.dispatch.push_back(x % kT == n ? 1.0f : 0.0f);
        t.combine.push_back(0.125f);
      }
    t.times_taken.assign(kT, X);
    tr.layers.push_back(t);
  }
  accumulate_routing_stats(s, tr, {1});
  for (const RoutingStatsLayer& l : s.layers) {
    for (int x = 0; x < X; ++x) {
      CHECK(l.load[x] == kMassScale);
      CHECK(l.class_expert[1 * X + x] == kMassScale);
      CHECK(l.class_expert[0 * X + x] == 0);
      CHECK(l.position_expert[(x % kT) * X + x] == kMassScale);
      CHECK(l.gate_sum[x] == kMassScale * kT / 8);
      CHECK(l.drops[x] == 0);
    }
    // The slot determines the position: NMI 1 (min normalisation).
    CHECK(l.position_nmi() == Approx(1.0).epsilon(1e-12));
    CHECK(l.class_nmi() == 0.0);  // one class seen
  }
}

TEST_CASE("routing stats: parts merge to exactly one pass, JSON round trip, merge errors") {
  const std::vector<int> labels{0, 1, 2, 0, 0, 1};
  // Whole: one pass of 6 images (top-k, position router with a class-dependent twist).
  RoutingTrace all = top_k_trace(6);
  for (auto& t : all.layers)
    for (int n = 0; n < 6 * kT; ++n)
      if (labels[n / kT] == 2) t.choice_expert[n * 2] = 3;
  RoutingStats whole = empty_stats(StatsKind::top_k, 3);
  accumulate_routing_stats(whole, all, labels);
  // Parts: images {0, 3}, {1, 4}, {2, 5} (round robin over 3 shards).
  std::vector<RoutingStats> parts;
  for (int shard = 0; shard < 3; ++shard) {
    RoutingStats part = empty_stats(StatsKind::top_k, 3);
    part.shard_count = 3;
    part.shards = {shard};
    RoutingTrace tr = all;
    for (auto& t : tr.layers) {
      MoeLayerTrace u = t;
      u.choice_expert.clear(), u.choice_gate.clear(), u.choice_kept.clear(), u.times_taken.clear();
      for (int i : {shard, shard + 3})
        for (int p = 0; p < kT; ++p) {
          const int n = i * kT + p;
          u.choice_expert.insert(u.choice_expert.end(), {t.choice_expert[2 * n], t.choice_expert[2 * n + 1]});
          u.choice_gate.insert(u.choice_gate.end(), {t.choice_gate[2 * n], t.choice_gate[2 * n + 1]});
          u.choice_kept.insert(u.choice_kept.end(), {t.choice_kept[2 * n], t.choice_kept[2 * n + 1]});
          u.times_taken.push_back(t.times_taken[n]);
        }
      t = u;
    }
    accumulate_routing_stats(part, tr, {labels[shard], labels[shard + 3]});
    parts.push_back(part);
  }
  RoutingStats merged = parts[2];
  merged.merge(parts[0]);
  CHECK(merged.shard_count == 3);
  merged.merge(parts[1]);
  CHECK(merged.shard_count == 1);  // complete: the bookkeeping of one run
  CHECK(routing_stats_to_json(merged).dump() == routing_stats_to_json(whole).dump());
  CHECK(whole.layers[0].class_nmi() > 0.0);

  const RoutingStats back = routing_stats_from_json(routing_stats_to_json(whole), "x");
  CHECK(routing_stats_to_json(back).dump() == routing_stats_to_json(whole).dump());

  RoutingStats twice = parts[0];
  CHECK_THROWS_WITH(twice.merge(parts[0]), Catch::Contains("twice"));
  RoutingStats other = parts[1];
  other.model = "other.safetensors";
  CHECK_THROWS_WITH(twice.merge(other), Catch::Contains("model"));
  nlohmann::json bad = routing_stats_to_json(whole);
  bad["layers"][0]["class_expert"][0][1] = -1;
  CHECK_THROWS_WITH(routing_stats_from_json(bad, "bad.json"), Catch::Contains("negative"));
  bad = routing_stats_to_json(whole);
  bad["layers"][1]["position_expert"].erase(0);
  CHECK_THROWS_WITH(routing_stats_from_json(bad, "bad.json"), Catch::Contains("rows"));
  // A trace that does not fit (wrong number of tokens) is refused.
  CHECK_THROWS_AS(accumulate_routing_stats(whole, top_k_trace(2), {0, 1, 2}), Error);
}

TEST_CASE("routing stats pictures: many classes and experts are drawn in part and the title says so") {
  RoutingStats s = empty_stats(StatsKind::top_k, 3);
  accumulate_routing_stats(s, top_k_trace(3), {0, 1, 2});
  const auto pictures = viz::routing_stats_pictures(s);
  REQUIRE(pictures.size() == 2 * s.layers.size() + 1);
  for (const auto& p : pictures) {
    CHECK(!p.image.empty());
    CHECK(p.left_out.empty());
  }
  // 1500 classes x 5000 experts: only the counts' shapes matter to the pictures.
  RoutingStats big = s;
  big.classes.assign(1500, "c");
  for (auto& l : big.layers) {
    l.columns = 5000;
    l.class_expert.assign(size_t{1500} * 5000, 1);
    l.position_expert.assign(size_t{kT} * 5000, 1);
  }
  const viz::Picture heat = viz::class_expert_heatmap(big, 0);
  CHECK(heat.image.cols < 4000);
  CHECK(heat.image.rows < 4000);
  CHECK_THAT(heat.left_out, Catch::Contains("60 of 1500 classes") && Catch::Contains("64 of 5000 experts"));
  const viz::Picture maps = viz::position_maps(big, 0);
  CHECK(maps.image.cols < 4000);
  CHECK_THAT(maps.left_out, Catch::Contains("64 of 5000 experts"));
}
