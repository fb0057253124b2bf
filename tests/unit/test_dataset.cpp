// Dataset readers: Fashion-MNIST IDX files (raw and gzipped) and class-per-folder trees.
#include <unistd.h>
#include <zlib.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include "core/error.hpp"
#include "io/dataset.hpp"

using namespace vmoe;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / fmt::format("vmoe-test-dataset-{}-{}", name, ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}

std::vector<uint8_t> idx_images(uint32_t magic, uint32_t count, uint32_t rows, uint32_t cols, int64_t pixels) {
  std::vector<uint8_t> b;
  put_u32(b, magic);
  put_u32(b, count);
  put_u32(b, rows);
  put_u32(b, cols);
  for (int64_t i = 0; i < pixels; ++i) b.push_back(static_cast<uint8_t>(i * 7));
  return b;
}

std::vector<uint8_t> idx_labels(uint32_t magic, const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> b;
  put_u32(b, magic);
  put_u32(b, static_cast<uint32_t>(labels.size()));
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

void write(const fs::path& path, const std::vector<uint8_t>& bytes, bool gz) {
  if (gz) {
    gzFile f = gzopen(path.c_str(), "wb");
    REQUIRE(f);
    if (!bytes.empty()) REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == (int)bytes.size());
    gzclose(f);
  } else {
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
}

// A Fashion-MNIST-like test split of n images of r x c under dir.
void write_split(const fs::path& dir, bool gz, int n, int r, int c) {
  std::vector<uint8_t> labels;
  for (int i = 0; i < n; ++i) labels.push_back(static_cast<uint8_t>(i % 10));
  const std::string ext = gz ? ".gz" : "";
  write(dir / ("t10k-images-idx3-ubyte" + ext), idx_images(2051, n, r, c, int64_t{n} * r * c), gz);
  write(dir / ("t10k-labels-idx1-ubyte" + ext), idx_labels(2049, labels), gz);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

void write_png(const fs::path& path, int rows, int cols, int value) {
  cv::Mat m(rows, cols, CV_8UC3, cv::Scalar(value, value / 2, 255 - value));
  REQUIRE(cv::imwrite(path.string(), m));
}

}  // namespace

TEST_CASE("Fashion-MNIST IDX files load gzipped and raw", "[dataset]") {
  for (bool gz : {true, false}) {
    DYNAMIC_SECTION((gz ? "gzip" : "raw")) {
      fs::path dir = fresh_dir(gz ? "gz" : "raw");
      write_split(dir, gz, 13, 28, 28);
      Dataset d = load_dataset("fashion-mnist:test", dir.string());
      CHECK(d.size() == 13);
      CHECK(d.rows == 28);
      CHECK(d.cols == 28);
      CHECK(d.channels == 1);
      CHECK(d.pixels.size() == 13u * 28 * 28);
      CHECK(d.pixels[5] == static_cast<uint8_t>(5 * 7));
      CHECK(d.labels[12] == 2);
      CHECK(d.class_names.size() == 10);
      CHECK(d.class_names[0] == "T-shirt/top");
      CHECK(d.class_names[9] == "Ankle boot");
      CHECK(d.sources.empty());

      ImageConfig ic;  // 28x28x1, value range [-1, 1]
      std::vector<float> img(28 * 28);
      dataset_image(img.data(), d, 0, ic);
      CHECK(img[0] == Approx(-1.0f));
      CHECK(img[5] == Approx(-1.0f + 2.0f * 35 / 255));
      CHECK_THROWS_AS(dataset_image(img.data(), d, 13, ic), Error);
      CHECK(dataset_image_name(d, 3) == "fashion-mnist:test image 3");
      fs::remove_all(dir);
    }
  }
}

TEST_CASE("Fashion-MNIST reader rejects broken files with the file's name", "[dataset]") {
  fs::path dir = fresh_dir("bad");
  const std::string images = (dir / "t10k-images-idx3-ubyte.gz").string();
  const std::string labels = (dir / "t10k-labels-idx1-ubyte.gz").string();
  auto load = [&] { load_dataset("fashion-mnist:test", dir.string()); };

  SECTION("missing directory and files") {
    CHECK_THAT(error_of([&] { load_dataset("fashion-mnist:test", (dir / "nope").string()); }),
               Catch::Contains("nope") && Catch::Contains("not found"));
    CHECK_THAT(error_of(load), Catch::Contains("t10k-images-idx3-ubyte"));
  }
  SECTION("bad image magic") {
    write_split(dir, true, 4, 28, 28);
    write(images, idx_images(2049, 4, 28, 28, 4 * 28 * 28), true);
    CHECK_THAT(error_of(load), Catch::Contains(images) && Catch::Contains("magic"));
  }
  SECTION("bad label magic") {
    write_split(dir, true, 4, 28, 28);
    write(labels, idx_labels(2051, {1, 2, 3, 4}), true);
    CHECK_THAT(error_of(load), Catch::Contains(labels) && Catch::Contains("magic"));
  }
  SECTION("truncated pixels, raw and gzip") {
    write_split(dir, true, 4, 28, 28);
    write(images, idx_images(2051, 4, 28, 28, 3 * 28 * 28 + 5), true);
    CHECK_THAT(error_of(load), Catch::Contains(images) && Catch::Contains("truncated"));
    fs::remove(images);
    const std::string raw = (dir / "t10k-images-idx3-ubyte").string();
    write(raw, idx_images(2051, 4, 28, 28, 3 * 28 * 28 + 5), false);
    CHECK_THAT(error_of(load), Catch::Contains(raw) && Catch::Contains("truncated"));
  }
  SECTION("truncated header") {
    write_split(dir, true, 4, 28, 28);
    write(images, {0, 0, 8, 3, 0, 0}, true);
    CHECK_THAT(error_of(load), Catch::Contains(images) && Catch::Contains("truncated"));
  }
  SECTION("gzip stream cut short") {
    write_split(dir, true, 200, 28, 28);
    std::ifstream in(images, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    in.close();
    bytes.resize(bytes.size() / 2);
    std::ofstream(images, std::ios::binary).write(bytes.data(), bytes.size());
    CHECK_THAT(error_of(load), Catch::Contains(images) && Catch::Contains("truncated"));
  }
  SECTION("trailing bytes") {
    write_split(dir, false, 4, 28, 28);
    const std::string raw = (dir / "t10k-images-idx3-ubyte").string();
    write(raw, idx_images(2051, 4, 28, 28, 4 * 28 * 28 + 1), false);
    CHECK_THAT(error_of(load), Catch::Contains(raw) && Catch::Contains("unexpected data"));
  }
  SECTION("hostile header does not allocate what the file does not hold") {
    write_split(dir, false, 4, 28, 28);
    const std::string raw = (dir / "t10k-images-idx3-ubyte").string();
    write(raw, idx_images(2051, 4000000, 28, 28, 100), false);
    CHECK_THAT(error_of(load), Catch::Contains(raw) && Catch::Contains("truncated"));
    write(raw, idx_images(2051, 0xffffffffu, 65536, 65536, 0), false);
    CHECK_THAT(error_of(load), Catch::Contains(raw) && Catch::Contains("implausible"));
  }
  SECTION("label and image counts differ") {
    write_split(dir, true, 4, 28, 28);
    write(labels, idx_labels(2049, {1, 2, 3}), true);
    CHECK_THAT(error_of(load), Catch::Contains(labels) && Catch::Contains("3 labels") && Catch::Contains("4 images"));
  }
  SECTION("label out of range") {
    write_split(dir, true, 4, 28, 28);
    write(labels, idx_labels(2049, {1, 2, 10, 4}), true);
    CHECK_THAT(error_of(load), Catch::Contains(labels) && Catch::Contains("label 10"));
  }
  fs::remove_all(dir);
}

TEST_CASE("unknown data specs are errors", "[dataset]") {
  CHECK_THAT(error_of([] { load_dataset("fashion-mnist:val"); }), Catch::Contains("split"));
  CHECK_THAT(error_of([] { load_dataset("mnist:test"); }), Catch::Contains("unknown data spec"));
  CHECK_THAT(error_of([] { load_dataset("/no/such/folder/anywhere"); }), Catch::Contains("/no/such/folder/anywhere"));
  CHECK_THAT(error_of([] { load_dataset(""); }), Catch::Contains("empty data spec"));
}

TEST_CASE("image folders: one sub-folder per class, sorted", "[dataset]") {
  fs::path dir = fresh_dir("folder");
  SECTION("a good tree") {
    fs::create_directories(dir / "zebra");
    fs::create_directories(dir / "apple" / "nested");
    fs::create_directories(dir / ".cache");
    write_png(dir / "zebra" / "b.png", 10, 12, 200);
    write_png(dir / "zebra" / "a.png", 30, 20, 100);
    write_png(dir / "apple" / "x.png", 8, 8, 50);
    write_png(dir / "apple" / "nested" / "y.png", 8, 8, 60);
    std::ofstream(dir / "apple" / ".DS_Store") << "junk";
    std::ofstream(dir / "README.txt") << "top-level files are ignored";
    std::ofstream(dir / ".cache" / "junk.bin") << "hidden folders are ignored";
    Dataset d = load_dataset(dir.string());
    REQUIRE(d.size() == 4);
    CHECK(d.class_names == std::vector<std::string>{"apple", "zebra"});
    CHECK(d.labels == std::vector<int>{0, 0, 1, 1});
    CHECK(d.pixels.empty());
    CHECK(d.sources[0] == (dir / "apple" / "nested" / "y.png").string());
    CHECK(d.sources[2] == (dir / "zebra" / "a.png").string());
    CHECK(dataset_image_name(d, 3) == (dir / "zebra" / "b.png").string());

    ImageConfig ic;
    ic.height = ic.width = 8;
    ic.channels = 3;
    ic.resize = Resize::stretch;
    ic.value_min = 0;
    ic.value_max = 255;
    std::vector<float> img(8 * 8 * 3);
    dataset_image(img.data(), d, 1, ic);  // apple/x.png, BGR (50, 25, 205) -> RGB
    CHECK(img[0] == Approx(205));
    CHECK(img[1] == Approx(25));
    CHECK(img[2] == Approx(50));
    ic.resize = Resize::none;
    CHECK_THAT(error_of([&] { dataset_image(img.data(), d, 2, ic); }),
               Catch::Contains("a.png") && Catch::Contains("resize"));
  }
  SECTION("empty folder") {
    CHECK_THAT(error_of([&] { load_dataset(dir.string()); }), Catch::Contains(dir.string()) && Catch::Contains("empty"));
  }
  SECTION("class folders without images") {
    fs::create_directories(dir / "a");
    fs::create_directories(dir / "b");
    CHECK_THAT(error_of([&] { load_dataset(dir.string()); }), Catch::Contains("no images"));
  }
  SECTION("a non-image file in a class folder is named") {
    fs::create_directories(dir / "cat");
    write_png(dir / "cat" / "1.png", 8, 8, 10);
    std::ofstream(dir / "cat" / "notes.txt") << "not an image";
    CHECK_THAT(error_of([&] { load_dataset(dir.string()); }),
               Catch::Contains((dir / "cat" / "notes.txt").string()) && Catch::Contains("not an image"));
  }
  SECTION("a file given instead of a folder") {
    std::ofstream(dir / "file.txt") << "x";
    CHECK_THAT(error_of([&] { load_dataset((dir / "file.txt").string()); }), Catch::Contains("not a folder"));
  }
  fs::remove_all(dir);
}

TEST_CASE("the real Fashion-MNIST test split, when installed", "[dataset]") {
  std::error_code ec;
  if (!fs::exists(fs::path(kFashionMnistDir) / "t10k-images-idx3-ubyte.gz", ec)) return;
  Dataset d = load_dataset("fashion-mnist:test");
  CHECK(d.size() == 10000);
  CHECK(d.rows == 28);
  CHECK(d.cols == 28);
  std::vector<int> per_class(10);
  for (int l : d.labels) per_class.at(l)++;
  for (int n : per_class) CHECK(n == 1000);
}
