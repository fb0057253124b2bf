// Foreground patches and the share of them the routers kept (issue 11, item 4), on
// hand-worked cases: the 10%-of-range pixel rule at its edge, and kept shares from the
// routings of DESIGN §4's worked example.
#include <catch2/catch.hpp>

#include "core/error.hpp"
#include "io/image.hpp"
#include "moe/router_registry.hpp"
#include "moe/routers.hpp"
#include "spec/router.hpp"
#include "tasks/foreground.hpp"

using namespace vmoe;

namespace {

// 4x4 image, 2x2 patches: a 2x2 grid, patches row-major.
ModelConfig tiny_config(int channels, float lo, float hi) {
  ModelConfig c;
  c.image.height = c.image.width = 4;
  c.image.channels = channels;
  c.image.value_min = lo;
  c.image.value_max = hi;
  c.patch_h = c.patch_w = 2;
  return c;
}

// The model input of 8-bit pixels, mapped as the image rules map them.
std::vector<float> model_input(const std::vector<unsigned char>& bytes, const ModelConfig& c) {
  std::vector<float> out(bytes.size());
  preprocess_image(out.data(), bytes.data(), c.image.height, c.image.width, c.image.channels, c.image, "test");
  return out;
}

// A top-k trace of one image of S tokens (no CLS) from a routing of its one group.
MoeLayerTrace top_k_trace(const TopKRouting& r, int S) {
  MoeLayerTrace t;
  t.router = &vmoe::find_router("top_k");
  t.k = r.k;
  t.tokens_per_image = S;
  t.times_taken.assign(S, 0);
  for (int i = 0; i < S; ++i)
    for (int q = 0; q < r.k; ++q) t.times_taken[i] += r.slot[i * r.k + q] >= 0;
  return t;
}

}  // namespace

TEST_CASE("foreground: a patch with a byte above 25.5 of 255, any channel", "[foreground]") {
  SECTION("grey, value range [-1, 1]: 25 is background, 26 is foreground") {
    const ModelConfig c = tiny_config(1, -1.0f, 1.0f);
    // patch 0 (top left) all 25; patch 1 (top right) one 26; patch 2 all 0; patch 3 one 255.
    const std::vector<unsigned char> bytes = {25, 25, 0,  26,   //
                                              25, 25, 0,  0,    //
                                              0,  0,  0,  0,    //
                                              0,  0,  0,  255};
    CHECK(foreground_patches(model_input(bytes, c).data(), c) == std::vector<uint8_t>{0, 1, 0, 1});
  }
  SECTION("the rule is relative to the value range: [0, 1] and [-3, 5] agree") {
    const std::vector<unsigned char> bytes = {26, 0, 0, 0, 0, 0, 25, 0, 0, 0, 0, 0, 0, 0, 0, 200};
    for (auto [lo, hi] : {std::pair{0.0f, 1.0f}, std::pair{-3.0f, 5.0f}}) {
      const ModelConfig c = tiny_config(1, lo, hi);
      CHECK(foreground_patches(model_input(bytes, c).data(), c) == std::vector<uint8_t>{1, 0, 0, 1});
    }
  }
  SECTION("colour: one channel above the threshold is enough") {
    const ModelConfig c = tiny_config(3, -1.0f, 1.0f);
    std::vector<unsigned char> bytes(4 * 4 * 3, 20);
    bytes[(2 * 4 + 3) * 3 + 1] = 30;  // pixel (2, 3), green: patch 3
    CHECK(foreground_patches(model_input(bytes, c).data(), c) == std::vector<uint8_t>{0, 0, 0, 1});
  }
}

TEST_CASE("foreground kept: DESIGN section 4's example routed with known drops", "[foreground]") {
  // 3 tokens, 3 experts, k = 2; token 2 is background.
  const float gates[] = {.4f, 0.f, .2f, .5f, .1f, .4f, .3f, .2f, .6f};
  const std::vector<uint8_t> mask = {1, 1, 0};
  TopKRouting r;
  SECTION("c = 2, vanilla: t0 keeps both, t1 keeps one (t1->e2 dropped)") {
    route_top_k(r, gates, 3, 3, 2, 2, false);
    const ForegroundKept n = count_foreground_kept(top_k_trace(r, 3), mask, 3, 2);
    CHECK(n.foreground == 2);
    CHECK(n.kept_all == 1);
    CHECK(n.kept_any == 2);
  }
  SECTION("c = 2, BPR: t0 keeps one (t0->e2 dropped), t1 keeps both") {
    route_top_k(r, gates, 3, 3, 2, 2, true);
    const ForegroundKept n = count_foreground_kept(top_k_trace(r, 3), mask, 3, 2);
    CHECK(n.kept_all == 1);
    CHECK(n.kept_any == 2);
  }
  SECTION("c = 1, vanilla: t0 keeps e0 only, t1 loses both (e0 full, then e2 full)") {
    route_top_k(r, gates, 3, 3, 2, 1, false);
    const MoeLayerTrace t = top_k_trace(r, 3);
    CHECK(t.times_taken == std::vector<int>{1, 0, 1});
    const ForegroundKept n = count_foreground_kept(t, mask, 3, 2);
    CHECK(n.kept_all == 0);
    CHECK(n.kept_any == 1);
  }
  SECTION("c = 1, BPR: the background token t2 goes first and takes e2; t0 loses both") {
    route_top_k(r, gates, 3, 3, 2, 1, true);
    const MoeLayerTrace t = top_k_trace(r, 3);
    CHECK(t.times_taken == std::vector<int>{0, 1, 1});
    const ForegroundKept n = count_foreground_kept(t, mask, 3, 2);
    CHECK(n.kept_all == 0);
    CHECK(n.kept_any == 1);
  }
}

TEST_CASE("foreground kept: CLS excluded, two images, every router", "[foreground]") {
  // Two images of CLS + 3 patches; token n = image * 4 + position.
  MoeLayerTrace t;
  t.tokens_per_image = 4;
  t.times_taken = {0, 2, 1, 0,   // image 0: CLS dropped (never counts), patches kept 2, 1, 0 times
                   3, 0, 2, 2};  // image 1
  const std::vector<uint8_t> mask = {1, 1, 1,   // image 0: all foreground
                                     0, 1, 1};  // image 1: patch 0 background
  SECTION("top-k, k = 2") {
    t.router = &vmoe::find_router("top_k");
    t.k = 2;
    const ForegroundKept n = count_foreground_kept(t, mask, 3, 99);  // the threshold is k, not the argument
    CHECK(n.foreground == 5);
    CHECK(n.kept_all == 3);  // image 0 patch 0, image 1 patches 1, 2
    CHECK(n.kept_any == 4);
  }
  SECTION("experts-choice: all = taken by at least the given k") {
    t.router = &vmoe::find_router("experts_choice");
    t.k = 0;
    CHECK(count_foreground_kept(t, mask, 3, 2).kept_all == 3);
    CHECK(count_foreground_kept(t, mask, 3, 1).kept_all == 4);
    CHECK(count_foreground_kept(t, mask, 3, 2).kept_any == 4);
  }
  SECTION("Soft-MoE drops nothing") {
    t.router = &vmoe::find_router("soft");
    const ForegroundKept n = count_foreground_kept(t, mask, 3, 2);
    CHECK(n.foreground == 5);
    CHECK(n.kept_all == 5);
    CHECK(n.kept_any == 5);
  }
  SECTION("a mask of the wrong size is an error") {
    t.router = &vmoe::find_router("top_k");
    t.k = 2;
    CHECK_THROWS_AS(count_foreground_kept(t, {1, 1, 1}, 3, 2), Error);
    CHECK_THROWS_AS(count_foreground_kept(t, mask, 2, 2), Error);
  }
}
