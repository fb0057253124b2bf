#pragma once
// Decoding and preprocessing by the config's image rules (DESIGN §3): decode with
// OpenCV, convert to the model's channels in RGB order, resize by the rule, map 0..255
// linearly onto the value range. Output is (H, W, C) float, row-major.
#include <cstdint>
#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "spec/config.hpp"

namespace vmoe {

// Limits on what we decode: the file size, and the pixel count read from the header
// before the decoder allocates (PNG, JPEG, BMP, PNM) and checked again after decoding.
inline constexpr uint64_t kMaxImageFileBytes = uint64_t{256} << 20;  // 256 MiB
inline constexpr uint64_t kMaxDecodedSide = 1 << 15;  // 32768 pixels
inline constexpr uint64_t kMaxImagePixels = uint64_t{1} << 26;  // 67 M pixels (8192 x 8192)

// "png", "jpeg", "bmp" or "pnm" from a file's first bytes (at least 3 needed), or null:
// the formats vmoe reads. Everything else is refused before any decoder sees it.
const char* image_format(const std::string& head);

// The image in `bytes` decoded by OpenCV (BGR order, depth as stored); `what` names it
// in errors. Decoder libraries' own messages never reach stderr: they become the error.
cv::Mat decode_image(const std::string& bytes, const std::string& what);

// Fills `out` (H*W*C floats) from the image file; throws naming the file on any problem.
void load_image(float* out, const std::string& path, const ImageConfig& image);

// The same from an already decoded 8-bit OpenCV-style buffer (rows, cols, channels in
// BGR order as OpenCV decodes), for tests and datasets.
void preprocess_image(float* out, const unsigned char* pixels, int rows, int cols, int channels,
                      const ImageConfig& image, const std::string& what);

}  // namespace vmoe
