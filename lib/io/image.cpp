#include "io/image.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "core/error.hpp"
#include "io/input_file.hpp"

namespace vmoe {
namespace {

cv::Mat to_model_channels(const cv::Mat& decoded, int channels) {
  cv::Mat out;
  const int have = decoded.channels();
  if (channels == 1) {
    if (have == 1) out = decoded;
    else if (have == 3) cv::cvtColor(decoded, out, cv::COLOR_BGR2GRAY);
    else cv::cvtColor(decoded, out, cv::COLOR_BGRA2GRAY);
  } else {
    if (have == 1) cv::cvtColor(decoded, out, cv::COLOR_GRAY2RGB);
    else if (have == 3) cv::cvtColor(decoded, out, cv::COLOR_BGR2RGB);
    else cv::cvtColor(decoded, out, cv::COLOR_BGRA2RGB);
  }
  return out;
}

cv::Mat resize_by_rule(const cv::Mat& in, const ImageConfig& image, const std::string& what) {
  const int H = image.height, W = image.width;
  switch (image.resize) {
    case Resize::none:
      if (in.rows != H || in.cols != W)
        fail("{}: image is {}x{} but the model takes {}x{} as they are (resize \"none\"): pass --resize stretch "
             "(or resize_small_crop) to fit it, or use a model made for photos (docs/TIMM.md)",
             what, in.cols, in.rows, W, H);
      return in;
    case Resize::stretch: {
      if (in.rows == H && in.cols == W) return in;
      cv::Mat out;
      cv::resize(in, out, cv::Size(W, H), 0, 0, cv::INTER_LINEAR);
      return out;
    }
    case Resize::resize_small_crop: {
      // Shorter side to resize_small (area interpolation), then the centre H x W crop.
      const double scale = static_cast<double>(image.resize_small) / std::min(in.rows, in.cols);
      int rows = std::max(1, static_cast<int>(std::lround(in.rows * scale)));
      int cols = std::max(1, static_cast<int>(std::lround(in.cols * scale)));
      if (in.rows <= in.cols) rows = image.resize_small;
      else cols = image.resize_small;
      cv::Mat resized;
      if (rows == in.rows && cols == in.cols) resized = in;
      else cv::resize(in, resized, cv::Size(cols, rows), 0, 0, cv::INTER_AREA);
      if (rows < H || cols < W) fail("{}: resized image {}x{} is smaller than the crop {}x{}", what, cols, rows, W, H);
      const int top = (rows - H) / 2, left = (cols - W) / 2;
      return resized(cv::Rect(left, top, W, H)).clone();
    }
  }
  return in;
}

void to_floats(float* out, const cv::Mat& img, const ImageConfig& image) {
  const float scale = (image.value_max - image.value_min) / 255.0f;
  const int values_per_row = img.cols * img.channels();
  for (int r = 0; r < img.rows; ++r) {
    const unsigned char* row = img.ptr<unsigned char>(r);
    for (int i = 0; i < values_per_row; ++i) out[static_cast<size_t>(r) * values_per_row + i] = image.value_min + scale * row[i];
  }
}

// OpenCV's decoders (libpng, libjpeg, libtiff, ...) print warnings and errors to stderr
// themselves, several lines at a time. While one decodes, fd 2 points at an in-memory
// file; what they said becomes part of our one-line error, or is dropped when the image
// decoded fine. One decode at a time: fd 2 belongs to the whole process.
class DecoderMessages {
 public:
  DecoderMessages() : lock_(mutex()) {
    std::fflush(stderr);
    saved_ = ::dup(2);
    memory_ = ::memfd_create("vmoe-decoder-messages", MFD_CLOEXEC);
    if (saved_ >= 0 && memory_ >= 0) ::dup2(memory_, 2);
  }
  ~DecoderMessages() { restore(); }
  DecoderMessages(const DecoderMessages&) = delete;
  DecoderMessages& operator=(const DecoderMessages&) = delete;

  // Puts stderr back and returns what was printed meanwhile (at most 4 KiB).
  std::string finish() {
    std::fflush(stderr);
    std::string text;
    if (memory_ >= 0) {
      char buffer[4096];
      const ssize_t got = ::pread(memory_, buffer, sizeof buffer, 0);
      if (got > 0) text.assign(buffer, static_cast<size_t>(got));
    }
    restore();
    return text;
  }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  void restore() {
    if (saved_ >= 0) {
      ::dup2(saved_, 2);
      ::close(saved_);
      saved_ = -1;
    }
    if (memory_ >= 0) {
      ::close(memory_);
      memory_ = -1;
    }
  }
  std::lock_guard<std::mutex> lock_;
  int saved_ = -1, memory_ = -1;
};

// The first line a decoder printed, without the library's own prefix noise.
std::string first_line(const std::string& text) {
  size_t start = text.find_first_not_of(" \t\r\n");
  if (start == std::string::npos) return "";
  size_t end = text.find_first_of("\r\n", start);
  return text.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

void silence_opencv_logging() {
  static std::once_flag once;
  std::call_once(once, [] {
    cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
    cv::redirectError([](int, const char*, const char*, const char*, int, void*) { return 0; });
  });
}

// Width and height from the header of the formats whose decoders allocate before they
// check anything (PNG IHDR, JPEG SOFn, BMP, PNM); false when the format is another one.
bool header_size(const std::string& bytes, uint64_t& width, uint64_t& height) {
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  auto be32 = [&](size_t i) { return (uint64_t{b[i]} << 24) | (uint64_t{b[i + 1]} << 16) | (uint64_t{b[i + 2]} << 8) | b[i + 3]; };
  auto be16 = [&](size_t i) { return (uint64_t{b[i]} << 8) | b[i + 1]; };
  auto le32 = [&](size_t i) { return uint64_t{b[i]} | (uint64_t{b[i + 1]} << 8) | (uint64_t{b[i + 2]} << 16) | (uint64_t{b[i + 3]} << 24); };
  if (n >= 24 && std::memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0 && std::memcmp(b + 12, "IHDR", 4) == 0) {
    width = be32(16), height = be32(20);
    return true;
  }
  if (n >= 4 && b[0] == 0xFF && b[1] == 0xD8) {  // JPEG: walk the markers up to the first SOFn
    size_t i = 2;
    while (i + 4 <= n) {
      if (b[i] != 0xFF) return false;
      const unsigned marker = b[i + 1];
      if (marker == 0xFF) { ++i; continue; }
      if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) { i += 2; continue; }
      const uint64_t length = be16(i + 2);
      const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
      if (sof) {
        if (i + 9 > n) return false;
        height = be16(i + 5), width = be16(i + 7);
        return true;
      }
      i += 2 + length;
    }
    return false;
  }
  if (n >= 26 && b[0] == 'B' && b[1] == 'M') {
    const int64_t w = static_cast<int32_t>(le32(18)), h = static_cast<int32_t>(le32(22));
    width = static_cast<uint64_t>(w < 0 ? -w : w), height = static_cast<uint64_t>(h < 0 ? -h : h);
    return true;
  }
  if (n >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6') {  // PNM: magic, then width and height (comments allowed)
    uint64_t values[2] = {0, 0};
    size_t i = 2;
    for (uint64_t& v : values) {
      while (i < n && (std::isspace(b[i]) || b[i] == '#')) {
        if (b[i] == '#') while (i < n && b[i] != '\n') ++i;
        else ++i;
      }
      if (i >= n || !std::isdigit(b[i])) return false;
      while (i < n && std::isdigit(b[i]) && v < (uint64_t{1} << 40)) v = v * 10 + (b[i++] - '0');
    }
    width = values[0], height = values[1];
    return true;
  }
  return false;
}

}  // namespace

const char* image_format(const std::string& head) {
  const auto* b = reinterpret_cast<const unsigned char*>(head.data());
  const size_t n = head.size();
  if (n >= 8 && std::memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) return "png";
  if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return "jpeg";
  if (n >= 2 && b[0] == 'B' && b[1] == 'M') return "bmp";
  if (n >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6' && std::isspace(b[2])) return "pnm";
  return nullptr;
}

cv::Mat decode_image(const std::string& bytes, const std::string& what) {
  silence_opencv_logging();
  if (bytes.empty()) fail("{}: empty file, not an image", what);
  // OpenCV hands a file with "DICM" at byte 128 to GDCM, whose reader assert()s on
  // malformed input: the process aborted (found by fuzz_image, issue 24). DICOM is no
  // format vmoe documents, so it is refused before any decoder sees it.
  if (bytes.size() >= 132 && bytes.compare(128, 4, "DICM") == 0)
    fail("{}: a DICOM file (\"DICM\" at byte 128); vmoe reads PNG, JPEG, BMP and PNM images", what);
  // An allow-list, not a deny-list: Debian's OpenCV links decoders for many formats vmoe
  // does not document (TIFF, WebP, OpenEXR, GDAL's NITF and others, DICOM above), each a
  // parser of hostile input whose failures we cannot vouch for (issue 24's fuzzing).
  if (!image_format(bytes)) {
    std::string start;
    for (size_t i = 0; i < std::min<size_t>(bytes.size(), 4); ++i)
      start += fmt::format("{}{:02x}", i ? " " : "", static_cast<unsigned char>(bytes[i]));
    fail("{}: not a PNG, JPEG, BMP or PNM image (the file starts with bytes {}); vmoe reads only those formats", what,
         start);
  }
  uint64_t width = 0, height = 0;
  if (header_size(bytes, width, height) &&
      (width > kMaxDecodedSide || height > kMaxDecodedSide || width * height > kMaxImagePixels))
    fail("{}: image header says {}x{} pixels, more than the limit of {} pixels ({} per side)", what, width, height,
         kMaxImagePixels, kMaxDecodedSide);
  cv::Mat decoded;
  std::string said, exception;
  {
    DecoderMessages messages;
    try {
      const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
      decoded = cv::imdecode(raw, cv::IMREAD_UNCHANGED);
    } catch (const cv::Exception& e) {
      exception = e.err.empty() ? e.what() : e.err;
    } catch (const std::exception& e) {
      exception = e.what();
    }
    said = first_line(messages.finish());
  }
  if (!exception.empty()) fail("{}: cannot decode image ({})", what, first_line(exception));
  if (decoded.empty()) {
    if (!said.empty()) fail("{}: cannot decode image ({})", what, said);
    fail("{}: cannot decode image (corrupt, or not an image format OpenCV knows)", what);
  }
  // libjpeg decodes a cut-off file with grey rows and only a warning: that is corrupt.
  if (said.find("Premature end") != std::string::npos || said.find("Corrupt") != std::string::npos)
    fail("{}: truncated or corrupt image data ({})", what, said);
  if (static_cast<uint64_t>(decoded.total()) > kMaxImagePixels)
    fail("{}: image is {}x{} pixels, more than the limit of {}", what, decoded.cols, decoded.rows, kMaxImagePixels);
  return decoded;
}

void preprocess_image(float* out, const unsigned char* pixels, int rows, int cols, int channels,
                      const ImageConfig& image, const std::string& what) {
  if (rows <= 0 || cols <= 0 || (channels != 1 && channels != 3 && channels != 4))
    fail("{}: unsupported image layout {}x{}x{}", what, cols, rows, channels);
  cv::Mat decoded(rows, cols, CV_8UC(channels), const_cast<unsigned char*>(pixels));
  cv::Mat ready = resize_by_rule(to_model_channels(decoded, image.channels), image, what);
  to_floats(out, ready, image);
}

void load_image(float* out, const std::string& path, const ImageConfig& image) {
  // Read it ourselves (a FIFO or device is refused, never waited on), then decode from memory.
  cv::Mat decoded = decode_image(read_input_file(path, "image", kMaxImageFileBytes), path);
  if (decoded.depth() != CV_8U) {
    cv::Mat eight;
    double scale = decoded.depth() == CV_16U ? 1.0 / 257.0 : 1.0;
    decoded.convertTo(eight, CV_8U, scale);
    decoded = eight;
  }
  if (!decoded.isContinuous()) decoded = decoded.clone();
  preprocess_image(out, decoded.ptr<unsigned char>(), decoded.rows, decoded.cols, decoded.channels(), image, path);
}

}  // namespace vmoe
