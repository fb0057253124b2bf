#include "io/image.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "core/error.hpp"

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

}  // namespace

void preprocess_image(float* out, const unsigned char* pixels, int rows, int cols, int channels,
                      const ImageConfig& image, const std::string& what) {
  if (rows <= 0 || cols <= 0 || (channels != 1 && channels != 3 && channels != 4))
    fail("{}: unsupported image layout {}x{}x{}", what, cols, rows, channels);
  cv::Mat decoded(rows, cols, CV_8UC(channels), const_cast<unsigned char*>(pixels));
  cv::Mat ready = resize_by_rule(to_model_channels(decoded, image.channels), image, what);
  to_floats(out, ready, image);
}

void load_image(float* out, const std::string& path, const ImageConfig& image) {
  // Check first: cv::imread would print a warning of its own for a missing file.
  if (std::FILE* f = std::fopen(path.c_str(), "rb")) std::fclose(f);
  else fail("{}: cannot open image ({})", path, std::strerror(errno));
  cv::Mat decoded;
  try {
    decoded = cv::imread(path, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    fail("{}: cannot decode image ({})", path, e.what());
  }
  if (decoded.empty()) fail("{}: cannot read image (missing, unreadable or not an image format OpenCV knows)", path);
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
