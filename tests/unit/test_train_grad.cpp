// Every backward pass against central finite differences of the forward loss, on tiny
// models of each router; and a tiny model over-fitting one fixed batch.
//
// Tolerance: the loss is float32 (~1e-7 relative) and eps = 2e-3, so rounding alone
// moves a finite difference by ~1e-7 * |L| / eps ~ 1e-4; truncation error is O(eps^2).
// We accept |fd - analytic| <= 5e-4 + 3% of the larger magnitude. Each model is checked
// with and without the auxiliary losses, so their (large) router gradients cannot hide
// an error in the (smaller) gradient through the kept gates. A perturbation that
// changes a routing decision (top-k choice, capacity drop, BPR order) makes the loss
// discontinuous there; such samples are detected through the routing signature and
// skipped, and the test requires that most samples were checked.
#include <catch2/catch.hpp>

#include <omp.h>

#include <cmath>
#include <random>
#include <vector>

#include "model/architectures.hpp"
#include "model/engine.hpp"
#include "model/vit_train.hpp"
#include "moe/router_registry.hpp"
#include "nn/context.hpp"
#include "spec/router.hpp"
#include "tasks/route.hpp"
#include "train/optimizer.hpp"

using namespace vmoe;
using namespace vmoe::train;

namespace {

ModelConfig tiny(const Router* router, Classifier classifier, bool representation, bool bpr = true) {
  ModelConfig c;
  c.image = {8, 8, 1, Resize::none, 256, -1.0f, 1.0f};
  c.patch_h = c.patch_w = 4;
  c.hidden_size = 16, c.num_layers = 2, c.num_heads = 2, c.mlp_dim = 24, c.num_classes = 5;
  c.classifier = classifier;
  if (representation) c.representation_size = 12;
  if (router) {
    MoeConfig m;
    m.layers = {1};
    m.router = router;
    m.num_experts = 4, m.k = 2;
    m.capacity_factor = 0.5;  // with multiple_of 1: capacity 2 for 10 choices over 4 experts: drops
    m.capacity_multiple_of = 1;
    m.batch_priority = bpr;
    m.slots_per_expert = 2;
    c.moe = m;
  }
  c.validate();
  return c;
}

struct Problem {
  Model model;
  std::vector<float> images;
  std::vector<int> labels;
};

Problem make_problem(const ModelConfig& c, int B, uint64_t seed) {
  Problem p{init_model(c, seed), {}, {}};
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Perturb everything so no gradient is trivially zero (zero biases, unit scales).
  for (ParamSlot& s : param_slots(p.model.params, c))
    for (int64_t i = 0; i < s.tensor->numel(); ++i) (*s.tensor)[i] += 0.3f * normal(rng);
  std::uniform_real_distribution<float> pixel(-1.0f, 1.0f);
  p.images.resize(static_cast<size_t>(B) * c.image.height * c.image.width * c.image.channels);
  for (float& v : p.images) v = pixel(rng);
  for (int b = 0; b < B; ++b) p.labels.push_back(static_cast<int>(rng() % c.num_classes));
  return p;
}

void check_gradients(const ModelConfig& c, uint64_t seed, float aux_weight) {
  const int B = 3;
  Problem p = make_problem(c, B, seed);
  TrainGraph graph(c, B);
  LossOptions options;
  options.importance_weight = aux_weight, options.load_weight = aux_weight;
  options.priority_penalty = aux_weight;  // learned scorers only
  VitParams grads = allocate_params(c);
  graph.step(p.model.params, grads, p.images.data(), p.labels.data(), nullptr, options);
  const auto signature = graph.routing_signature();
  auto grad_slots = param_slots(grads, c);
  auto slots = param_slots(p.model.params, c);
  std::mt19937_64 rng(seed);
  int checked = 0, skipped = 0;
  const float eps = 2e-3f;
  for (size_t s = 0; s < slots.size(); ++s) {
    Tensor& t = *slots[s].tensor;
    for (int sample = 0; sample < 8; ++sample) {
      const int64_t i = static_cast<int64_t>(rng() % t.numel());
      const float saved = t[i];
      t[i] = saved + eps;
      const double plus = graph.loss(p.model.params, p.images.data(), p.labels.data(), nullptr, options);
      const bool same_plus = graph.routing_signature() == signature;
      t[i] = saved - eps;
      const double minus = graph.loss(p.model.params, p.images.data(), p.labels.data(), nullptr, options);
      const bool same_minus = graph.routing_signature() == signature;
      t[i] = saved;
      if (!same_plus || !same_minus) {
        ++skipped;
        continue;
      }
      const double numeric = (plus - minus) / (2.0 * eps);
      const double analytic = (*grad_slots[s].tensor)[i];
      INFO(slots[s].name << "[" << i << "] numeric " << numeric << " analytic " << analytic);
      CHECK(std::abs(numeric - analytic) <= 5e-4 + 0.03 * std::max(std::abs(numeric), std::abs(analytic)));
      ++checked;
    }
  }
  INFO("checked " << checked << ", skipped for routing flips " << skipped);
  CHECK(checked >= 4 * (checked + skipped) / 5);
}

void check_gradients(const ModelConfig& c, uint64_t seed) {
  check_gradients(c, seed, 0.0f);
  if (c.moe) check_gradients(c, seed, 0.1f);  // auxiliary losses large enough to be seen
}

}  // namespace

TEST_CASE("backward matches finite differences: dense ViT, token and gap, pre-logits", "[train][grad]") {
  check_gradients(tiny(nullptr, Classifier::token, false), 1);
  check_gradients(tiny(nullptr, Classifier::gap, true), 2);
}

TEST_CASE("backward matches finite differences: top-k with capacity drops, BPR and vanilla", "[train][grad]") {
  check_gradients(tiny(&vmoe::find_router("top_k"), Classifier::token, false, true), 3);
  check_gradients(tiny(&vmoe::find_router("top_k"), Classifier::gap, true, false), 4);
}

TEST_CASE("backward matches finite differences: top-k variants (learned scorer, topk_softmax, overflow next, dropless)",
          "[train][grad]") {
  auto variant = [](Priority priority, Gating gating, Overflow overflow, bool dropless) {
    ModelConfig c = tiny(&vmoe::find_router("top_k"), Classifier::token, false, true);
    c.moe->priority = priority, c.moe->gating = gating, c.moe->overflow = overflow, c.moe->dropless = dropless;
    c.validate();
    return c;
  };
  check_gradients(variant(Priority::learned, Gating::softmax_topk, Overflow::drop, false), 11);
  check_gradients(variant(Priority::max_gate, Gating::topk_softmax, Overflow::drop, false), 12);
  check_gradients(variant(Priority::learned, Gating::topk_softmax, Overflow::next, false), 13);
  check_gradients(variant(Priority::sum_gates, Gating::softmax_topk, Overflow::next, true), 14);
}

TEST_CASE("backward matches finite differences: experts-choice", "[train][grad]") {
  check_gradients(tiny(&vmoe::find_router("experts_choice"), Classifier::token, false), 5);
}

TEST_CASE("backward matches finite differences: Soft-MoE", "[train][grad]") {
  check_gradients(tiny(&vmoe::find_router("soft"), Classifier::gap, false), 6);
  check_gradients(tiny(&vmoe::find_router("soft"), Classifier::token, true), 7);
}

// Training and the engine run one forward (Router::plan, the shared dispatch and
// combine): without router noise and with the same weights, the training graph's logits
// are the engine's up to the float rounding of their different GEMMs, for every router
// and every top-k variant. A changed routing decision would move them far more.
TEST_CASE("the training graph's logits equal the engine's for each router and top-k variant", "[train][model]") {
  const int variant = GENERATE(range(0, 11));
  const char* router = variant == 9 ? "experts_choice" : variant == 10 ? "soft" : "top_k";
  ModelConfig c = tiny(&find_router(router), Classifier::token, false, variant != 1);
  MoeConfig& m = *c.moe;
  switch (variant) {
    case 1: break;  // vanilla (no batch priority)
    case 2: m.priority = Priority::learned; break;
    case 3: m.priority = Priority::sum_gates; break;
    case 4: m.priority = Priority::entropy; break;
    case 5: m.gating = Gating::topk_softmax; break;
    case 6: m.overflow = Overflow::next; break;
    case 7: m.dropless = true; break;
    case 8: m.group_images = 2; break;  // groups of 10 tokens and a last one of 5
    default: break;
  }
  c.moe->layers = {0, 1};  // a routed block feeding a routed block
  c.validate();
  const int B = 3;
  Problem p = make_problem(c, B, 40 + variant);  // perturbs every weight, the learned scorer's too
  Engine engine(p.model);
  std::vector<float> want(static_cast<size_t>(B) * c.num_classes);
  RoutingTrace trace;
  engine.forward(want.data(), p.images.data(), B, &trace);
  TrainGraph graph(c, B);
  graph.loss(p.model.params, p.images.data(), p.labels.data(), nullptr, LossOptions{});
  const Tensor& got = graph.logits();
  REQUIRE(got.numel() == static_cast<int64_t>(want.size()));
  double diff = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::abs(double{got[static_cast<int64_t>(i)]} - want[i]));
    scale = std::max(scale, std::abs(double{want[i]}));
  }
  int dropped = 0;
  for (const MoeLayerTrace& t : trace.layers) dropped += count_layer(t).dropped_tokens + count_layer(t).dropped_choices;
  CAPTURE(variant, router, diff, scale, dropped);
  CHECK(diff <= 1e-4 * (1.0 + scale));
  // The capacity variants do drop here, so the comparison covers dropped tokens.
  if (m.router->drops() && !m.dropless) CHECK(dropped > 0);
}

// Shared experts and a separate expert_mlp_dim, on top-k (with a balance bias, which
// changes choices but must get no gradient: its finite difference is 0 wherever routing
// does not flip) and on Soft-MoE (whose backward overwrites dh before the shared part).
TEST_CASE("backward matches finite differences: shared experts, expert_mlp_dim, balance bias", "[train][grad]") {
  ModelConfig c = tiny(&vmoe::find_router("top_k"), Classifier::token, false);
  c.moe->num_shared_experts = 2;
  c.moe->expert_mlp_dim = 8;
  c.moe->balance = Balance::bias;
  c.validate();
  check_gradients(c, 8);
}

TEST_CASE("backward matches finite differences: Soft-MoE with a shared expert", "[train][grad]") {
  ModelConfig soft = tiny(&vmoe::find_router("soft"), Classifier::gap, false);
  soft.moe->num_shared_experts = 1;
  soft.moe->expert_mlp_dim = 10;
  soft.validate();
  check_gradients(soft, 9, 0.0f);
}

TEST_CASE("balance bias: a step reports every top-k choice and the update follows the loads", "[train][balance]") {
  ModelConfig c = tiny(&vmoe::find_router("top_k"), Classifier::token, false);
  c.moe->balance = Balance::bias;
  const int B = 4;
  Problem p = make_problem(c, B, 12);
  TrainGraph graph(c, B);
  VitParams grads = allocate_params(c);
  const StepResult r = graph.step(p.model.params, grads, p.images.data(), p.labels.data(), nullptr, LossOptions{});
  REQUIRE(r.expert_choices.size() == 1);
  const auto& load = r.expert_choices[0];
  int64_t total = 0;
  for (int64_t l : load) total += l;
  CHECK(total == int64_t{B} * c.num_tokens() * c.moe->k);  // dropped choices count too
  for (float g : std::vector<float>(grads.blocks[1].balance_bias.data(), grads.blocks[1].balance_bias.data() + 4))
    CHECK(g == 0.0f);
  const Tensor before = p.model.params.blocks[1].balance_bias.clone();
  update_balance_biases(p.model.params, c, r, 0.01f);
  for (int e = 0; e < c.moe->num_experts; ++e) {
    const double moved = p.model.params.blocks[1].balance_bias[e] - before[e];
    const double excess = double(load[e]) * c.moe->num_experts - double(total);
    INFO("expert " << e << " load " << load[e] << " moved " << moved);
    CHECK(moved == Approx(excess > 0 ? -0.01 : excess < 0 ? 0.01 : 0.0).margin(1e-6));
  }
}

TEST_CASE("a tiny V-MoE over-fits one fixed batch", "[train]") {
  const ModelConfig c = tiny(&vmoe::find_router("top_k"), Classifier::token, false);
  const int B = 16;
  Problem p = make_problem(c, B, 11);
  nn::context().created.clear();
  TrainGraph graph(c, B);
  VitParams grads = allocate_params(c);
  AdamW optimizer(c, AdamWConfig{});
  LossOptions options;
  options.label_smoothing = 0.0f;
  std::mt19937_64 noise(3);
  double first = 0, last = 0;
  for (int step = 0; step < 80; ++step) {
    StepResult r = graph.step(p.model.params, grads, p.images.data(), p.labels.data(), &noise, options);
    if (step == 0) first = r.loss;
    last = r.loss;
    clip_grad_norm(grads, c, 1.0);
    optimizer.step(p.model.params, grads, 3e-3f);
  }
  INFO("loss " << first << " -> " << last);
  CHECK(last < 0.2 * first);
  // No training op may fall back to a oneDNN reference kernel (they are ~100x slower).
  const auto slow = nn::reference_primitives();
  for (const auto& s : slow) UNSCOPED_INFO("reference kernel: " << s);
  CHECK(slow.empty());
}

// The clip norm is summed in fixed blocks and then in block order (train/optimizer.cpp):
// the same bits on 1 and 2 threads, within float-sum rounding of a long-double reference,
// and the scaled gradients' norm is the limit. AdamW is elementwise: the same bits too.
TEST_CASE("clip_grad_norm and AdamW give the same bits on 1 and 2 threads", "[train]") {
  const ModelConfig c = find_architecture("vmoe-fmnist").config;  // ~2.2 M values: many blocks
  const int saved = omp_get_max_threads();
  auto random_grads = [&] {
    VitParams g = allocate_params(c);
    std::mt19937_64 rng(21);
    std::normal_distribution<float> normal(0.0f, 0.01f);
    for (ParamSlot& s : param_slots(g, c))
      for (int64_t j = 0; j < s.tensor->numel(); ++j) (*s.tensor)[j] = normal(rng);
    return g;
  };
  long double reference = 0;
  {
    VitParams g = random_grads();
    for (ParamSlot& s : param_slots(g, c))
      for (int64_t j = 0; j < s.tensor->numel(); ++j) reference += static_cast<long double>((*s.tensor)[j]) * (*s.tensor)[j];
  }
  double norms[2];
  std::vector<std::vector<float>> params_after[2];
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    VitParams g = random_grads();
    Model m = init_model(c, 4);
    AdamW optimizer(c, AdamWConfig{});
    norms[threads - 1] = clip_grad_norm(g, c, 1.0);
    optimizer.step(m.params, g, 1e-3f);
    optimizer.step(m.params, g, 1e-3f);
    double clipped = 0;
    for (ParamSlot& s : param_slots(g, c))
      for (int64_t j = 0; j < s.tensor->numel(); ++j) clipped += double{(*s.tensor)[j]} * (*s.tensor)[j];
    CHECK(std::sqrt(clipped) == Approx(1.0).epsilon(1e-5));
    for (ParamSlot& s : param_slots(m.params, c)) params_after[threads - 1].emplace_back(s.tensor->data(), s.tensor->data() + s.tensor->numel());
  }
  omp_set_num_threads(saved);
  INFO("norms " << norms[0] << " " << norms[1] << " reference " << std::sqrt(static_cast<double>(reference)));
  CHECK(norms[0] > 1.0);  // so the clip above scaled
  CHECK(norms[0] == norms[1]);
  CHECK(norms[0] == Approx(std::sqrt(static_cast<double>(reference))).epsilon(1e-12));
  CHECK(params_after[0] == params_after[1]);
}
