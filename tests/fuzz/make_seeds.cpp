// Writes the committed seed corpus (tests/fuzz/corpus/<target>/): small valid inputs of
// every kind the targets read, from which fuzzing mutates. Run once by hand:
//   build/tests/fuzz_make_seeds tests/fuzz/corpus
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "io/config_json.hpp"
#include "io/model_file.hpp"
#include "io/safetensors.hpp"
#include "model/architectures.hpp"
#include "moe/router_registry.hpp"
#include "spec/params.hpp"
#include "spec/router.hpp"
#include "train/optimizer.hpp"

using namespace vmoe;
namespace fs = std::filesystem;

namespace {

void write(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}
std::string read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
std::string gzip(const std::string& bytes, const fs::path& tmp) {
  gzFile f = gzopen(tmp.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
  std::string out = read(tmp);
  fs::remove(tmp);
  return out;
}

// A model small enough to commit: 8x8 grey, patch 4 (4 patches), D 8, 2 heads, MLP 8.
ModelConfig tiny(int variant) {
  ModelConfig c;
  c.image.height = c.image.width = 8;
  c.patch_h = c.patch_w = 4;
  c.hidden_size = 8, c.num_layers = 2, c.num_heads = 2, c.mlp_dim = 8, c.num_classes = 3;
  c.labels = {"a", "b", "c"};
  if (variant > 0) {
    MoeConfig m;
    m.layers = {1};
    m.num_experts = 2, m.k = 1;
    m.router = variant == 1 ? &vmoe::find_router("top_k") : variant == 2 ? &vmoe::find_router("experts_choice") : &vmoe::find_router("soft");
    c.moe = m;
  }
  if (variant == 3) c.classifier = Classifier::gap, c.representation_size = 4;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_ROOT\n", argv[0]);
    return 2;
  }
  const fs::path root(argv[1]);
  const char* names[] = {"dense", "topk", "experts-choice", "soft-gap"};
  for (int v = 0; v < 4; ++v) {
    Model m = init_model(tiny(v), 1);
    const fs::path model = root / "safetensors" / (std::string(names[v]) + ".safetensors");
    fs::create_directories(model.parent_path());
    save_model(m, model.string());
    write(root / "config_json" / (std::string(names[v]) + ".json"), config_to_json(m.config));
    // A training state: the model, AdamW moments, the run.
    train::AdamW adam(m.config, {});
    NamedTensors named;
    for (const ConstParamSlot& s : param_slots(std::as_const(m.params), m.config)) named.emplace_back(s.name, s.tensor);
    for (const ParamSlot& s : param_slots(adam.first_moment(), m.config)) named.emplace_back("adam_m/" + s.name, s.tensor);
    for (const ParamSlot& s : param_slots(adam.second_moment(), m.config)) named.emplace_back("adam_v/" + s.name, s.tensor);
    const nlohmann::json settings = {
        {"data", "fashion-mnist:train"}, {"test_data", ""}, {"data_dir", ""}, {"epochs", 3}, {"batch", 8}, {"lr", 1e-3},
        {"warmup_epochs", 1.0}, {"weight_decay", 0.05}, {"clip_norm", 1.0}, {"label_smoothing", 0.1},
        {"importance_weight", 0.005}, {"load_weight", 0.005}, {"augment", true}, {"crop_padding", 2}, {"flip", true},
        {"seed", 0}, {"limit", -1}, {"test_limit", -1}};
    const nlohmann::json run = {{"settings", settings}, {"epochs_done", 1}, {"step", 10}};
    const fs::path state = root / "train_state" / (std::string(names[v]) + ".train");
    fs::create_directories(state.parent_path());
    write_safetensors(state.string(), named, {{"vmoe.config", config_to_json(m.config)}, {"vmoe.train", run.dump()}});
  }
  for (const Architecture& a : architectures()) write(root / "config_json" / (a.name + ".json"), config_to_json(a.config));
  // Half-precision tensors, written by hand (our writer writes F32 only).
  {
    const std::string header = R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
                               R"("b":{"dtype":"BF16","shape":[1,2],"data_offsets":[4,8]},"__metadata__":{"k":"v"}})";
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(header.size() >> (8 * i));
    bytes += header + std::string("\x00\x3c\x00\xc0\x80\x3f\x00\x40", 8);
    write(root / "safetensors" / "half.safetensors", bytes);
  }
  // Images: every format a class folder may hold, grey and colour.
  cv::Mat grey(6, 5, CV_8UC1), colour(5, 7, CV_8UC3), alpha(4, 4, CV_8UC4);
  cv::randu(grey, 0, 255), cv::randu(colour, 0, 255), cv::randu(alpha, 0, 255);
  for (const auto& [name, img] : {std::pair{"grey", grey}, std::pair{"colour", colour}})
    for (const char* ext : {".png", ".jpg", ".bmp", ".pgm"}) {
      if (std::string(ext) == ".pgm" && img.channels() == 3) ext = ".ppm";
      std::vector<unsigned char> buf;
      cv::imencode(ext, img, buf);
      write(root / "image" / (std::string(name) + ext), std::string(buf.begin(), buf.end()));
    }
  {
    std::vector<unsigned char> buf;
    cv::imencode(".png", alpha, buf);
    write(root / "image" / "alpha.png", std::string(buf.begin(), buf.end()));
  }
  // IDX: 3 images of 4x5 and their labels, plain and gzipped.
  auto be32 = [](uint32_t v) {
    return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
  };
  std::string images = be32(2051) + be32(3) + be32(4) + be32(5);
  for (int i = 0; i < 60; ++i) images += static_cast<char>(i * 4);
  const std::string labels = be32(2049) + be32(3) + std::string("\x01\x00\x09", 3);
  write(root / "idx" / "images-idx3-ubyte", images);
  write(root / "idx" / "labels-idx1-ubyte", labels);
  write(root / "idx" / "images-idx3-ubyte.gz", gzip(images, root / "idx" / "tmp.gz"));
  write(root / "idx" / "labels-idx1-ubyte.gz", gzip(labels, root / "idx" / "tmp.gz"));
  std::printf("seed corpus written under %s\n", root.c_str());
  return 0;
}
