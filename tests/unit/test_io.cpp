// Model files (safetensors + vmoe.config), config JSON and image preprocessing
// (DESIGN §2-3): round trips, and every kind of bad input throwing vmoe::Error with a
// message that says what and where.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <fstream>
#include <map>
#include <random>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "core/error.hpp"
#include "io/config_json.hpp"
#include "io/image.hpp"
#include "io/model_file.hpp"
#include "io/safetensors.hpp"
#include "model/architectures.hpp"
#include "moe/router_registry.hpp"
#include "naive/test_util.hpp"
#include "spec/params.hpp"
#include "spec/router.hpp"

using namespace vmoe;
using json = nlohmann::json;

namespace {

using testutil::contains;
using testutil::error_of;

// A safetensors file written by hand from the format's definition, independent of the
// library's writer: u64 LE header length, header, data.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               uint64_t declared_length) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(declared_length >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out << header << data;
}
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  write_raw(path, header, data, header.size());
}

struct RawTensor {
  std::string name, dtype;
  json shape;
  std::string bytes;
};
RawTensor f32(const std::string& name, const Tensor& t) {
  return {name, "F32", json(t.shape()),
          std::string(reinterpret_cast<const char*>(t.data()), static_cast<size_t>(t.numel()) * sizeof(float))};
}
void write_tensors(const std::string& path, const std::vector<RawTensor>& tensors,
                   const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  std::string data;
  for (const RawTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  write_raw(path, header.dump(), data);
}

// The tensors of a model as a file following DESIGN §2, to be edited by the tests.
std::vector<RawTensor> model_tensors(Model& m) {
  std::vector<RawTensor> list;
  for (const ParamSlot& s : param_slots(m.params, m.config)) list.push_back(f32(s.name, *s.tensor));
  return list;
}

}  // namespace

TEST_CASE("safetensors round trip through write_safetensors and SafetensorsFile", "[io][safetensors]") {
  testutil::TempDir dir;
  Tensor a({2, 3}), b({4}), scalar(Shape{}), c({1, 1, 5});
  for (int64_t i = 0; i < a.numel(); ++i) a[i] = 0.5f * i - 1;
  for (int64_t i = 0; i < b.numel(); ++i) b[i] = -3.25f * i;
  scalar[0] = 42.0f;
  c.fill(7.0f);
  c[2] = std::numeric_limits<float>::denorm_min();
  const std::string path = dir.file("t.safetensors");
  write_safetensors(path, {{"a", &a}, {"x/y/b", &b}, {"s", &scalar}, {"c", &c}}, {{"vmoe.config", "{\"k\": 1}"}, {"other", "v"}});
  SafetensorsFile file(path);
  CHECK(file.path() == path);
  CHECK(file.tensors().size() == 4);
  CHECK(file.metadata().at("vmoe.config") == "{\"k\": 1}");
  CHECK(file.metadata().at("other") == "v");
  for (auto [name, t] : std::vector<std::pair<std::string, const Tensor*>>{{"a", &a}, {"x/y/b", &b}, {"s", &scalar}, {"c", &c}}) {
    INFO(name);
    const SafetensorsEntry& e = file.tensors().at(name);
    CHECK(e.dtype == "F32");
    CHECK(e.shape == t->shape());
    CHECK(e.bytes == sizeof(float) * t->numel());
    Tensor r = file.read_f32(name);
    REQUIRE(r.shape() == t->shape());
    CHECK(std::memcmp(r.data(), t->data(), sizeof(float) * t->numel()) == 0);
  }
  CHECK(contains(error_of([&] { file.read_f32("nope"); }), "nope"));
  // The header is 8-byte aligned so the data is aligned too.
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  CHECK(n % 8 == 0);
}

TEST_CASE("safetensors written by hand: BF16 and F16 widen to float", "[io][safetensors]") {
  testutil::TempDir dir;
  // 1.0 and -2.5 in bf16 (0x3f80, 0xc020) and f16 (0x3c00, 0xc100).
  const unsigned char bf16[] = {0x80, 0x3f, 0x20, 0xc0};
  const unsigned char f16[] = {0x00, 0x3c, 0x00, 0xc1};
  write_tensors(dir.file("h.safetensors"),
                {{"b", "BF16", json::array({2}), std::string(reinterpret_cast<const char*>(bf16), 4)},
                 {"h", "F16", json::array({2}), std::string(reinterpret_cast<const char*>(f16), 4)}},
                {});
  SafetensorsFile file(dir.file("h.safetensors"));
  Tensor b = file.read_f32("b"), h = file.read_f32("h");
  CHECK(b[0] == 1.0f);
  CHECK(b[1] == -2.5f);
  CHECK(h[0] == 1.0f);
  CHECK(h[1] == -2.5f);
}

TEST_CASE("hostile or truncated safetensors files throw naming the problem", "[io][safetensors]") {
  testutil::TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  const std::string four_floats(16, '\0');
  auto load = [&] { SafetensorsFile f(path); };
  auto entry = [](const std::string& dtype, const json& shape, const json& offsets) {
    return json{{"w", {{"dtype", dtype}, {"shape", shape}, {"data_offsets", offsets}}}}.dump();
  };

  SECTION("fewer than 8 bytes") {
    std::ofstream(path) << "abc";
    const std::string msg = error_of(load);
    CHECK(contains(msg, path));
    CHECK(contains(msg, "truncated"));
  }
  SECTION("empty file") {
    std::ofstream(path).close();
    CHECK(contains(error_of(load), "truncated"));
  }
  SECTION("header length larger than the file") {
    write_raw(path, "{}", "", 1000);
    const std::string msg = error_of(load);
    CHECK(contains(msg, path));
    CHECK(contains(msg, "header length 1000"));
  }
  SECTION("absurd header length (2^63)") {
    write_raw(path, "{}", "", uint64_t{1} << 63);
    CHECK(contains(error_of(load), "header length"));
  }
  SECTION("header not JSON") {
    write_raw(path, "{\"w\": [1, 2", four_floats);
    CHECK(contains(error_of(load), "not valid JSON"));
  }
  SECTION("header JSON but not an object") {
    write_raw(path, "[1, 2, 3]", four_floats);
    CHECK(contains(error_of(load), "not a JSON object"));
  }
  SECTION("data_offsets outside the data section") {
    write_raw(path, entry("F32", {8}, {0, 32}), four_floats);
    const std::string msg = error_of(load);
    CHECK(contains(msg, "\"w\""));
    CHECK(contains(msg, "outside"));
  }
  SECTION("data_offsets reversed") {
    write_raw(path, entry("F32", {0}, {12, 8}), four_floats);
    CHECK(contains(error_of(load), "outside"));
  }
  SECTION("data_offsets negative or not numbers") {
    write_raw(path, entry("F32", {1}, {-4, 0}), four_floats);
    CHECK(contains(error_of(load), "data_offsets"));
    write_raw(path, entry("F32", {1}, {"0", "4"}), four_floats);
    CHECK(contains(error_of(load), "data_offsets"));
  }
  SECTION("offsets inconsistent with the shape") {
    write_raw(path, entry("F32", {3}, {0, 16}), four_floats);
    const std::string msg = error_of(load);
    CHECK(contains(msg, "\"w\""));
    CHECK(contains(msg, "needs 12"));
  }
  SECTION("unknown dtype") {
    write_raw(path, entry("Q7", {4}, {0, 16}), four_floats);
    const std::string msg = error_of(load);
    CHECK(contains(msg, "\"w\""));
    CHECK(contains(msg, "unknown dtype Q7"));
  }
  SECTION("negative dimension") {
    write_raw(path, entry("F32", {-4}, {0, 16}), four_floats);
    CHECK(contains(error_of(load), "bad dimension"));
  }
  SECTION("non-integer dimension") {
    write_raw(path, entry("F32", {2.5}, {0, 16}), four_floats);
    CHECK(contains(error_of(load), "bad dimension"));
    write_raw(path, entry("F32", {"4"}, {0, 16}), four_floats);
    CHECK(contains(error_of(load), "bad dimension"));
  }
  SECTION("huge dimensions whose product overflows") {
    write_raw(path, entry("F32", {uint64_t{1} << 32, uint64_t{1} << 32}, {0, 16}), four_floats);
    CHECK(contains(error_of(load), "implausibly large"));
    write_raw(path, entry("F32", {uint64_t{1} << 62, 4, 4}, {0, 16}), four_floats);
    CHECK(contains(error_of(load), "implausibly large"));
  }
  SECTION("malformed entry (no dtype)") {
    write_raw(path, json{{"w", {{"shape", {4}}, {"data_offsets", {0, 16}}}}}.dump(), four_floats);
    CHECK(contains(error_of(load), "malformed"));
  }
  SECTION("metadata that is not strings") {
    write_raw(path, json{{"__metadata__", {{"vmoe.config", 3}}}}.dump(), "");
    CHECK(contains(error_of(load), "metadata"));
  }
  SECTION("a directory") {
    CHECK(contains(error_of([&] { SafetensorsFile f(dir.path()); }), "is a directory, expected a regular file"));
  }
  SECTION("missing file") {
    CHECK(contains(error_of([&] { SafetensorsFile f(dir.file("none.safetensors")); }), "none.safetensors"));
  }
}

TEST_CASE("load_model names the offending tensor or config field", "[io][model]") {
  testutil::TempDir dir;
  Model m = init_model(find_architecture("vmoe-fmnist").config, 3);
  const std::string config = config_to_json(m.config);
  const std::string path = dir.file("m.safetensors");
  auto load = [&] { load_model(path); };
  const std::string router = "Encoder/encoderblock_3/Moe/Router/dense/kernel";

  SECTION("a hand-written file following DESIGN §2-3 loads") {
    write_tensors(path, model_tensors(m), {{"vmoe.config", config}});
    Model loaded = load_model(path);
    CHECK(config_to_json(loaded.config) == config);
  }
  SECTION("truncated copy of a saved model") {
    save_model(m, path);
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    for (size_t cut : {size_t{0}, size_t{5}, size_t{1000}, bytes.size() / 2, bytes.size() - 1}) {
      std::ofstream(dir.file("cut.safetensors"), std::ios::binary) << bytes.substr(0, cut);
      INFO("cut at " << cut);
      CHECK(contains(error_of([&] { load_model(dir.file("cut.safetensors")); }), "cut.safetensors"));
    }
  }
  SECTION("missing tensor") {
    auto t = model_tensors(m);
    t.erase(std::remove_if(t.begin(), t.end(), [&](const RawTensor& r) { return r.name == router; }), t.end());
    write_tensors(path, t, {{"vmoe.config", config}});
    const std::string msg = error_of(load);
    CHECK(contains(msg, path));
    CHECK(contains(msg, "missing tensor \"" + router + "\""));
  }
  SECTION("wrong shape") {
    auto t = model_tensors(m);
    for (RawTensor& r : t)
      if (r.name == router) r.shape = {8, 96};  // transposed: same size, wrong shape
    write_tensors(path, t, {{"vmoe.config", config}});
    const std::string msg = error_of(load);
    CHECK(contains(msg, router));
    CHECK(contains(msg, "(8, 96)"));
  }
  SECTION("wrong dtype") {
    auto t = model_tensors(m);
    for (RawTensor& r : t)
      if (r.name == "head/bias") r.dtype = "I32";
    write_tensors(path, t, {{"vmoe.config", config}});
    const std::string msg = error_of(load);
    CHECK(contains(msg, "head/bias"));
    CHECK(contains(msg, "I32"));
  }
  SECTION("unexpected extra tensor") {
    auto t = model_tensors(m);
    Tensor extra({3});
    t.push_back(f32("Encoder/encoderblock_0/Extra/kernel", extra));
    write_tensors(path, t, {{"vmoe.config", config}});
    const std::string msg = error_of(load);
    CHECK(contains(msg, "unexpected tensor"));
    CHECK(contains(msg, "Encoder/encoderblock_0/Extra/kernel"));
  }
  SECTION("issue 11 tensors: a config asking for them needs them, one without them refuses them") {
    ModelConfig v = m.config;
    v.moe->num_shared_experts = 1;
    v.moe->balance = Balance::bias;
    Model extended = init_model(v, 4);
    const std::string shared = "Encoder/encoderblock_3/Moe/Shared/Dense_1/kernel";
    const std::string bias = "Encoder/encoderblock_3/Moe/Router/balance_bias";
    for (const std::string& name : {shared, bias}) {
      auto t = model_tensors(extended);
      t.erase(std::remove_if(t.begin(), t.end(), [&](const RawTensor& r) { return r.name == name; }), t.end());
      write_tensors(path, t, {{"vmoe.config", config_to_json(v)}});
      CHECK(contains(error_of(load), "missing tensor \"" + name + "\""));
      write_tensors(path, model_tensors(extended), {{"vmoe.config", config}});  // the old config
      CHECK(contains(error_of(load), "unexpected tensor"));
    }
    save_model(extended, path);
    CHECK(config_to_json(load_model(path).config) == config_to_json(v));
  }
  SECTION("missing vmoe.config") {
    write_tensors(path, model_tensors(m), {});
    CHECK(contains(error_of(load), "vmoe.config"));
  }
  SECTION("config that is not JSON") {
    write_tensors(path, model_tensors(m), {{"vmoe.config", "{oops"}});
    CHECK(contains(error_of(load), "not valid JSON"));
  }
  auto with_config = [&](auto edit) {
    json j = json::parse(config);
    edit(j);
    write_tensors(path, model_tensors(m), {{"vmoe.config", j.dump()}});
    return error_of(load);
  };
  SECTION("config with an unknown key") {
    CHECK(contains(with_config([](json& j) { j["colour"] = 1; }), "unknown key \"colour\""));
    CHECK(contains(with_config([](json& j) { j["moe"]["experts"] = 8; }), "unknown key \"moe.experts\""));
    CHECK(contains(with_config([](json& j) { j["image"]["depth"] = 8; }), "unknown key \"image.depth\""));
  }
  SECTION("config with bad values") {
    const std::string k = with_config([](json& j) { j["moe"]["k"] = 9; });
    CHECK(contains(k, path));
    CHECK(contains(k, "moe.k 9 exceeds moe.num_experts 8"));
    CHECK(contains(with_config([](json& j) { j["moe"]["layers"] = {1, 3, 6}; }), "moe.layers has block 6"));
    CHECK(contains(with_config([](json& j) { j["moe"]["layers"] = {-1}; }), "moe.layers has block -1"));
    CHECK(contains(with_config([](json& j) { j["num_heads"] = 5; }), "not divisible by num_heads 5"));
    CHECK(contains(with_config([](json& j) { j["moe"]["capacity_factor"] = 0; }), "capacity_factor"));
    CHECK(contains(with_config([](json& j) { j["moe"]["capacity_factor"] = -1.5; }), "capacity_factor"));
    CHECK(contains(with_config([](json& j) { j["moe"]["router"] = "best"; }), "moe.router"));
    CHECK(contains(with_config([](json& j) { j["hidden_size"] = "96"; }), "hidden_size"));
    CHECK(contains(with_config([](json& j) { j["hidden_size"] = 1.5; }), "hidden_size"));
    CHECK(contains(with_config([](json& j) { j["patch"] = {4}; }), "patch"));
    CHECK(contains(with_config([](json& j) { j["patch"] = {5, 5}; }), "patches"));
    CHECK(contains(with_config([](json& j) { j["image"]["channels"] = 2; }), "channels"));
    CHECK(contains(with_config([](json& j) { j["version"] = 2; }), "version"));
    CHECK(contains(with_config([](json& j) { j["format"] = "other"; }), "format"));
    CHECK(contains(with_config([](json& j) { j.erase("hidden_size"); }), "missing required key \"hidden_size\""));
    CHECK(contains(with_config([](json& j) { j["hidden_size"] = 1LL << 40; }), "hidden_size"));
    CHECK(contains(with_config([](json& j) { j["mlp_dim"] = 1 << 29; }), "mlp_dim = 536870912 is more than the limit"));
  }
}

namespace {
std::vector<ModelConfig> configs_to_round_trip() {
  std::vector<ModelConfig> list;
  for (const Architecture& a : architectures()) list.push_back(a.config);
  ModelConfig c = find_architecture("vmoe-fmnist").config;
  c.classifier = Classifier::gap;
  c.representation_size = 17;
  c.image.resize = Resize::stretch;
  c.image.value_min = 0.0f, c.image.value_max = 1.0f;
  c.moe->capacity_factor = 0.1 + 0.2;  // not exactly representable as a short decimal
  c.moe->capacity_rounding = CapacityRounding::round;
  c.moe->capacity_multiple_of = 0;
  c.moe->batch_priority = false;
  c.moe->group_images = 8;
  c.moe->noise_std = 0.5;
  c.layer_norm_eps = 1e-5;
  list.push_back(c);
  ModelConfig v = find_architecture("vmoe-fmnist").config;  // the issue-11 amendment keys
  v.moe->num_shared_experts = 2;
  v.moe->expert_mlp_dim = 48;
  v.moe->balance = Balance::bias;
  list.push_back(v);
  ModelConfig d = find_architecture("vit-fmnist").config;
  d.labels.clear();
  d.num_classes = 7;
  list.push_back(d);
  return list;
}
}  // namespace

TEST_CASE("config JSON round trip", "[io][config]") {
  for (const ModelConfig& c : configs_to_round_trip()) {
    const std::string text = config_to_json(c);
    INFO(text);
    ModelConfig p = parse_config_json(text);
    CHECK(config_to_json(p) == text);
    CHECK(p.image.height == c.image.height);
    CHECK(p.image.width == c.image.width);
    CHECK(p.image.channels == c.image.channels);
    CHECK(p.image.resize == c.image.resize);
    CHECK(p.image.resize_small == c.image.resize_small);
    CHECK(p.image.value_min == c.image.value_min);
    CHECK(p.image.value_max == c.image.value_max);
    CHECK(p.patch_h == c.patch_h);
    CHECK(p.patch_w == c.patch_w);
    CHECK(p.hidden_size == c.hidden_size);
    CHECK(p.num_layers == c.num_layers);
    CHECK(p.num_heads == c.num_heads);
    CHECK(p.mlp_dim == c.mlp_dim);
    CHECK(p.classifier == c.classifier);
    CHECK(p.representation_size == c.representation_size);
    CHECK(p.layer_norm_eps == c.layer_norm_eps);
    CHECK(p.labels == c.labels);
    CHECK(p.num_classes == c.num_classes);
    REQUIRE(p.moe.has_value() == c.moe.has_value());
    if (!c.moe) continue;
    CHECK(p.moe->layers == c.moe->layers);
    CHECK(p.moe->router == c.moe->router);
    CHECK(p.moe->num_experts == c.moe->num_experts);
    CHECK(p.moe->k == c.moe->k);
    CHECK(p.moe->capacity_factor == c.moe->capacity_factor);
    CHECK(p.moe->capacity_rounding == c.moe->capacity_rounding);
    CHECK(p.moe->capacity_multiple_of == c.moe->capacity_multiple_of);
    CHECK(p.moe->batch_priority == c.moe->batch_priority);
    CHECK(p.moe->group_images == c.moe->group_images);
    CHECK(p.moe->noise_std == c.moe->noise_std);
    CHECK(p.moe->slots_per_expert == c.moe->slots_per_expert);
    CHECK(p.moe->num_shared_experts == c.moe->num_shared_experts);
    CHECK(p.moe->expert_mlp_dim == c.moe->expert_mlp_dim);
    CHECK(p.moe->balance == c.moe->balance);
  }
}

TEST_CASE("config JSON: the amendment's MoE keys are written only when set, bad values refused", "[io][config]") {
  const ModelConfig c = find_architecture("vmoe-fmnist").config;
  const std::string text = config_to_json(c);
  for (const char* key : {"num_shared_experts", "expert_mlp_dim", "balance"}) CHECK_FALSE(contains(text, key));
  CHECK(c.expert_mlp_dim() == c.mlp_dim);
  const std::string head = R"({"format": "vmoe", "version": 1, "image": {"height": 28, "width": 28, "channels": 1},
      "patch": [4, 4], "hidden_size": 96, "num_layers": 6, "num_heads": 3, "mlp_dim": 384, "num_classes": 10, "moe": )";
  const ModelConfig set = parse_config_json(head + R"({"layers": [1], "num_shared_experts": 1, "expert_mlp_dim": 96,
      "balance": "bias"}})");
  CHECK(set.moe->num_shared_experts == 1);
  CHECK(set.expert_mlp_dim() == 96);
  CHECK(set.mlp_dim == 384);
  CHECK(set.moe->balance == Balance::bias);
  const std::pair<const char*, const char*> bad[] = {
      {R"({"layers": [1], "num_shared_experts": -1})", "moe.num_shared_experts"},
      {R"({"layers": [1], "num_shared_experts": 5000})", "moe.num_shared_experts"},
      {R"({"layers": [1], "num_shared_experts": 1.5})", "moe.num_shared_experts"},
      {R"({"layers": [1], "expert_mlp_dim": 0})", "moe.expert_mlp_dim"},
      {R"({"layers": [1], "expert_mlp_dim": "wide"})", "moe.expert_mlp_dim"},
      {R"({"layers": [1], "balance": "loss"})", "moe.balance"},
      {R"({"layers": [1], "balance": "bias", "router": "soft"})", "moe.balance"},
  };
  for (const auto& [moe, needle] : bad) {
    INFO(moe);
    const std::string msg = error_of([&] { parse_config_json(head + moe + "}"); });
    CHECK(contains(msg, needle));
    CHECK(msg.find('\n') == std::string::npos);
  }
}

TEST_CASE("config JSON: missing optional keys take the DESIGN §3 defaults", "[io][config]") {
  ModelConfig c = parse_config_json(R"({"format": "vmoe", "version": 1,
      "image": {"height": 28, "width": 28, "channels": 1}, "patch": [4, 4], "hidden_size": 96,
      "num_layers": 6, "num_heads": 3, "mlp_dim": 384, "num_classes": 10,
      "moe": {"layers": [1, 3]}})");
  CHECK(c.image.resize == Resize::none);
  CHECK(c.image.resize_small == 256);
  CHECK(c.image.value_min == -1.0f);
  CHECK(c.image.value_max == 1.0f);
  CHECK(c.classifier == Classifier::token);
  CHECK_FALSE(c.representation_size);
  CHECK(c.layer_norm_eps == 1e-6);
  REQUIRE(c.moe);
  CHECK(c.moe->router == &vmoe::find_router("top_k"));
  CHECK(c.moe->num_experts == 8);
  CHECK(c.moe->k == 2);
  CHECK(c.moe->capacity_factor == 1.05);
  CHECK(c.moe->capacity_rounding == CapacityRounding::ceil);
  CHECK(c.moe->capacity_multiple_of == 4);
  CHECK(c.moe->batch_priority);
  CHECK(c.moe->group_images == 1);
  CHECK(c.moe->noise_std == 1.0);
  CHECK(c.moe->slots_per_expert == 1);
}

// ---- images ----------------------------------------------------------------------------

namespace {

ImageConfig image_config(int h, int w, int channels, Resize resize, float lo = 0.0f, float hi = 255.0f) {
  ImageConfig c;
  c.height = h, c.width = w, c.channels = channels, c.resize = resize, c.value_min = lo, c.value_max = hi;
  return c;
}

cv::Mat random_image(int rows, int cols, int type, uint64_t seed) {
  cv::Mat m(rows, cols, type);
  std::mt19937_64 rng(seed);
  for (int r = 0; r < rows; ++r)
    for (size_t i = 0; i < static_cast<size_t>(cols) * m.channels(); ++i) m.ptr<unsigned char>(r)[i] = rng() & 0xff;
  return m;
}

// Element i of `out` against a uint8 Mat mapped with value range [0, 255].
void check_equal(const std::vector<float>& out, const cv::Mat& want) {
  REQUIRE(want.isContinuous());
  REQUIRE(out.size() == want.total() * want.channels());
  int bad = 0;
  for (size_t i = 0; i < out.size(); ++i) bad += out[i] != static_cast<float>(want.data[i]);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("image preprocessing follows the DESIGN §3 rules", "[io][image]") {
  testutil::TempDir dir;

  SECTION("a colour PNG for a grey model uses OpenCV's luma") {
    cv::Mat bgr = random_image(28, 28, CV_8UC3, 1);
    REQUIRE(cv::imwrite(dir.file("c.png"), bgr));
    std::vector<float> out(28 * 28);
    load_image(out.data(), dir.file("c.png"), image_config(28, 28, 1, Resize::none));
    cv::Mat grey;
    cv::cvtColor(bgr, grey, cv::COLOR_BGR2GRAY);
    check_equal(out, grey);
    for (int i = 0; i < 28 * 28; ++i) {
      const cv::Vec3b p = bgr.at<cv::Vec3b>(i / 28, i % 28);
      CHECK(std::fabs(out[i] - (0.299 * p[2] + 0.587 * p[1] + 0.114 * p[0])) <= 1.0);
    }
  }
  SECTION("RGB order from OpenCV's BGR decode") {
    cv::Mat bgr(4, 8, CV_8UC3, cv::Scalar(10, 20, 30));  // B 10, G 20, R 30
    bgr.at<cv::Vec3b>(3, 7) = cv::Vec3b(200, 100, 50);
    REQUIRE(cv::imwrite(dir.file("rgb.png"), bgr));
    std::vector<float> out(4 * 8 * 3);
    load_image(out.data(), dir.file("rgb.png"), image_config(4, 8, 3, Resize::none));
    CHECK(out[0] == 30.0f);
    CHECK(out[1] == 20.0f);
    CHECK(out[2] == 10.0f);
    const size_t last = (3 * 8 + 7) * 3;
    CHECK(out[last] == 50.0f);
    CHECK(out[last + 1] == 100.0f);
    CHECK(out[last + 2] == 200.0f);
  }
  SECTION("a grey image for an RGB model replicates the channel") {
    cv::Mat grey = random_image(6, 5, CV_8UC1, 2);
    REQUIRE(cv::imwrite(dir.file("g.png"), grey));
    std::vector<float> out(6 * 5 * 3);
    load_image(out.data(), dir.file("g.png"), image_config(6, 5, 3, Resize::none));
    for (int i = 0; i < 30; ++i)
      for (int ch = 0; ch < 3; ++ch) CHECK(out[i * 3 + ch] == static_cast<float>(grey.data[i]));
  }
  SECTION("a PNG with alpha drops the alpha") {
    cv::Mat bgra(3, 3, CV_8UC4, cv::Scalar(1, 2, 3, 128));
    REQUIRE(cv::imwrite(dir.file("a.png"), bgra));
    std::vector<float> out(27);
    load_image(out.data(), dir.file("a.png"), image_config(3, 3, 3, Resize::none));
    CHECK(out[0] == 3.0f);
    CHECK(out[1] == 2.0f);
    CHECK(out[2] == 1.0f);
  }
  SECTION("resize none with the wrong size throws naming the file") {
    REQUIRE(cv::imwrite(dir.file("wide.png"), random_image(28, 30, CV_8UC1, 3)));
    std::vector<float> out(28 * 28);
    const std::string msg = error_of([&] { load_image(out.data(), dir.file("wide.png"), image_config(28, 28, 1, Resize::none)); });
    CHECK(contains(msg, dir.file("wide.png")));
    CHECK(contains(msg, "30x28"));
  }
  SECTION("stretch equals cv::resize with INTER_LINEAR") {
    cv::Mat bgr = random_image(37, 50, CV_8UC3, 4);
    REQUIRE(cv::imwrite(dir.file("s.png"), bgr));
    std::vector<float> out(28 * 28 * 3);
    load_image(out.data(), dir.file("s.png"), image_config(28, 28, 3, Resize::stretch));
    cv::Mat rgb, want;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    cv::resize(rgb, want, cv::Size(28, 28), 0, 0, cv::INTER_LINEAR);
    check_equal(out, want);
    // and for a grey model: convert, then resize
    std::vector<float> grey_out(28 * 28);
    load_image(grey_out.data(), dir.file("s.png"), image_config(28, 28, 1, Resize::stretch));
    cv::Mat grey, grey_want;
    cv::cvtColor(bgr, grey, cv::COLOR_BGR2GRAY);
    cv::resize(grey, grey_want, cv::Size(28, 28), 0, 0, cv::INTER_LINEAR);
    check_equal(grey_out, grey_want);
  }
  SECTION("resize_small_crop: shorter side to 256 with INTER_AREA, centre crop 224") {
    for (bool landscape : {true, false}) {
      const int rows = landscape ? 300 : 400, cols = landscape ? 400 : 300;
      cv::Mat bgr = random_image(rows, cols, CV_8UC3, 5);
      REQUIRE(cv::imwrite(dir.file("big.png"), bgr));
      ImageConfig ic = image_config(224, 224, 3, Resize::resize_small_crop);
      ic.resize_small = 256;
      std::vector<float> out(224 * 224 * 3);
      load_image(out.data(), dir.file("big.png"), ic);
      // 400 * 256 / 300 = 341.33 -> 341; crop offsets (256 - 224) / 2 = 16, (341 - 224) / 2 = 58.
      const int new_rows = landscape ? 256 : 341, new_cols = landscape ? 341 : 256;
      const int top = landscape ? 16 : 58, left = landscape ? 58 : 16;
      cv::Mat rgb, resized;
      cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
      cv::resize(rgb, resized, cv::Size(new_cols, new_rows), 0, 0, cv::INTER_AREA);
      REQUIRE(resized.rows == new_rows);
      REQUIRE(resized.cols == new_cols);
      cv::Mat crop = resized(cv::Rect(left, top, 224, 224)).clone();
      INFO((landscape ? "landscape" : "portrait"));
      check_equal(out, crop);
      // a few pixels spelled out: corners and centre of the crop
      for (auto [y, x] : {std::pair{0, 0}, std::pair{0, 223}, std::pair{223, 0}, std::pair{223, 223}, std::pair{112, 112}}) {
        const cv::Vec3b p = resized.at<cv::Vec3b>(top + y, left + x);
        for (int ch = 0; ch < 3; ++ch) CHECK(out[(y * 224 + x) * 3 + ch] == static_cast<float>(p[ch]));
      }
    }
  }
  SECTION("value_range maps 0 to min and 255 to max linearly") {
    cv::Mat grey(1, 3, CV_8UC1);
    grey.at<unsigned char>(0, 0) = 0, grey.at<unsigned char>(0, 1) = 255, grey.at<unsigned char>(0, 2) = 51;
    REQUIRE(cv::imwrite(dir.file("v.png"), grey));
    for (auto [lo, hi] : {std::pair{-1.0f, 1.0f}, std::pair{0.5f, 2.0f}, std::pair{0.0f, 1.0f}}) {
      std::vector<float> out(3);
      load_image(out.data(), dir.file("v.png"), image_config(1, 3, 1, Resize::none, lo, hi));
      CHECK(out[0] == Approx(lo).margin(1e-6));
      CHECK(out[1] == Approx(hi).margin(1e-6));
      CHECK(out[2] == Approx(lo + (hi - lo) * 51.0 / 255.0).margin(1e-6));
    }
  }
  SECTION("preprocess_image takes an already decoded BGR buffer") {
    cv::Mat bgr = random_image(5, 7, CV_8UC3, 6);
    std::vector<float> out(5 * 7 * 3);
    preprocess_image(out.data(), bgr.data, 5, 7, 3, image_config(5, 7, 3, Resize::none), "buffer");
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    check_equal(out, rgb);
    CHECK(contains(error_of([&] { preprocess_image(out.data(), bgr.data, 5, 7, 2, image_config(5, 7, 3, Resize::none), "buf2"); }),
                   "buf2"));
  }
  SECTION("corrupt, empty and missing files throw naming the file") {
    std::mt19937_64 rng(9);
    std::string junk(2000, '\0');
    for (char& ch : junk) ch = static_cast<char>(rng() & 0xff);
    std::ofstream(dir.file("junk.png"), std::ios::binary) << junk;
    std::ofstream(dir.file("empty.png")).close();
    // A real PNG cut in half.
    REQUIRE(cv::imwrite(dir.file("full.png"), random_image(28, 28, CV_8UC1, 7)));
    std::ifstream in(dir.file("full.png"), std::ios::binary);
    std::string png((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(dir.file("half.png"), std::ios::binary) << png.substr(0, png.size() / 2);
    std::vector<float> out(28 * 28);
    for (const char* name : {"junk.png", "empty.png", "half.png", "missing.png"}) {
      INFO(name);
      const std::string msg =
          error_of([&] { load_image(out.data(), dir.file(name), image_config(28, 28, 1, Resize::none)); });
      CHECK(contains(msg, dir.file(name)));
    }
  }
}
