// Sparse upcycling (lib/tasks/upcycle): an upcycled model with a zero router reproduces
// the dense model's logits wherever that is exact (top-k with nothing dropped, experts-
// choice with c = S), with and without splitting the MLP into chunks; with the capacity
// below that it does not (so the check can fail); Soft-MoE is not exact.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include "core/error.hpp"
#include "model/architectures.hpp"
#include "model/engine.hpp"
#include "moe/router_registry.hpp"
#include "naive/test_util.hpp"
#include "spec/router.hpp"
#include "tasks/upcycle.hpp"

using namespace vmoe;

namespace {

ModelConfig small_dense() {
  ModelConfig c;
  c.image = {8, 8, 1, Resize::none, 8, -1.0f, 1.0f};
  c.patch_h = c.patch_w = 2;  // 16 patches + CLS
  c.hidden_size = 12, c.num_layers = 3, c.num_heads = 2, c.mlp_dim = 16;
  c.num_classes = 5;
  return c;
}

// A dense model with non-zero biases everywhere, so that bias scaling mistakes show.
Model dense_model(uint64_t seed) {
  Model m = init_model(small_dense(), seed);
  std::mt19937_64 rng(seed + 7);
  std::normal_distribution<float> normal(0.0f, 0.2f);
  for (ParamSlot& slot : param_slots(m.params, m.config))
    if (slot.name.size() > 5 && slot.name.compare(slot.name.size() - 5, 5, "/bias") == 0)
      for (int64_t i = 0; i < slot.tensor->numel(); ++i) (*slot.tensor)[i] = normal(rng);
  return m;
}

std::vector<float> logits_of(const Model& model, const std::vector<float>& images, int B) {
  Engine engine(model);
  std::vector<float> logits(static_cast<size_t>(B) * model.config.num_classes);
  engine.forward(logits.data(), images.data(), B);
  return logits;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

}  // namespace

TEST_CASE("upcycled top-k and experts-choice models with a zero router give the dense logits", "[upcycle]") {
  const uint64_t seed = GENERATE(1, 2);
  const int split = GENERATE(1, 2);
  const auto router = GENERATE(&vmoe::find_router("top_k"), &vmoe::find_router("experts_choice"));
  const Model dense = dense_model(seed);
  const int B = 3;
  const std::vector<float> images = testutil::random_uniform(B * 64, seed + 100, -1.0f, 1.0f);
  const std::vector<float> want = logits_of(dense, images, B);

  UpcycleOptions o;
  o.layers = split == 1 ? std::vector<int>{0, 2} : std::vector<int>{0, 1, 2};
  o.router = router;
  o.num_experts = 4, o.k = 2, o.mlp_split = split;
  // Nothing dropped: top-k every token picks experts 0..k-1, so c >= S needs cf >= E/k;
  // experts-choice needs c = S, cf >= E.
  o.capacity_factor = router == &vmoe::find_router("top_k") ? 2.0 : 4.0;
  const Model moe = upcycle_model(dense, o);
  CAPTURE(seed, split, router->name());
  REQUIRE(moe.config.mlp_dim == 16 / split);
  CHECK(max_abs_diff(logits_of(moe, images, B), want) < 1e-4);

  // Below that capacity tokens are dropped and the logits move: the check above can fail.
  o.capacity_factor = router == &vmoe::find_router("top_k") ? 0.5 : 1.0;
  CHECK(max_abs_diff(logits_of(upcycle_model(dense, o), images, B), want) > 1e-3);
}

TEST_CASE("upcycle: soft is not exact, noise and router init move the model, bad options are errors", "[upcycle]") {
  const Model dense = dense_model(3);
  const std::vector<float> images = testutil::random_uniform(2 * 64, 5, -1.0f, 1.0f);
  const std::vector<float> want = logits_of(dense, images, 2);
  UpcycleOptions o;
  o.layers = {1};
  o.num_experts = 4, o.k = 2, o.capacity_factor = 2.0;
  o.expert_noise = 0.05;
  CHECK(max_abs_diff(logits_of(upcycle_model(dense, o), images, 2), want) > 1e-4);
  o.expert_noise = 0, o.router_std = 1.0;  // random gates are no longer 1/E
  CHECK(max_abs_diff(logits_of(upcycle_model(dense, o), images, 2), want) > 1e-4);
  o.router_std = 0, o.router = &vmoe::find_router("soft"), o.slots_per_expert = 2;
  const Model soft = upcycle_model(dense, o);
  CHECK(soft.config.moe->router == &vmoe::find_router("soft"));
  CHECK(max_abs_diff(logits_of(soft, images, 2), want) > 1e-4);

  UpcycleOptions bad = o;
  bad.router = &vmoe::find_router("top_k"), bad.mlp_split = 2;  // split needs every block MoE
  CHECK_THROWS_AS(upcycle_model(dense, bad), Error);
  bad.layers = {0, 1, 2}, bad.mlp_split = 3;  // 3 does not divide 16
  CHECK_THROWS_AS(upcycle_model(dense, bad), Error);
  bad.mlp_split = 1, bad.layers = {7};
  CHECK_THROWS_AS(upcycle_model(dense, bad), Error);
  bad.layers = {1};
  CHECK_THROWS_AS(upcycle_model(upcycle_model(dense, bad), bad), Error);  // already MoE
}
