// `vmoe route` in the library: the routing trace's invariants (DESIGN §4, issue 4) on
// random models of every router, and the pictures (valid PNGs of the promised size).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <random>

#include <opencv2/imgcodecs.hpp>

#include "core/error.hpp"
#include "model/architectures.hpp"
#include "model/engine.hpp"
#include "moe/router_registry.hpp"
#include "spec/router.hpp"
#include "tasks/route.hpp"
#include "viz/canvas.hpp"
#include "viz/pictures.hpp"

using namespace vmoe;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("vmoe_test_route_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// A bright irregular blob on a dark, slightly noisy background (like a garment), so
// the router has something to tell apart.
std::string write_test_image(const fs::path& dir, int h, int w, int channels, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> noise(0, 30);
  cv::Mat img(h, w, channels == 1 ? CV_8UC1 : CV_8UC3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const double dy = (y - h * 0.55) / (h * 0.35), dx = (x - w * 0.5) / (w * 0.3);
      const bool inside = dx * dx + dy * dy < 1.0;
      for (int c = 0; c < channels; ++c) {
        const int v = inside ? 150 + 40 * c + noise(rng) : noise(rng);
        img.ptr<uchar>(y)[x * channels + c] = static_cast<uchar>(std::min(v, 255));
      }
    }
  const fs::path path = dir / ("blob_" + std::to_string(seed) + ".png");
  REQUIRE(cv::imwrite(path.string(), img));
  return path.string();
}

Model model_of(const std::string& arch, uint64_t seed) {
  Model m = init_model(find_architecture(arch).config, seed);
  m.source = arch + ".safetensors";
  return m;
}

// A small RGB model without CLS (GAP) whose images are stretched: exercises the colour
// path of the pictures and a grid without a CLS token.
Model rgb_gap_model(uint64_t seed) {
  ModelConfig c = find_architecture("vmoe-fmnist").config;
  c.image = {32, 40, 3, Resize::stretch, 256, 0.0f, 1.0f};
  c.patch_h = c.patch_w = 8;
  c.classifier = Classifier::gap;
  c.num_layers = 2;
  c.moe->layers = {1};
  c.moe->num_experts = 4;
  return init_model(c, seed);
}

RouteResult route(const Model& model, const std::string& image, std::vector<double> factors = {},
                  std::optional<bool> bpr = std::nullopt, std::optional<int> layer = std::nullopt) {
  Engine engine(model);
  RouteRequest req;
  req.capacity_factors = std::move(factors);
  req.batch_priority = bpr;
  req.layer = layer;
  return route_image(engine, model.source, image, req);
}

// DESIGN §4 with BPR: first choices are walked in priority order before any second
// choice, so for every expert the kept first choices are a prefix (by priority) of the
// tokens that chose it first, of length min(count, capacity).
void check_first_choices(const MoeLayerTrace& t) {
  const int N = static_cast<int>(t.num_tokens()), k = t.k;
  const int c = t.group_capacity.at(0);
  std::map<int, std::vector<int>> by_expert;  // expert -> tokens whose 1st choice it is
  for (int n = 0; n < N; ++n) by_expert[t.choice_expert[static_cast<size_t>(n) * k]].push_back(n);
  for (auto& [e, tokens] : by_expert) {
    std::sort(tokens.begin(), tokens.end(), [&](int a, int b) { return t.priority_rank[a] < t.priority_rank[b]; });
    const int expect_kept = std::min<int>(static_cast<int>(tokens.size()), c);
    for (int i = 0; i < static_cast<int>(tokens.size()); ++i) {
      INFO("layer " << t.layer << " expert " << e << " token " << tokens[i] << " priority position " << i
                    << " capacity " << c);
      CHECK(static_cast<bool>(t.choice_kept[static_cast<size_t>(tokens[i]) * k]) == (i < expect_kept));
    }
  }
}

void check_priority_order(const MoeLayerTrace& t) {
  const int N = static_cast<int>(t.num_tokens()), k = t.k;
  std::vector<int> by_rank(N, -1);
  for (int n = 0; n < N; ++n) {
    REQUIRE(t.priority_rank[n] >= 0);
    REQUIRE(t.priority_rank[n] < N);
    by_rank[t.priority_rank[n]] = n;
  }
  for (int r = 0; r + 1 < N; ++r) {
    REQUIRE(by_rank[r] >= 0);
    const int a = by_rank[r], b = by_rank[r + 1];
    if (t.batch_priority) {
      const float ga = t.choice_gate[static_cast<size_t>(a) * k], gb = t.choice_gate[static_cast<size_t>(b) * k];
      CHECK((ga > gb || (ga == gb && a < b)));
    } else {
      CHECK(a < b);
    }
  }
}

void check_png(const viz::Picture& p, const fs::path& path, const ModelConfig& c) {
  INFO(p.file);
  const cv::Mat back = cv::imread(path.string(), cv::IMREAD_UNCHANGED);
  REQUIRE_FALSE(back.empty());
  CHECK(back.type() == CV_8UC3);
  CHECK(back.cols == p.image.cols);
  CHECK(back.rows == p.image.rows);
  // A patch is at least 32 px and the panel is exactly the upscaled grid.
  CHECK(c.patch_h * p.scale >= 32);
  CHECK(c.patch_w * p.scale >= 32);
  CHECK(p.panel.width == c.grid_w() * c.patch_w * p.scale);
  CHECK(p.panel.height == c.grid_h() * c.patch_h * p.scale);
  CHECK((p.panel & cv::Rect(0, 0, back.cols, back.rows)) == p.panel);
  // The page is more than the panel: title above, legend beside.
  CHECK(p.panel.y >= 40);
  CHECK(back.cols > p.panel.width);
  // Per-layer pictures (not the multi-panel ones) use the main scale: image side >= 320.
  if (p.kind != "strip" && p.kind != "dispatch") {
    CHECK(p.scale == viz::main_scale(c));
    CHECK(std::max(p.panel.width, p.panel.height) >= 320);
  }
}

std::vector<std::string> kinds_of(const std::vector<viz::Picture>& pictures, int layer) {
  std::vector<std::string> kinds;
  for (const auto& p : pictures)
    if (p.layer == layer) kinds.push_back(p.kind);
  return kinds;
}

}  // namespace

TEST_CASE("route: capacity factor list parsing", "[route]") {
  CHECK(parse_capacity_factors("2,1,0.5,0.25,0.1") == std::vector<double>{2, 1, 0.5, 0.25, 0.1});
  CHECK(parse_capacity_factors("1.05") == std::vector<double>{1.05});
  CHECK(parse_capacity_factors("1e-1") == std::vector<double>{0.1});
  for (const char* bad : {"", "2,x", "2,,1", "1,", ",1", "abc", "0", "-1", "1,-0.5", "nan", "inf", "1e999", "2 ", "0x"})
    CHECK_THROWS_AS(parse_capacity_factors(bad), Error);
}

TEST_CASE("route: top-k trace invariants", "[route]") {
  TempDir tmp;
  const Model model = model_of("vmoe-fmnist", 7);
  const std::string image = write_test_image(tmp.path, 28, 28, 1, 1);
  const int N = model.config.num_tokens();

  SECTION("a large factor drops nothing") {
    const RouteResult r = route(model, image, {100.0});
    REQUIRE(r.main.trace.layers.size() == model.config.moe->layers.size());
    for (const MoeLayerTrace& t : r.main.trace.layers) {
      CHECK(t.num_tokens() == N);
      CHECK(std::all_of(t.choice_kept.begin(), t.choice_kept.end(), [](uint8_t k) { return k != 0; }));
      CHECK(std::all_of(t.times_taken.begin(), t.times_taken.end(), [&](int n) { return n == t.k; }));
      CHECK(count_layer(t).dropped_tokens == 0);
      CHECK(count_layer(t).dropped_choices == 0);
    }
  }

  SECTION("BPR drops the lowest-priority first choices of each expert") {
    for (double factor : {1.05, 0.5, 0.25}) {
      const RouteResult r = route(model, image, {factor}, true);
      int dropped = 0;
      for (const MoeLayerTrace& t : r.main.trace.layers) {
        CHECK(t.batch_priority);
        check_priority_order(t);
        check_first_choices(t);
        dropped += count_layer(t).dropped_choices;
      }
      if (factor == 0.25) CHECK(dropped > 0);  // the invariant was exercised
    }
  }

  SECTION("vanilla walks tokens by position") {
    const RouteResult r = route(model, image, {0.25}, false);
    for (const MoeLayerTrace& t : r.main.trace.layers) {
      CHECK_FALSE(t.batch_priority);
      check_priority_order(t);
      check_first_choices(t);
    }
  }

  SECTION("choices agree with the gates: top-k by gate, gate copied, load within capacity") {
    const RouteResult r = route(model, image, {0.5});
    for (const MoeLayerTrace& t : r.main.trace.layers) {
      const int E = t.num_experts, k = t.k;
      REQUIRE(t.gates.size() == static_cast<size_t>(N) * E);
      std::vector<int> load(E, 0);
      for (int n = 0; n < N; ++n) {
        const float* g = t.gates.data() + static_cast<size_t>(n) * E;
        double sum = 0;
        for (int e = 0; e < E; ++e) sum += g[e];
        CHECK(sum == Approx(1.0).epsilon(1e-5));
        std::vector<int> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return g[a] > g[b]; });
        for (int q = 0; q < k; ++q) {
          const size_t i = static_cast<size_t>(n) * k + q;
          CHECK(t.choice_expert[i] == order[q]);
          CHECK(t.choice_gate[i] == g[order[q]]);
          load[t.choice_expert[i]] += t.choice_kept[i];
        }
      }
      for (int e = 0; e < E; ++e) CHECK(load[e] <= t.group_capacity.at(0));
    }
  }

  SECTION("the strip runs both routings at every factor") {
    const RouteResult r = route(model, image);
    CHECK(r.strip_factors == default_strip_factors());
    REQUIRE(r.strip_rows_bpr == std::vector<bool>{true, false});
    REQUIRE(r.strip.size() == 2 * default_strip_factors().size());
    for (size_t row = 0; row < 2; ++row)
      for (size_t col = 0; col < r.strip_factors.size(); ++col) {
        const RoutedRun& run = r.strip_cell(row, col);
        CHECK(run.error.empty());
        CHECK(run.batch_priority == (row == 0));
        CHECK(run.capacity_factor == r.strip_factors[col]);
        for (const MoeLayerTrace& t : run.trace.layers) {
          check_priority_order(t);
          check_first_choices(t);
        }
      }
    // In the first MoE layer (same input in every run) fewer slots never keep more
    // choices; later layers see inputs that the earlier drops changed.
    for (size_t row = 0; row < 2; ++row)
      for (size_t col = 0; col + 1 < r.strip_factors.size(); ++col)
        CHECK(count_layer(r.strip_cell(row, col).trace.layers[0]).dropped_choices <=
              count_layer(r.strip_cell(row, col + 1).trace.layers[0]).dropped_choices);
  }
}

TEST_CASE("route: experts-choice trace invariants", "[route]") {
  TempDir tmp;
  const Model model = model_of("ec-fmnist", 8);
  const std::string image = write_test_image(tmp.path, 28, 28, 1, 2);
  const int N = model.config.num_tokens();
  for (double factor : {100.0, 1.0, 0.25}) {
    const RouteResult r = route(model, image, {factor});
    for (const MoeLayerTrace& t : r.main.trace.layers) {
      const int E = t.num_experts, c = t.group_capacity.at(0);
      CHECK(c <= N);
      REQUIRE(t.expert_took.size() == static_cast<size_t>(N) * E);
      for (int e = 0; e < E; ++e) {
        // each expert takes exactly c tokens, and they are its c largest gates
        int took = 0;
        float lowest_taken = 2, highest_left = -1;
        for (int n = 0; n < N; ++n) {
          const float g = t.gates[static_cast<size_t>(n) * E + e];
          if (t.expert_took[static_cast<size_t>(n) * E + e]) ++took, lowest_taken = std::min(lowest_taken, g);
          else highest_left = std::max(highest_left, g);
        }
        CHECK(took == c);
        CHECK(lowest_taken >= highest_left);
      }
      for (int n = 0; n < N; ++n) {
        int row = 0;
        for (int e = 0; e < E; ++e) row += t.expert_took[static_cast<size_t>(n) * E + e];
        CHECK(row == t.times_taken[n]);
      }
      if (factor == 100.0)  // capacity clipped to S: every expert takes every token
        CHECK(std::all_of(t.times_taken.begin(), t.times_taken.end(), [&](int n) { return n == E; }));
    }
  }
}

TEST_CASE("route: Soft-MoE dispatch columns and combine rows sum to 1", "[route]") {
  TempDir tmp;
  const Model model = model_of("softmoe-fmnist", 9);
  const std::string image = write_test_image(tmp.path, 28, 28, 1, 3);
  const RouteResult r = route(model, image);
  CHECK(r.strip.empty());  // nothing is dropped, so no strip
  const int N = model.config.num_tokens();
  for (const MoeLayerTrace& t : r.main.trace.layers) {
    const int S = t.num_experts * t.slots_per_expert;
    REQUIRE(t.dispatch.size() == static_cast<size_t>(N) * S);
    REQUIRE(t.combine.size() == static_cast<size_t>(N) * S);
    for (int s = 0; s < S; ++s) {
      double sum = 0;
      for (int n = 0; n < N; ++n) sum += t.dispatch[static_cast<size_t>(n) * S + s];
      CHECK(sum == Approx(1.0).epsilon(1e-5));
    }
    for (int n = 0; n < N; ++n) {
      double sum = 0;
      for (int s = 0; s < S; ++s) sum += t.combine[static_cast<size_t>(n) * S + s];
      CHECK(sum == Approx(1.0).epsilon(1e-5));
    }
    CHECK(std::all_of(t.times_taken.begin(), t.times_taken.end(), [&](int n) { return n == S; }));
  }
}

TEST_CASE("route: every picture is a valid PNG of the promised size, for every router", "[route][viz]") {
  TempDir tmp;
  struct Case {
    std::string name;
    Model model;
    std::vector<std::string> kinds;  // per layer
  };
  std::vector<Case> cases;
  cases.push_back({"top_k", model_of("vmoe-fmnist", 11), {"experts", "dropped", "priority", "strip"}});
  cases.push_back({"experts_choice", model_of("ec-fmnist", 12), {"experts", "taken", "gates", "strip"}});
  cases.push_back({"soft", model_of("softmoe-fmnist", 13), {"dispatch", "combine"}});
  Model rgb = rgb_gap_model(14);
  rgb.source = "rgb-gap.safetensors";
  cases.push_back({"top_k rgb gap", std::move(rgb), {"experts", "dropped", "priority", "strip"}});
  for (const Case& c : cases) {
    SECTION(c.name) {
      const ModelConfig& cfg = c.model.config;
      // a differently sized image for the stretch model
      const std::string image = cfg.image.resize == Resize::stretch ? write_test_image(tmp.path, 50, 70, 3, 4)
                                                                     : write_test_image(tmp.path, 28, 28, 1, 5);
      const RouteResult r = route(c.model, image, {0.5, 1.0, 0.1});
      if (cfg.moe->router != &vmoe::find_router("soft")) CHECK(r.strip_factors == std::vector<double>{0.5, 1.0, 0.1});
      const auto pictures = viz::route_pictures(r);
      const fs::path dir = tmp.path / ("out_" + std::to_string(&c - cases.data()));
      const auto files = viz::write_pictures(pictures, dir.string());
      REQUIRE(files.size() == pictures.size());
      CHECK(pictures.size() == c.kinds.size() * cfg.moe->layers.size());
      for (int layer : cfg.moe->layers) CHECK(kinds_of(pictures, layer) == c.kinds);
      for (size_t i = 0; i < pictures.size(); ++i) {
        CHECK(fs::path(files[i]).filename() == pictures[i].file);
        CHECK(pictures[i].file.rfind("blob_", 0) == 0);
        check_png(pictures[i], files[i], cfg);
      }
      // nothing but the pictures in the directory (no temporary files left)
      size_t entries = 0;
      for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++entries;
      CHECK(entries == files.size());
    }
  }
}

TEST_CASE("route: one layer, and the strip's own factor list", "[route]") {
  TempDir tmp;
  const Model model = model_of("vmoe-fmnist", 21);
  const std::string image = write_test_image(tmp.path, 28, 28, 1, 6);
  const RouteResult r = route(model, image, {0.25}, false, 3);
  REQUIRE(r.main.trace.layers.size() == 1);
  CHECK(r.main.trace.layers[0].layer == 3);
  CHECK(r.main.capacity_factor == 0.25);
  CHECK_FALSE(r.main.batch_priority);
  CHECK(r.strip_factors == default_strip_factors());  // one factor: the default strip
  for (const RoutedRun& run : r.strip) {
    REQUIRE(run.trace.layers.size() == 1);
    CHECK(run.trace.layers[0].layer == 3);
  }
  const auto pictures = viz::route_pictures(r);
  CHECK(kinds_of(pictures, 3) == std::vector<std::string>{"experts", "dropped", "priority", "strip"});
  CHECK(pictures.size() == 4);
}

TEST_CASE("route: bad input", "[route]") {
  TempDir tmp;
  const std::string image = write_test_image(tmp.path, 28, 28, 1, 7);
  SECTION("a model without MoE layers") {
    Model dense = model_of("vit-fmnist", 1);
    CHECK_THROWS_WITH(route(dense, image), Catch::Contains("no MoE layer"));
  }
  SECTION("a layer that is not an MoE block") {
    const Model model = model_of("ec-fmnist", 1);  // MoE blocks 1, 3, 5
    REQUIRE_FALSE(model.config.is_moe_layer(2));
    CHECK_THROWS_WITH(route(model, image, {}, std::nullopt, 2), Catch::Contains("not an MoE block"));
    CHECK_THROWS_WITH(route(model, image, {}, std::nullopt, 99), Catch::Contains("not an MoE block"));
  }
  SECTION("a missing image") {
    const Model model = model_of("vmoe-fmnist", 1);
    CHECK_THROWS_AS(route(model, (tmp.path / "missing.png").string()), Error);
  }
  SECTION("an unwritable output directory leaves nothing behind") {
    const Model model = model_of("softmoe-fmnist", 1);
    const auto pictures = viz::route_pictures(route(model, image));
    const fs::path file = tmp.path / "a_file";
    std::ofstream(file) << "x";
    CHECK_THROWS_AS(viz::write_pictures(pictures, file.string()), Error);
    CHECK_THROWS_AS(viz::write_pictures(pictures, (file / "sub").string()), Error);
    CHECK_THROWS_AS(viz::prepare_output_dir((file / "sub").string()), Error);
    size_t entries = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(tmp.path)) ++entries;
    CHECK(entries == 2);  // the image and a_file
  }
}
