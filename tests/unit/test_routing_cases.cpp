// Routing against the hand-worked cases of DESIGN §4.
#include <catch2/catch.hpp>

#include "core/error.hpp"
#include "moe/capacity.hpp"
#include "moe/routers.hpp"

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
