// Whole models: the engine against naive_forward (tests/naive, written from DESIGN §2-4
// alone), batch independence, capacity drops, the no-`ref`-kernel rule, save/load and
// the shapes of the ImageNet-sized architectures.
#include <catch2/catch.hpp>

#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/error.hpp"
#include "io/config_json.hpp"
#include "io/model_file.hpp"
#include "model/architectures.hpp"
#include "model/engine.hpp"
#include "moe/router_registry.hpp"
#include "naive/naive_ops.hpp"
#include "naive/test_util.hpp"
#include "nn/context.hpp"
#include "spec/cost.hpp"
#include "spec/params.hpp"
#include "spec/router.hpp"

using namespace vmoe;

namespace {

// Logits of float32 models with D <= 96 and 6 blocks agree with a double-accumulating
// reference to ~1e-5; DESIGN/issue 2 set 1e-3 as the bar for the small models.
constexpr double kLogitTol = 1e-3;

// init_model leaves biases 0, LayerNorm at (1, 0), CLS 0 and the Soft-MoE scale 1; a
// bug that mixed up any of those would go unseen, so move every one of them.
void perturb(Model& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (ParamSlot& slot : param_slots(model.params, model.config)) {
    const std::string& n = slot.name;
    Tensor& t = *slot.tensor;
    auto ends_with = [&](const std::string& s) { return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0; };
    if (ends_with("Router/scale")) t[0] = 1.5f + 0.5f * std::fabs(normal(rng));
    else if (ends_with("/scale")) for (int64_t i = 0; i < t.numel(); ++i) t[i] = 1.0f + 0.2f * normal(rng);
    else if (ends_with("/bias")) for (int64_t i = 0; i < t.numel(); ++i) t[i] = 0.1f * normal(rng);
    else if (n == "cls") for (int64_t i = 0; i < t.numel(); ++i) t[i] = 0.5f * normal(rng);
    else if (ends_with("Router/dense/kernel")) for (int64_t i = 0; i < t.numel(); ++i) t[i] *= 3.0f;  // sharper gates
    else if (ends_with("balance_bias")) for (int64_t i = 0; i < t.numel(); ++i) t[i] = 1.5f * normal(rng);
  }
}

Model make_model(const ModelConfig& config, uint64_t seed) {
  Model m = init_model(config, seed);
  perturb(m, seed + 1);
  return m;
}

std::vector<float> random_images(const ModelConfig& c, int B, uint64_t seed) {
  return testutil::random_uniform(static_cast<size_t>(B) * c.image.height * c.image.width * c.image.channels, seed,
                                  c.image.value_min, c.image.value_max);
}

struct Variant {
  std::string name;
  ModelConfig config;
};

ModelConfig arch(const std::string& name) { return find_architecture(name).config; }

std::vector<Variant> small_variants() {
  std::vector<Variant> v;
  for (const char* name : {"vit-fmnist", "vmoe-fmnist", "ec-fmnist", "softmoe-fmnist"}) v.push_back({name, arch(name)});
  {
    ModelConfig c = arch("vmoe-fmnist");
    c.classifier = Classifier::gap;
    v.push_back({"vmoe-fmnist gap", c});
  }
  {
    ModelConfig c = arch("softmoe-fmnist");
    c.classifier = Classifier::gap;
    c.representation_size = 40;
    v.push_back({"softmoe-fmnist gap + representation 40", c});
  }
  {
    ModelConfig c = arch("vmoe-fmnist");
    c.representation_size = 32;
    v.push_back({"vmoe-fmnist representation 32", c});
  }
  {
    ModelConfig c = arch("vmoe-fmnist");  // issue 11: shared experts, fine-grained experts, bias balance
    c.moe->num_shared_experts = 2;
    c.moe->expert_mlp_dim = 96;
    c.moe->balance = Balance::bias;
    c.moe->capacity_factor = 0.5;
    v.push_back({"vmoe-fmnist 2 shared, experts 96 wide, balance bias, factor 0.5", c});
  }
  {
    ModelConfig c = arch("vmoe-fmnist");
    c.image.channels = 3;
    c.moe->k = 1;
    c.moe->batch_priority = false;
    v.push_back({"vmoe-fmnist 3 channels k 1 vanilla", c});
  }
  {
    ModelConfig c = arch("ec-fmnist");
    c.patch_h = c.patch_w = 7;
    c.image.channels = 3;
    v.push_back({"ec-fmnist patch 7 3 channels", c});
  }
  {
    ModelConfig c = arch("vmoe-fmnist");
    c.patch_h = 7, c.patch_w = 4;
    c.num_heads = 4;
    c.moe->layers = {0, 5};
    v.push_back({"vmoe-fmnist patch 7x4 4 heads moe 0,5", c});
  }
  for (const char* name : {"vmoe-fmnist", "ec-fmnist", "softmoe-fmnist"}) {
    ModelConfig c = arch(name);
    c.moe->group_images = 2;
    v.push_back({std::string(name) + " group_images 2", c});
  }
  return v;
}

// Engine vs naive on B images with the given overrides; also the routing decisions.
void check_against_naive(const Model& model, int B, const RoutingOverrides& o, uint64_t seed,
                         double* dropped_out = nullptr) {
  const ModelConfig& c = model.config;
  auto images = random_images(c, B, seed);
  Engine engine(model);
  engine.set_routing(o);
  std::vector<float> logits(static_cast<size_t>(B) * c.num_classes);
  RoutingTrace trace;
  engine.forward(logits.data(), images.data(), B, &trace);
  naive::ForwardInfo info;
  std::vector<float> want = naive::naive_forward(model, images.data(), B, o, &info);
  const double diff = testutil::max_abs_diff(logits.data(), want.data(), want.size());
  double scale = 0;
  for (float v : want) scale = std::max(scale, double{std::fabs(v)});
  INFO("max |engine - naive| = " << diff << " (logits up to " << scale << ")");
  CHECK(diff <= kLogitTol);
  CHECK(scale > 0.05);  // the comparison is not between two near-zero vectors
  REQUIRE(trace.layers.size() == info.layers.size());
  double dropped = 0;
  for (size_t l = 0; l < info.layers.size(); ++l) {
    const MoeLayerTrace& t = trace.layers[l];
    const naive::LayerRouting& r = info.layers[l];
    INFO("MoE block " << t.layer);
    CHECK(t.times_taken == r.times_taken);
    if (t.router == &vmoe::find_router("top_k")) {
      std::vector<uint8_t> kept(t.choice_kept.begin(), t.choice_kept.end());
      CHECK(kept == r.kept);
      CHECK(t.choice_expert == r.expert);
    }
    if (t.router != &vmoe::find_router("soft")) CHECK(t.group_capacity == r.group_capacity);
    for (int b = 0; b < B; ++b) dropped += t.dropped_fraction(b);
  }
  if (dropped_out) *dropped_out = dropped;
}

}  // namespace

TEST_CASE("Engine::forward matches naive_forward on every small architecture", "[model]") {
  for (const Variant& v : small_variants()) {
    DYNAMIC_SECTION(v.name) {
      Model model = make_model(v.config, 17);
      const int B = v.config.moe && v.config.moe->group_images == 2 ? 5 : 3;  // 5: a group of one at the end
      check_against_naive(model, B, {}, 23);
      if (v.name == "vmoe-fmnist" || v.name == "vmoe-fmnist 3 channels k 1 vanilla") {
        RoutingOverrides flip;
        flip.batch_priority = !v.config.moe->batch_priority;
        check_against_naive(model, B, flip, 29);
      }
    }
  }
}

TEST_CASE("capacity factor 0.25 drops tokens and still matches naive", "[model]") {
  for (const char* name : {"vmoe-fmnist", "ec-fmnist"}) {
    for (bool bpr : {true, false}) {
      if (std::string(name) == "ec-fmnist" && !bpr) continue;  // no routing order in experts-choice
      for (int group : {1, 2}) {
        DYNAMIC_SECTION(name << (bpr ? " bpr" : " vanilla") << " group " << group) {
          Model model = make_model(arch(name), 31);
          RoutingOverrides o;
          o.capacity_factor = 0.25;
          o.batch_priority = bpr;
          o.group_images = group;
          double dropped = 0;
          check_against_naive(model, 3, o, 37, &dropped);
          CHECK(dropped > 0.0);
        }
      }
    }
  }
}

// `vmoe bench` computes GFLOP/s from the routed rows the engine counts; the count must be
// the kept choices (top-k), the experts' picks (experts-choice) or every slot (Soft-MoE),
// and never more than the cost model's capacity-bound rows.
TEST_CASE("the engine counts the routed expert rows it processes", "[model][bench]") {
  for (const char* name : {"vmoe-fmnist", "ec-fmnist", "softmoe-fmnist"}) {
    for (double factor : {0.25, 1.05}) {
      DYNAMIC_SECTION(name << " factor " << factor) {
        Model model = make_model(arch(name), 43);
        const ModelConfig& c = model.config;
        RoutingOverrides o;
        if (c.moe->router != &vmoe::find_router("soft")) o.capacity_factor = factor;
        Engine engine(model);
        engine.set_routing(o);
        const int B = 3;
        auto images = random_images(c, B, 47);
        std::vector<float> logits(static_cast<size_t>(B) * c.num_classes);
        RoutingTrace trace;
        StageTimes times;
        engine.forward(logits.data(), images.data(), B, &trace, &times);
        int64_t want = 0;
        for (const MoeLayerTrace& t : trace.layers) {
          if (t.router == &vmoe::find_router("soft")) {
            want += int64_t{B} / t.group_images * t.num_experts * t.slots_per_expert;
            continue;
          }
          for (int taken : t.times_taken) want += taken;
        }
        CHECK(times.expert_rows == want);
        const double capacity_rows = model_cost(c, engine.routing()).expert_rows * B;
        CHECK(times.expert_rows <= capacity_rows + 1e-9);
        if (factor == 0.25 && c.moe->router == &vmoe::find_router("top_k")) CHECK(times.expert_rows < capacity_rows);
        StageTimes again;  // the count is per call: a second pass adds the same
        engine.forward(logits.data(), images.data(), B, nullptr, &again);
        CHECK(again.expert_rows == want);
      }
    }
  }
}

TEST_CASE("with group_images 1 an image's logits do not depend on its batch", "[model]") {
  for (const char* name : {"vit-fmnist", "vmoe-fmnist", "ec-fmnist", "softmoe-fmnist"}) {
    DYNAMIC_SECTION(name) {
      Model model = make_model(arch(name), 41);
      const ModelConfig& c = model.config;
      const int B = 5;
      const size_t image_size = static_cast<size_t>(c.image.height) * c.image.width * c.image.channels;
      auto images = random_images(c, B, 43);
      Engine engine(model);
      RoutingOverrides o;
      o.capacity_factor = 0.5;  // drops happen, so a leak between images would show
      engine.set_routing(o);
      std::vector<float> batch(static_cast<size_t>(B) * c.num_classes), alone(c.num_classes);
      RoutingTrace batch_trace, alone_trace;
      engine.forward(batch.data(), images.data(), B, &batch_trace);
      for (int b : {0, 2, 4}) {
        engine.forward(alone.data(), images.data() + b * image_size, 1, &alone_trace);
        INFO("image " << b);
        // Different batch sizes may block the GEMMs differently: equal up to float
        // rounding, and the routing decisions identical.
        CHECK(testutil::max_abs_diff(alone.data(), batch.data() + b * c.num_classes, c.num_classes) <= 1e-5);
        for (size_t l = 0; l < alone_trace.layers.size(); ++l) {
          const MoeLayerTrace& one = alone_trace.layers[l];
          const MoeLayerTrace& all = batch_trace.layers[l];
          const int T = one.tokens_per_image;
          CHECK(std::equal(one.times_taken.begin(), one.times_taken.end(), all.times_taken.begin() + b * T));
          CHECK(one.capacity_of_image(0) == all.capacity_of_image(b));
        }
      }
    }
  }
}

TEST_CASE("no primitive the engine creates is a slow reference kernel", "[model][onednn]") {
  SECTION("the check can fail") {
    auto& created = nn::context().created;
    created.push_back("matmul b8 m50 k96 n192: ref:any");
    auto slow = nn::reference_primitives();
    created.pop_back();
    REQUIRE(slow.size() >= 1);
    CHECK(slow.back().find(": ref") != std::string::npos);
  }
  SECTION("every small architecture and variant, several batch sizes and routings") {
    nn::context().created.clear();  // other tests build odd GEMMs on purpose; only the engine's count here
    for (const Variant& v : small_variants()) {
      Model model = make_model(v.config, 51);
      Engine engine(model);
      for (int B : {1, 5}) {
        auto images = random_images(v.config, B, 53);
        std::vector<float> logits(static_cast<size_t>(B) * v.config.num_classes);
        RoutingTrace trace;
        trace.detail = true;
        engine.forward(logits.data(), images.data(), B, &trace);
      }
      if (v.config.moe) {  // other group sizes give other per-group GEMM shapes
        RoutingOverrides o;
        o.capacity_factor = 0.25;
        o.group_images = 3;
        engine.set_routing(o);
        std::vector<float> logits(static_cast<size_t>(5) * v.config.num_classes);
        engine.forward(logits.data(), random_images(v.config, 5, 54).data(), 5);
      }
    }
    INFO(nn::context().created.size() << " primitives created");
    CHECK(nn::context().created.size() > 20);
    const auto slow = nn::reference_primitives();
    for (const auto& s : slow) UNSCOPED_INFO("reference kernel: " << s);
    CHECK(slow.empty());
  }
}

TEST_CASE("save_model then load_model is bit-exact", "[model][io]") {
  testutil::TempDir dir;
  for (const Variant& v : small_variants()) {
    DYNAMIC_SECTION(v.name) {
      Model model = make_model(v.config, 61);
      const std::string path = dir.file("model.safetensors");
      save_model(model, path);
      Model loaded = load_model(path);
      CHECK(loaded.source == path);
      CHECK(config_to_json(loaded.config) == config_to_json(model.config));
      auto want = param_slots(model.params, model.config);
      auto got = param_slots(loaded.params, loaded.config);
      REQUIRE(want.size() == got.size());
      for (size_t i = 0; i < want.size(); ++i) {
        INFO(want[i].name);
        CHECK(got[i].name == want[i].name);
        REQUIRE(got[i].tensor->shape() == want[i].tensor->shape());
        CHECK(std::memcmp(got[i].tensor->data(), want[i].tensor->data(), sizeof(float) * want[i].tensor->numel()) == 0);
      }
      CHECK(count_params(loaded) == count_params(model));
    }
  }
}

TEST_CASE("init_model is deterministic per seed", "[model]") {
  const ModelConfig c = arch("vmoe-fmnist");
  Model a = init_model(c, 7), b = init_model(c, 7), d = init_model(c, 8);
  auto sa = param_slots(a.params, c), sb = param_slots(b.params, c), sd = param_slots(d.params, c);
  bool all_same = true, any_diff = false;
  for (size_t i = 0; i < sa.size(); ++i) {
    all_same &= std::memcmp(sa[i].tensor->data(), sb[i].tensor->data(), sizeof(float) * sa[i].tensor->numel()) == 0;
    any_diff |= std::memcmp(sa[i].tensor->data(), sd[i].tensor->data(), sizeof(float) * sa[i].tensor->numel()) != 0;
  }
  CHECK(all_same);
  CHECK(any_diff);
}

namespace {
Shape slot_shape(const ModelConfig& c, const std::string& name) {
  VitParams p;
  for (const ParamSlot& s : param_slots(p, c))
    if (s.name == name) return s.shape;
  return {-1};
}
bool has_slot(const ModelConfig& c, const std::string& name) { return slot_shape(c, name) != Shape{-1}; }
}  // namespace

TEST_CASE("ImageNet-sized architectures have the official shapes", "[model][arch]") {
  SECTION("vmoe-s32") {
    const ModelConfig c = arch("vmoe-s32");
    CHECK(c.image.height == 224);
    CHECK(c.image.width == 224);
    CHECK(c.image.channels == 3);
    CHECK(c.image.resize == Resize::resize_small_crop);
    CHECK(c.patch_h == 32);
    CHECK(c.hidden_size == 512);
    CHECK(c.num_layers == 8);
    CHECK(c.num_heads == 8);
    CHECK(c.mlp_dim == 2048);
    CHECK(c.classifier == Classifier::token);
    CHECK(c.representation_size == 512);
    CHECK(c.num_classes == 1000);
    REQUIRE(c.moe);
    CHECK(c.moe->router == &vmoe::find_router("top_k"));
    CHECK(c.moe->num_experts == 8);
    CHECK(c.moe->k == 2);
    CHECK(c.moe->layers == std::vector<int>{5, 7});
    CHECK(c.num_tokens() == 50);
    CHECK(slot_shape(c, "embedding/kernel") == Shape{32, 32, 3, 512});
    CHECK(slot_shape(c, "cls") == Shape{1, 1, 512});
    CHECK(slot_shape(c, "Encoder/posembed_input/pos_embedding") == Shape{1, 50, 512});
    CHECK(slot_shape(c, "Encoder/encoderblock_0/SelfAttention/query/kernel") == Shape{512, 8, 64});
    CHECK(slot_shape(c, "Encoder/encoderblock_0/SelfAttention/query/bias") == Shape{8, 64});
    CHECK(slot_shape(c, "Encoder/encoderblock_0/SelfAttention/out/kernel") == Shape{8, 64, 512});
    CHECK(slot_shape(c, "Encoder/encoderblock_4/Mlp/Dense_0/kernel") == Shape{512, 2048});
    CHECK(slot_shape(c, "Encoder/encoderblock_5/Moe/Mlp/Dense_0/kernel") == Shape{8, 512, 2048});
    CHECK(slot_shape(c, "Encoder/encoderblock_5/Moe/Mlp/Dense_0/bias") == Shape{8, 2048});
    CHECK(slot_shape(c, "Encoder/encoderblock_7/Moe/Mlp/Dense_1/kernel") == Shape{8, 2048, 512});
    CHECK(slot_shape(c, "Encoder/encoderblock_7/Moe/Mlp/Dense_1/bias") == Shape{8, 512});
    CHECK(slot_shape(c, "Encoder/encoderblock_7/Moe/Router/dense/kernel") == Shape{512, 8});
    CHECK_FALSE(has_slot(c, "Encoder/encoderblock_6/Moe/Router/dense/kernel"));
    CHECK_FALSE(has_slot(c, "Encoder/encoderblock_5/Mlp/Dense_0/kernel"));
    CHECK(slot_shape(c, "pre_logits/kernel") == Shape{512, 512});
    CHECK(slot_shape(c, "head/kernel") == Shape{512, 1000});
    CHECK(slot_shape(c, "head/bias") == Shape{1000});
  }
  SECTION("vmoe-b16") {
    const ModelConfig c = arch("vmoe-b16");
    CHECK(c.num_layers == 12);
    CHECK(c.hidden_size == 768);
    CHECK(c.num_heads == 12);
    CHECK(c.mlp_dim == 3072);
    CHECK(c.moe->layers == std::vector<int>{1, 3, 5, 7, 9, 11});
    CHECK(c.num_tokens() == 197);
    CHECK(slot_shape(c, "Encoder/encoderblock_11/Moe/Mlp/Dense_0/kernel") == Shape{8, 768, 3072});
    CHECK(slot_shape(c, "Encoder/encoderblock_10/Mlp/Dense_1/kernel") == Shape{3072, 768});
  }
  SECTION("soft-s16") {
    const ModelConfig c = arch("soft-s16");
    CHECK(c.num_layers == 12);
    CHECK(c.hidden_size == 384);
    CHECK(c.num_heads == 6);
    CHECK(c.mlp_dim == 1536);
    CHECK(c.classifier == Classifier::gap);
    REQUIRE(c.moe);
    CHECK(c.moe->router == &vmoe::find_router("soft"));
    CHECK(c.moe->num_experts == 128);
    CHECK(c.moe->slots_per_expert == 1);
    CHECK(c.moe->layers == std::vector<int>{6, 7, 8, 9, 10, 11});
    CHECK(c.num_tokens() == 196);
    CHECK_FALSE(has_slot(c, "cls"));
    CHECK(slot_shape(c, "Encoder/posembed_input/pos_embedding") == Shape{1, 196, 384});
    CHECK(slot_shape(c, "embedding/kernel") == Shape{16, 16, 3, 384});
    CHECK(slot_shape(c, "Encoder/encoderblock_6/Moe/Router/mu") == Shape{384, 128, 1});
    CHECK(slot_shape(c, "Encoder/encoderblock_6/Moe/Router/scale") == Shape{});
    CHECK(slot_shape(c, "Encoder/encoderblock_11/Moe/Mlp/Dense_0/kernel") == Shape{128, 384, 1536});
    CHECK_FALSE(has_slot(c, "Encoder/encoderblock_6/Moe/Router/dense/kernel"));
    CHECK(slot_shape(c, "Encoder/encoderblock_5/Mlp/Dense_0/kernel") == Shape{384, 1536});
    CHECK(slot_shape(c, "head/kernel") == Shape{384, 1000});
  }
  SECTION("unknown names list the known ones") {
    try {
      find_architecture("nope");
      FAIL("no error");
    } catch (const Error& e) {
      const std::string msg = e.what();
      CHECK(msg.find("nope") != std::string::npos);
      for (const auto& a : architectures()) CHECK(msg.find(a.name) != std::string::npos);
    }
  }
}

namespace {
const Model& vmoe_s32() {
  static const Model model = make_model(arch("vmoe-s32"), 71);
  return model;
}
}  // namespace

TEST_CASE("vmoe-s32 at full size: one image through the engine", "[model][arch]") {
  const Model& model = vmoe_s32();
  auto images = random_images(model.config, 1, 73);
  nn::context().created.clear();
  Engine engine(model);
  std::vector<float> logits(model.config.num_classes);
  RoutingTrace trace;
  engine.forward(logits.data(), images.data(), 1, &trace);
  for (float v : logits) REQUIRE(std::isfinite(v));
  REQUIRE(trace.layers.size() == 2);
  CHECK(trace.layers[0].layer == 5);
  CHECK(trace.layers[1].layer == 7);
  // 50 tokens * 2 / 8 * 1.05 = 13.1 -> 14 -> 16 slots per expert.
  CHECK(trace.layers[0].capacity_of_image(0) == 16);
  const auto slow = nn::reference_primitives();
  for (const auto& s : slow) UNSCOPED_INFO("reference kernel: " << s);
  CHECK(slow.empty());
}

// Hidden (run with `vmoe_tests [slow]`): the naive forward at ImageNet size takes seconds.
TEST_CASE("vmoe-s32 at full size: engine vs naive forward", "[.][slow][model][arch]") {
  const Model& model = vmoe_s32();
  auto images = random_images(model.config, 1, 73);
  Engine engine(model);
  std::vector<float> logits(model.config.num_classes);
  RoutingTrace trace;
  engine.forward(logits.data(), images.data(), 1, &trace);
  naive::ForwardInfo info;
  auto want = naive::naive_forward(model, images.data(), 1, {}, &info);
  CHECK(testutil::max_abs_diff(logits.data(), want.data(), want.size()) <= kLogitTol);
  REQUIRE(trace.layers.size() == 2);
  for (size_t l = 0; l < 2; ++l) CHECK(trace.layers[l].times_taken == info.layers[l].times_taken);
}

TEST_CASE("small batches run on one thread, with primitives of their own", "[model][onednn]") {
  Model model = make_model(arch("vmoe-fmnist"), 85);
  Engine engine(model);
  // About 12 MFLOP per block and image over 22 oneDNN calls per block (8 experts): one
  // image is far below 12 MFLOP per call, 64 are above.
  CHECK(engine.threads_for_batch(1) == 1);
  CHECK(engine.threads_for_batch(64) == omp_get_max_threads());
  auto images = random_images(model.config, 5, 87);
  std::vector<float> five(5 * model.config.num_classes), one(model.config.num_classes);
  engine.forward(five.data(), images.data(), 5);
  const int threads = omp_get_max_threads();
  engine.forward(one.data(), images.data(), 1);
  CHECK(omp_get_max_threads() == threads);  // the caller's thread count is restored
  CHECK(testutil::max_abs_diff(one.data(), five.data(), one.size()) <= 1e-5);
}

// The small-batch cliff (issue 23): a V-MoE block's 16 small expert calls must not each
// wake the second thread at batches where the dense model's 6 larger calls already pay.
TEST_CASE("threads per pass follow the work per oneDNN call, and never fall as the batch grows", "[model][onednn]") {
  const std::string name = GENERATE(std::string("vit-fmnist"), std::string("vmoe-fmnist"), std::string("softmoe-fmnist"));
  Model model = make_model(arch(name), 89);
  Engine engine(model);
  INFO(name);
  int last = 1;
  for (int B = 1; B <= 256; ++B) {
    const int t = engine.threads_for_batch(B);
    CHECK(t >= last);
    last = t;
  }
  CHECK(engine.threads_for_batch(256) == omp_get_max_threads());
  CHECK(engine.threads_for_batch(2) == 1);
  if (name == "vmoe-fmnist") CHECK(engine.threads_for_batch(8) == 1);
  if (name == "vit-fmnist") CHECK(engine.threads_for_batch(8) == omp_get_max_threads());
}

TEST_CASE("the engine creates primitives once per shape and reuses them", "[model][onednn]") {
  Model model = make_model(arch("vmoe-fmnist"), 81);
  Engine engine(model);
  auto images = random_images(model.config, 3, 83);
  std::vector<float> first(3 * model.config.num_classes), second(first.size());
  engine.forward(first.data(), images.data(), 3);
  const size_t cached = engine.primitives_created();
  const size_t recorded = nn::context().created.size();
  CHECK(cached > 0);
  engine.forward(second.data(), images.data(), 3);
  CHECK(engine.primitives_created() == cached);
  CHECK(nn::context().created.size() == recorded);
  CHECK(testutil::max_abs_diff(first.data(), second.data(), first.size()) == 0.0);
  // A smaller batch afterwards gives the same logits for the same images (buffers that
  // only grow must not leak stale rows into the result).
  std::vector<float> one(model.config.num_classes);
  engine.forward(one.data(), images.data(), 1);
  CHECK(testutil::max_abs_diff(one.data(), first.data(), one.size()) <= 1e-5);
}
