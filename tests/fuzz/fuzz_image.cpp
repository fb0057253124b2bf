// Fuzz target: image decoding (OpenCV and the codec libraries behind it, with our header
// checks and the stderr capture) and preprocessing by three different image rules.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "io/image.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  cv::Mat decoded;
  try {
    decoded = vmoe::decode_image(bytes, "fuzz input");
  } catch (const vmoe::Error&) {
    return 0;
  }
  if (decoded.depth() != CV_8U) decoded.convertTo(decoded, CV_8U);
  if (!decoded.isContinuous()) decoded = decoded.clone();
  vmoe::ImageConfig grey;  // 28x28x1, resize none
  vmoe::ImageConfig stretch;
  stretch.height = stretch.width = 16, stretch.channels = 3, stretch.resize = vmoe::Resize::stretch;
  vmoe::ImageConfig crop;
  crop.height = crop.width = 8, crop.channels = 3, crop.resize = vmoe::Resize::resize_small_crop, crop.resize_small = 10;
  for (const vmoe::ImageConfig& rule : {grey, stretch, crop}) {
    std::vector<float> out(static_cast<size_t>(rule.height) * rule.width * rule.channels);
    try {
      vmoe::preprocess_image(out.data(), decoded.ptr<unsigned char>(), decoded.rows, decoded.cols, decoded.channels(),
                             rule, "fuzz input");
    } catch (const vmoe::Error&) {
    }
  }
  return 0;
}
