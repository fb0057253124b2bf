// Patch importance (tasks/importance.hpp, issue 22): a hand-built model where one token's
// MoE output decides the class, tokens no expert takes, the oracle order's optimality
// with k = 1, and --priority oracle / --importance through the engine and eval.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include <unistd.h>

#include <filesystem>

#include "core/error.hpp"
#include "io/dataset.hpp"
#include "io/model_file.hpp"
#include "model/architectures.hpp"
#include "model/engine.hpp"
#include "moe/router_registry.hpp"
#include "moe/routers.hpp"
#include "spec/router.hpp"
#include "tasks/fit_priority.hpp"
#include "tasks/importance.hpp"

using namespace vmoe;

namespace {

void fill(Tensor& t, float v) { std::fill(t.data(), t.data() + t.numel(), v); }

// One MoE block (2 experts, top-1, dropless reference), GAP classifier. The image is dark
// except one patch, so every other token's residual is exactly 0, its layer norm 0 and
// its expert output 0. The experts write only to channel 0 (every row of w1 is
// 10 * e_0), the attention adds nothing (zero output projection) and the head's class 0
// reads channel 0 against a constant class 1: the bright token's MoE output alone makes the class 0.
Model one_token_decides(uint64_t seed) {
  ModelConfig c = find_architecture("vmoe-fmnist").config;
  c.num_layers = 1;
  c.classifier = Classifier::gap;
  c.moe->layers = {0};
  c.moe->num_experts = 2;
  c.moe->k = 1;
  c.image.value_min = 0.0f;  // a black pixel is 0, so a dark patch embeds to exactly 0
  Model m = init_model(c, seed);
  VitParams& p = m.params;
  const int64_t D = c.hidden_size, M = c.expert_mlp_dim(), E = c.moe->num_experts;
  fill(p.embedding_bias, 0), fill(p.pos_embedding, 0);
  BlockParams& b = p.blocks[0];
  fill(b.out_kernel, 0), fill(b.out_bias, 0), fill(b.ln1_bias, 0), fill(b.ln1_scale, 1);
  fill(b.mlp0_bias, 0), fill(b.mlp1_bias, 0), fill(b.mlp1_kernel, 0);
  for (int64_t e = 0; e < E; ++e) {
    // The same expert twice, whichever the router picks.
    std::copy(b.mlp0_kernel.data(), b.mlp0_kernel.data() + D * M, b.mlp0_kernel.data() + e * D * M);
    for (int64_t r = 0; r < M; ++r) b.mlp1_kernel.data()[(e * M + r) * D] = 10.0f;
  }
  fill(p.encoder_norm_scale, 1), fill(p.encoder_norm_bias, 0);
  fill(p.head_kernel, 0), fill(p.head_bias, 0);
  // GAP pools the normalised tokens, and the dark ones normalise to 0, so logit 0 =
  // LN(bright token)[0]: about sqrt(D) when the expert output dominates channel 0, of
  // order 1 without it; logit 1 = 3, the others 0.
  p.head_kernel.data()[0] = static_cast<float>(c.num_tokens());
  p.head_bias.data()[1] = 3.0f;
  m.source = "one-token-decides";
  return m;
}

}  // namespace

TEST_CASE("importance: the one token whose MoE output decides the class ranks first", "[importance]") {
  const uint64_t seed = GENERATE(1, 2, 3);
  const Model m = one_token_decides(seed);
  const ModelConfig& c = m.config;
  Engine engine(m);
  const int T = c.num_tokens(), gw = c.grid_w();
  REQUIRE(T == c.num_patches());
  const int bright = GENERATE(0, 17, 48);
  std::vector<float> image(static_cast<size_t>(c.image.height) * c.image.width, 0.0f);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.5f, 1.0f);
  for (int y = 0; y < c.patch_h; ++y)
    for (int x = 0; x < c.patch_w; ++x)
      image[static_cast<size_t>((bright / gw) * c.patch_h + y) * c.image.width + (bright % gw) * c.patch_w + x] = u(rng);
  const MoeConfig before = *engine.routing();
  const PatchImportance imp = patch_importance(engine, image.data(), 1);
  CHECK(engine.routing()->dropless == before.dropless);  // the routing is given back
  REQUIRE(imp.predicted[0] == 0);
  const float* v = imp.of(0, 0);
  CHECK(std::max_element(v, v + T) - v == bright);
  CHECK(v[bright] > 1.0f);  // nats: without it class 0 is far from certain
  for (int t = 0; t < T; ++t)
    if (t != bright) CHECK(v[t] == 0.0f);  // a zero expert output removes nothing
}

TEST_CASE("importance: a token no expert took has importance exactly 0", "[importance]") {
  const uint64_t seed = GENERATE(1, 2);
  ModelConfig c = find_architecture("ec-fmnist").config;
  c.moe->capacity_factor = 0.25;  // experts-choice keeps this in the reference pass
  const Model m = init_model(c, seed);
  Engine engine(m);
  const int B = 2, T = c.num_tokens();
  std::vector<float> images(static_cast<size_t>(B) * c.image.height * c.image.width);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (float& x : images) x = u(rng);
  const PatchImportance imp = patch_importance(engine, images.data(), B);
  REQUIRE(imp.blocks == c.moe->layers);
  int untaken = 0, nonzero = 0;
  for (size_t j = 0; j < imp.blocks.size(); ++j) {
    const MoeLayerTrace& t = imp.reference.layers[j];
    for (int b = 0; b < B; ++b)
      for (int tok = 0; tok < T; ++tok) {
        const float v = imp.of(b, static_cast<int>(j))[tok];
        if (t.times_taken[static_cast<size_t>(b) * T + tok] == 0) {
          ++untaken;
          CHECK(v == 0.0f);
        } else {
          nonzero += v != 0.0f;
        }
      }
  }
  CHECK(untaken > 0);
  CHECK(nonzero > 0);
}

TEST_CASE("importance: Soft-MoE and dense models are refused with a reason", "[importance]") {
  std::vector<float> image(28 * 28, 0.5f);
  const Model soft = init_model(find_architecture("softmoe-fmnist").config, 1);
  Engine soft_engine(soft);
  CHECK_THROWS_WITH(patch_importance(soft_engine, image.data(), 1), Catch::Contains("drops nothing"));
  const Model dense = init_model(find_architecture("vit-fmnist").config, 1);
  Engine dense_engine(dense);
  CHECK_THROWS_WITH(patch_importance(dense_engine, image.data(), 1), Catch::Contains("dense"));
}

// With k = 1 each expert is a bin of `capacity` slots and each token fits one bin: taking
// tokens greedily by weight is optimal on this (partition) matroid, so BPR in importance
// order keeps at least as much positive importance as any other processing order.
TEST_CASE("importance: with k = 1 the oracle order keeps the most importance", "[importance]") {
  const uint64_t seed = GENERATE(range(1, 21));
  std::mt19937_64 rng(seed);
  const int S = 48, E = 4;
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::exponential_distribution<float> heavy(1.0f);
  std::vector<float> probs(static_cast<size_t>(S) * E), importance(S), other(S);
  for (int t = 0; t < S; ++t) {
    float sum = 0;
    for (int e = 0; e < E; ++e) sum += probs[t * E + e] = std::exp(normal(rng));
    for (int e = 0; e < E; ++e) probs[t * E + e] /= sum;
    importance[t] = t % 5 == 0 ? -heavy(rng) : heavy(rng) * heavy(rng);  // some negative, a heavy tail
  }
  auto kept = [&](const TopKRouting& r) {
    double sum = 0;
    for (int t = 0; t < S; ++t)
      if (r.slot[t] >= 0 && importance[t] > 0) sum += importance[t];
    return sum;
  };
  for (int capacity : {1, 2, 3, 6, 12}) {
    TopKOptions o;
    o.k = 1, o.capacity = capacity, o.priority = Priority::oracle, o.oracle = importance.data();
    TopKRouting best;
    route_top_k(best, probs.data(), nullptr, S, E, o);
    const double oracle = kept(best);
    for (Priority p : {Priority::max_gate, Priority::sum_gates, Priority::entropy, Priority::random}) {
      TopKOptions q = o;
      q.priority = p;
      TopKRouting r;
      route_top_k(r, probs.data(), nullptr, S, E, q);
      CHECK(kept(r) <= oracle + 1e-9);
    }
    TopKOptions vanilla = o;
    vanilla.batch_priority = false;
    TopKRouting r;
    route_top_k(r, probs.data(), nullptr, S, E, vanilla);
    CHECK(kept(r) <= oracle + 1e-9);
    for (int trial = 0; trial < 10; ++trial) {  // arbitrary orders: scores from a shuffle
      std::vector<float> scores(S);
      std::iota(scores.begin(), scores.end(), 0.0f);
      std::shuffle(scores.begin(), scores.end(), rng);
      TopKOptions any = o;
      any.oracle = scores.data();
      route_top_k(r, probs.data(), nullptr, S, E, any);
      CHECK(kept(r) <= oracle + 1e-9);
    }
  }
}

TEST_CASE("importance: --priority oracle needs importance, and routes by it", "[importance]") {
  const Model m = init_model(find_architecture("vmoe-fmnist").config, 3);
  Engine engine(m);
  const int B = 2;
  std::vector<float> images(static_cast<size_t>(B) * 28 * 28);
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (float& x : images) x = u(rng);
  RoutingOverrides o;
  o.capacity_factor = 0.25;
  o.priority = Priority::oracle;
  engine.set_routing(o);
  std::vector<float> logits(static_cast<size_t>(B) * m.config.num_classes);
  CHECK_THROWS_WITH(engine.forward(logits.data(), images.data(), B), Catch::Contains("priority oracle"));
  const PatchImportance imp = patch_importance(engine, images.data(), B);
  CHECK(engine.routing()->priority == Priority::oracle);
  std::vector<std::vector<float>> scores;
  for (size_t j = 0; j < imp.blocks.size(); ++j) scores.push_back(imp.block_scores(static_cast<int>(j)));
  engine.set_oracle_priority(scores);
  RoutingTrace trace;
  engine.forward(logits.data(), images.data(), B, &trace);
  for (size_t j = 0; j < trace.layers.size(); ++j)
    CHECK(trace.layers[j].priority_score == scores[j]);  // BPR's scores are the importance
}

TEST_CASE("spearman: hand-worked values", "[importance]") {
  CHECK(spearman({1, 2, 3, 4}, {10, 20, 30, 40}) == Approx(1.0));
  CHECK(spearman({1, 2, 3, 4}, {4, 3, 2, 1}) == Approx(-1.0));
  CHECK(spearman({1, 1, 1}, {1, 2, 3}) == 0.0);
  // Ties take their average rank: ranks (0.5, 0.5, 2) against (0, 1, 2).
  CHECK(spearman({5, 5, 9}, {1, 2, 3}) == Approx(0.8660254).epsilon(1e-6));
}

TEST_CASE("fit-priority: solve_spd on a hand-worked system", "[importance]") {
  // [[4, 2], [2, 3]] x = [2, 1]  ->  x = [0.5, 0]
  const std::vector<double> x = solve_spd({4, 2, 2, 3}, {2, 1}, 2);
  CHECK(x[0] == Approx(0.5));
  CHECK(x[1] == Approx(0.0).margin(1e-12));
  CHECK_THROWS_WITH(solve_spd({1, 2, 2, 1}, {1, 1}, 2), Catch::Contains("not positive definite"));
}

TEST_CASE("fit-priority: the head learns which token matters and leaves the function alone", "[importance]") {
  const Model m = one_token_decides(4);
  const ModelConfig& c = m.config;
  Engine engine(m);
  const int H = c.image.height, W = c.image.width, gw = c.grid_w(), T = c.num_tokens();
  // Training images: dark, one bright patch somewhere.
  Dataset data;
  data.rows = H, data.cols = W, data.channels = 1, data.name = "synthetic";
  data.class_names = {"a", "b"};
  std::mt19937_64 rng(9);
  std::uniform_int_distribution<int> where(0, T - 1), bright(150, 255);
  auto add_image = [&](int patch) {
    const size_t base = data.pixels.size();
    data.pixels.resize(base + static_cast<size_t>(H) * W, 0);
    for (int y = 0; y < c.patch_h; ++y)
      for (int x = 0; x < c.patch_w; ++x)
        data.pixels[base + static_cast<size_t>((patch / gw) * c.patch_h + y) * W + (patch % gw) * c.patch_w + x] =
            static_cast<uint8_t>(bright(rng));
    data.labels.push_back(0);
  };
  for (int i = 0; i < 24; ++i) add_image(where(rng));
  FitPriorityOptions o;
  o.images = 24, o.batch = 8;
  o.target = GENERATE(FitPriorityOptions::Target::nats, FitPriorityOptions::Target::share);
  const FitPriorityResult r = fit_priority(engine, data, o);
  REQUIRE(r.model.config.moe->priority == Priority::fitted);
  REQUIRE(r.r2.size() == 1);
  CHECK(r.r2[0] > 0.5);  // one bright token per image carries all of it
  // A new image: the head scores its bright token above every dark one.
  Dataset probe = data;
  probe.pixels.clear(), probe.labels.clear();
  const int patch = 30;
  std::swap(data, probe);
  add_image(patch);
  std::swap(data, probe);
  std::vector<float> image(static_cast<size_t>(H) * W);
  dataset_image(image.data(), probe, 0, c.image);
  Engine fitted(r.model);
  RoutingTrace trace;
  std::vector<float> logits(c.num_classes), original(c.num_classes);
  fitted.forward(logits.data(), image.data(), 1, &trace);
  const std::vector<float>& score = trace.layers.at(0).priority_score;
  CHECK(std::max_element(score.begin(), score.end()) - score.begin() == patch);
  // Priority "fitted" only orders: at full capacity the logits are the original model's.
  RoutingOverrides full;
  full.capacity_factor = 4.0;
  fitted.set_routing(full), engine.set_routing(full);
  fitted.forward(logits.data(), image.data(), 1);
  engine.forward(original.data(), image.data(), 1);
  CHECK(logits == original);
}

TEST_CASE("fit-priority: a fitted model saves and loads with its heads", "[importance]") {
  const Model m = init_model(find_architecture("vmoe-fmnist").config, 2);
  Engine engine(m);
  Dataset data;
  data.rows = data.cols = 28, data.channels = 1, data.name = "noise", data.class_names = {"x"};
  std::mt19937_64 rng(1);
  for (int i = 0; i < 4; ++i) {
    for (int p = 0; p < 28 * 28; ++p) data.pixels.push_back(static_cast<uint8_t>(rng() % 256));
    data.labels.push_back(0);
  }
  FitPriorityOptions o;
  o.images = 4;
  const FitPriorityResult r = fit_priority(engine, data, o);
  const std::string path = (std::filesystem::temp_directory_path() / ("vmoe_fit_" + std::to_string(::getpid()) + ".safetensors")).string();
  save_model(r.model, path);
  const Model back = load_model(path);
  std::filesystem::remove(path);
  REQUIRE(back.config.moe->priority == Priority::fitted);
  for (int l : back.config.moe->layers) {
    CHECK(back.params.blocks[l].priority_kernel.numel() == back.config.hidden_size);
    CHECK(back.params.blocks[l].priority_kernel.data()[0] == r.model.params.blocks[l].priority_kernel.data()[0]);
  }
  // The learned scorer's tensors are the head's: fitting a learned model is refused.
  ModelConfig lc = find_architecture("vmoe-fmnist").config;
  lc.moe->priority = Priority::learned;
  const Model learned = init_model(lc, 2);
  Engine learned_engine(learned);
  CHECK_THROWS_WITH(fit_priority(learned_engine, data, o), Catch::Contains("learned scorer"));
}
