#pragma once
// Datasets for evaluation and training (DESIGN §5, SPEC):
//   "fashion-mnist:train" | "fashion-mnist:test"  IDX files (gzipped or not) under data_dir,
//                                                 default /usr/share/datasets/fashion-mnist
//   a folder with one sub-folder per class       class = sub-folder name, classes sorted
//
// Fashion-MNIST is held in memory as decoded 8-bit pixels. Folders keep only the file
// paths (`sources`) and leave `pixels` empty: their images may differ in size and format,
// and are decoded on demand. Either way, consumers get the model's input through
// dataset_image(), which applies the model's image rules (DESIGN §3).
#include <cstdint>
#include <string>
#include <vector>

#include "spec/config.hpp"

namespace vmoe {

struct Dataset {  // 8-bit images as decoded, before the model's preprocessing
  int rows = 0, cols = 0, channels = 0;  // same for every image (0 for folders: sizes may vary)
  std::vector<uint8_t> pixels;  // (count, rows, cols, channels), BGR order when channels==3 (as OpenCV decodes)
  std::vector<int> labels;  // (count)
  std::vector<std::string> class_names;  // index -> name
  std::vector<std::string> sources;  // optional per-image path (folders) for messages
  std::string name;  // the spec it was loaded from, for messages
  int64_t size() const { return (int64_t)labels.size(); }
};

// Reads the dataset named by `spec` (see above); throws vmoe::Error naming the file or
// folder on any problem (unknown spec, missing/truncated/corrupt IDX file, bad magic,
// image/label count mismatch, empty folder, a file in a class folder that is not an image).
Dataset load_dataset(const std::string& spec, const std::string& data_dir = "");

// Image i as the model's input: (H, W, C) floats in the value range, by the image rules.
// From `pixels` when present, else by loading sources[i]. Errors name the image.
void dataset_image(float* out, const Dataset& data, int64_t i, const ImageConfig& image);

// A short name of image i for messages: its path, or "<name> image <i>".
std::string dataset_image_name(const Dataset& data, int64_t i);

// The ten Fashion-MNIST classes in label order ("T-shirt/top", ..., "Ankle boot").
const std::vector<std::string>& fashion_mnist_classes();

// Default directory of the Fashion-MNIST IDX files (Debian's dataset-fashion-mnist).
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Lower level, for tests and tools: one IDX file (gzipped when the name ends in .gz).
struct IdxImages {
  int64_t count = 0;
  int rows = 0, cols = 0;
  std::vector<uint8_t> pixels;
};
IdxImages read_idx_images(const std::string& path);
std::vector<uint8_t> read_idx_labels(const std::string& path);

}  // namespace vmoe
