// Hostile input (issue 12): overflowing sizes, nonsense values, files that are not
// regular files, temporary files left behind, and messages that must stay one line.
// Each case names the reproducer it guards.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "core/error.hpp"
#include "io/atomic_file.hpp"
#include "io/config_json.hpp"
#include "io/dataset.hpp"
#include "io/image.hpp"
#include "io/input_file.hpp"
#include "io/model_file.hpp"
#include "io/safetensors.hpp"
#include "model/architectures.hpp"
#include "naive/test_util.hpp"
#include "spec/params.hpp"
#include "train/optimizer.hpp"
#include "train/trainer.hpp"

using namespace vmoe;
using json = nlohmann::json;

namespace {

using testutil::contains;
using testutil::error_of;
bool one_line(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return false;
  return true;
}

std::string config_with(const std::function<void(json&)>& edit) {
  json j = json::parse(config_to_json(find_architecture("vmoe-fmnist").config));
  edit(j);
  return j.dump();
}
std::string parse_error(const std::function<void(json&)>& edit) {
  return error_of([&] { parse_config_json(config_with(edit)); });
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A PID that certainly belonged to a process that has exited: a child we reaped.
pid_t dead_pid() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  return child;
}

}  // namespace

TEST_CASE("printable escapes control characters and invalid UTF-8 and caps the length", "[hostile]") {
  CHECK(printable("plain text: /a/b.png") == "plain text: /a/b.png");
  CHECK(printable("Ankle boot \xc3\xa9t\xc3\xa9 \xe2\x82\xac") == "Ankle boot \xc3\xa9t\xc3\xa9 \xe2\x82\xac");  // UTF-8 kept
  CHECK(printable("a\nb") == "a\\x0ab");
  CHECK(printable("\x1b[2J\x1b]0;owned\x07") == "\\x1b[2J\\x1b]0;owned\\x07");
  CHECK(printable("del\x7f") == "del\\x7f");
  CHECK(printable("c1 \xc2\x9b") == "c1 \\xc2\\x9b");  // CSI as a C1 code point
  CHECK(printable("bad \xff\xfe utf8 \xc3") == "bad \\xff\\xfe utf8 \\xc3");
  CHECK(printable("overlong \xc0\xaf") == "overlong \\xc0\\xaf");
  const std::string huge(52 << 20, 'x');
  const std::string capped = printable(huge);
  CHECK(capped.size() < 2 * kMaxEchoBytes);
  CHECK(contains(capped, "(54525952 bytes)"));
  // Idempotent: escaping an escaped message changes nothing.
  const std::string once = printable("x\ny\x1b\xff");
  CHECK(printable(once) == once);
}

TEST_CASE("fail() escapes and caps every string it echoes", "[hostile]") {
  const std::string name = "evil\n\x1b[31mname" + std::string(10000, 'A');
  const std::string what = error_of([&] { fail("{}: tensor \"{}\" is bad ({} bytes)", "file.safetensors", name, 12); });
  CHECK(one_line(what));
  CHECK(contains(what, "evil\\x0a\\x1b[31mname"));
  CHECK(contains(what, "(12 bytes)"));
  CHECK(what.size() < 600);
}

TEST_CASE("config sizes are checked in 64 bits against stated limits (item 1, 6)", "[hostile]") {
  // image 5 x 858993469 with patch 1 wrapped to 49 patches in 32-bit arithmetic.
  CHECK(contains(parse_error([](json& j) {
                   j["image"]["height"] = 5;
                   j["image"]["width"] = 858993469;
                   j["patch"] = {1, 1};
                 }),
                 "image.width = 858993469 is more than the limit"));
  CHECK(contains(parse_error([](json& j) {
                   j["image"]["height"] = 16384;
                   j["image"]["width"] = 16384;
                   j["patch"] = {1, 1};
                 }),
                 "more than the limit of 65536"));
  // patch 4294967300 was read as 4.
  CHECK(contains(parse_error([](json& j) { j["patch"] = {4294967300LL, 4}; }), "out of range"));
  CHECK(contains(parse_error([](json& j) { j["moe"]["layers"] = {1, 4294967299LL}; }), "out of range"));
  CHECK(contains(parse_error([](json& j) { j["moe"]["layers"] = {1.5}; }), "array of integers"));
  // value_range +-1e300 printed "-nan %".
  CHECK(contains(parse_error([](json& j) { j["image"]["value_range"] = {-1e300, 1e300}; }), "value_range"));
  CHECK(contains(parse_error([](json& j) { j["image"]["value_range"] = {0, 1e7}; }), "value_range"));
  CHECK(contains(parse_error([](json& j) { j["layer_norm_eps"] = 1e300; }), "layer_norm_eps"));
  CHECK(contains(parse_error([](json& j) { j["moe"]["capacity_factor"] = 1e300; }), "capacity_factor"));
  CHECK(contains(parse_error([](json& j) { j["moe"]["noise_std"] = 1e300; }), "noise_std"));
  // num_tokens * group_images in the config.
  CHECK(contains(parse_error([](json& j) { j["moe"]["group_images"] = 1000000000; }), "routed together"));
  // A model whose total size is unbounded: 6 blocks of 16384 x 65536 MLPs.
  CHECK(contains(parse_error([](json& j) {
                   j["hidden_size"] = 16384;
                   j["num_heads"] = 16;
                   j["mlp_dim"] = 65536;
                 }),
                 "parameters, more than the limit"));
  CHECK(contains(parse_error([](json& j) { j["labels"][0] = "T-shirt\x1b[2J"; }), "control characters"));
  CHECK(parse_error([](json& j) { j["labels"][0] = "T-shirt \xc3\xa9t\xc3\xa9"; }).empty());
}

TEST_CASE("param_count is exact: it equals the tensors the config implies", "[hostile]") {
  const Architecture& a = GENERATE(from_range(architectures()));
  ModelConfig c = a.config;
  VitParams p;
  int64_t n = 0;
  for (const ParamSlot& s : param_slots(p, c)) n += shape_numel(s.shape);
  CHECK(c.param_count() == n);
  c.representation_size = 7;
  VitParams q;
  n = 0;
  for (const ParamSlot& s : param_slots(q, c)) n += shape_numel(s.shape);
  CHECK(c.param_count() == n);
  if (!c.moe) return;
  c.moe->num_shared_experts = 3;  // issue 11: shared experts, expert_mlp_dim, balance bias
  c.moe->expert_mlp_dim = 40;
  if (c.moe->router->selection_bias()) c.moe->balance = Balance::bias;
  VitParams r;
  n = 0;
  for (const ParamSlot& s : param_slots(r, c)) n += shape_numel(s.shape);
  CHECK(c.param_count() == n);
}

TEST_CASE("routing overrides are checked against the model (item 1, 7)", "[hostile]") {
  const ModelConfig c = find_architecture("vmoe-fmnist").config;
  RoutingOverrides o;
  o.group_images = 1000000000;
  CHECK(contains(error_of([&] { apply_overrides(c, o); }), "group size"));
  o.group_images = 100000;  // under the image limit, over the token limit (50 tokens each)
  CHECK(contains(error_of([&] { apply_overrides(c, o); }), "routed together"));
  o.group_images = 64;
  CHECK(apply_overrides(c, o).group_images == 64);
  for (double bad : {std::numeric_limits<double>::infinity(), std::nan(""), 0.0, -1.0, 1e300}) {
    RoutingOverrides f;
    f.capacity_factor = bad;
    CHECK(contains(error_of([&] { apply_overrides(c, f); }), "capacity factor"));
  }
}

TEST_CASE("outputs are written only over regular files or new names (item 2)", "[hostile]") {
  testutil::TempDir dir;
  auto write = [](const std::string& path) { write_file_atomically(path, [](std::ostream& out) { out << "new"; }); };
  const std::string target = dir.file("victim");
  write_text(target, "old");
  const std::string link = dir.file("link");
  std::filesystem::create_symlink(target, link);
  CHECK(contains(error_of([&] { write(link); }), "refusing to write the output over a symbolic link"));
  CHECK(std::filesystem::is_symlink(link));
  const std::string fifo = dir.file("fifo");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  CHECK(contains(error_of([&] { write(fifo); }), "over a FIFO"));
  const std::string sub = dir.file("sub");
  std::filesystem::create_directory(sub);
  CHECK(contains(error_of([&] { write(sub); }), "over a directory"));
  CHECK(contains(error_of([&] { check_output_path("/dev/null", "model"); }), "character device"));
  write(target);  // a regular file is replaced
  std::ifstream in(target);
  std::string text;
  in >> text;
  CHECK(text == "new");
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    CHECK(!contains(e.path().filename().string(), ".tmp."));
}

TEST_CASE("temporary files of dead processes are removed, live ones kept (item 3)", "[hostile]") {
  testutil::TempDir dir;
  const std::string target = dir.file("m.safetensors");
  const std::string stale = target + ".tmp." + std::to_string(dead_pid());
  const std::string live = target + ".tmp." + std::to_string(::getpid() == 1 ? 1 : ::getppid());
  const std::string other = dir.file("other.safetensors.tmp.1234567");
  for (const std::string& p : {stale, live, other}) write_text(p, "partial");
  write_file_atomically(target, [](std::ostream& out) { out << "whole"; });
  CHECK(!std::filesystem::exists(stale));
  CHECK(std::filesystem::exists(live));  // its writer may still be running
  CHECK(std::filesystem::exists(other));  // another name: not ours to judge
  CHECK(std::filesystem::exists(target));
}

TEST_CASE("FIFOs, devices and directories are refused without blocking (item 5)", "[hostile]") {
  testutil::TempDir dir;
  const std::string fifo = dir.file("fifo.png");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Each of these blocked forever on open() or read(); a hang fails the test by timeout.
  CHECK(contains(error_of([&] { SafetensorsFile f(fifo); }), "is a FIFO"));
  CHECK(contains(error_of([&] { load_model(fifo); }), "is a FIFO"));
  std::vector<float> pixels(28 * 28);
  CHECK(contains(error_of([&] { load_image(pixels.data(), fifo, ImageConfig{}); }), "is a FIFO"));
  CHECK(contains(error_of([&] { read_idx_images(fifo); }), "is a FIFO"));
  CHECK(contains(error_of([&] { read_idx_labels(fifo); }), "is a FIFO"));
  CHECK(contains(error_of([&] { read_input_file("/dev/zero", "image", 1 << 20); }), "character device"));
  CHECK(contains(error_of([&] { train::read_training_state(fifo); }), "is a FIFO"));
  // A FIFO inside a class folder of a dataset.
  std::filesystem::create_directories(dir.file("data/cat"));
  REQUIRE(::mkfifo(dir.file("data/cat/x.png").c_str(), 0600) == 0);
  CHECK(contains(error_of([&] { load_dataset(dir.file("data")); }), "a FIFO"));
}

TEST_CASE("images: decoder messages become one-line errors, sizes are limited (item 4)", "[hostile]") {
  testutil::TempDir dir;
  cv::Mat img(28, 28, CV_8UC1, cv::Scalar(128));
  std::vector<unsigned char> png, jpg;
  cv::imencode(".png", img, png);
  cv::imencode(".jpg", img, jpg);
  std::vector<float> out(28 * 28);
  const std::string ok = dir.file("ok.png");
  write_text(ok, std::string(png.begin(), png.end()));
  CHECK(error_of([&] { load_image(out.data(), ok, ImageConfig{}); }).empty());
  // Truncated PNG and JPEG: libpng and libjpeg print their own lines; ours is one line.
  for (auto [name, bytes] : {std::pair{"cut.png", png}, std::pair{"cut.jpg", jpg}}) {
    const std::string path = dir.file(name);
    write_text(path, std::string(bytes.begin(), bytes.begin() + static_cast<long>(bytes.size() * 2 / 3)));
    const std::string e = error_of([&] { load_image(out.data(), path, ImageConfig{}); });
    CHECK(contains(e, name));
    CHECK(one_line(e));
  }
  // A PNG header promising 100000 x 100000 pixels is refused before decoding.
  std::string big(png.begin(), png.end());
  for (int i = 0; i < 4; ++i) big[16 + i] = big[20 + i] = "\x00\x01\x86\xa0"[i];
  const std::string big_path = dir.file("big.png");
  write_text(big_path, big);
  CHECK(contains(error_of([&] { load_image(out.data(), big_path, ImageConfig{}); }), "more than the limit"));
  // fuzz_image (issue 24): "DICM" at byte 128 sent the bytes to GDCM, which assert()ed
  // and aborted the process on this 133-byte file.
  std::string dicom(128, '\0');
  dicom.replace(0, 15, "NITFOC=(A)<^IT\x06", 15);
  dicom += "DICMO";
  const std::string dicom_path = dir.file("x.dcm");
  write_text(dicom_path, dicom);
  const std::string dicom_error = error_of([&] { load_image(out.data(), dicom_path, ImageConfig{}); });
  CHECK_THAT(dicom_error, Catch::Contains("a DICOM file"));
  // Only PNG, JPEG, BMP and PNM reach a decoder: the same bytes without "DICM" would go
  // to GDAL's NITF reader, a TIFF header to libtiff, a WebP one to libwebp.
  const std::pair<const char*, std::string> others[] = {
      {"nitf", std::string("NITFOC=(A)<^IT\x06", 15) + std::string(120, '\0')},
      {"tiff", std::string("II*\0\x08\0\0\0", 8) + std::string(64, '\0')},
      {"webp", std::string("RIFF\x20\0\0\0WEBPVP8 ", 16) + std::string(32, '\0')},
      {"pam", std::string("P7\nWIDTH 2\nHEIGHT 2\nDEPTH 1\nMAXVAL 255\nENDHDR\n") + std::string(4, '\0')}};
  for (const auto& [name, bytes] : others) {
    const std::string path = dir.file(std::string("x.") + name);
    write_text(path, bytes);
    const std::string error = error_of([&] { load_image(out.data(), path, ImageConfig{}); });
    INFO(name << ": " << error);
    CHECK_THAT(error, Catch::Contains("not a PNG, JPEG, BMP or PNM image") && Catch::Contains(path));
  }
  CHECK(std::string(vmoe::image_format("\x89PNG\r\n\x1a\n")) == "png");
  CHECK(std::string(vmoe::image_format("P5 ")) == "pnm");
  CHECK(vmoe::image_format("P5") == nullptr);
  const std::string empty = dir.file("empty.png");
  write_text(empty, "");
  CHECK(contains(error_of([&] { load_image(out.data(), empty, ImageConfig{}); }), "empty"));
}

TEST_CASE("a .train state with nonsense settings is refused on resume (item 6)", "[hostile]") {
  testutil::TempDir dir;
  ModelConfig c = find_architecture("vit-fmnist").config;
  c.num_layers = 1;
  Model m = init_model(c, 1);
  train::AdamW adam(c, {});
  json settings = {{"data", "fashion-mnist:train"}, {"test_data", ""}, {"data_dir", ""}, {"epochs", 3},
                   {"batch", 8}, {"lr", 1e-3}, {"warmup_epochs", 1.0}, {"weight_decay", 0.05}, {"clip_norm", 1.0},
                   {"label_smoothing", 0.1}, {"importance_weight", 0.005}, {"load_weight", 0.005}, {"augment", true},
                   {"crop_padding", 2}, {"flip", true}, {"seed", 0}, {"limit", -1}, {"test_limit", -1}};
  auto write_state = [&](const json& run, std::string config_text = "") {
    if (config_text.empty()) config_text = config_to_json(c);
    NamedTensors named;
    for (const ConstParamSlot& s : param_slots(std::as_const(m.params), c)) named.emplace_back(s.name, s.tensor);
    for (const ParamSlot& s : param_slots(adam.first_moment(), c)) named.emplace_back("adam_m/" + s.name, s.tensor);
    for (const ParamSlot& s : param_slots(adam.second_moment(), c)) named.emplace_back("adam_v/" + s.name, s.tensor);
    const std::string path = dir.file("m.train");
    write_safetensors(path, named, {{"vmoe.config", config_text}, {"vmoe.train", run.dump()}});
    return path;
  };
  auto state_error = [&](const std::function<void(json&)>& edit) {
    json run = {{"settings", settings}, {"epochs_done", 1}, {"step", 10}};
    edit(run);
    const std::string path = write_state(run);
    return error_of([&] { train::read_training_state(path); });
  };
  CHECK(state_error([](json&) {}).empty());
  CHECK(contains(state_error([](json& r) { r["epochs_done"] = -1; }), "epochs_done"));
  CHECK(contains(state_error([](json& r) { r["epochs_done"] = 4; }), "epochs_done"));
  CHECK(contains(state_error([](json& r) { r["step"] = -5; }), "step"));
  CHECK(contains(state_error([](json& r) { r["step"] = 0; }), "epochs done but step"));
  CHECK(contains(state_error([](json& r) { r["settings"]["epochs"] = -2; }), "epochs"));
  CHECK(contains(state_error([](json& r) { r["settings"]["lr"] = 0; }), "lr"));
  CHECK(contains(state_error([](json& r) { r["settings"]["lr"] = -1e-3; }), "lr"));
  CHECK(contains(state_error([](json& r) { r["settings"]["lr"] = 1e300; }), "lr"));
  CHECK(contains(state_error([](json& r) { r["settings"]["batch"] = 1e12; }), "batch"));
  CHECK(contains(state_error([](json& r) { r["settings"]["batch"] = 0; }), "batch"));
  CHECK(contains(state_error([](json& r) { r["settings"]["crop_padding"] = 1000; }), "crop_padding"));
  CHECK(contains(state_error([](json& r) { r["settings"]["augment"] = 1; }), "augment"));
  CHECK(contains(state_error([](json& r) { r["settings"].erase("seed"); }), "seed"));
  CHECK(contains(state_error([](json& r) { r = json::array(); }), "vmoe.train"));
  // A config claiming 800 M parameters over small tensors: refused before the 10 GB of
  // weights and moments it would take were allocated.
  json big = json::parse(config_to_json(c));
  big["hidden_size"] = 1024, big["num_heads"] = 8, big["mlp_dim"] = 65536, big["num_layers"] = 6;
  const std::string path = write_state({{"settings", settings}, {"epochs_done", 1}, {"step", 10}}, big.dump());
  CHECK(contains(error_of([&] { train::read_training_state(path); }), "has shape"));

  // Issue 24 (a): a position no data reaches. step = epochs done x S + steps into the
  // epoch, for S steps per epoch > steps into the epoch; refused before any data is
  // loaded (whether this data's S fits is checked when the run starts).
  std::ostringstream rng_text;
  rng_text << std::mt19937_64(7);
  const std::string good_rng = rng_text.str();
  auto in_epoch = [&](json& r, int epochs_done, int64_t step, int64_t epoch_step) {
    r["epochs_done"] = epochs_done, r["step"] = step, r["epoch_step"] = epoch_step;
    r["data_rng"] = good_rng, r["noise_rng"] = good_rng;
    r["partial"] = {{"loss", 0.5}, {"aux_importance", 0.0}, {"aux_load", 0.0}, {"correct", 3}, {"seconds", 1.0},
                    {"expert_rows", json::array()}};
  };
  auto position_error = [&](int epochs_done, int64_t step, int64_t epoch_step) {
    const std::string e = state_error([&](json& r) {
      if (epoch_step > 0) in_epoch(r, epochs_done, step, epoch_step);
      else r["epochs_done"] = epochs_done, r["step"] = step;
    });
    CHECK(one_line(e));
    return e;
  };
  CHECK(position_error(0, 3, 3) == "");   // 3 steps into the first epoch
  CHECK(position_error(2, 13, 3) == "");  // 2 epochs of 5 steps, 3 into the third
  CHECK(position_error(2, 14, 0) == "");  // 2 epochs of 7 steps
  CHECK(contains(position_error(0, 9, 3), "step 9 with 0 epochs done and 3 steps into the next is a position no data reaches"));
  CHECK(contains(position_error(0, 2, 3), "no data reaches"));
  CHECK(contains(position_error(2, 14, 3), "no data reaches"));  // 11 steps in 2 epochs
  CHECK(contains(position_error(2, 9, 3), "no data reaches"));   // epochs of 3 steps, 3 into the next
  CHECK(contains(position_error(2, 3, 3), "no data reaches"));   // epochs of 0 steps
  CHECK(contains(position_error(2, 13, 0), "no data reaches"));  // 13 steps in 2 whole epochs
  CHECK(contains(position_error(1, int64_t{1} << 40, (int64_t{1} << 40) - 1), "no data reaches"));
  CHECK(contains(position_error(3, 20, 2), "a position inside epoch 4 of 3"));

  // Issue 24 (b): corrupt generator states, refused with one line naming the generator.
  // libstdc++'s operator>> takes "-1" as 2^64-1, does not check the position after the
  // 312 words and accepts the zero state, which draws only zeros: a resumed run then hung
  // in uniform_int_distribution (crop shifts) and normal_distribution (router noise).
  std::vector<std::string> words;
  {
    std::istringstream in(good_rng);
    for (std::string w; in >> w;) words.push_back(w);
  }
  REQUIRE(words.size() == 313);
  auto join = [](const std::vector<std::string>& w) {
    std::string out;
    for (const std::string& x : w) out += (out.empty() ? "" : " ") + x;
    return out;
  };
  auto rng_error = [&](const json& text, const char* which = "data_rng") {
    const std::string e = state_error([&](json& r) {
      in_epoch(r, 1, 13, 3);
      r[which] = text;
    });
    CHECK(one_line(e));
    return e;
  };
  CHECK(rng_error(good_rng) == "");
  CHECK(rng_error("\n " + good_rng + " \t") == "");
  auto edited = [&](size_t i, const std::string& w) {
    std::vector<std::string> x = words;
    x[i] = w;
    return join(x);
  };
  CHECK(rng_error(edited(312, "0")) == "");    // position 0 of 312
  CHECK(rng_error(edited(312, "312")) == "");  // all 312 words drawn: regenerates next
  CHECK(rng_error(edited(4, "18446744073709551615")) == "");
  const std::string not_state = "bad \"data_rng\" (not a generator state";
  CHECK(contains(rng_error("1 2 3"), not_state));
  CHECK(contains(rng_error("1 2 3"), "3 numbers, expected 313"));
  CHECK(contains(rng_error(""), not_state));
  CHECK(contains(rng_error(good_rng + " 5"), "more than 313 numbers"));
  CHECK(contains(rng_error(edited(4, "-1")), "\"-\" where a number"));
  CHECK(contains(rng_error(edited(4, "+1")), not_state));
  CHECK(contains(rng_error(edited(4, "0x10")), not_state));
  CHECK(contains(rng_error(edited(4, "18446744073709551616")), "above 2^64-1"));
  CHECK(contains(rng_error(edited(312, "313")), "position 313 is past its 312 words"));
  CHECK(contains(rng_error(edited(312, "18446744073709551615")), "past its 312 words"));
  CHECK(contains(rng_error(std::string("\xc3\xbf\xc3\xbe\x01garbage\x7f")), not_state));  // valid UTF-8, not digits
  CHECK(contains(rng_error(std::string(good_rng).replace(100, 1, std::string(1, '\0'))), not_state));
  CHECK(contains(rng_error(12), "data_rng"));
  std::vector<std::string> zero(312, "0");
  zero.push_back("312");
  CHECK(contains(rng_error(join(zero), "noise_rng"), "bad \"noise_rng\" (not a generator state: all zero"));
  zero[312] = "0";
  CHECK(contains(rng_error(join(zero)), "all zero"));
  // Only the upper 33 bits of the oldest word take part in the next regeneration: with
  // its lower 31 bits set and every other word zero, the state is still the zero state.
  zero[0] = "2147483647", zero[312] = "312";
  CHECK(contains(rng_error(join(zero)), "all zero"));
  // ... while one set bit anywhere else is a real (sparse) state of the full period.
  zero[0] = "0", zero[200] = "1";
  CHECK(rng_error(join(zero)) == "");
}
