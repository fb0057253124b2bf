// Evaluation bookkeeping: shard assignment, class mapping, merging counts, JSON round trip.
#include <catch2/catch.hpp>

#include "core/error.hpp"
#include "tasks/eval_report.hpp"
#include "tasks/evaluate.hpp"

using namespace vmoe;

TEST_CASE("shards are whole groups, round robin, covering every image once", "[eval]") {
  CHECK(shard_images(7, 1, 0, 3) == std::vector<int64_t>{0, 3, 6});
  CHECK(shard_images(7, 1, 2, 3) == std::vector<int64_t>{2, 5});
  CHECK(shard_images(10, 4, 0, 2) == std::vector<int64_t>{0, 1, 2, 3, 8, 9});
  CHECK(shard_images(10, 4, 1, 2) == std::vector<int64_t>{4, 5, 6, 7});
  CHECK(shard_images(3, 1, 4, 5).empty());
  for (int64_t count : {1, 13, 100})
    for (int g : {1, 3, 8})
      for (int n : {1, 2, 5}) {
        std::vector<int> seen(count, 0);
        for (int s = 0; s < n; ++s)
          for (int64_t i : shard_images(count, g, s, n)) {
            ++seen.at(i);
            CHECK((i / g) % n == s);
          }
        for (int v : seen) CHECK(v == 1);
      }
  CHECK_THROWS_AS(shard_images(10, 1, 2, 2), Error);
  CHECK_THROWS_AS(shard_images(10, 1, -1, 2), Error);
  CHECK_THROWS_AS(shard_images(10, 0, 0, 1), Error);
}

TEST_CASE("dataset classes map onto model labels", "[eval]") {
  ModelConfig c;
  c.labels = {"T-shirt/top", "Trouser", "Ankle boot"};
  c.num_classes = 3;
  CHECK(label_slug("T-shirt/top") == "t-shirt-top");
  CHECK(label_slug("  Ankle  boot!") == "ankle-boot");
  CHECK(map_dataset_classes({"Ankle boot", "T-shirt/top"}, c) == std::vector<int>{2, 0});
  CHECK(map_dataset_classes({"ankle_boot", "t-shirt-top", "trouser"}, c) == std::vector<int>{2, 0, 1});
  CHECK(map_dataset_classes({"0", "2"}, c) == std::vector<int>{0, 2});
  CHECK_THROWS_WITH(map_dataset_classes({"0", "3"}, c), Catch::Contains("\"3\""));
  CHECK_THROWS_WITH(map_dataset_classes({"Trouser", "cat"}, c), Catch::Contains("\"cat\"") && Catch::Contains("1 of the 2"));
  ModelConfig imagenet;
  imagenet.num_classes = 2;
  CHECK(map_dataset_classes({"n01440764", "n01443537"}, imagenet) == std::vector<int>{0, 1});
  CHECK_THROWS_AS(map_dataset_classes({"n01440764"}, imagenet), Error);
}

namespace {
EvalResult part(int shard, int n, int64_t images, int64_t top1) {
  EvalResult r;
  r.model = "m";
  r.data = "d";
  r.router = "top_k";
  r.routing = "bpr";
  r.has_capacity = true;
  r.capacity_factor = 0.5;
  r.class_names = {"a", "b"};
  r.counts.shard_count = n;
  r.counts.shards = {shard};
  r.counts.images = images;
  r.counts.top1 = top1;
  r.counts.top5 = images;
  r.counts.seconds = 1.5;
  r.counts.class_images = {images, 0};
  r.counts.class_top1 = {top1, 0};
  r.counts.layers = {{.layer = 1, .tokens = images * 50, .dropped_tokens = shard, .choices = images * 100,
                      .dropped_choices = 2 * shard, .expert_tokens = 7, .capacity = 16, .effective_capacity_factor = 1.28}};
  return r;
}
}  // namespace

TEST_CASE("merging shards adds counts and checks completeness", "[eval]") {
  EvalResult m = merge_results({part(2, 3, 10, 4), part(0, 3, 11, 5), part(1, 3, 12, 6)});
  CHECK(m.counts.images == 33);
  CHECK(m.counts.top1 == 15);
  CHECK(m.counts.shards == std::vector<int>{0, 1, 2});
  CHECK(m.counts.layers[0].dropped_tokens == 3);
  CHECK(m.counts.layers[0].dropped_choices == 6);
  CHECK(m.counts.class_images == std::vector<int64_t>{33, 0});
  CHECK(m.top1() == Approx(15.0 / 33));
  CHECK(m.images_per_s() == Approx(33 / 4.5));
  CHECK_THROWS_WITH(merge_results({part(0, 3, 1, 1), part(2, 3, 1, 1)}), Catch::Contains("1/3 missing"));
  CHECK_THROWS_WITH(merge_results({part(0, 2, 1, 1), part(0, 2, 1, 1)}), Catch::Contains("twice"));
  EvalResult other = part(1, 2, 1, 1);
  other.capacity_factor = 1.0;
  CHECK_THROWS_WITH(merge_results({part(0, 2, 1, 1), other}), Catch::Contains("capacity factor"));
  CHECK_THROWS_WITH(merge_results({part(0, 2, 1, 1), part(1, 3, 1, 1)}), Catch::Contains("shards"));
}

TEST_CASE("eval JSON round-trips and CSV has fixed columns", "[eval]") {
  const EvalResult r = part(1, 4, 20, 9);
  const nlohmann::json j = eval_to_json(r);
  CHECK(j["shard"] == "1/4");
  CHECK(j["dropped"].size() == 1);
  CHECK(j["top1"].get<double>() == Approx(0.45));
  const EvalResult back = eval_from_json(j, "x.json");
  CHECK(eval_to_json(back) == j);
  CHECK_THROWS_WITH(eval_from_json(nlohmann::json{{"model", "m"}}, "x.json"), Catch::Contains("x.json"));

  const std::string header = eval_csv_header(), row = eval_csv_row(r);
  CHECK(std::count(header.begin(), header.end(), ',') == std::count(row.begin(), row.end(), ','));
  CHECK(header.find("routing,capacity_factor") != std::string::npos);
  EvalResult comma = r;
  comma.model = "a,b.safetensors";
  CHECK(eval_csv_row(comma).rfind("\"a,b.safetensors\",", 0) == 0);
}

TEST_CASE("bf16 agreement counts merge as sums and round-trip through JSON and CSV", "[eval][precision]") {
  EvalResult a = part(0, 2, 10, 5), b = part(1, 2, 30, 20);
  for (EvalResult* r : {&a, &b}) r->precision = "bf16", r->counts.has_reference = true;
  a.counts.reference_top1 = 6, a.counts.same_prediction = 9;
  b.counts.reference_top1 = 19, b.counts.same_prediction = 30;
  a.counts.layers[0].agreement = {100, 99, 200, 196};
  b.counts.layers[0].agreement = {300, 300, 600, 600};
  const EvalResult m = merge_results({a, b});
  CHECK(m.reference_top1() == Approx(25.0 / 40));
  CHECK(m.same_prediction() == Approx(39.0 / 40));
  CHECK(m.same_top1_expert() == Approx(399.0 / 400));  // not (0.99 + 1) / 2
  CHECK(m.same_kept_decisions() == Approx(796.0 / 800));
  const nlohmann::json j = eval_to_json(m);
  CHECK(j["precision"] == "bf16");
  CHECK(j["same_kept_decisions"].get<double>() == Approx(0.995));
  CHECK(eval_to_json(eval_from_json(j, "m.json")) == j);
  const std::string header = eval_csv_header(), row = eval_csv_row(m);
  CHECK(std::count(header.begin(), header.end(), ',') == std::count(row.begin(), row.end(), ','));
  CHECK(row.find(",bf16,0.625000,0.975000,0.997500,0.995000") != std::string::npos);
  CHECK(eval_text(m).find("same first expert 99.75% of tokens, kept/dropped decisions agree 99.500%") != std::string::npos);
  // Parts with and without the reference, or of different precisions, do not merge.
  CHECK_THROWS_WITH(merge_results({a, part(1, 2, 30, 20)}), Catch::Contains("precision"));
  EvalResult f32_ref = b;
  f32_ref.precision = "f32";
  CHECK_THROWS_WITH(merge_results({a, f32_ref}), Catch::Contains("precision"));
  nlohmann::json bad = eval_to_json(a);
  bad["counts"]["layers"][0]["agreement"]["top1_same"] = 101;
  CHECK_THROWS_WITH(eval_from_json(bad, "bad.json"), Catch::Contains("bad.json") && Catch::Contains("agreement"));
}

TEST_CASE("foreground counts merge as sums, not as averaged shares", "[eval][foreground]") {
  EvalResult a = part(0, 2, 10, 5), b = part(1, 2, 30, 20);
  a.counts.foreground_patches = 100;
  a.counts.layers[0].foreground_tokens = 100, a.counts.layers[0].foreground_kept_all = 50,
  a.counts.layers[0].foreground_kept_any = 100;
  b.counts.foreground_patches = 300;
  b.counts.layers[0].foreground_tokens = 300, b.counts.layers[0].foreground_kept_all = 290,
  b.counts.layers[0].foreground_kept_any = 299;
  const EvalResult m = merge_results({b, a});
  CHECK(m.counts.foreground_patches == 400);
  CHECK(m.counts.layers[0].foreground_kept_all == 340);
  CHECK(m.foreground_kept_all() == std::vector<double>{340.0 / 400});  // not (0.5 + 290/300) / 2
  CHECK(m.foreground_kept_any() == std::vector<double>{399.0 / 400});
  CHECK(m.foreground_per_image() == Approx(400.0 / 40));

  const nlohmann::json j = eval_to_json(m);
  CHECK(j["foreground_kept_all"][0].get<double>() == Approx(0.85));
  CHECK(j["foreground_patches_per_image"].get<double>() == Approx(10.0));
  CHECK(eval_to_json(eval_from_json(j, "m.json")) == j);
  CHECK(eval_csv_row(m).find(",10.0000,0.850000,0.997500,0.85,0.9975") != std::string::npos);

  SECTION("a result written before the foreground counts: figures unknown (null), merges still work") {
    nlohmann::json old = eval_to_json(a);
    for (const char* key : {"foreground_patches_per_image", "foreground_kept_all", "foreground_kept_any"}) old.erase(key);
    old["counts"].erase("foreground_patches");
    for (auto& l : old["counts"]["layers"])
      for (const char* key : {"foreground_tokens", "foreground_kept_all", "foreground_kept_any"}) l.erase(key);
    const EvalResult merged = merge_results({eval_from_json(old, "old.json"), b});
    CHECK(merged.counts.images == 40);
    CHECK_FALSE(merged.counts.has_foreground);
    CHECK(eval_to_json(merged)["foreground_kept_all"].is_null());
    const std::string row = eval_csv_row(merged);
    // The importance columns empty, then the precision and its empty agreement columns.
    CHECK(row.substr(row.size() - 13) == ",,,,,,f32,,,,");
  }
  SECTION("counts that do not add up are refused") {
    nlohmann::json bad = eval_to_json(a);
    bad["counts"]["layers"][0]["foreground_kept_any"] = 101;
    CHECK_THROWS_WITH(eval_from_json(bad, "bad.json"), Catch::Contains("bad.json") && Catch::Contains("foreground"));
    nlohmann::json negative = eval_to_json(a);
    negative["counts"]["foreground_patches"] = -1;
    CHECK_THROWS_WITH(eval_from_json(negative, "neg.json"), Catch::Contains("neg.json") && Catch::Contains("foreground"));
  }
}
