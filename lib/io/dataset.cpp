#include "io/dataset.hpp"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/error.hpp"
#include "io/image.hpp"
#include "io/input_file.hpp"

namespace vmoe {

namespace fs = std::filesystem;

namespace {

constexpr uint32_t kIdxImagesMagic = 2051;  // 0x00000803: unsigned bytes, 3 dimensions
constexpr uint32_t kIdxLabelsMagic = 2049;  // 0x00000801: unsigned bytes, 1 dimension
constexpr int64_t kMaxIdxBytes = int64_t{1} << 36;  // refuse headers that promise more than 64 GiB

// Reads a file through zlib, which also reads uncompressed files transparently.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    const int fd = open_input_file(path, "IDX file");  // a FIFO or device is refused, never waited on
    file_ = gzdopen(fd, "rb");
    if (!file_) {
      ::close(fd);
      fail("{}: cannot open", path);
    }
  }
  ~GzReader() {
    if (file_) gzclose(file_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to n bytes; returns how many were read (short only at the end of the data).
  int64_t read(uint8_t* out, int64_t n) {
    int64_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<int64_t>(n - done, int64_t{1} << 26));
      const int got = gzread(file_, out + done, chunk);
      if (got < 0) error();
      if (got == 0) break;
      done += got;
    }
    // A gzip stream cut short reads as a short count plus an error state.
    int code = Z_OK;
    const char* msg = gzerror(file_, &code);
    if (code != Z_OK && code != Z_STREAM_END && done < n) {
      if (code == Z_BUF_ERROR) fail("{}: truncated (the compressed stream ends early)", path_);
      fail("{}: corrupt compressed data ({})", path_, msg ? msg : "zlib error");
    }
    return done;
  }

  uint32_t read_u32(const char* what) {
    uint8_t b[4];
    if (read(b, 4) != 4) fail("{}: truncated in the header ({})", path_, what);
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
  }

  // Exactly n bytes into a vector grown as data arrives, so a hostile header cannot make
  // us allocate more than the file really holds.
  std::vector<uint8_t> read_exactly(int64_t n, const char* what) {
    std::vector<uint8_t> out;
    const int64_t step = int64_t{1} << 24;
    while (static_cast<int64_t>(out.size()) < n) {
      const int64_t have = static_cast<int64_t>(out.size());
      const int64_t want = std::min(step, n - have);
      out.resize(static_cast<size_t>(have + want));
      const int64_t got = read(out.data() + have, want);
      if (got < want)
        fail("{}: truncated: the header promises {} bytes of {} but the file holds {}", path_, n, what, have + got);
    }
    uint8_t extra;
    if (read(&extra, 1) != 0) fail("{}: unexpected data after the {} bytes of {} the header promises", path_, n, what);
    return out;
  }

  [[noreturn]] void error() {
    int code = Z_OK;
    const char* msg = gzerror(file_, &code);
    if (code == Z_BUF_ERROR) fail("{}: truncated (the compressed stream ends early)", path_);
    fail("{}: cannot read ({})", path_, msg ? msg : "zlib error");
  }

 private:
  std::string path_;
  gzFile file_ = nullptr;
};

bool is_hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

std::string find_idx(const std::string& dir, const std::string& stem, const std::string& kind) {
  // train-images-idx3-ubyte(.gz) as distributed; also the dotted variant some mirrors use.
  const std::string dotted = std::string(stem).replace(stem.rfind('-'), 1, ".");
  for (const std::string& name : {stem + ".gz", stem, dotted + ".gz", dotted}) {
    fs::path p = fs::path(dir) / name;
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  fail("{}: no Fashion-MNIST {} file {}(.gz) (install Debian's dataset-fashion-mnist or pass --data-dir)", dir, kind,
       stem);
}

Dataset load_fashion_mnist(const std::string& spec, const std::string& split, const std::string& data_dir) {
  const std::string dir = data_dir.empty() ? kFashionMnistDir : data_dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail("{}: Fashion-MNIST directory not found (install Debian's dataset-fashion-mnist or pass --data-dir)", dir);
  const std::string prefix = split == "train" ? "train" : "t10k";
  const std::string images_path = find_idx(dir, prefix + "-images-idx3-ubyte", "images");
  const std::string labels_path = find_idx(dir, prefix + "-labels-idx1-ubyte", "labels");
  IdxImages images = read_idx_images(images_path);
  std::vector<uint8_t> labels = read_idx_labels(labels_path);
  if (static_cast<int64_t>(labels.size()) != images.count)
    fail("{}: {} labels but {} has {} images", labels_path, labels.size(), images_path, images.count);
  Dataset d;
  d.name = spec;
  d.rows = images.rows;
  d.cols = images.cols;
  d.channels = 1;
  d.pixels = std::move(images.pixels);
  d.class_names = fashion_mnist_classes();
  d.labels.resize(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] >= d.class_names.size())
      fail("{}: label {} of item {} is not a Fashion-MNIST class (0..{})", labels_path, labels[i], i,
           d.class_names.size() - 1);
    d.labels[i] = labels[i];
  }
  return d;
}

Dataset load_folder(const std::string& spec) {
  const fs::path root(spec);
  std::error_code ec;
  if (!fs::exists(root, ec)) fail("{}: no such folder (and not a known dataset: fashion-mnist:train|test)", spec);
  if (!fs::is_directory(root, ec)) fail("{}: not a folder (and not a known dataset: fashion-mnist:train|test)", spec);
  std::vector<fs::path> classes;
  try {
    for (const fs::directory_entry& e : fs::directory_iterator(root))
      if (!is_hidden(e.path()) && e.is_directory()) classes.push_back(e.path());
  } catch (const fs::filesystem_error& e) {
    fail("{}: cannot list the folder ({})", spec, e.code().message());
  }
  if (classes.empty()) fail("{}: empty dataset folder: expected one sub-folder of images per class", spec);
  std::sort(classes.begin(), classes.end());

  Dataset d;
  d.name = spec;
  for (size_t c = 0; c < classes.size(); ++c) {
    d.class_names.push_back(classes[c].filename().string());
    std::vector<fs::path> files;
    try {
      for (auto it = fs::recursive_directory_iterator(classes[c], fs::directory_options::follow_directory_symlink);
           it != fs::recursive_directory_iterator(); ++it) {
        if (is_hidden(it->path())) {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_directory()) continue;
        // Only regular files are opened: a FIFO or device in a class folder would block or never end.
        std::error_code type_ec;
        const fs::file_status st = fs::status(it->path(), type_ec);
        if (!fs::is_regular_file(st))
          fail("{}: is {}, not an image file (class folders may hold only images)", it->path().string(),
               type_ec ? "unreadable" : fs::is_fifo(st) ? "a FIFO" : fs::is_character_file(st) || fs::is_block_file(st) ? "a device" : fs::is_socket(st) ? "a socket" : "not a regular file");
        files.push_back(it->path());
      }
    } catch (const fs::filesystem_error& e) {
      fail("{}: cannot list the folder ({})", classes[c].string(), e.code().message());
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      const std::string path = f.string();
      std::ifstream in(f, std::ios::binary);
      if (!in) fail("{}: cannot open the file", path);
      std::string head(16, '\0');
      in.read(head.data(), static_cast<std::streamsize>(head.size()));
      head.resize(static_cast<size_t>(in.gcount()));
      if (!image_format(head))
        fail("{}: not an image file vmoe reads (PNG, JPEG, BMP or PNM; class folders may hold only images)", path);
      d.sources.push_back(path);
      d.labels.push_back(static_cast<int>(c));
    }
  }
  if (d.labels.empty()) fail("{}: no images in any of its {} class folders", spec, d.class_names.size());
  return d;
}

}  // namespace

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

IdxImages read_idx_images(const std::string& path) {
  GzReader in(path);
  const uint32_t magic = in.read_u32("magic number");
  if (magic != kIdxImagesMagic)
    fail("{}: not an IDX image file (magic number {:#010x}, expected {:#010x})", path, magic, kIdxImagesMagic);
  IdxImages out;
  const uint32_t count = in.read_u32("image count");
  const uint32_t rows = in.read_u32("rows"), cols = in.read_u32("columns");
  if (rows == 0 || cols == 0 || rows > 65536 || cols > 65536)
    fail("{}: implausible image size {}x{} in the header", path, cols, rows);
  const int64_t per_image = int64_t{rows} * cols;  // at most 2^32
  if (count > 0 && per_image > kMaxIdxBytes / count) fail("{}: implausible header: {} images of {}x{}", path, count, cols, rows);
  const int64_t bytes = per_image * count;
  out.count = count;
  out.rows = static_cast<int>(rows);
  out.cols = static_cast<int>(cols);
  out.pixels = in.read_exactly(bytes, "pixels");
  return out;
}

std::vector<uint8_t> read_idx_labels(const std::string& path) {
  GzReader in(path);
  const uint32_t magic = in.read_u32("magic number");
  if (magic != kIdxLabelsMagic)
    fail("{}: not an IDX label file (magic number {:#010x}, expected {:#010x})", path, magic, kIdxLabelsMagic);
  const uint32_t count = in.read_u32("label count");
  return in.read_exactly(count, "labels");
}

Dataset load_dataset(const std::string& spec, const std::string& data_dir) {
  if (spec.empty()) fail("empty data spec: expected fashion-mnist:train, fashion-mnist:test or a folder");
  const std::string fm = "fashion-mnist";
  if (spec == fm || spec.rfind(fm + ":", 0) == 0) {
    const std::string split = spec.size() > fm.size() ? spec.substr(fm.size() + 1) : "";
    if (split != "train" && split != "test")
      fail("{}: unknown Fashion-MNIST split \"{}\" (expected fashion-mnist:train or fashion-mnist:test)", spec, split);
    return load_fashion_mnist(spec, split, data_dir);
  }
  // Anything else with a scheme-like prefix that is not an existing folder is a typo'd spec.
  std::error_code ec;
  if (spec.find(':') != std::string::npos && !fs::exists(spec, ec))
    fail("{}: unknown data spec (expected fashion-mnist:train, fashion-mnist:test or a folder)", spec);
  return load_folder(spec);
}

std::string dataset_image_name(const Dataset& data, int64_t i) {
  if (i >= 0 && i < static_cast<int64_t>(data.sources.size())) return data.sources[i];
  return fmt::format("{} image {}", data.name.empty() ? std::string("dataset") : data.name, i);
}

void dataset_image(float* out, const Dataset& data, int64_t i, const ImageConfig& image) {
  if (i < 0 || i >= data.size()) fail("{}: image index {} out of range (0..{})", data.name, i, data.size() - 1);
  if (!data.pixels.empty()) {
    const int64_t per_image = int64_t{data.rows} * data.cols * data.channels;
    if (static_cast<int64_t>(data.pixels.size()) < (i + 1) * per_image)
      fail("{}: pixel buffer holds fewer images than labels", data.name);
    preprocess_image(out, data.pixels.data() + i * per_image, data.rows, data.cols, data.channels, image,
                     dataset_image_name(data, i));
    return;
  }
  if (i >= static_cast<int64_t>(data.sources.size())) fail("{}: image {} has neither pixels nor a file", data.name, i);
  load_image(out, data.sources[i], image);
}

}  // namespace vmoe
