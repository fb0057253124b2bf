// Routing against the hand-worked cases of DESIGN §4.
#include <catch2/catch.hpp>

#include "core/error.hpp"
#include "moe/capacity.hpp"
#include "moe/router_registry.hpp"
#include "moe/routers.hpp"
#include "spec/router.hpp"

#include <algorithm>
#include <set>

using namespace vmoe;

TEST_CASE("capacity follows ceil then multiple of 4", "[routing]") {
  CHECK(expert_capacity(400 * 2, 8, 1.05) == 108);
  CHECK(expert_capacity(32 * 2, 32, 1.0) == 4);
  CHECK(expert_capacity(50 * 2, 8, 1.05) == 16);  // 13.125 -> 14 -> 16
  CHECK(expert_capacity(3 * 2, 3, 1.0, CapacityRounding::ceil, 0) == 2);
  CHECK_THROWS_AS(expert_capacity(400, 8, 0.0), Error);
  CHECK(effective_capacity_factor(108, 8, 800) == Approx(1.08));
}

TEST_CASE("worked example of DESIGN section 4", "[routing]") {
  const float gates[] = {.4f, 0.f, .2f, .5f, .1f, .4f, .3f, .2f, .6f};
  TopKRouting r;
  auto kept = [&](int t, int e) {
    for (int q = 0; q < 2; ++q)
      if (r.expert[t * 2 + q] == e) return r.slot[t * 2 + q] >= 0;
    FAIL("token " << t << " did not choose expert " << e);
    return false;
  };
  SECTION("vanilla keeps t0->e0, t1->e0, t2->e2, t0->e2 and drops t1->e2, t2->e0") {
    route_top_k(r, gates, 3, 3, 2, 2, false);
    CHECK(kept(0, 0));
    CHECK(kept(1, 0));
    CHECK(kept(2, 2));
    CHECK(kept(0, 2));
    CHECK_FALSE(kept(1, 2));
    CHECK_FALSE(kept(2, 0));
    CHECK(r.order == std::vector<int>{0, 1, 2});
  }
  SECTION("BPR keeps t2->e2, t1->e0, t0->e0, t1->e2 and drops t2->e0, t0->e2") {
    route_top_k(r, gates, 3, 3, 2, 2, true);
    CHECK(r.order == std::vector<int>{2, 1, 0});
    CHECK(kept(2, 2));
    CHECK(kept(1, 0));
    CHECK(kept(0, 0));
    CHECK(kept(1, 2));
    CHECK_FALSE(kept(2, 0));
    CHECK_FALSE(kept(0, 2));
  }
}

// The routing variants of docs/ROUTING.md on hand-worked cases.
TEST_CASE("priority scorers order tokens as worked by hand", "[routing][priority]") {
  // t0 = {.5, .45, .05}: top-1 .5, top-2 sum .95, entropy 0.856
  // t1 = {.6, .1, .3}:   top-1 .6, top-2 sum .9,  entropy 0.898
  const float probs[] = {.5f, .45f, .05f, .6f, .1f, .3f};
  float s[2];
  priority_scores(s, probs, nullptr, 2, 3, 2, Priority::max_gate);
  CHECK(s[0] == Approx(.5f));
  CHECK(s[1] == Approx(.6f));
  priority_scores(s, probs, nullptr, 2, 3, 2, Priority::sum_gates);
  CHECK(s[0] == Approx(.95f));
  CHECK(s[1] == Approx(.9f));
  priority_scores(s, probs, nullptr, 2, 3, 2, Priority::entropy);
  CHECK(s[0] == Approx(-0.8557).epsilon(1e-3));
  CHECK(s[1] == Approx(-0.8979).epsilon(1e-3));
  const float learned[] = {-1.0f, 2.0f};
  priority_scores(s, probs, learned, 2, 3, 2, Priority::learned);
  CHECK(s[0] == -1.0f);
  CHECK(s[1] == 2.0f);
  CHECK_THROWS_AS(priority_scores(s, probs, nullptr, 2, 3, 2, Priority::learned), Error);
  // random: blind to the probabilities, the same on every call, a permutation-worthy spread
  float r1[8], r2[8];
  std::vector<float> uniform(8 * 3, 1.0f / 3), peaked(8 * 3, 0.0f);
  for (int t = 0; t < 8; ++t) peaked[t * 3 + t % 3] = 1.0f;
  priority_scores(r1, uniform.data(), nullptr, 8, 3, 2, Priority::random);
  priority_scores(r2, peaked.data(), nullptr, 8, 3, 2, Priority::random);
  CHECK(std::equal(r1, r1 + 8, r2));
  CHECK(std::set<float>(r1, r1 + 8).size() == 8);

  TopKRouting r;
  TopKOptions o;
  o.k = 2, o.capacity = 1;
  for (auto [priority, first] : {std::pair{Priority::max_gate, 1}, {Priority::sum_gates, 0}, {Priority::entropy, 0}}) {
    o.priority = priority;
    route_top_k(r, probs, nullptr, 2, 3, o);
    INFO(to_string(priority));
    CHECK(r.order.front() == first);
  }
}

TEST_CASE("overflow next sends a choice to the next expert with room; topk_softmax renormalises", "[routing][overflow]") {
  // k = 1, capacity 1, vanilla. All three tokens prefer expert 0.
  const float probs[] = {.7f, .2f, .1f, .6f, .3f, .1f, .5f, .1f, .4f};
  TopKRouting r;
  TopKOptions o;
  o.k = 1, o.capacity = 1, o.batch_priority = false;
  SECTION("drop: only t0 is kept") {
    route_top_k(r, probs, nullptr, 3, 3, o);
    CHECK(r.slot == std::vector<int>{0, -1, -1});
    CHECK(r.expert == std::vector<int>{0, 0, 0});
  }
  SECTION("next: t1 goes to e1 (its .3), t2 to e2 (its .4)") {
    o.overflow = Overflow::next;
    route_top_k(r, probs, nullptr, 3, 3, o);
    CHECK(r.slot == std::vector<int>{0, 0, 0});
    CHECK(r.expert == std::vector<int>{0, 1, 2});
    CHECK(r.choice == std::vector<int>{0, 0, 0});
    CHECK(r.gate[1] == Approx(.3f));
    CHECK(r.gate[2] == Approx(.4f));
    SECTION("with topk_softmax the weight is divided by the top-1 probability") {
      o.gating = Gating::topk_softmax;
      route_top_k(r, probs, nullptr, 3, 3, o);
      CHECK(r.gate[0] == Approx(1.0f));
      CHECK(r.gate[1] == Approx(.5f));  // .3 / .6
      CHECK(r.gate[2] == Approx(.8f));  // .4 / .5
    }
  }
  SECTION("next never puts a token twice in one expert") {
    // k = 2, capacity 1, first choices before second ones: t0 -> e0; t1's e0 is full, so
    // -> e1; t0's second choice e1 is now full, so -> e2; t1's second choice e1 it holds
    // already and e2 is full: dropped.
    const float p2[] = {.5f, .4f, .1f, .5f, .4f, .1f};
    o.k = 2, o.overflow = Overflow::next;
    route_top_k(r, p2, nullptr, 2, 3, o);
    CHECK(r.expert == std::vector<int>{0, 2, 1, 1});
    CHECK(r.slot == std::vector<int>{0, 0, 0, -1});
  }
}

TEST_CASE("dropless capacity is the group size", "[routing][dropless]") {
  MoeConfig m;
  m.router = &vmoe::find_router("top_k"), m.num_experts = 8, m.k = 2, m.dropless = true;
  CHECK(group_capacity(m, 400) == 400);
  m.dropless = false, m.capacity_factor = 1.05;
  CHECK(group_capacity(m, 400) == expert_capacity(800, 8, 1.05));
  // All tokens on one expert: nothing dropped.
  std::vector<float> probs(50 * 8, 0.0f);
  for (int t = 0; t < 50; ++t) probs[t * 8] = 0.9f, probs[t * 8 + 1] = 0.1f;
  TopKRouting r;
  m.dropless = true;
  route_top_k(r, probs.data(), 50, 8, 2, static_cast<int>(group_capacity(m, 50)), true);
  CHECK(std::count(r.slot.begin(), r.slot.end(), -1) == 0);
}
